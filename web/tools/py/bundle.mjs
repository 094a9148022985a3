/**
 * Driver for tests/test_web_bundle.py: runs web/src/bundle/ on inputs the Python side computed (JSON on stdin) and
 * writes what it got as JSON on stdout. Float32 values travel as JSON numbers, which hold them exactly.
 *
 *   node bundle.mjs taps BUNDLE_DIR        {input_ids, attention_mask: (B, T) lists, hidden: (N, H), label_ids}
 *       -> {taps: [{shape, data}] per shortcut layer, label_logits: {shape, data}, pad_id: the tokenizer's}
 *   node bundle.mjs side SIDE_DIR BUNDLE_DIR  {acts: {shape, data}, attention_mask, last_index, label_ids}
 *       -> {classify: {shape, data}, hidden: {shape, data} | null, hidden_error: string | null}
 *
 * A null attention_mask / last_index is passed on as null (the token-wise side network's pivot-only inputs).
 */
import { text } from 'node:stream/consumers';

import { Bundle, directoryReader, loadSideNetwork } from '../../src/bundle/runtime.mjs';
import { int64, tensor } from '../../src/wire/tensor.mjs';

const plain = (t) => ({ shape: t.shape, data: Array.from(t.data) });
const matrix = (rows) => int64(rows.flat(), [rows.length, rows[0].length]);
const floats = ({ shape, data }) => tensor('F32', shape, Float32Array.from(data));

async function taps(bundleDir, payload) {
  const bundle = await Bundle.load(directoryReader(bundleDir));
  const out = await bundle.taps(matrix(payload.input_ids), matrix(payload.attention_mask));
  const logits = await bundle.labelLogits(floats(payload.hidden), payload.label_ids);
  await bundle.release();
  return { taps: out.map(plain), label_logits: plain(logits), pad_id: bundle.tokenizer.padId };
}

async function side(sideDir, bundleDir, payload) {
  const [network, bundle] = await Promise.all([loadSideNetwork(directoryReader(sideDir)), Bundle.load(directoryReader(bundleDir))]);
  const acts = floats(payload.acts);
  const mask = payload.attention_mask === null ? null : matrix(payload.attention_mask);
  const last = payload.last_index === null ? null : int64(payload.last_index);
  const scores = await network.classify(acts, mask, last, (hidden) => bundle.labelLogits(hidden, payload.label_ids));
  let hidden = null;
  let hiddenError = null;
  try {
    hidden = plain(network.hidden(acts, mask));
  } catch (err) {
    hiddenError = `${err.name}: ${err.message}`;
  }
  await bundle.release();
  return { classify: plain(scores), hidden, hidden_error: hiddenError };
}

const [command, ...dirs] = process.argv.slice(2);
const payload = JSON.parse(await text(process.stdin));
const commands = { taps, side };
if (!(command in commands)) throw new Error(`usage: bundle.mjs taps BUNDLE_DIR | side SIDE_DIR BUNDLE_DIR (got ${command})`);
process.stdout.write(JSON.stringify(await commands[command](...dirs, payload)));

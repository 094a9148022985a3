/**
 * Where the web device's forward work goes, stage by stage (tokenize, taps, codec), on a bundle and SST-2-like
 * sentences: the page's hot path outside the browser (the same modules on Node's onnxruntime-web WASM). Prints the
 * CPU seconds per training sample of each stage (median of `--repeat` batches after one warm-up).
 *
 *   node tools/profile_forward.mjs --bundle DIR --data FILE.tsv [--threads 1] [--batch 16] [--repeat 5] [--codec nf4]
 */
import { readFile } from 'node:fs/promises';
import { parseArgs } from 'node:util';

import { Bundle, directoryReader } from '../src/bundle/runtime.mjs';
import { getCodec } from '../src/wire/codecs.mjs';

const { values: opts } = parseArgs({
  options: {
    bundle: { type: 'string' }, data: { type: 'string' }, threads: { type: 'string', default: '1' },
    batch: { type: 'string', default: '16' }, repeat: { type: 'string', default: '5' }, codec: { type: 'string', default: 'nf4' },
  },
});
if (!opts.bundle || !opts.data) throw new Error('give --bundle DIR and --data FILE.tsv (a sentence column first)');
const [B, repeat] = [Number(opts.batch), Number(opts.repeat)];
const bundle = await Bundle.load(directoryReader(opts.bundle), { threads: Number(opts.threads) });
const codec = getCodec(opts.codec);
const sentences = (await readFile(opts.data, 'utf8')).split('\n').slice(1).filter(Boolean).map((l) => l.split('\t')[0]);
const cpu = () => { const u = process.cpuUsage(); return (u.user + u.system) / 1e6; };
const stages = { tokenize: [], taps: [], codec: [] };
for (let r = 0; r <= repeat; r++) {
  const texts = sentences.slice(r * B, (r + 1) * B);
  let t = cpu();
  const tok = bundle.tokenizer;
  const tokens = tok.pad(tok.promptIds('', texts, '', 128));
  const after = [cpu()];
  const taps = await bundle.taps(tokens.inputIds, tokens.attentionMask);
  after.push(cpu());
  taps.forEach((x) => codec.encode(x));
  after.push(cpu());
  if (r === 0) continue; // warm-up
  [stages.tokenize, stages.taps, stages.codec].forEach((list, i) => { list.push((after[i] - t) / B); t = after[i]; });
}
const median = (xs) => [...xs].sort((a, b) => a - b)[xs.length >> 1];
const total = Object.values(stages).reduce((n, xs) => n + median(xs), 0);
for (const [name, xs] of Object.entries(stages)) {
  console.log(`${name.padEnd(9)} ${median(xs).toFixed(4)} s/sample  ${(100 * median(xs) / total).toFixed(1)}%`);
}
console.log(`total     ${total.toFixed(4)} s/sample (CPU seconds, ${opts.threads} thread(s), batch ${B})`);

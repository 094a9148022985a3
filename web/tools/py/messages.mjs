/**
 * The JS messages for tests/test_web_session.py: `node web/tools/py/messages.mjs encode|decode` reads a JSON list on
 * stdin and prints a JSON list, one result per item, `{error: code}` where the JS side refuses it.
 *
 *   encode: {header, tensors?} or {header, parts: {activations, sampleIds, labels, ...}} (tensors by batchTensors)
 *           -> {bytes: base64}
 *   decode: base64 bytes -> {header, tensors}
 *
 * Tensors travel as {dtype, shape, data} with data a flat list of numbers (16-bit floats as their bits).
 */
import { readFileSync } from 'node:fs';

import { PayloadTooBig, ProtocolError } from '../../src/exceptions.mjs';
import { batchTensors, decodeMessage, encodeMessage } from '../../src/wire/messages.mjs';
import { DTYPES, tensor } from '../../src/wire/tensor.mjs';

const isBig = (dtype) => DTYPES[dtype].array === BigInt64Array || DTYPES[dtype].array === BigUint64Array;

function fromJson({ dtype, shape, data }) {
  return tensor(dtype, shape, DTYPES[dtype].array.from(isBig(dtype) ? data.map(BigInt) : data));
}

function toJson({ dtype, shape, data }) {
  return { dtype, shape, data: Array.from(data, Number) };
}

const mapTensors = (tensors, f) => Object.fromEntries(Object.entries(tensors ?? {}).map(([k, t]) => [k, f(t)]));

/** A value of `parts` as batchTensors takes it: a tensor where the JSON gives one, else the list as it stands. */
const part = (value) => (value?.dtype === undefined ? value : fromJson(value));

function encode({ header, tensors, parts }) {
  const given = parts === undefined ? mapTensors(tensors, fromJson) : batchTensors(
    parts.activations.map((layer) => mapTensors(layer, fromJson)),
    Object.fromEntries(Object.entries(parts).filter(([k]) => k !== 'activations').map(([k, v]) => [k, part(v)])),
  );
  return { bytes: Buffer.from(encodeMessage(header, given)).toString('base64') };
}

function decode(base64) {
  const { header, tensors } = decodeMessage(new Uint8Array(Buffer.from(base64, 'base64')));
  return { header, tensors: mapTensors(tensors, toJson) };
}

function refused(err) {
  if (err instanceof ProtocolError) return { error: err.code };
  if (err instanceof PayloadTooBig) return { error: 'too_big' };
  if (err instanceof TypeError) return { error: 'TypeError' };
  throw err;
}

const run = { encode, decode }[process.argv[2]];
if (run === undefined) throw new Error('usage: node messages.mjs encode|decode < items.json');
const items = JSON.parse(readFileSync(0, 'utf8'));
process.stdout.write(JSON.stringify(items.map((item) => {
  try {
    return run(item);
  } catch (err) {
    return refused(err);
  }
})));

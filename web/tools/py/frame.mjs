/**
 * Driver for tests/test_web_frame.py: web/src/wire/frame.mjs on frames and tensors the Python side made.
 *
 *   node frame.mjs write OUT    {header, tensors: [[name, dtype, shape, base64 bytes], ...]} on stdin
 *       -> OUT: writeFrame of those tensors, in that insertion order
 *   node frame.mjs rewrite IN OUT
 *       -> OUT: writeFrame of readFrame(IN); stdout: {header, tensors: {name: [dtype, shape, base64 bytes]}}
 *   node frame.mjs read         {max_bytes, cases: {name: base64 blob}} on stdin
 *       -> stdout: {name: {error: null | class name, code, message, header, tensors}} per case
 */
import { readFile, writeFile } from 'node:fs/promises';
import { text } from 'node:stream/consumers';

import { readFrame, writeFrame } from '../../src/wire/frame.mjs';
import { DTYPES, tensorBytes } from '../../src/wire/tensor.mjs';

const base64 = (t) => Buffer.from(tensorBytes(t)).toString('base64');
const plain = ({ tensors, header }) => ({
  header,
  tensors: Object.fromEntries(Object.entries(tensors).map(([name, t]) => [name, [t.dtype, t.shape, base64(t)]])),
});

function fromBase64(dtype, encoded) {
  const bytes = Buffer.from(encoded, 'base64');
  const copy = new Uint8Array(bytes); // an own, aligned buffer
  return new DTYPES[dtype].array(copy.buffer, 0, copy.length / DTYPES[dtype].size);
}

const [mode, ...paths] = process.argv.slice(2);
if (mode === 'write') {
  const spec = JSON.parse(await text(process.stdin));
  const tensors = Object.fromEntries(spec.tensors.map(([name, dtype, shape, data]) => [name, { dtype, shape, data: fromBase64(dtype, data) }]));
  await writeFile(paths[0], writeFrame(tensors, spec.header));
} else if (mode === 'rewrite') {
  const frame = readFrame(await readFile(paths[0]));
  await writeFile(paths[1], writeFrame(frame.tensors, frame.header));
  process.stdout.write(JSON.stringify(plain(frame)));
} else if (mode === 'read') {
  const { max_bytes: maxBytes, cases } = JSON.parse(await text(process.stdin));
  const out = {};
  for (const [name, blob] of Object.entries(cases)) {
    try {
      out[name] = { error: null, ...plain(readFrame(Buffer.from(blob, 'base64'), { maxBytes })) };
    } catch (err) {
      out[name] = { error: err.constructor.name, code: err.code ?? null, message: err.message };
    }
  }
  process.stdout.write(JSON.stringify(out));
} else {
  throw new Error(`unknown mode ${mode}; use write, rewrite or read`);
}

/**
 * Driver for tests/test_web_codecs.py: encodes and decodes, with every codec of web/src/wire/codecs.mjs, the
 * vectors the Python side wrote as one safetensors frame, and writes the results as another.
 *
 *   node codecs.mjs IN OUT
 *     IN:  x/<case> (F32 inputs) and enc/<codec>/<case>/<field> (np_codecs' encodings of them)
 *     OUT: enc/<codec>/<case>/<field> (this side's encodings of x/<case>) and dec/<codec>/<case> (this side's
 *          decode of np_codecs' encoding); its header is {"codecs": [names]}
 */
import { readFile, writeFile } from 'node:fs/promises';

import { CODECS } from '../../src/wire/codecs.mjs';
import { readFrame, writeFrame } from '../../src/wire/frame.mjs';

const [input, output] = process.argv.slice(2);
const { tensors } = readFrame(await readFile(input));
const out = {};
for (const [name, x] of Object.entries(tensors)) {
  if (!name.startsWith('x/')) continue;
  const key = name.slice(2);
  for (const codec of Object.values(CODECS)) {
    for (const [field, t] of Object.entries(codec.encode(x))) out[`enc/${codec.name}/${key}/${field}`] = t;
    const prefix = `enc/${codec.name}/${key}/`;
    const theirs = Object.fromEntries(Object.entries(tensors).filter(([n]) => n.startsWith(prefix)).map(([n, t]) => [n.slice(prefix.length), t]));
    out[`dec/${codec.name}/${key}`] = codec.decode(theirs);
  }
}
await writeFile(output, writeFrame(out, JSON.stringify({ codecs: Object.keys(CODECS) })));

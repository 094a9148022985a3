/** web/src/wire/frame.mjs on its own: strict JSON, round trips, layout, and refusals with useful messages. */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { PayloadTooBig, ProtocolError } from '../src/exceptions.mjs';
import {
  DEFAULT_MAX_MESSAGE_BYTES, MAX_HEADER_BYTES, METADATA_KEY, readFrame, strictJson, writeFrame,
} from '../src/wire/frame.mjs';
import { DTYPES, int64, tensor } from '../src/wire/tensor.mjs';

const badFrame = (pattern) => (err) => err instanceof ProtocolError && err.code === 'bad_frame' && pattern.test(err.message);

/** A blob of `index` (a string or an object, as JSON) and `payload` bytes, length prefix from the index. */
function blob(index, payload = []) {
  const text = new TextEncoder().encode(typeof index === 'string' ? index : JSON.stringify(index));
  const out = new Uint8Array(8 + text.length + payload.length);
  new DataView(out.buffer).setBigUint64(0, BigInt(text.length), true);
  out.set(text, 8);
  out.set(payload, 8 + text.length);
  return out;
}

describe('strictJson', () => {
  it('parses what JSON.parse parses, alike', () => {
    for (const text of ['{"a":[1,-0,2.5e-3,1E+2,true,false,null],"b":{"c":"\\u00e9\\n\\/"}}', ' [ ] ', '"x"', '-12', '{}']) {
      assert.deepEqual(strictJson(text), JSON.parse(text), text);
    }
  });

  it('refuses duplicate keys at any depth, naming the key', () => {
    assert.throws(() => strictJson('{"a":1,"a":1}'), /duplicate key "a"/);
    assert.throws(() => strictJson('[{"x":{"k":1,"k":2}}]'), /duplicate key "k"/);
  });

  it('refuses NaN, Infinity and -Infinity', () => {
    for (const text of ['NaN', '[Infinity]', '{"a":-Infinity}']) assert.throws(() => strictJson(text), /NaN and Infinity are not JSON/, text);
  });

  it('refuses what is not JSON', () => {
    for (const text of ['[1,]', '{"a":1,}', '01', "{'a':1}", '"a\tb"', '"\\x"', '"\\u12"', '[1] 2', '', '\ufeff{}', '[.5]', '[1.]']) {
      assert.throws(() => strictJson(text), SyntaxError, JSON.stringify(text));
    }
  });

  it('refuses integers longer than Python parses and nesting deeper than 1000', () => {
    assert.equal(strictJson('9'.repeat(4300)), Number('9'.repeat(4300)));
    assert.throws(() => strictJson('9'.repeat(4301)), /more than 4300 digits/);
    assert.equal(strictJson(`${'['.repeat(1000)}${']'.repeat(1000)}`).length, 1);
    assert.throws(() => strictJson(`${'['.repeat(1001)}${']'.repeat(1001)}`), /deeper than 1000/);
  });

  it('tells integers from floats with bigints', () => {
    assert.deepEqual(strictJson('[1, 1.0, 1e2, -9007199254740993]', { bigints: true }), [1n, 1, 100, -9007199254740993n]);
  });

  it('keeps "__proto__" as an own key and lone surrogates as Python does', () => {
    const value = strictJson('{"__proto__":{"polluted":1},"s":"\\ud800"}');
    assert.equal(Object.getPrototypeOf(value), Object.prototype);
    assert.deepEqual(Object.keys(value), ['__proto__', 's']);
    assert.equal(value.s, '\ud800');
  });
});

describe('writeFrame / readFrame', () => {
  const tensors = () => Object.fromEntries(Object.entries(DTYPES).map(([dtype, { array }], i) => {
    const data = new array(i + 1);
    for (let k = 0; k < data.length; k++) data[k] = array === BigInt64Array || array === BigUint64Array ? BigInt(k + 1) : k + 1;
    return [`t.${dtype}`, tensor(dtype, [i + 1], data)];
  }));

  it('round-trips every dtype and the header', () => {
    const sent = tensors();
    const { tensors: got, header } = readFrame(writeFrame(sent, 'hé "x"'));
    assert.equal(header, 'hé "x"');
    assert.deepEqual(Object.keys(got).sort(), Object.keys(sent).sort());
    for (const [name, t] of Object.entries(sent)) assert.deepEqual(got[name], t, name);
  });

  it("orders tensors as safetensors does and pads the index with spaces to 8 bytes", () => {
    const f32 = tensor('F32', [1], new Float32Array([1]));
    const bytes = writeFrame({ b: tensor('U8', [3]), '\uffff': f32, '\u{1f600}': f32, a: int64([5]) }, 'h');
    const n = Number(new DataView(bytes.buffer).getBigUint64(0, true));
    assert.equal(n % 8, 0);
    const index = new TextDecoder().decode(bytes.subarray(8, 8 + n));
    assert.match(index, /^\{"__metadata__":\{"mobillm":"h"\},"a":.*,"\uffff":.*,"\u{1f600}":.*,"b":\{"dtype":"U8","shape":\[3\],"data_offsets":\[16,19\]\}\} *$/u);
    assert.equal(bytes.length, 8 + n + 19);
  });

  it('views aligned data and copies unaligned data', () => {
    const bytes = blob({ __metadata__: { mobillm: '' }, u: { dtype: 'U8', shape: [1], data_offsets: [0, 1] },
      f: { dtype: 'F32', shape: [1], data_offsets: [1, 5] } }, [9, ...new Uint8Array(new Float32Array([2.5]).buffer)]);
    const { tensors: got } = readFrame(bytes);
    assert.equal(got.u.data.buffer, bytes.buffer);
    assert.notEqual(got.f.data.buffer, bytes.buffer);
    assert.deepEqual(got.f.data, new Float32Array([2.5]));
  });

  it('reads an ArrayBuffer or a DataView as well as a Uint8Array', () => {
    const bytes = writeFrame({ x: int64([1, 2]) }, 'h');
    assert.equal(readFrame(bytes.buffer).header, 'h');
    assert.equal(readFrame(new DataView(bytes.buffer)).header, 'h');
  });

  it('refuses to write what Python could not', () => {
    assert.throws(() => writeFrame({ x: { dtype: 'F4', shape: [1], data: new Uint8Array(1) } }, ''), /dtype F4 is not one of/);
    assert.throws(() => writeFrame({ x: { dtype: 'F32', shape: [2], data: new Float64Array(2) } }, ''), /needs a Float32Array of 2/);
    assert.throws(() => writeFrame({ x: { dtype: 'U8', shape: [3], data: new Uint8Array(2) } }, ''), /of 2/);
    assert.throws(() => writeFrame({ x: { dtype: 'U8', shape: [1.5], data: new Uint8Array(1) } }, ''), /non-negative integers/);
    assert.throws(() => writeFrame({ '\ud800': tensor('U8', [1]) }, ''), /not valid Unicode/);
    assert.throws(() => writeFrame({}, '\udc00'), /valid Unicode/);
  });
});

describe('readFrame refusals', () => {
  const meta = { __metadata__: { mobillm: '{}' } };

  it('are ProtocolError(bad_frame) saying what is wrong', () => {
    const cases = [
      ['short', new Uint8Array(7), /7 bytes is too short/],
      ['forged length', blob(meta).map((b, i) => (i === 0 ? 200 : b)), /header length 200 does not fit/],
      ['duplicate key', blob('{"__metadata__":{"mobillm":"{}"},"__metadata__":{"mobillm":"{}"}}'), /duplicate key "__metadata__"/],
      ['not an object', blob('[]'), /not a JSON object/],
      ['bad dtype', blob({ ...meta, t: { dtype: 'F4', shape: [0], data_offsets: [0, 0] } }), /tensor "t": malformed entry/],
      ['wrong size', blob({ ...meta, t: { dtype: 'F32', shape: [2], data_offsets: [0, 4] } }, [0, 0, 0, 0]), /offsets out of range/],
      ['overlap', blob({ ...meta, a: { dtype: 'U8', shape: [2], data_offsets: [0, 2] }, b: { dtype: 'U8', shape: [2], data_offsets: [1, 3] } }, [1, 2, 3]), /overlaps or leaves holes/],
      ['uncovered', blob(meta, [1]), /covers 0 of 1 payload bytes/],
      ['no header', blob({ __metadata__: { other: '{}' } }), /no "mobillm" header/],
      ['inherited key', blob({ __metadata__: { toString: 'x' } }), /no "mobillm" header/],
      ['non-string', blob({ __metadata__: { mobillm: '{}', n: 1 } }), /values must be strings/],
    ];
    for (const [name, bytes, pattern] of cases) assert.throws(() => readFrame(bytes), badFrame(pattern), name);
  });

  it('refuses what is not bytes', () => {
    for (const value of ['text', null, [1, 2], 5]) assert.throws(() => readFrame(value), badFrame(/expected bytes/));
  });

  it('raises PayloadTooBig past maxBytes only', () => {
    const bytes = writeFrame({}, 'h');
    assert.equal(readFrame(bytes, { maxBytes: bytes.length }).header, 'h');
    assert.throws(() => readFrame(bytes, { maxBytes: bytes.length - 1 }),
      (err) => err instanceof PayloadTooBig && /message of 40 bytes exceeds the limit of 39 bytes/.test(err.message));
  });
});

it('exports the limits Python uses', () => {
  assert.equal(METADATA_KEY, 'mobillm');
  assert.equal(MAX_HEADER_BYTES, 1 << 20);
  assert.equal(DEFAULT_MAX_MESSAGE_BYTES, 64 << 20);
});

/**
 * web/src/wire/codecs.mjs on its own: the wire layout of each codec, round-trip error bounds, the scalar casts on
 * values numpy / ml_dtypes were seen to give, and the refusals. (Byte identity with np_codecs on large vector sets
 * is tests/test_web_codecs.py.)
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { CodecError } from '../src/exceptions.mjs';
import {
  CODECS, bfloat16ToFloat32Bits, e4m3ToFloat32Bits, float16ToFloat32Bits, float32ToBfloat16Bits,
  float32ToE4m3Bits, float32ToFloat16Bits, getCodec,
} from '../src/wire/codecs.mjs';
import { int64, tensor } from '../src/wire/tensor.mjs';

const bits = (x) => new Uint32Array(Float32Array.of(x).buffer)[0];
const float = (u) => new Float32Array(Uint32Array.of(u).buffer)[0];
const f32 = (shape, values) => tensor('F32', shape, Float32Array.from(values));

/** A deterministic (rows, cols) tensor of roughly normal values. */
function sample(rows, cols, seed = 1) {
  let s = seed;
  const next = () => ((s = (s * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
  return f32([rows, cols], Array.from({ length: rows * cols }, () => (next() + next() + next() - 1.5) * 2));
}

describe('wire layout', () => {
  const layouts = {
    none: { data: ['F32', [300]] },
    fp16: { data: ['F16', [300]] },
    bf16: { data: ['BF16', [300]] },
    fp8: { data: ['F8_E4M3', [300]], scale: ['F32', [3]] },
    int8: { data: ['I8', [300]], scale: ['F32', [3]] },
    fp4: { data: ['U8', [150]], absmax: ['F32', [5]] },
    nf4: { data: ['U8', [150]], absmax: ['F32', [5]] },
  };
  for (const [name, fields] of Object.entries(layouts)) {
    it(`${name}: shape, then its fields, with np_codecs' dtypes and shapes`, () => {
      const encoded = getCodec(name).encode(sample(3, 100));
      assert.deepEqual(Object.keys(encoded), ['shape', ...Object.keys(fields)]);
      assert.deepEqual(encoded.shape, int64([3, 100]));
      for (const [field, [dtype, shape]] of Object.entries(fields)) {
        assert.deepEqual([encoded[field].dtype, encoded[field].shape], [dtype, shape], field);
      }
    });
  }
});

describe('round trips', () => {
  const x = sample(4, 96);
  const maxError = (name) => {
    const y = getCodec(name).decode(getCodec(name).encode(x));
    assert.deepEqual(y.shape, x.shape);
    return Math.max(...x.data.map((v, i) => Math.abs(v - y.data[i]) / Math.max(Math.abs(v), 1e-30)));
  };

  it('none is exact and does not alias its input', () => {
    const encoded = getCodec('none').encode(x);
    assert.notEqual(encoded.data.data.buffer, x.data.buffer);
    assert.equal(maxError('none'), 0);
  });

  it('fp16 and bf16 are within half an ulp of their precision', () => {
    assert.ok(maxError('fp16') <= 2 ** -11);
    assert.ok(maxError('bf16') <= 2 ** -8);
  });

  it('int8, fp8 and the 4-bit codecs are within their step of each row or block', () => {
    for (const [name, step] of [['int8', 1 / 127], ['fp8', 1 / 8], ['nf4', 0.17], ['fp4', 0.34]]) {
      const y = getCodec(name).decode(getCodec(name).encode(x)).data;
      const absmax = Math.max(...x.data.map(Math.abs));
      const worst = Math.max(...x.data.map((v, i) => Math.abs(v - y[i])));
      assert.ok(worst > 0 && worst <= step * absmax, `${name}: ${worst}`);
    }
  });

  it('an all-zero row has scale 0 and decodes to zeros', () => {
    for (const name of ['int8', 'fp8', 'nf4']) {
      const zeros = f32([2, 64], new Float32Array(128));
      const encoded = getCodec(name).encode(zeros);
      assert.deepEqual(Array.from(encoded.scale?.data ?? encoded.absmax.data), [0, 0], name);
      assert.deepEqual(getCodec(name).decode(encoded), zeros, name);
    }
  });
});

describe('rounding as numpy', () => {
  it('int8 rounds halves to even', () => {
    const encoded = getCodec('int8').encode(f32([6], [127, 0.5, 1.5, 2.5, -0.5, -2.5]));
    assert.deepEqual(Array.from(encoded.data.data), [127, 0, 2, 2, 0, -2]);
  });

  it('the 4-bit codecs pad an odd count with the code of zero', () => {
    assert.deepEqual(Array.from(getCodec('nf4').encode(f32([1], [1])).data.data), [0xf7]); // 1 -> 15, 0 -> 7
    assert.deepEqual(Array.from(getCodec('fp4').encode(f32([1], [-1])).data.data), [0xb0]); // -1 -> 11, 0 -> 0
  });

  it('fp16 as numpy: nearest even, overflow to inf, subnormals, NaN payloads', () => {
    const cases = [[0x7f800001, 0x7c01], [0xffc00123, 0xfe00], [bits(65519.99), 0x7bff], [bits(65520), 0x7c00],
      [bits(2 ** -25), 0], [bits(3 * 2 ** -26), 1], [bits(-1e-8), 0x8000], [bits(Infinity), 0x7c00], [bits(1 + 2 ** -11), 0x3c00]];
    for (const [u, h] of cases) assert.equal(float32ToFloat16Bits(u), h, u.toString(16));
  });

  it('bf16 and e4m3 as ml_dtypes: nearest even; NaN; e4m3 overflow to NaN', () => {
    const bf16 = [[0x7f800001, 0x7fc0], [0xffc00123, 0xffc0], [bits(464), 0x43e8], [bits(1e30), 0x714a], [bits(2 ** -10 * 1.01), 0x3a81]];
    for (const [u, h] of bf16) assert.equal(float32ToBfloat16Bits(u), h, u.toString(16));
    const e4m3 = [[464, 0x7e], [465, 0x7f], [-500, 0xff], [Infinity, 0x7f], [-Infinity, 0xff], [2 ** -10, 0],
      [2 ** -10 * 1.01, 1], [3 * 2 ** -11, 1], [2 ** -9 * 7.5, 8], [448, 0x7e], [-0, 0x80]];
    for (const [x, b] of e4m3) assert.equal(float32ToE4m3Bits(bits(x)), b, String(x));
    assert.equal(float32ToE4m3Bits(0x7fc00000), 0x7f);
  });

  it('every finite 16-bit and 8-bit value survives a cast to float32 and back', () => {
    for (let h = 0; h < 0x10000; h++) {
      if ((h & 0x7c00) !== 0x7c00) assert.equal(float32ToFloat16Bits(float16ToFloat32Bits(h)), h);
      if ((h & 0x7f80) !== 0x7f80) assert.equal(float32ToBfloat16Bits(bfloat16ToFloat32Bits(h)), h);
    }
    for (let b = 0; b < 256; b++) {
      if ((b & 0x7f) !== 0x7f) assert.equal(float32ToE4m3Bits(e4m3ToFloat32Bits(b)), b);
    }
    assert.ok(Number.isNaN(float(e4m3ToFloat32Bits(0xff))));
    assert.equal(float(float16ToFloat32Bits(1)), 2 ** -24);
  });
});

describe('refusals', () => {
  it('an unknown codec names the known ones', () => {
    assert.throws(() => getCodec('int3'), (err) => err instanceof CodecError
      && err.message === `unknown codec "int3"; valid codecs: ${Object.keys(CODECS).join(', ')}`);
    assert.throws(() => getCodec('toString'), CodecError);
  });

  it('encodes F32 tensors of 1..8 dims only', () => {
    const codec = getCodec('nf4');
    assert.throws(() => codec.encode(int64([1, 2])), /encodes F32 tensors \(a Float32Array\), got I64/);
    assert.throws(() => codec.encode(f32([], [1])), /1\.\.8 dims, got 0/);
    assert.throws(() => codec.encode(f32(Array(9).fill(1), [1])), /1\.\.8 dims, got 9/);
    assert.throws(() => codec.encode({ dtype: 'F32', shape: [3], data: new Float32Array(2) }), /holds 2 elements, not 3/);
  });
});

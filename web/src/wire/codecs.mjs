/**
 * Every activation codec of src/mobillm/wire/np_codecs.py: `encode` writes the same wire tensors — names, dtypes,
 * shapes and bytes — as the Python device, so the server cannot tell the two devices apart; `decode` is the local
 * round trip, equal to np_codecs' decode, and like it trusts its input (it is this device's own encoding).
 *
 * Bit-exactness: every step numpy does in float32 is a double operation rounded with Math.fround (or a store
 * into a Float32Array), which for one +, -, *, / gives the float32 result exactly (a double has more than twice
 * float32's precision, so the double rounding is harmless). The casts to float16, bfloat16 and float8 e4m3fn
 * work on the float32 bits, round to nearest even and treat overflow, subnormals and NaN as numpy and ml_dtypes do.
 */
import { CodecError } from '../exceptions.mjs';
import { int64, numel, tensor } from './tensor.mjs';

/** The most dimensions a codec encodes (wire/codec_tables.py). */
export const MAX_NDIM = 8;
/** The most elements a codec encodes (wire/codec_tables.py): every index stays within int32. */
export const MAX_ELEMENTS = 2 ** 31 - 1;
/** Elements per absmax block of the 4-bit codecs. */
export const BLOCK_4BIT = 64;

/** NF4 (QLoRA): code i -> value NF4_CODE[i] (bitsandbytes' get_4bit_type("nf4"), as wire/codec_tables.py). */
export const NF4_CODE = Object.freeze([
  -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
  -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
  0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
]);
/** FP4 (1 sign, 2 exponent, 1 mantissa bit) in bit-pattern order before normalisation by 12; code 8 is -0. */
export const FP4_CODE = Object.freeze([0, 0.0625, 8, 12, 4, 6, 2, 3, -0, -0.0625, -8, -12, -4, -6, -2, -3]);
/** FP4 codes in increasing value order, ties (+0 before -0) broken as bitsandbytes' argsort breaks them. */
export const FP4_ORDER = Object.freeze([11, 10, 13, 12, 15, 14, 9, 0, 8, 1, 6, 7, 4, 5, 2, 3]);

const f32 = Math.fround;

/** The shared part of every codec: input checks and the `shape` field; subclasses fill in the rest. */
class Codec {
  /** @param {string} name */
  constructor(name) {
    this.name = name;
  }

  /**
   * `x` (an F32 tensor of 1..8 dims) -> `{shape: I64 [ndim], <fields>...}`, the tensors np_codecs writes.
   * @param {{dtype: string, shape: number[], data: Float32Array}} x
   * @returns {Object<string, {dtype: string, shape: number[], data: ArrayBufferView}>}
   */
  encode(x) {
    if (x?.dtype !== 'F32' || !(x.data instanceof Float32Array)) {
      throw new CodecError(`codec ${JSON.stringify(this.name)} encodes F32 tensors (a Float32Array), got ${x?.dtype}`);
    }
    if (!(x.shape.length >= 1 && x.shape.length <= MAX_NDIM)) {
      throw new CodecError(`codec ${JSON.stringify(this.name)} encodes tensors with 1..${MAX_NDIM} dims, got ${x.shape.length}`);
    }
    const n = numel(x.shape);
    if (n > MAX_ELEMENTS) throw new CodecError(`tensor of ${n} elements exceeds the limit of ${MAX_ELEMENTS}`);
    if (x.data.length !== n) throw new CodecError(`tensor of shape [${x.shape}] holds ${x.data.length} elements, not ${n}`);
    return { shape: int64(x.shape), ...this.encodeData(x.data, x.shape) };
  }

  /**
   * The F32 tensor of the original shape, as np_codecs' decode gives it (from this device's own encode: not
   * validated).
   * @param {Object<string, {data: ArrayBufferView}>} encoded
   * @returns {{dtype: 'F32', shape: number[], data: Float32Array}}
   */
  decode(encoded) {
    const shape = Array.from(encoded.shape.data, Number);
    return tensor('F32', shape, this.decodeData(encoded, shape));
  }
}

/** A plain cast of every element: none (float32), fp16, bf16. */
class Cast extends Codec {
  constructor(name, dtype, encodeBits, decodeBits) {
    super(name);
    this.dtype = dtype;
    this.encodeBits = encodeBits;
    this.decodeBits = decodeBits;
  }

  encodeData(x) {
    if (this.dtype === 'F32') return { data: tensor('F32', [x.length], x.slice()) };
    const bits = new Uint32Array(x.buffer, x.byteOffset, x.length);
    const out = new Uint16Array(x.length);
    const { encodeBits } = this;
    for (let i = 0; i < out.length; i++) out[i] = encodeBits(bits[i]);
    return { data: tensor(this.dtype, [x.length], out) };
  }

  decodeData(encoded) {
    const { data } = encoded.data;
    if (this.dtype === 'F32') return data.slice();
    const out = new Float32Array(data.length);
    const bits = new Uint32Array(out.buffer);
    const { decodeBits } = this;
    for (let i = 0; i < data.length; i++) bits[i] = decodeBits(data[i]);
    return out;
  }
}

/** float32 bits -> float16 bits as numpy's cast: nearest even, overflow to inf, NaN kept with its top payload bits. */
export function float32ToFloat16Bits(u) {
  const sign = (u >>> 16) & 0x8000;
  const exp = (u >>> 23) & 0xff;
  const mant = u & 0x7fffff;
  if (exp === 0xff) { // inf, or NaN: 0x7c00 plus the payload's top bits, never 0x7c00 itself (that is inf)
    const half = 0x7c00 + (mant >>> 13);
    return sign | (mant !== 0 && half === 0x7c00 ? 0x7c01 : half);
  }
  if (exp >= 143) return sign | 0x7c00; // |x| >= 2^16: inf
  if (exp >= 113) { // a normal float16, unless rounding carries into the exponent (then inf, correctly)
    const abs = u & 0x7fffffff;
    return sign | ((abs - (112 << 23) + 0xfff + ((abs >>> 13) & 1)) >>> 13);
  }
  if (exp < 102) return sign; // below 2^-24 / 2: zero
  return sign | roundShift(mant | 0x800000, 126 - exp); // a subnormal float16, in units of 2^-24
}

/** `m / 2^shift` rounded to nearest, ties to even (1 <= shift <= 30). */
function roundShift(m, shift) {
  const q = m >>> shift;
  const rest = m - q * 2 ** shift;
  const half = 2 ** (shift - 1);
  return rest > half || (rest === half && (q & 1)) ? q + 1 : q;
}

/** float16 bits -> float32 bits (exact; NaN payloads kept). */
export function float16ToFloat32Bits(h) {
  const sign = (h & 0x8000) << 16;
  const exp = (h >>> 10) & 0x1f;
  const mant = h & 0x3ff;
  if (exp === 0x1f) return (sign | 0x7f800000 | (mant << 13)) >>> 0;
  if (exp !== 0) return (sign | ((exp + 112) << 23) | (mant << 13)) >>> 0;
  if (mant === 0) return sign >>> 0;
  const shift = Math.clz32(mant) - 21; // normalise the subnormal: its leading 1 to bit 10
  return (sign | ((113 - shift) << 23) | (((mant << shift) & 0x3ff) << 13)) >>> 0;
}

/** float32 bits -> bfloat16 bits as ml_dtypes: nearest even (overflow to inf), NaN -> the quiet NaN of its sign. */
export function float32ToBfloat16Bits(u) {
  if ((u & 0x7fffffff) > 0x7f800000) return ((u >>> 16) & 0x8000) | 0x7fc0;
  return (u + 0x7fff + ((u >>> 16) & 1)) >>> 16;
}

/** bfloat16 bits -> float32 bits (exact). */
export function bfloat16ToFloat32Bits(h) {
  return (h << 16) >>> 0;
}

/** float32 bits -> float8 e4m3fn bits as ml_dtypes: nearest even; NaN and anything above 464 -> NaN (0x7f). */
export function float32ToE4m3Bits(u) {
  const sign = (u >>> 24) & 0x80;
  const abs = u & 0x7fffffff;
  if (abs > 0x7f800000) return sign | 0x7f;
  const exp = abs >>> 23;
  if (exp >= 121) { // a normal e4m3 (2^-6 and up)
    const code = ((abs + 0x7ffff + ((abs >>> 20) & 1)) >>> 20) - (120 << 3);
    return sign | (code > 0x7e ? 0x7f : code); // past 448: no inf in e4m3fn, so NaN
  }
  if (exp < 117) return sign; // below 2^-9 / 2, or exactly half (ties to even): zero
  return sign | roundShift((abs & 0x7fffff) | 0x800000, 141 - exp); // a subnormal, in units of 2^-9
}

/** float8 e4m3fn bits -> float32 bits (exact). */
export function e4m3ToFloat32Bits(b) {
  const sign = (b & 0x80) << 24;
  const exp = (b >>> 3) & 0xf;
  const mant = b & 7;
  if (exp === 0xf && mant === 7) return (sign | 0x7fc00000) >>> 0;
  const value = exp === 0 ? mant * 2 ** -9 : (8 + mant) * 2 ** (exp - 10);
  return (sign | new Uint32Array(Float32Array.of(value).buffer)[0]) >>> 0;
}

/** 8-bit codes with one float32 scale per row (the last dimension): scale = absmax / qmax. */
class RowScaled extends Codec {
  constructor(name, dtype, qmax, toCode, fromCode) {
    super(name);
    this.dtype = dtype;
    this.qmax = qmax;
    this.toCode = toCode;
    this.fromCode = fromCode;
  }

  encodeData(x, shape) {
    const cols = shape.at(-1);
    const rows = cols === 0 ? numel(shape.slice(0, -1)) : x.length / cols;
    const { qmax, toCode } = this;
    const scale = new Float32Array(rows);
    const scaled = new Float32Array(cols); // one row of clipped x / scale, in float32
    const scaledBits = new Uint32Array(scaled.buffer);
    const out = this.dtype === 'I8' ? new Int8Array(x.length) : new Uint8Array(x.length);
    for (let r = 0, base = 0; r < rows; r++, base += cols) {
      const absmax = absMax(x, base, base + cols);
      const s = f32(absmax / qmax);
      const safe = s > 0 ? s : 1;
      scale[r] = s;
      for (let j = 0; j < cols; j++) {
        const v = f32(x[base + j] / safe);
        scaled[j] = v > qmax ? qmax : v < -qmax ? -qmax : v;
      }
      for (let j = 0; j < cols; j++) out[base + j] = toCode(scaled[j], scaledBits[j]);
    }
    return { data: tensor(this.dtype, [x.length], out), scale: tensor('F32', [rows], scale) };
  }

  decodeData(encoded, shape) {
    const { data } = encoded.data;
    const scale = encoded.scale.data;
    const cols = shape.at(-1);
    const out = new Float32Array(data.length);
    const { fromCode } = this;
    for (let i = 0; i < data.length; i++) out[i] = fromCode(data[i]) * scale[(i / cols) | 0];
    return out;
  }
}

/** max |x[start:end]| in float32, NaN if any element is NaN (as numpy's max); 0 for an empty range. */
function absMax(x, start, end) {
  let m = 0;
  for (let i = start; i < end; i++) {
    const a = Math.abs(x[i]);
    if (a > m || a !== a) m = a;
    if (m !== m) break;
  }
  return m;
}

/** numpy's rint: nearest integer, ties to even (Math.round rounds ties up). */
function rint(v) {
  const r = Math.round(v);
  return r - v === 0.5 && (r & 1) !== 0 ? r - 1 : r;
}

const E4M3_TO_FLOAT = (() => {
  const table = new Float32Array(256);
  const bits = new Uint32Array(table.buffer);
  for (let b = 0; b < 256; b++) bits[b] = e4m3ToFloat32Bits(b);
  return table;
})();

/** bitsandbytes' 4-bit layout: flat blocks of 64, a float32 absmax per block, two codes per byte (high nibble first). */
class Block4bit extends Codec {
  constructor(name, code, order) {
    super(name);
    const top = Math.max(...code.map((c) => Math.abs(f32(c))));
    this.table = Float32Array.from(code, (c) => f32(f32(c) / top));
    const ordered = order.map((i) => this.table[i]);
    this.bounds = Float64Array.from(ordered.slice(1), (b, i) => f32(f32(ordered[i] + b) / 2));
    this.order = Uint8Array.from(order);
    this.guess = Uint8Array.from({ length: 2 * GUESS_STEPS + 1 }, (_, k) => this.bounds.filter((x) => x < k / GUESS_STEPS - 1).length);
  }

  encodeData(x) {
    const n = x.length;
    const nblocks = Math.ceil(n / BLOCK_4BIT);
    const absmax = new Float32Array(nblocks);
    const packed = new Uint8Array((n + 1) >> 1);
    const scaled = new Float32Array(BLOCK_4BIT);
    for (let b = 0, start = 0; b < nblocks; b++, start += BLOCK_4BIT) {
      const end = Math.min(start + BLOCK_4BIT, n);
      const m = absMax(x, start, end);
      absmax[b] = m;
      const clamped = m < TINY ? TINY : m; // np.maximum: a NaN absmax stays NaN
      // np_codecs' float ops: a full block times the reciprocal, a short last block divided
      if (end - start === BLOCK_4BIT) {
        const inv = f32(1 / clamped);
        for (let j = 0; j < BLOCK_4BIT; j++) scaled[j] = x[start + j] * inv;
      } else {
        scaled.fill(0 / clamped); // the zero padding: an odd count's last byte holds its code
        for (let j = 0; j < end - start; j++) scaled[j] = x[start + j] / clamped;
      }
      const bytes = (end - start + 1) >> 1;
      for (let j = 0, at = start >> 1; j < bytes; j++, at++) packed[at] = (this.codeOf(scaled[2 * j]) << 4) | this.codeOf(scaled[2 * j + 1]);
    }
    return { data: tensor('U8', [packed.length], packed), absmax: tensor('F32', [nblocks], absmax) };
  }

  /**
   * The code of the scaled value `v`: clipped to [-1, 1], then numpy's searchsorted(bounds, v, side='left') — the
   * number of bounds below v, a NaN counting as above them all — through the value order. A table of that count
   * at 1/GUESS_STEPS steps of [-1, 1] gives a guess that two exact comparisons confirm (unpredictable branches of
   * a binary search cost more than the arithmetic here).
   */
  codeOf(v) {
    const { bounds: b, guess, order } = this;
    const c = v > 1 ? 1 : v < -1 ? -1 : v;
    let i = guess[((c + 1) * GUESS_STEPS) | 0]; // a NaN: guess[0], and the first loop runs to 15
    while (i < 15 && !(b[i] >= c)) i++;
    while (i > 0 && b[i - 1] >= c) i--;
    return order[i];
  }

  decodeData(encoded, shape) {
    const { data } = encoded.data;
    const absmax = encoded.absmax.data;
    const n = numel(shape);
    const { table } = this;
    const out = new Float32Array(n);
    for (let i = 0, b = 0; i < n; b++) {
      const scale = absmax[b];
      for (const end = Math.min(i + BLOCK_4BIT, n); i < end; i++) {
        const byte = data[i >> 1];
        out[i] = table[i & 1 ? byte & 0xf : byte >> 4] * scale;
      }
    }
    return out;
  }
}

const TINY = f32(1e-38);
const GUESS_STEPS = 512;

/** Every codec by name, in np_codecs' order. */
export const CODECS = Object.freeze(Object.fromEntries([
  new Cast('none', 'F32'),
  new Cast('fp16', 'F16', float32ToFloat16Bits, float16ToFloat32Bits),
  new Cast('bf16', 'BF16', float32ToBfloat16Bits, bfloat16ToFloat32Bits),
  new RowScaled('fp8', 'F8_E4M3', 448, (_, bits) => float32ToE4m3Bits(bits), (code) => E4M3_TO_FLOAT[code]),
  new RowScaled('int8', 'I8', 127, (v) => rint(v), (code) => code),
  new Block4bit('fp4', FP4_CODE, FP4_ORDER),
  new Block4bit('nf4', NF4_CODE, NF4_CODE.map((_, i) => i)),
].map((codec) => [codec.name, codec])));

/**
 * The codec registered as `name`; an unknown name is a CodecError listing the choices.
 * @param {string} name
 * @returns {Codec}
 */
export function getCodec(name) {
  if (!Object.hasOwn(CODECS, name)) {
    throw new CodecError(`unknown codec ${JSON.stringify(name)}; valid codecs: ${Object.keys(CODECS).join(', ')}`);
  }
  return CODECS[name];
}

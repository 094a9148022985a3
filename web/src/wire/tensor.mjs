/**
 * A tensor as the web device holds it: `{dtype, shape, data}` with `dtype` a safetensors dtype name (the wire's
 * names: "F32", "I64", "U8", ...), `shape` an array of non-negative integers and `data` a typed array of
 * exactly prod(shape) elements of that dtype's element type. 16-bit floats (F16, BF16) are held as their raw
 * bits in a Uint16Array and the 8-bit floats (F8_E4M3, F8_E5M2) in a Uint8Array, as their bytes go on the wire.
 *
 * Typed arrays use the platform's byte order; every engine the web device runs on is little-endian, as the wire is
 * (`assertLittleEndian` refuses any other).
 */

/** Element type and byte size of each dtype allowed on the wire (wire/frame.py's DTYPE_SIZES). */
export const DTYPES = Object.freeze({
  BOOL: { size: 1, array: Uint8Array },
  U8: { size: 1, array: Uint8Array },
  I8: { size: 1, array: Int8Array },
  F8_E4M3: { size: 1, array: Uint8Array },
  F8_E5M2: { size: 1, array: Uint8Array },
  U16: { size: 2, array: Uint16Array },
  I16: { size: 2, array: Int16Array },
  F16: { size: 2, array: Uint16Array },
  BF16: { size: 2, array: Uint16Array },
  U32: { size: 4, array: Uint32Array },
  I32: { size: 4, array: Int32Array },
  F32: { size: 4, array: Float32Array },
  U64: { size: 8, array: BigUint64Array },
  I64: { size: 8, array: BigInt64Array },
  F64: { size: 8, array: Float64Array },
});

/** The number of elements of `shape`. */
export function numel(shape) {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

/** A tensor of `dtype` and `shape` over `data` (a typed array of the dtype's element type; zeros when omitted). */
export function tensor(dtype, shape, data) {
  const info = DTYPES[dtype];
  if (info === undefined) throw new TypeError(`unknown dtype ${dtype}; the wire allows ${Object.keys(DTYPES).join(', ')}`);
  const n = numel(shape);
  const values = data ?? new info.array(n);
  if (!(values instanceof info.array)) {
    throw new TypeError(`${dtype} data must be a ${info.array.name}, got ${values?.constructor?.name}`);
  }
  if (values.length !== n) throw new RangeError(`${dtype} tensor of shape [${shape}] needs ${n} elements, got ${values.length}`);
  return { dtype, shape: [...shape], data: values };
}

/** The bytes of a tensor's data (a view, no copy). */
export function tensorBytes(t) {
  return new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength);
}

/** An int64 tensor of `values` (numbers or bigints), shape [n] unless given. */
export function int64(values, shape = [values.length]) {
  return tensor('I64', shape, BigInt64Array.from(values, (v) => BigInt(v)));
}

let littleEndian;
/** Throws on a big-endian platform (the wire is little-endian and tensors are viewed, not byte-swapped). */
export function assertLittleEndian() {
  littleEndian ??= new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;
  if (!littleEndian) throw new Error('the mobillm web device needs a little-endian platform');
}

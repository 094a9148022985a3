/**
 * The frame, as src/mobillm/wire/frame.py: one safetensors blob — `u64 LE length N | N bytes of JSON index |
 * tensor bytes` — whose metadata holds the message header as a JSON string under METADATA_KEY.
 *
 * `readFrame` checks untrusted bytes exactly as the Python side does (docs/protocol.md §2, checks 1-7: lengths,
 * JSON without duplicate keys or constants, allowed dtypes, exact and contiguous data spans, the metadata), plus
 * what safetensors itself refuses there (lone surrogates, a shape whose running product overflows 64 bits);
 * `writeFrame` is its inverse and writes exactly the bytes of Python's `write_frame` for the same tensors.
 * What the header *says* is the business of the messages module.
 */
import { PayloadTooBig, ProtocolError } from '../exceptions.mjs';
import { DTYPES, assertLittleEndian, numel, tensorBytes } from './tensor.mjs';
import './errors.mjs'; // registers the error codes ProtocolError accepts

/** The safetensors metadata key holding the message header. */
export const METADATA_KEY = 'mobillm';
/** The largest safetensors JSON header accepted (tensor index + our header); a forged length stops here. */
export const MAX_HEADER_BYTES = 1 << 20;
/** The largest message either side accepts unless told otherwise (64 MiB, as Python's). */
export const DEFAULT_MAX_MESSAGE_BYTES = 64 * 2 ** 20;

const BAD_FRAME = 'bad_frame';
/** The most objects and arrays `strictJson` nests (Python's json gives up near its recursion limit of 1000). */
const MAX_JSON_DEPTH = 1000;
/** Python refuses to parse an int of more than 4300 digits (sys.get_int_max_str_digits()); so does strictJson. */
const MAX_INT_DIGITS = 4300;
const U64_MAX = (1n << 64n) - 1n;

/**
 * Order of the dtypes in safetensors' `Dtype` enum: `save` writes tensors by descending rank (largest alignment
 * first), then by name in UTF-8 byte order.
 */
const DTYPE_RANK = Object.freeze(Object.fromEntries(
  ['BOOL', 'U8', 'I8', 'F8_E5M2', 'F8_E4M3', 'I16', 'U16', 'F16', 'BF16', 'I32', 'U32', 'F32', 'F64', 'I64', 'U64']
    .map((dtype, rank) => [dtype, rank]),
));

const utf8 = new TextEncoder();
const strictUtf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

// -- strict JSON ---------------------------------------------------------------------------------------------

/**
 * Parse `text` as Python's `strict_json` does: standard JSON refusing duplicate keys (JSON.parse keeps the last
 * one silently) and NaN/Infinity. Throws SyntaxError naming the problem and its position.
 *
 * Numbers are Numbers, as JSON.parse gives them; with `{bigints: true}` every integer literal (no fraction, no
 * exponent) is a BigInt instead, so a caller can tell `1` from `1.0` and read any integer exactly, as Python does.
 * Lone surrogate escapes (`"\ud800"`) are kept, as Python keeps them.
 * @param {string} text
 * @param {{bigints?: boolean}} [options]
 * @returns {any}
 */
export function strictJson(text, { bigints = false } = {}) {
  if (typeof text !== 'string') throw new TypeError(`strictJson parses a string, got ${typeof text}`);
  return new JsonParser(text, bigints).document();
}

class JsonParser {
  constructor(text, bigints) {
    this.text = text;
    this.bigints = bigints;
    this.i = 0;
  }

  fail(what) {
    throw new SyntaxError(`${what} at position ${this.i}`);
  }

  document() {
    const value = this.value(0);
    this.skipSpace();
    if (this.i !== this.text.length) this.fail('extra data after the JSON value');
    return value;
  }

  skipSpace() {
    const { text } = this;
    let c = text.charCodeAt(this.i);
    while (c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09) c = text.charCodeAt(++this.i);
  }

  value(depth) {
    this.skipSpace();
    const { text, i } = this;
    const c = text.charCodeAt(i);
    if ((c === 0x7b || c === 0x5b) && depth >= MAX_JSON_DEPTH) this.fail(`JSON nested deeper than ${MAX_JSON_DEPTH} levels`);
    if (c === 0x7b) return this.object(depth);
    if (c === 0x5b) return this.array(depth);
    if (c === 0x22) return this.string();
    if (c === 0x2d || (c >= 0x30 && c <= 0x39)) return this.number();
    for (const [word, value] of [['true', true], ['false', false], ['null', null]]) {
      if (text.startsWith(word, i)) {
        this.i += word.length;
        return value;
      }
    }
    if (text.startsWith('NaN', i) || text.startsWith('Infinity', i)) this.fail('NaN and Infinity are not JSON');
    this.fail(Number.isNaN(c) ? 'unexpected end of JSON' : `unexpected character ${JSON.stringify(text[i])}`);
  }

  object(depth) {
    const out = {};
    this.i++;
    this.skipSpace();
    if (this.text.charCodeAt(this.i) === 0x7d) {
      this.i++;
      return out;
    }
    for (;;) {
      this.skipSpace();
      if (this.text.charCodeAt(this.i) !== 0x22) this.fail('expected a string key');
      const key = this.string();
      if (Object.hasOwn(out, key)) this.fail(`duplicate key ${JSON.stringify(key.slice(0, 80))}`);
      this.skipSpace();
      if (this.text.charCodeAt(this.i) !== 0x3a) this.fail("expected ':'");
      this.i++;
      // defineProperty, not assignment: a key "__proto__" is an own property, as JSON.parse makes it
      Object.defineProperty(out, key, { value: this.value(depth + 1), enumerable: true, writable: true, configurable: true });
      if (this.endOf(0x7d)) return out;
    }
  }

  array(depth) {
    const out = [];
    this.i++;
    this.skipSpace();
    if (this.text.charCodeAt(this.i) === 0x5d) {
      this.i++;
      return out;
    }
    for (;;) {
      out.push(this.value(depth + 1));
      if (this.endOf(0x5d)) return out;
    }
  }

  /** After a member: true at the closing bracket `close`, false after a comma; anything else is an error. */
  endOf(close) {
    this.skipSpace();
    const c = this.text.charCodeAt(this.i++);
    if (c === close) return true;
    if (c === 0x2c) return false;
    this.i--;
    return this.fail(`expected ',' or '${String.fromCharCode(close)}'`);
  }

  string() {
    const { text } = this;
    let out = '';
    let start = ++this.i;
    for (;;) {
      const c = text.charCodeAt(this.i);
      if (c === 0x22) {
        out += text.slice(start, this.i++);
        return out;
      }
      if (c === 0x5c) {
        out += text.slice(start, this.i) + this.escape();
        start = this.i;
      } else if (c < 0x20) {
        this.fail('control character in a string');
      } else if (Number.isNaN(c)) {
        this.fail('unterminated string');
      } else {
        this.i++;
      }
    }
  }

  escape() {
    const c = this.text[this.i + 1];
    const simple = { '"': '"', '\\': '\\', '/': '/', b: '\b', f: '\f', n: '\n', r: '\r', t: '\t' }[c];
    if (simple !== undefined) {
      this.i += 2;
      return simple;
    }
    const hex = this.text.slice(this.i + 2, this.i + 6);
    if (c !== 'u' || !/^[0-9a-fA-F]{4}$/.test(hex)) this.fail('invalid escape in a string');
    this.i += 6;
    return String.fromCharCode(parseInt(hex, 16));
  }

  number() {
    NUMBER.lastIndex = this.i;
    const literal = NUMBER.exec(this.text)?.[0];
    if (literal === undefined) {
      if (this.text.startsWith('-Infinity', this.i)) this.fail('NaN and Infinity are not JSON');
      this.fail('invalid number');
    }
    this.i += literal.length;
    const integer = !/[.eE]/.test(literal);
    if (integer && literal.length - (literal[0] === '-') > MAX_INT_DIGITS) {
      this.fail(`integer of more than ${MAX_INT_DIGITS} digits`);
    }
    return integer && this.bigints ? BigInt(literal) : Number(literal);
  }
}

const NUMBER = /-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][-+]?\d+)?/y;

// -- reading -------------------------------------------------------------------------------------------------

/**
 * The tensors and the header text of untrusted bytes. Throws PayloadTooBig past `maxBytes` and
 * ProtocolError('bad_frame') for anything that is not one well-formed blob with a header.
 *
 * Each tensor's data is a view on `data` where its offset suits its element size (a frame from safetensors:
 * always), else a copy; the caller must not overwrite `data` while views on it are in use.
 * @param {Uint8Array | ArrayBuffer | DataView} data
 * @param {{maxBytes?: number}} [options]
 * @returns {{tensors: Object<string, {dtype: string, shape: number[], data: ArrayBufferView}>, header: string}}
 */
export function readFrame(data, { maxBytes } = {}) {
  assertLittleEndian();
  const bytes = asBytes(data);
  if (maxBytes != null && bytes.length > maxBytes) {
    throw new PayloadTooBig(`message of ${bytes.length.toLocaleString('en-US')} bytes exceeds the limit of `
      + `${maxBytes.toLocaleString('en-US')} bytes`);
  }
  const { index, headerEnd } = readIndex(bytes);
  const payload = bytes.length - headerEnd;
  const entries = checkTensors(index, payload);
  const header = checkMetadata(index.__metadata__);
  // fromEntries, not assignment: a tensor named "__proto__" is an own entry like any other
  const tensors = Object.fromEntries(entries.map(([name, entry]) => [name, viewTensor(bytes, headerEnd, entry)]));
  return { tensors, header };
}

function asBytes(data) {
  if (data instanceof Uint8Array) return data;
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  throw new ProtocolError(BAD_FRAME, `expected bytes, got ${data === null ? 'null' : data?.constructor?.name ?? typeof data}`);
}

/** Checks 2-3: the length prefix and a JSON object header. */
function readIndex(bytes) {
  if (bytes.length < 8) throw new ProtocolError(BAD_FRAME, `${bytes.length} bytes is too short for a safetensors blob`);
  const n = new DataView(bytes.buffer, bytes.byteOffset, 8).getBigUint64(0, true);
  if (n < 2n || n > BigInt(bytes.length - 8) || n > BigInt(MAX_HEADER_BYTES)) {
    throw new ProtocolError(BAD_FRAME, `safetensors header length ${n} does not fit a ${bytes.length}-byte blob `
      + `(limit ${MAX_HEADER_BYTES})`);
  }
  const headerEnd = 8 + Number(n);
  let index;
  try {
    index = strictJson(strictUtf8.decode(bytes.subarray(8, headerEnd)), { bigints: true });
  } catch (err) {
    throw new ProtocolError(BAD_FRAME, `the safetensors header is not valid UTF-8 JSON without duplicate keys (${err.message})`);
  }
  if (!isObject(index)) throw new ProtocolError(BAD_FRAME, 'the safetensors header is not a JSON object');
  return { index, headerEnd };
}

/** Checks 4-5 and safetensors' own: each entry's shape and span, and spans tiling the payload exactly. */
function checkTensors(index, payload) {
  const entries = [];
  for (const [name, info] of Object.entries(index)) {
    if (name === '__metadata__') continue;
    const label = JSON.stringify(name.slice(0, 80));
    if (!name.isWellFormed()) throw new ProtocolError(BAD_FRAME, `tensor ${label}: the name is not valid Unicode`);
    if (!wellFormedEntry(info)) {
      throw new ProtocolError(BAD_FRAME, `tensor ${label}: malformed entry or dtype not allowed on the wire`);
    }
    const [start, end] = info.data_offsets;
    if (!(start >= 0n && start <= end && end <= BigInt(payload)) || end - start !== byteCount(info, payload)) {
      throw new ProtocolError(BAD_FRAME, `tensor ${label}: data offsets out of range or not matching its shape`);
    }
    checkShapeFits(info.shape, label);
    entries.push([name, { dtype: info.dtype, shape: info.shape.map(Number), start: Number(start), end: Number(end) }]);
  }
  const spans = entries.map(([, e]) => e).sort((a, b) => a.start - b.start || a.end - b.end);
  let position = 0;
  for (const { start, end } of spans) {
    if (start !== position) throw new ProtocolError(BAD_FRAME, 'tensor data overlaps or leaves holes');
    position = end;
  }
  if (position !== payload) throw new ProtocolError(BAD_FRAME, `tensor data covers ${position} of ${payload} payload bytes`);
  return entries;
}

function wellFormedEntry(info) {
  if (!isObject(info)) return false;
  const keys = Object.keys(info);
  return keys.length === 3 && keys.every((k) => k === 'dtype' || k === 'shape' || k === 'data_offsets')
    && typeof info.dtype === 'string' && Object.hasOwn(DTYPES, info.dtype)
    && Array.isArray(info.shape) && info.shape.every((d) => typeof d === 'bigint' && d >= 0n)
    && Array.isArray(info.data_offsets) && info.data_offsets.length === 2
    && info.data_offsets.every((o) => typeof o === 'bigint');
}

/** prod(shape) * itemsize, or just some number above `payload` when it exceeds that (no huge BigInt products). */
function byteCount({ dtype, shape }, payload) {
  if (shape.includes(0n)) return 0n;
  const limit = BigInt(payload);
  let count = BigInt(DTYPES[dtype].size);
  for (const d of shape) {
    count *= d;
    if (count > limit) break;
  }
  return count;
}

/**
 * What safetensors refuses beyond frame.py's checks — a shape whose running product overflows 64 bits — and
 * what JavaScript cannot hold: a dimension above 2^53 - 1 (only possible in a zero-element tensor).
 */
function checkShapeFits(shape, label) {
  let product = 1n;
  for (const d of shape) {
    product *= d;
    if (product > U64_MAX) throw new ProtocolError(BAD_FRAME, `tensor ${label}: its shape overflows 64 bits`);
    if (d > BigInt(Number.MAX_SAFE_INTEGER)) {
      throw new ProtocolError(BAD_FRAME, `tensor ${label}: dimension ${d} exceeds 2^53 - 1`);
    }
  }
}

/** Check 6: the metadata is an object of strings holding METADATA_KEY; returns that header text. */
function checkMetadata(metadata) {
  if (!isObject(metadata) || !Object.hasOwn(metadata, METADATA_KEY) || typeof metadata[METADATA_KEY] !== 'string') {
    throw new ProtocolError(BAD_FRAME, `no ${JSON.stringify(METADATA_KEY)} header in the safetensors metadata`);
  }
  for (const [key, value] of Object.entries(metadata)) {
    if (typeof value !== 'string') throw new ProtocolError(BAD_FRAME, 'safetensors metadata values must be strings');
    if (!key.isWellFormed() || !value.isWellFormed()) {
      throw new ProtocolError(BAD_FRAME, 'safetensors metadata is not valid Unicode (a lone surrogate escape)');
    }
  }
  return metadata[METADATA_KEY];
}

function isObject(value) {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** A tensor over its span of the payload: a view when the offset is aligned for its element type, else a copy. */
function viewTensor(bytes, headerEnd, { dtype, shape, start, end }) {
  const { size, array } = DTYPES[dtype];
  const offset = bytes.byteOffset + headerEnd + start;
  const data = offset % size === 0
    ? new array(bytes.buffer, offset, (end - start) / size)
    : new array(new Uint8Array(bytes.subarray(headerEnd + start, headerEnd + end)).buffer); // (a Buffer's slice is a view)
  return { dtype, shape, data };
}

// -- writing -------------------------------------------------------------------------------------------------

/**
 * One safetensors blob of `tensors` with `header` as its metadata: byte for byte what Python's
 * `write_frame(tensors, header)` writes (safetensors' tensor order, compact JSON, the index padded with spaces
 * to a multiple of 8 bytes).
 * @param {Object<string, {dtype: string, shape: number[], data: ArrayBufferView}>} tensors see tensor.mjs
 * @param {string} header the message header's JSON text
 * @returns {Uint8Array}
 */
export function writeFrame(tensors, header) {
  return writeSafetensors(tensors, { [METADATA_KEY]: header });
}

/**
 * A safetensors file of `tensors` with string `metadata` (one key, as a file `safetensors.numpy.save_file` writes
 * with `metadata={"format": "pt"}`; several keys go in the given order).
 * @param {Object<string, {dtype: string, shape: number[], data: ArrayBufferView}>} tensors see tensor.mjs
 * @param {Object<string, string>} metadata
 * @returns {Uint8Array}
 */
export function writeSafetensors(tensors, metadata) {
  assertLittleEndian();
  for (const value of Object.values(metadata)) {
    if (typeof value !== 'string' || !value.isWellFormed()) {
      throw new TypeError('safetensors metadata values must be strings of valid Unicode (no lone surrogates)');
    }
  }
  const entries = Object.entries(tensors).map(([name, t]) => checkedEntry(name, t));
  entries.sort((a, b) => DTYPE_RANK[b.t.dtype] - DTYPE_RANK[a.t.dtype] || compareBytes(a.key, b.key));
  let json = `{"__metadata__":${JSON.stringify(metadata)}`;
  let offset = 0;
  for (const { name, t } of entries) {
    const end = offset + t.data.byteLength;
    json += `,${JSON.stringify(name)}:{"dtype":"${t.dtype}","shape":[${t.shape.join(',')}],"data_offsets":[${offset},${end}]}`;
    offset = end;
  }
  const index = utf8.encode(`${json}}`);
  const n = index.length + ((8 - (index.length % 8)) % 8);
  const out = new Uint8Array(8 + n + offset);
  new DataView(out.buffer).setBigUint64(0, BigInt(n), true);
  out.set(index, 8);
  out.fill(0x20, 8 + index.length, 8 + n);
  let position = 8 + n;
  for (const { t } of entries) {
    out.set(tensorBytes(t), position);
    position += t.data.byteLength;
  }
  return out;
}

/** A tensor to write, checked: a known dtype, integer dims, data of the dtype's array type and size. */
function checkedEntry(name, t) {
  if (!name.isWellFormed()) throw new TypeError(`tensor name ${JSON.stringify(name)} is not valid Unicode`);
  if (!Object.hasOwn(DTYPES, t?.dtype)) {
    throw new TypeError(`tensor ${JSON.stringify(name)}: dtype ${t?.dtype} is not one of ${Object.keys(DTYPES).join(', ')}`);
  }
  const info = DTYPES[t.dtype];
  if (!Array.isArray(t.shape) || !t.shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
    throw new TypeError(`tensor ${JSON.stringify(name)}: shape must be an array of non-negative integers, got ${t.shape}`);
  }
  if (!(t.data instanceof info.array) || t.data.length !== numel(t.shape)) {
    throw new TypeError(`tensor ${JSON.stringify(name)}: ${t.dtype} of shape [${t.shape}] needs a ${info.array.name} `
      + `of ${numel(t.shape)} elements, got ${t.data?.constructor?.name} of ${t.data?.length}`);
  }
  return { name, key: utf8.encode(name), t };
}

/** Byte-wise order of two UTF-8 strings (Rust's String order; JS's `<` compares UTF-16 units instead). */
function compareBytes(a, b) {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return a[i] - b[i];
  return a.length - b.length;
}

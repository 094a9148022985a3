/**
 * The wire format's messages, as src/mobillm/wire/messages.py: every message is one safetensors blob — its
 * tensors plus a JSON header under the metadata key "mobillm" — with one header schema per message type
 * (discriminated by `type`, versioned by `v`).
 *
 *     device                                   server
 *     Hello ─────────────────────────────────▶         (job, auth, fingerprint, configs)
 *           ◀───────────────────── Welcome | Error     (window, last seq held, step)
 *     Batch(seq) ────────────────────────────▶         (sample_ids, labels, act.{i}.{name} ...)
 *           ◀───────────────────────── Ack(seq)        (step, loss)
 *     Done(epoch) ───────────────────────────▶
 *     GetSideNet ────────────────────────────▶
 *           ◀───────────────────────── SideNet         (config + state dict)
 *
 * `encodeMessage` writes the messages the device sends, byte-identical to Python's `encode_message` for the same
 * header and tensors: the header is emitted as `json.dumps(model.model_dump(), separators=(",", ":"))` would — the
 * fields in the pydantic models' order with their defaults filled, floats as Python writes them (`1.0`, `1e-05`),
 * non-ASCII escaped. `decodeMessage` is the one entry point for the server's untrusted bytes: it throws only
 * `PayloadTooBig` or `ProtocolError` with Python's codes (bad_frame, bad_version, unknown_type, bad_header,
 * unexpected_tensors, bad_batch).
 *
 * Headers are plain objects (`{type: 'welcome', v: 1, session, window, last_seq, step}`); tensors are the
 * `{dtype, shape, data}` of ./tensor.mjs, keyed by name.
 */
import { ProtocolError } from '../exceptions.mjs';
import { ERROR_CODES } from './errors.mjs';
import { readFrame, strictJson, writeFrame } from './frame.mjs';
import { DTYPES, int64, tensor } from './tensor.mjs';

/** The protocol version this side speaks (the header's `v`). */
export const PROTOCOL_VERSION = 1;

// -- field kinds: what a header field accepts, and whether Python writes it as a float ---------------------------
// As pydantic's strict mode, which Python validates headers with: an int field takes integers only (not `2.0`, not
// `true`), a float field integers too, a str field only strings. `ok(value, wire)` checks a value as the JSON
// parser gives it (`wire`: strictJson with bigints, so integer literals are BigInts and `2.0` is a Number) or as
// the device's code holds it (integers are Numbers).

const isObject = (v) => typeof v === 'object' && v !== null && !Array.isArray(v);
const codePoints = (s) => [...s].length;

function int(min = -Infinity) {
  const bound = min === -Infinity ? '' : ` >= ${min}`;
  const ok = (v, wire) => (wire ? typeof v === 'bigint' && Number(v) >= min : Number.isSafeInteger(v) && v >= min);
  return { expect: `an integer${bound}`, ok };
}

const float = {
  expect: 'a finite number',
  ok: (v, wire) => (wire && typeof v === 'bigint') || (typeof v === 'number' && Number.isFinite(v)),
  float: true,
};
const bool = { expect: 'true or false', ok: (v) => typeof v === 'boolean' };
const object = { expect: 'a JSON object', ok: isObject };

function str({ min = 0, max = Infinity, pattern = null } = {}) {
  const limits = [min > 0 && `at least ${min}`, max < Infinity && `at most ${max}`].filter(Boolean).join(' and ');
  const expect = `a string${limits ? ` of ${limits} characters` : ''}${pattern ? ` matching ${pattern.source}` : ''}`;
  const ok = (v) => typeof v === 'string' && codePoints(v) >= min && codePoints(v) <= max
    && (!pattern || pattern.test(v));
  return { expect, ok };
}

function oneOf(...values) {
  return { expect: `one of ${values.map((v) => JSON.stringify(v)).join(', ')}`, ok: (v) => values.includes(v) };
}

function nullable(kind) {
  return { ...kind, expect: `${kind.expect} or null`, ok: (v, wire) => v === null || kind.ok(v, wire) };
}

function listOf(kind, min = 0) {
  const expect = `a list of ${min > 0 ? `at least ${min} ` : ''}items, each ${kind.expect}`;
  return { expect, ok: (v, wire) => Array.isArray(v) && v.length >= min && v.every((item) => kind.ok(item, wire)) };
}

/** A nested config: validated field by field, written in its field order. */
function model(schema) {
  return { expect: 'a JSON object', ok: isObject, schema };
}

/** A field: name, kind, and default (undefined: required; a function: a fresh default per header). */
const field = (name, kind, fallback) => ({ name, kind, fallback });

// -- the configs a Hello carries (sidenet/config.py's SideConfig, train_config.py's TrainConfig) ------------------
// Every field is required: the device takes both configs whole from `mobillm template` (recipes/job_template.py), so
// their defaults live in Python alone. Field order, types and float-ness mirror the pydantic models, so that the
// Hello's bytes are Python's (tests/test_web_session.py compares them); numeric bounds and cross-field rules are
// left to the server, which validates both configs against its backbone anyway.

const SIDE_CONFIG = {
  name: 'SideConfig',
  fields: [
    field('hidden_size', int()), field('num_backbone_layers', int()), field('shortcuts', listOf(int(), 1)),
    field('width', int()), field('block', str()), field('attention_heads', int()),
    field('dropout', float), field('bidirectional', bool),
    field('init', oneOf('random', 'backbone')), field('gate_temperature', float),
    field('members', int()), field('task', oneOf('classification', 'causal-lm')),
    field('head', oneOf('verbalizer', 'linear', 'lm')), field('num_labels', int()),
    field('label_token_ids', nullable(listOf(int()))), field('label_names', listOf(str())),
    field('prompt_template', nullable(str())), field('codec', str()),
    field('mobillm_version', str()),
  ],
};

const TRAIN_CONFIG = {
  name: 'TrainConfig',
  fields: [
    field('method', oneOf('side', 'lora', 'bitfit', 'full')), field('lr', nullable(float)),
    field('epochs', nullable(int())), field('batch_size', int()),
    field('schedule', oneOf('constant', 'linear', 'cosine', 'rsqrt')), field('warmup_ratio', float),
    field('warmup_steps', nullable(int())), field('weight_decay', float),
    field('ema_gamma', nullable(float)), field('label_smoothing', float), field('token_dropout', float),
    field('bagging', bool), field('max_grad_norm', float), field('patience', int()),
    field('evals_per_epoch', int()), field('idle_replays', int()), field('seed', int()),
    field('lora_r', int()), field('lora_alpha', int()), field('lora_targets', listOf(str())),
  ],
};

// -- tensors ---------------------------------------------------------------------------------------------------

const FLOAT_DTYPES = new Set(['F16', 'BF16', 'F32', 'F64', 'F8_E4M3', 'F8_E5M2']);
const INT_DTYPES = new Set(['I8', 'U8', 'I16', 'U16', 'I32', 'U32', 'I64', 'U64']);
const BATCH_NAMES = new Set(['sample_ids', 'labels', 'loss_mask', 'attention_mask', 'last_index']);
const ACT_KEY = /^act\.(0|[1-9][0-9]{0,5})\.([A-Za-z0-9_]+)$/;

const shapeText = (t) => `[${t.shape.join(', ')}]`;

/** Refuse any tensor on a message that carries none. */
function noTensors(name) {
  return (tensors) => {
    const names = Object.keys(tensors);
    if (names.length) {
      const some = names.sort().slice(0, 5).join(', ');
      throw new ProtocolError('unexpected_tensors', `${name} carries no tensors, got ${names.length} (${some})`);
    }
  };
}

/**
 * The encoded activations `act.{i}.{name}` grouped by layer i, in order (Python's `Batch.activation_groups`);
 * the indices must be 0..M-1 (else ProtocolError bad_batch).
 * @param {Record<string, object>} tensors a Batch's tensors
 * @returns {Array<Record<string, object>>}
 */
export function activationGroups(tensors) {
  const groups = new Map();
  for (const [key, t] of Object.entries(tensors)) {
    if (!key.startsWith('act.')) continue;
    const match = ACT_KEY.exec(key);
    if (match === null) {
      const shown = JSON.stringify(key.slice(0, 80));
      throw new ProtocolError('bad_batch', `malformed activation key ${shown}; expected act.{i}.{name}`);
    }
    const layer = Number(match[1]);
    if (!groups.has(layer)) groups.set(layer, {});
    groups.get(layer)[match[2]] = t;
  }
  const layers = [...groups.keys()].sort((a, b) => a - b);
  if (layers.some((layer, i) => layer !== i)) {
    throw new ProtocolError('bad_batch', `activation layer indices [${layers.slice(0, 10)}] are not 0..M-1`);
  }
  return layers.map((layer) => groups.get(layer));
}

/** A Batch's tensors as the server accepts them (Python's `Batch.check_tensors`), else ProtocolError bad_batch. */
function checkBatchTensors(tensors) {
  for (const name of ['sample_ids', 'labels']) {
    if (!Object.hasOwn(tensors, name)) throw new ProtocolError('bad_batch', `Batch without ${name}`);
  }
  const unknown = Object.keys(tensors).filter((k) => !BATCH_NAMES.has(k) && !k.startsWith('act.'));
  if (unknown.length) throw new ProtocolError('bad_batch', `unknown Batch tensors [${unknown.sort().slice(0, 5)}]`);
  const ids = tensors.sample_ids;
  if (ids.dtype !== 'I64' || ids.shape.length !== 1 || ids.shape[0] < 1) {
    throw new ProtocolError('bad_batch', `sample_ids must be I64 (B,) with B >= 1, got ${ids.dtype} ${shapeText(ids)}`);
  }
  const batch = ids.shape[0];
  const need = (name, dtypes, dims) => {
    const t = tensors[name];
    if (!dtypes.includes(t.dtype)) {
      throw new ProtocolError('bad_batch', `${name} must be ${dtypes.join('/')}, got ${t.dtype}`);
    }
    if (!dims.includes(t.shape.length) || t.shape[0] !== batch) {
      throw new ProtocolError('bad_batch', `${name} of shape ${shapeText(t)} does not fit batch size ${batch}`);
    }
    return t;
  };
  const labels = need('labels', ['I64'], [1, 2]);
  if (Object.hasOwn(tensors, 'loss_mask')) {
    const mask = need('loss_mask', ['BOOL', 'U8'], [2]);
    if (labels.shape.length === 2 && shapeText(mask) !== shapeText(labels)) {
      throw new ProtocolError('bad_batch', `loss_mask ${shapeText(mask)} differs from labels ${shapeText(labels)}`);
    }
  }
  if (Object.hasOwn(tensors, 'attention_mask')) need('attention_mask', ['BOOL', 'U8', 'I64'], [2]);
  if (Object.hasOwn(tensors, 'last_index')) need('last_index', ['I64'], [1]);
  if (!activationGroups(tensors).length) throw new ProtocolError('bad_batch', 'Batch without activations (act.0.*)');
}

/** A SideNet's tensors: floating point only, else ProtocolError unexpected_tensors. */
function checkSideNetTensors(tensors) {
  const bad = Object.keys(tensors).filter((k) => !FLOAT_DTYPES.has(tensors[k].dtype));
  if (bad.length) {
    const names = bad.sort().slice(0, 5);
    throw new ProtocolError('unexpected_tensors', `SideNet tensors must be floating point: [${names}]`);
  }
}

// -- the messages ------------------------------------------------------------------------------------------------

const JOB_NAME = /^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}$/; // src/mobillm/files.py's JOB_NAME_PATTERN
const FINGERPRINT = /^[0-9a-f]+$/;

/** The fields every header starts with: its `type` and the protocol version. */
const head = (type) => [field('type', oneOf(type), type), field('v', int(), PROTOCOL_VERSION)];

function message(name, type, fields, { checkTensors = noTensors(name), check = () => null } = {}) {
  return { name, type, fields: [...head(type), ...fields], checkTensors, check };
}

/** Every message type by its `type`, in Python's MESSAGE_TYPES order. */
const MESSAGES = Object.fromEntries([
  message('Hello', 'hello', [
    field('job', str({ pattern: JOB_NAME })), field('token', nullable(str()), null),
    field('model', str({ min: 1, max: 256 })), field('fingerprint', str({ min: 1, max: 128, pattern: FINGERPRINT })),
    field('side_config', model(SIDE_CONFIG)), field('train_config', model(TRAIN_CONFIG)),
    field('train_samples', int(0)), field('device_epochs', int(1), 1), field('resume', bool, false),
  ]),
  message('Welcome', 'welcome', [
    field('session', str({ min: 1, max: 64 })), field('window', int(1)), field('last_seq', int(-1)),
    field('step', int(0)),
  ]),
  message('Error', 'error', [field('code', oneOf(...Object.keys(ERROR_CODES))), field('message', str())]),
  message('Batch', 'batch', [field('seq', int(0)), field('split', oneOf('train', 'eval')), field('epoch', int(0))],
    { checkTensors: checkBatchTensors }),
  message('Ack', 'ack', [field('seq', int(0)), field('step', int(0)), field('loss', nullable(float), null)]),
  message('Done', 'done', [field('epoch', int(0))]),
  message('GetSideNet', 'get_side_net', []),
  message('SideNet', 'side_net', [
    field('config', object), field('step', int(0)), field('val_accuracy', nullable(float), null),
    field('val_loss', nullable(float), null), field('eval_sample_ids', listOf(int()), () => []),
    field('eval_predictions', listOf(int()), () => []),
  ], {
    checkTensors: checkSideNetTensors,
    check: (h) => (h.eval_sample_ids.length === h.eval_predictions.length
      ? null : 'eval_sample_ids and eval_predictions differ in length'),
  }),
].map((m) => [m.type, m]));

/** The types of the messages the device sends (what `encodeMessage` writes). */
const DEVICE_MESSAGE_TYPES = Object.freeze(['hello', 'batch', 'done', 'get_side_net']);

// -- validation: a header as Python's model would hold it -----------------------------------------------------------

/**
 * `raw`'s fields in `schema`'s order with defaults filled; every problem is pushed onto `problems`. From the wire
 * (`wire`), the BigInts of integer literals become Numbers (exact up to 2^53).
 */
function normalize(schema, raw, { path, problems, wire }) {
  const out = {};
  for (const { name, kind, fallback } of schema.fields) {
    const where = `${path}${name}`;
    if (!Object.hasOwn(raw, name)) {
      if (fallback === undefined) problems.push(`${where}: missing`);
      else out[name] = typeof fallback === 'function' ? fallback() : fallback;
      continue;
    }
    const value = raw[name];
    if (!kind.ok(value, wire)) problems.push(`${where}: expected ${kind.expect}, got ${describe(value)}`);
    else if (kind.schema) out[name] = normalize(kind.schema, value, { path: `${where}.`, problems, wire });
    else out[name] = wire ? numbers(value) : value;
  }
  const known = new Set(schema.fields.map((f) => f.name));
  for (const name of Object.keys(raw)) {
    if (!known.has(name)) problems.push(`${path}${name}: extra field not permitted`);
  }
  return out;
}

/** A parsed JSON value with its BigInts as Numbers. */
function numbers(value) {
  if (typeof value === 'bigint') return Number(value);
  if (Array.isArray(value)) return value.map(numbers);
  if (isObject(value)) return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, numbers(v)]));
  return value;
}

function describe(value) {
  const text = JSON.stringify(value, (_, v) => (typeof v === 'bigint' ? Number(v) : v)) ?? String(value);
  return text.length > 40 ? `${text.slice(0, 40)}...` : text;
}

/**
 * The header of `fields` as the other side reads it — Python's message model: every field in the model's order,
 * defaults filled (a Hello's side_config and train_config too). Throws TypeError for an unknown `type` and
 * ProtocolError('bad_header') naming every bad field.
 * @param {{type: string}} fields
 * @returns {object}
 */
export function makeHeader(fields) {
  const schema = isObject(fields) && Object.hasOwn(MESSAGES, fields.type) ? MESSAGES[fields.type] : undefined;
  if (schema === undefined) {
    const types = Object.keys(MESSAGES).join(', ');
    throw new TypeError(`a header needs a type among ${types}, got ${describe(fields?.type)}`);
  }
  return validated(schema, fields, false);
}

function validated(schema, raw, wire) {
  const problems = [];
  const header = normalize(schema, raw, { path: '', problems, wire });
  if (!problems.length) {
    const problem = schema.check(header);
    if (problem) problems.push(problem);
  }
  if (problems.length) {
    const more = problems.length > 5 ? `; and ${problems.length - 5} more` : '';
    throw new ProtocolError('bad_header', `${schema.name}: ${problems.slice(0, 5).join('; ')}${more}`);
  }
  return header;
}

// -- Python's JSON: json.dumps(..., separators=(",", ":")) with ensure_ascii ---------------------------------------

/** A float as Python's `repr` writes it: shortest round-trip digits, `1.0`, `0.0001`, `1e-05`, `1e+16`. */
function pyFloat(x) {
  if (Object.is(x, -0)) return '-0.0';
  if (x === 0) return '0.0';
  const sign = x < 0 ? '-' : '';
  const [mantissa, exponent = '0'] = String(Math.abs(x)).split('e');
  const [whole, fraction = ''] = mantissa.split('.');
  let digits = whole + fraction;
  let point = whole.length + Number(exponent); // value = 0.digits × 10^point
  const zeros = digits.length - digits.replace(/^0+/, '').length;
  digits = digits.slice(zeros).replace(/0+$/, '');
  point -= zeros;
  if (point > -4 && point <= 16) {
    if (point <= 0) return `${sign}0.${'0'.repeat(-point)}${digits}`;
    if (point >= digits.length) return `${sign}${digits}${'0'.repeat(point - digits.length)}.0`;
    return `${sign}${digits.slice(0, point)}.${digits.slice(point)}`;
  }
  const e = point - 1;
  const body = digits.length > 1 ? `${digits[0]}.${digits.slice(1)}` : digits;
  return `${sign}${body}e${e < 0 ? '-' : '+'}${String(Math.abs(e)).padStart(2, '0')}`;
}

/** A string as Python's json.dumps writes it: JSON's escapes, and every character past `~` as `\uXXXX`. */
function pyString(s) {
  return JSON.stringify(s).replace(/[\u007f-\uffff]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
}

/** A field's value that holds no float: a string, an integer, a boolean, or a list of those. */
function pyValue(value) {
  if (typeof value === 'string') return pyString(value);
  if (Array.isArray(value)) return `[${value.map(pyValue).join(',')}]`;
  return JSON.stringify(value);
}

/** A normalized header of `schema` as Python dumps its model: field order kept, float fields as floats. */
function pyJson(schema, header) {
  const parts = schema.fields.map(({ name, kind }) => {
    const value = header[name];
    let text;
    if (value === null) text = 'null';
    else if (kind.schema) text = pyJson(kind.schema, value);
    else if (kind.float) text = pyFloat(value);
    else text = pyValue(value);
    return `${pyString(name)}:${text}`;
  });
  return `{${parts.join(',')}}`;
}

// -- encode / decode -----------------------------------------------------------------------------------------------

/**
 * One message the device sends (Hello, Batch, Done, GetSideNet) as bytes, byte-identical to Python's
 * `encode_message` for the same header and tensors. Refuses what the server would refuse, so nothing invalid is
 * sent: ProtocolError bad_header (a bad field), unexpected_tensors (tensors on a tensor-less message), bad_batch
 * (Batch tensors of the wrong names, dtypes or shapes); TypeError for a type the device does not send.
 * @param {{type: string}} header the header's fields (defaults may be left out)
 * @param {Record<string, {dtype: string, shape: number[], data: ArrayLike<any>}>} [tensors]
 * @returns {Uint8Array}
 */
export function encodeMessage(header, tensors = {}) {
  if (!DEVICE_MESSAGE_TYPES.includes(header?.type)) {
    const types = DEVICE_MESSAGE_TYPES.join(', ');
    throw new TypeError(`encodeMessage writes the device's messages (${types}), got ${describe(header?.type)}`);
  }
  for (const [name, t] of Object.entries(tensors)) {
    if (!Object.hasOwn(DTYPES, t?.dtype ?? '') || !Array.isArray(t.shape)) {
      throw new TypeError(`tensor ${name} must be a {dtype, shape, data} of wire/tensor.mjs, got ${describe(t)}`);
    }
  }
  const schema = MESSAGES[header.type];
  const normalized = validated(schema, header, false);
  schema.checkTensors(tensors);
  return writeFrame(tensors, pyJson(schema, normalized));
}

/**
 * Parse and validate untrusted bytes from the server into `{header, tensors}`: the header with every field of its
 * type (defaults filled), the tensors as {dtype, shape, data}. Throws only PayloadTooBig (past `maxBytes`) or
 * ProtocolError: bad_frame, bad_version, unknown_type, bad_header, unexpected_tensors, bad_batch.
 * @param {Uint8Array} bytes
 * @param {{maxBytes?: number}} [options]
 * @returns {{header: object, tensors: Record<string, object>}}
 */
export function decodeMessage(bytes, { maxBytes } = {}) {
  const { tensors, header: text } = readFrame(bytes, { maxBytes });
  const header = parseHeader(text);
  MESSAGES[header.type].checkTensors(tensors);
  return { header, tensors };
}

function parseHeader(text) {
  let raw;
  try {
    raw = strictJson(text, { bigints: true });
  } catch {
    throw new ProtocolError('bad_frame', "the 'mobillm' header is not JSON");
  }
  if (!isObject(raw)) throw new ProtocolError('bad_frame', "the 'mobillm' header is not a JSON object");
  if (raw.v !== BigInt(PROTOCOL_VERSION)) {
    const v = describe(raw.v);
    throw new ProtocolError('bad_version', `protocol version ${v}; this side speaks v${PROTOCOL_VERSION}`);
  }
  const schema = typeof raw.type === 'string' && Object.hasOwn(MESSAGES, raw.type) ? MESSAGES[raw.type] : undefined;
  if (schema === undefined) {
    const types = Object.keys(MESSAGES).sort().join(', ');
    throw new ProtocolError('unknown_type', `message type ${describe(raw.type)} is not one of ${types}`);
  }
  return validated(schema, raw, true);
}

// -- Batch tensors -------------------------------------------------------------------------------------------------

/** `value` (integers, or a tensor of an integer dtype) as an I64 tensor; anything else is ProtocolError bad_batch. */
function asInt64(value, name) {
  if (Array.isArray(value)) {
    if (!value.every((v) => Number.isSafeInteger(v) || typeof v === 'bigint')) {
      throw new ProtocolError('bad_batch', `${name} must hold integers, got ${describe(value)}`);
    }
    return int64(value);
  }
  if (!INT_DTYPES.has(value?.dtype)) {
    throw new ProtocolError('bad_batch', `${name} must hold integers, got ${value?.dtype ?? describe(value)}`);
  }
  if (value.dtype === 'I64') return value;
  return tensor('I64', value.shape, BigInt64Array.from(value.data, (v) => BigInt(v)));
}

/**
 * A Batch's tensors from the encoded activations of each shortcut layer, in layer order (Python's
 * `Batch.tensors`): `sample_ids`, `labels` (and `last_index`) as I64 from integer arrays or integer tensors, the
 * optional masks as given, and each layer's encoded tensors under `act.{i}.{name}`.
 * @param {Array<Record<string, object>>} activations one codec output per shortcut layer
 * @param {{sampleIds: any, labels: any, lossMask?: object, attentionMask?: object, lastIndex?: any}} parts
 * @returns {Record<string, object>}
 */
export function batchTensors(activations, { sampleIds, labels, lossMask, attentionMask, lastIndex }) {
  const out = { sample_ids: asInt64(sampleIds, 'sample_ids'), labels: asInt64(labels, 'labels') };
  if (lossMask != null) out.loss_mask = lossMask;
  if (attentionMask != null) out.attention_mask = attentionMask;
  if (lastIndex != null) out.last_index = asInt64(lastIndex, 'last_index');
  activations.forEach((encoded, i) => {
    for (const [name, t] of Object.entries(encoded)) out[`act.${i}.${name}`] = t;
  });
  return out;
}


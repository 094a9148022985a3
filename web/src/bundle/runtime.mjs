/**
 * Run a device bundle on onnxruntime-web (WASM), as src/mobillm/bundle/runtime.py runs it on ONNX Runtime: the
 * shortcut layers' hidden states at every position (`Bundle.taps`) and the frozen head on a verbalizer's label
 * tokens (`Bundle.labelLogits`); plus bundle/config.py's reading of `bundle.json` and the side network's files.
 *
 * Every file comes through an injected reader, so one runtime serves Node (`directoryReader`) and the browser
 * (`urlReader`): `readFile(name, range?) => Promise<Uint8Array | null>`, `range` an optional `[start, end)` byte
 * span, `null` when the bundle has no such file. Tensors follow wire/tensor.mjs (`{dtype, shape, data}`).
 * `Bundle.tokenizer` is bundle/tokenizer.mjs's BundleTokenizer of the bundle's tokenizer.json.
 */
import * as ort from 'onnxruntime-web';

import { ConfigError } from '../exceptions.mjs';
import { tensor } from '../wire/tensor.mjs';
import { SideNetwork } from './sidenet.mjs';
import { BundleTokenizer } from './tokenizer.mjs';

/** The bundle's file names (bundle/config.py). */
export const CONFIG_NAME = 'bundle.json';
export const TAPS_NAME = 'taps.onnx';
export const NORM_NAME = 'norm.onnx';
export const LM_HEAD_NAME = 'lm_head.safetensors';
export const TOKENIZER_NAME = 'tokenizer.json';
/** A saved side network's file names (src/mobillm/files.py). */
export const SIDE_CONFIG_NAME = 'side_config.json';
export const SIDE_WEIGHTS_NAME = 'side_network.safetensors';

/** The formats whose matmuls quantize activations at run time (their pre-packed weights would be a second copy). */
const DYNAMIC_INT8_FORMATS = new Set(['int8-dynamic', 'int8-smooth']);
const MIN_OPSET = 17;

/** Graph output holding the hidden states after decoder layer `layer` (1-based). */
export function tapName(layer) {
  return `tap_${layer}`;
}

const isInt = (v, min) => Number.isInteger(v) && v >= min;
const isIntList = (v, min) => Array.isArray(v) && v.every((x) => isInt(x, min));
/** bundle.json's fields: [name, check, what it must be, default (undefined: required)]. */
const FIELDS = [
  ['model', (v) => typeof v === 'string', 'a string'],
  ['fingerprint', (v) => typeof v === 'string', 'a string'],
  ['model_type', (v) => typeof v === 'string', 'a string'],
  ['num_layers', (v) => isInt(v, 1), 'an integer >= 1'],
  ['shortcuts', (v) => isIntList(v, 1) && v.length > 0, 'a non-empty list of layers'],
  ['hidden_size', (v) => isInt(v, 1), 'an integer >= 1'],
  ['vocab_size', (v) => isInt(v, 1), 'an integer >= 1'],
  ['kv_heads', (v) => isInt(v, 1), 'an integer >= 1'],
  ['head_dim', (v) => isInt(v, 1), 'an integer >= 1'],
  ['weights', (v) => typeof v === 'string', 'a weight format (bundle.json as mobillm export writes it)', 'fp32'],
  ['pad_token_id', (v) => isInt(v, 0), 'an integer >= 0'],
  ['eos_token_ids', (v) => isIntList(v, 0), 'a list of token ids', []],
  ['bos_token_id', (v) => v === null || isInt(v, 0), 'a token id or null', null],
  ['chat_template', (v) => v === null || typeof v === 'string', 'a string or null', null],
  ['opset', (v) => isInt(v, MIN_OPSET), `an integer >= ${MIN_OPSET}`],
  ['mobillm_version', (v) => v === null || typeof v === 'string', 'a string', null],
];

/**
 * A bundle's config from the text of its bundle.json, checked as BundleConfig checks it; every problem is named
 * (with `source`, the file) in one ConfigError. The keys stay bundle.json's (snake_case).
 *
 * @param {string} text
 * @param {string} [source] where the text came from, for the messages
 * @returns {Readonly<object>}
 */
export function readBundleConfig(text, source = CONFIG_NAME) {
  let data;
  try {
    data = JSON.parse(text);
  } catch (err) {
    throw new ConfigError(`${source}: not valid JSON (${err.message})`);
  }
  if (data === null || typeof data !== 'object' || Array.isArray(data)) throw new ConfigError(`${source}: not a JSON object`);
  const known = new Set(FIELDS.map(([name]) => name));
  const problems = Object.keys(data).filter((k) => !known.has(k)).map((k) => `${source}: ${k}: unknown field`);
  const config = {};
  for (const [name, check, want, fallback] of FIELDS) {
    const value = data[name] ?? fallback;
    if (value === undefined) problems.push(`${source}: ${name}: missing (${want})`);
    else if (!check(value)) problems.push(`${source}: ${name}: must be ${want}, got ${JSON.stringify(value)}`);
    else config[name] = value;
  }
  const s = config.shortcuts;
  if (s && config.num_layers && !(s.every((v, i) => i === 0 || v > s[i - 1]) && s[s.length - 1] <= config.num_layers)) {
    problems.push(`${source}: shortcuts: [${s}] must increase strictly within 1..${config.num_layers}`);
  }
  if (problems.length) throw new ConfigError(problems);
  return Object.freeze(config);
}

let wasmThreads = null;
/** onnxruntime-web fixes its WASM thread count when it starts: the first bundle's `threads` holds for the process. */
function setThreads(threads) {
  if (!isInt(threads, 1)) throw new ConfigError(`threads must be an integer >= 1, got ${threads}`);
  if (wasmThreads !== null && wasmThreads !== threads) {
    throw new ConfigError(`onnxruntime-web already runs on ${wasmThreads} thread(s), fixed when its first bundle ` +
      `loaded; load every bundle with threads ${wasmThreads}`);
  }
  ort.env.wasm.numThreads = wasmThreads = threads;
}

/** A loaded device bundle. The norm graph and the head's label rows are read on first use. */
export class Bundle {
  /**
   * Use `Bundle.load`.
   * @param {(name: string, range?: [number, number]) => Promise<Uint8Array | null>} readFile
   * @param {Readonly<object>} config bundle.json, as readBundleConfig returns it
   * @param {BundleTokenizer} tokenizer the bundle's tokenizer, padding with config.pad_token_id
   * @param {ort.InferenceSession} taps the taps graph's session
   */
  constructor(readFile, config, tokenizer, taps) {
    this.readFile = readFile;
    this.config = config;
    this.tokenizer = tokenizer;
    this.tapNames = config.shortcuts.map(tapName);
    this.#taps = taps;
  }

  #taps;
  /** the norm graph's session (a promise), opened on first use */
  #norm = null;
  /** "id,id,..." -> a promise of the LM head's rows {weight (K, H'), bias (K) | null} */
  #rows = new Map();

  /**
   * Open the bundle that `readFile` reads (written by `mobillm export`), on `threads` WASM threads.
   *
   * @param {(name: string, range?: [number, number]) => Promise<Uint8Array | null>} readFile
   * @param {{threads?: number}} [options] threads: 1 unless given (a phone's other cores stay free)
   * @returns {Promise<Bundle>}
   */
  static async load(readFile, { threads = 1 } = {}) {
    const text = await readFile(CONFIG_NAME);
    if (text === null) throw new ConfigError(`no ${CONFIG_NAME} — not a device bundle (write one with \`mobillm export\`)`);
    const config = readBundleConfig(new TextDecoder().decode(text));
    setThreads(threads);
    const tokenizer = await readFile(TOKENIZER_NAME);
    if (tokenizer === null) throw new ConfigError(`bundle incomplete: no ${TOKENIZER_NAME}; re-run \`mobillm export\``);
    const taps = await openSession(readFile, TAPS_NAME, config.weights);
    return new Bundle(readFile, config, BundleTokenizer.fromJSON(new TextDecoder().decode(tokenizer), config.pad_token_id), taps);
  }

  /**
   * (B, T) token ids and attention mask (1 = real token) -> one (B, T, H) F32 tensor per shortcut layer, bottom
   * to top.
   *
   * @param {{shape: number[], data: ArrayLike<number|bigint>}} inputIds (B, T) integer tensor
   * @param {{shape: number[], data: ArrayLike<number|bigint>}} attentionMask (B, T) integer tensor
   * @returns {Promise<Array<{dtype: 'F32', shape: number[], data: Float32Array}>>}
   */
  async taps(inputIds, attentionMask) {
    const [B, T] = inputIds.shape;
    if (inputIds.shape.length !== 2 || String(attentionMask.shape) !== String(inputIds.shape)) {
      throw new ConfigError(`taps need input_ids and attention_mask of one shape (B, T), got [${inputIds.shape}] and [${attentionMask.shape}]`);
    }
    const feed = { input_ids: int64Tensor(inputIds.data, [B, T]), attention_mask: int64Tensor(attentionMask.data, [B, T]) };
    const out = await this.#taps.run(feed, this.tapNames);
    return this.tapNames.map((name) => tensor('F32', out[name].dims, out[name].data));
  }

  /**
   * The frozen head (final norm, LM head) on top hidden states, on the vocabulary rows `tokenIds` only (a
   * verbalizer's label tokens): (N, H) -> (N, K) F32, K = tokenIds.length. Only those rows of the LM head are read
   * (ranges of lm_head.safetensors), as the Python bundle does.
   *
   * @param {{shape: number[], data: Float32Array}} hidden (..., H) F32
   * @param {ArrayLike<number|bigint>} tokenIds
   * @returns {Promise<{dtype: 'F32', shape: number[], data: Float32Array}>}
   */
  async labelLogits(hidden, tokenIds) {
    if (!(hidden.data instanceof Float32Array)) throw new ConfigError('labelLogits needs F32 hidden states');
    const ids = Array.from(tokenIds, Number);
    const vocab = this.config.vocab_size;
    const bad = ids.filter((i) => !(Number.isInteger(i) && i >= 0 && i < vocab));
    if (bad.length) throw new ConfigError(`label token ids [${bad}] are outside the bundle's vocabulary (0..${vocab - 1})`);
    // a failed read is forgotten, so that the next call tries again (a dropped connection in the browser)
    this.#norm ??= openSession(this.readFile, NORM_NAME, this.config.weights).catch((err) => {
      this.#norm = null;
      throw err;
    });
    const key = ids.join(',');
    if (!this.#rows.has(key)) {
      this.#rows.set(key, this.#headRows(ids).catch((err) => {
        this.#rows.delete(key);
        throw err;
      }));
    }
    const [{ weight, bias }, norm] = await Promise.all([this.#rows.get(key), this.#norm]);
    const H = hidden.shape[hidden.shape.length - 1];
    const N = hidden.data.length / H;
    const out = await norm.run({ hidden: new ort.Tensor('float32', hidden.data, [N, H]) }, ['normed']);
    const normed = out.normed.data; // (N, H')
    const width = out.normed.dims[1];
    const K = ids.length;
    const logits = new Float32Array(N * K);
    for (let n = 0; n < N; n++) {
      for (let k = 0; k < K; k++) {
        let acc = bias === null ? 0 : bias[k];
        for (let j = 0; j < width; j++) acc += normed[n * width + j] * weight[k * width + j];
        logits[n * K + k] = acc;
      }
    }
    return tensor('F32', [N, K], logits);
  }

  /** The LM head's rows `ids` (K, H') and bias entries (K,) or null, each row read on its own (ids checked). */
  async #headRows(ids) {
    const file = await safetensorsHeader(this.readFile, LM_HEAD_NAME);
    const take = async (name) => {
      const info = file.tensors[name];
      if (info.dtype !== 'F32') throw new ConfigError(`${LM_HEAD_NAME}: ${name} is ${info.dtype}; re-run \`mobillm export\` (it writes F32)`);
      const row = 4 * (info.shape.length === 2 ? info.shape[1] : 1);
      const start = file.dataStart + info.data_offsets[0];
      const parts = await Promise.all(ids.map((i) => this.readFile(LM_HEAD_NAME, [start + i * row, start + (i + 1) * row])));
      const out = new Uint8Array(ids.length * row);
      parts.forEach((p, k) => out.set(exactly(p, row, LM_HEAD_NAME), k * row));
      return new Float32Array(out.buffer);
    };
    if (!file.tensors.weight) throw new ConfigError(`${LM_HEAD_NAME} holds no weight; re-run \`mobillm export\``);
    return { weight: await take('weight'), bias: file.tensors.bias ? await take('bias') : null };
  }

  /** Free the sessions' WASM memory; the bundle cannot run afterwards. */
  async release() {
    await this.#taps.release();
    if (this.#norm !== null) await (await this.#norm).release();
  }
}

/** An onnxruntime-web session of the graph `name`, with its external data (`<name>.data`) when the bundle has it. */
async function openSession(readFile, name, weights) {
  const [model, data] = await Promise.all([readFile(name), readFile(`${name}.data`)]);
  if (model === null) throw new ConfigError(`bundle incomplete: no ${name}; re-run \`mobillm export\``);
  // as the Python bundle (BENCHMARKS §19): no pre-planned memory pattern, and no second, pre-packed copy of the
  // int8-dynamic weights
  const session = DYNAMIC_INT8_FORMATS.has(weights) ? { disable_prepacking: '1' } : {};
  return ort.InferenceSession.create(model, {
    executionProviders: ['wasm'],
    enableMemPattern: false,
    logSeverityLevel: 3, // warnings about unused initializers etc. are not the user's concern
    externalData: data === null ? [] : [{ path: `${name}.data`, data }],
    extra: { session },
  });
}

/** An ort int64 tensor of integer `values` (BigInt64Array passes through, anything else is converted). */
function int64Tensor(values, dims) {
  const data = values instanceof BigInt64Array ? values : BigInt64Array.from(values, (v) => BigInt(v));
  return new ort.Tensor('int64', data, dims);
}

/** `bytes`, refused unless it holds exactly `size` bytes (a short read means a truncated file). */
function exactly(bytes, size, name) {
  if (bytes === null || bytes.length !== size) throw new ConfigError(`${name}: truncated or missing; re-download it`);
  return bytes;
}

const MAX_HEADER = 100_000_000;
/** A safetensors file's header, read by range: `{dataStart, tensors: {name: {dtype, shape, data_offsets}}}`. */
async function safetensorsHeader(readFile, name) {
  const prefix = await readFile(name, [0, 8]);
  if (prefix === null) throw new ConfigError(`no ${name}; re-run \`mobillm export\``);
  const size = headerSize(exactly(prefix, 8, name), name);
  return parseHeader(exactly(await readFile(name, [8, 8 + size]), size, name), 8 + size, name);
}

function headerSize(prefix, name) {
  const size = Number(new DataView(prefix.buffer, prefix.byteOffset, 8).getBigUint64(0, true));
  if (size < 2 || size > MAX_HEADER) throw new ConfigError(`${name}: not a safetensors file (header of ${size} bytes)`);
  return size;
}

function parseHeader(bytes, dataStart, name) {
  let header;
  try {
    header = JSON.parse(new TextDecoder().decode(bytes));
  } catch {
    throw new ConfigError(`${name}: not a safetensors file (its header is not JSON)`);
  }
  delete header.__metadata__;
  return { dataStart, tensors: header };
}

/**
 * Every tensor of a safetensors file's bytes as F32 tensors (copied, so each is aligned); other dtypes are refused.
 *
 * @param {Uint8Array} bytes the whole file
 * @param {string} name the file's name, for the messages
 * @returns {Record<string, {dtype: 'F32', shape: number[], data: Float32Array}>}
 */
export function readSafetensors(bytes, name) {
  const size = headerSize(exactly(bytes.length >= 8 ? bytes.subarray(0, 8) : null, 8, name), name);
  const { dataStart, tensors } = parseHeader(bytes.subarray(8, 8 + size), 8 + size, name);
  const out = {};
  for (const [key, { dtype, shape, data_offsets: [begin, end] }] of Object.entries(tensors)) {
    if (dtype !== 'F32') throw new ConfigError(`${name}: ${key} is ${dtype}; the web device reads F32 tensors only`);
    if (dataStart + end > bytes.length) throw new ConfigError(`${name}: truncated; re-download it`);
    out[key] = tensor('F32', shape, new Float32Array(bytes.slice(dataStart + begin, dataStart + end).buffer));
  }
  return out;
}

/**
 * The side network saved (`side_config.json` + `side_network.safetensors`) where `readFile` reads, as
 * NpSideNetwork.from_pretrained reads it.
 *
 * @param {(name: string, range?: [number, number]) => Promise<Uint8Array | null>} readFile
 * @returns {Promise<SideNetwork>}
 */
export async function loadSideNetwork(readFile) {
  const [config, weights] = await Promise.all([readFile(SIDE_CONFIG_NAME), readFile(SIDE_WEIGHTS_NAME)]);
  if (config === null || weights === null) {
    throw new ConfigError(`expected ${SIDE_CONFIG_NAME} and ${SIDE_WEIGHTS_NAME} (a saved side network)`);
  }
  let parsed;
  try {
    parsed = JSON.parse(new TextDecoder().decode(config));
  } catch (err) {
    throw new ConfigError(`${SIDE_CONFIG_NAME}: not valid JSON (${err.message})`);
  }
  return new SideNetwork(parsed, readSafetensors(weights, SIDE_WEIGHTS_NAME));
}

/**
 * A reader of the files in a directory, for Node (node:fs is imported on first use, so browsers never load it).
 *
 * @param {string} directory
 * @returns {(name: string, range?: [number, number]) => Promise<Uint8Array | null>}
 */
export function directoryReader(directory) {
  return async (name, range) => {
    const [{ open }, { join }] = await Promise.all([import('node:fs/promises'), import('node:path')]);
    let file;
    try {
      file = await open(join(directory, name));
    } catch (err) {
      if (err.code === 'ENOENT') return null;
      throw err;
    }
    try {
      if (range === undefined) return new Uint8Array(await file.readFile());
      const [start, end] = range;
      const bytes = new Uint8Array(end - start);
      const { bytesRead } = await file.read(bytes, 0, bytes.length, start);
      return bytes.subarray(0, bytesRead);
    } finally {
      await file.close();
    }
  };
}

/**
 * A reader of the files under a base URL, for the browser: one GET per file, an HTTP Range request per span (a
 * server that ignores Range sends the whole file, which is then cut); 404 means no such file.
 *
 * @param {string} base the directory's URL (a trailing slash is added when missing)
 * @param {typeof fetch} [fetchImpl]
 * @returns {(name: string, range?: [number, number]) => Promise<Uint8Array | null>}
 */
export function urlReader(base, fetchImpl = globalThis.fetch) {
  const root = base.endsWith('/') ? base : `${base}/`;
  return async (name, range) => {
    const url = new URL(name, root);
    const headers = range === undefined ? {} : { Range: `bytes=${range[0]}-${range[1] - 1}` };
    const response = await fetchImpl(url, { headers });
    if (response.status === 404) return null;
    if (!response.ok) throw new ConfigError(`${url}: HTTP ${response.status} ${response.statusText}`);
    const bytes = new Uint8Array(await response.arrayBuffer());
    return range !== undefined && response.status !== 206 ? bytes.subarray(range[0], range[1]) : bytes;
  };
}

/**
 * The side network's forward pass in plain JavaScript, for the web device: src/mobillm/bundle/sidenet.py's
 * `NpSideNetwork` step for step (tests/test_web_bundle.py holds the two equal within 1e-5 of the values' scale).
 *
 * Tensors follow wire/tensor.mjs (`{dtype, shape, data}`); the maths runs on Float32Array buffers allocated once
 * per operation, never per element, with float64 accumulators in the dot products; every matrix product goes
 * through one register-blocked kernel (`matmulT`), and `classify` runs only the rows its scores read. The config is
 * the saved `side_config.json` as a plain object (snake_case keys, as the Python side writes it); the server
 * validated it when it trained. Reading the files is runtime.mjs's `loadSideNetwork`.
 */
import { ConfigError } from '../exceptions.mjs';
import { tensor } from '../wire/tensor.mjs';

const EPS_RMS = 2 ** -23; // nn.RMSNorm(eps=None) in float32: float32's machine epsilon
const EPS_LN = 1e-5; // nn.LayerNorm's default
// erf(x) = 1 - (a1 t + ... + a5 t^5) exp(-x^2), t = 1 / (1 + p x), x >= 0: Abramowitz & Stegun 7.1.26, absolute
// error <= 1.5e-7 (float32's resolution); the numpy side network uses the same approximation.
const ERF_P = 0.3275911;
const [A1, A2, A3, A4, A5] = [0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429];

/** erf(x) by Abramowitz & Stegun 7.1.26 (absolute error <= 1.5e-7), as the numpy side network computes it. */
export function erf(x) {
  const a = Math.abs(x);
  const t = 1 / (1 + ERF_P * a);
  const poly = t * (A1 + t * (A2 + t * (A3 + t * (A4 + t * A5))));
  return Math.sign(x) * (1 - poly * Math.exp(-a * a));
}

/** nn.GELU() (the exact, erf form) of one value, in float64. */
export function gelu(x) {
  return 0.5 * x * (1 + erf(x / Math.SQRT2));
}

/**
 * Log-softmax of each row of `x` (a Float32Array of rows of `width`), into a new Float32Array: the row's maximum
 * is subtracted first, so large logits neither overflow nor lose the small ones.
 */
export function logSoftmax(x, width) {
  const out = new Float32Array(x.length);
  for (let row = 0; row < x.length; row += width) {
    let max = -Infinity;
    for (let j = row; j < row + width; j++) if (x[j] > max) max = x[j];
    let sum = 0;
    for (let j = row; j < row + width; j++) sum += Math.exp(x[j] - max);
    const log = Math.log(sum);
    for (let j = row; j < row + width; j++) out[j] = x[j] - max - log;
  }
  return out;
}

/** The dot product of `a` from `ai` and `b` from `bi` over `n` elements: one float64 sum, in order. */
function dot(a, ai, b, bi, n) {
  let sum = 0;
  for (let k = 0; k < n; k++) sum += a[ai + k] * b[bi + k];
  return sum;
}

/**
 * C = A B^T on row-major views of Float32Arrays: `c[cAt + i cStride + j]` = the float64 sum over k < `depth` of
 * `a[aAt + i aStride + k] * b[bAt + j bStride + k]`, for i < `rows`, j < `cols`, rounded once into `c`. The strides
 * let A be one layer of the interleaved taps, or one head's queries inside the (rows, 3r) projections, in place.
 *
 * Four rows by four columns at a time, the edges that do not fill a block one dot product at a time: each element
 * read serves four products (2.3x the speed of dot products alone in V8; two rows by four: within 5%). Every
 * element is the same sum in the same order whichever path computes it, so a row's result does not depend on the
 * rows computed with it.
 */
function matmulT(a, aAt, aStride, b, bAt, bStride, c, cAt, cStride, rows, cols, depth) {
  let i = 0;
  for (; i + 3 < rows; i += 4) {
    const a0 = aAt + i * aStride;
    const a1 = a0 + aStride;
    const a2 = a1 + aStride;
    const a3 = a2 + aStride;
    const c0 = cAt + i * cStride;
    const c1 = c0 + cStride;
    const c2 = c1 + cStride;
    const c3 = c2 + cStride;
    let j = 0;
    for (; j + 3 < cols; j += 4) {
      const b0 = bAt + j * bStride;
      const b1 = b0 + bStride;
      const b2 = b1 + bStride;
      const b3 = b2 + bStride;
      let s00 = 0, s01 = 0, s02 = 0, s03 = 0, s10 = 0, s11 = 0, s12 = 0, s13 = 0;
      let s20 = 0, s21 = 0, s22 = 0, s23 = 0, s30 = 0, s31 = 0, s32 = 0, s33 = 0;
      for (let k = 0; k < depth; k++) {
        const p0 = b[b0 + k], p1 = b[b1 + k], p2 = b[b2 + k], p3 = b[b3 + k];
        let u = a[a0 + k];
        s00 += u * p0; s01 += u * p1; s02 += u * p2; s03 += u * p3;
        u = a[a1 + k];
        s10 += u * p0; s11 += u * p1; s12 += u * p2; s13 += u * p3;
        u = a[a2 + k];
        s20 += u * p0; s21 += u * p1; s22 += u * p2; s23 += u * p3;
        u = a[a3 + k];
        s30 += u * p0; s31 += u * p1; s32 += u * p2; s33 += u * p3;
      }
      c[c0 + j] = s00; c[c0 + j + 1] = s01; c[c0 + j + 2] = s02; c[c0 + j + 3] = s03;
      c[c1 + j] = s10; c[c1 + j + 1] = s11; c[c1 + j + 2] = s12; c[c1 + j + 3] = s13;
      c[c2 + j] = s20; c[c2 + j + 1] = s21; c[c2 + j + 2] = s22; c[c2 + j + 3] = s23;
      c[c3 + j] = s30; c[c3 + j + 1] = s31; c[c3 + j + 2] = s32; c[c3 + j + 3] = s33;
    }
    for (; j < cols; j++) {
      const bj = bAt + j * bStride;
      c[c0 + j] = dot(a, a0, b, bj, depth);
      c[c1 + j] = dot(a, a1, b, bj, depth);
      c[c2 + j] = dot(a, a2, b, bj, depth);
      c[c3 + j] = dot(a, a3, b, bj, depth);
    }
  }
  for (; i < rows; i++) {
    for (let j = 0; j < cols; j++) c[cAt + i * cStride + j] = dot(a, aAt + i * aStride, b, bAt + j * bStride, depth);
  }
}

/**
 * `x` (rows of `inDim`) times `weight`^T (outDim, inDim) plus `bias` (outDim), as nn.Linear: a new Float32Array
 * of rows of outDim.
 */
function linear(x, rows, inDim, weight, bias, outDim) {
  const y = new Float32Array(rows * outDim);
  matmulT(x, 0, inDim, weight, 0, inDim, y, 0, outDim, rows, outDim, inDim);
  addRowVector(y, bias);
  return y;
}

/** `y` (rows of `v.length`) += `v` in every row, in place. */
function addRowVector(y, v) {
  const width = v.length;
  for (let row = 0; row < y.length; row += width) {
    for (let j = 0; j < width; j++) y[row + j] += v[j];
  }
}

/** nn.LayerNorm over rows of `width` of `x`, into a new Float32Array. */
function layerNorm(x, width, weight, bias) {
  const out = new Float32Array(x.length);
  for (let row = 0; row < x.length; row += width) {
    let mean = 0;
    for (let j = 0; j < width; j++) mean += x[row + j];
    mean /= width;
    let variance = 0;
    for (let j = 0; j < width; j++) variance += (x[row + j] - mean) ** 2;
    const scale = 1 / Math.sqrt(variance / width + EPS_LN);
    for (let j = 0; j < width; j++) out[row + j] = (x[row + j] - mean) * scale * weight[j] + bias[j];
  }
  return out;
}

/**
 * The rows a ladder runs on: `taps`, rows of M x H (the backbone's layers side by side), and for token-mixing
 * blocks the sequences they form, `lengths` consecutive rows each, and `keys`, 1 for each row attention may read
 * (a real token; null: every row); both null when each row stands alone (the pivot tokens only were sent).
 * @typedef {{taps: Float32Array, M: number, H: number, lengths: Int32Array | null, keys: Int32Array | null}} Batch
 */

/** The numbers of an integer tensor's data (BigInt64Array, Int32Array, a plain array, ...) as an Int32Array. */
function indices(values) {
  return Int32Array.from(values, Number);
}

/**
 * Backbone taps (B, [T,] M, H) -> the corrected top hidden state (B, [T,] H), as `SideNetwork.hidden`; an
 * ensemble (config `members` K > 1, tensors `members.j.*`) -> class log-probabilities, as `SideNetwork.forward`.
 */
export class SideNetwork {
  /**
   * @param {object} config the saved side_config.json (snake_case keys)
   * @param {Record<string, {dtype: string, shape: number[], data: Float32Array}>} state the saved tensors, F32
   */
  constructor(config, state) {
    this.config = { ...config };
    const count = Number(this.config.members ?? 1);
    /** An ensemble's ladders, each a one-ladder SideNetwork (null: this is one ladder). */
    this.members = count === 1 ? null : Array.from({ length: count }, (_, j) => memberOf(this.config, state, j));
    this.block = this.config.block ?? 'attention';
    if (this.block !== 'mlp' && this.block !== 'attention') {
      throw new ConfigError(`side block ${JSON.stringify(this.block)}: the web side network runs 'mlp' and 'attention' blocks`);
    }
    this.heads = Number(this.config.attention_heads ?? 4);
    this.width = Number(this.config.width ?? 64);
    this.gateTemperature = Number(this.config.gate_temperature ?? 1);
    this.causal = !this.config.bidirectional;
    if (!Array.isArray(this.config.shortcuts)) throw new ConfigError('side network config: shortcuts must be a list of layers');
    this.numLayers = this.config.shortcuts.length;
    // an ensemble's tensors live in its members only
    this.state = this.members ? {} : checkedState(state, SideNetwork.tensorNames(this.config));
  }

  /** Whether the blocks read each token on its own (the device then sends the pivot token only). */
  get tokenWise() {
    return this.block === 'mlp';
  }

  /**
   * The tensors one ladder of `config` reads (an ensemble's member j reads them under `members.j.`).
   * @param {object} config a side_config.json
   * @returns {string[]}
   */
  static tensorNames(config) {
    const names = ['gate', 'up.weight', 'up.bias'];
    const mlp = (p) => [`${p}.norm.weight`, `${p}.norm.bias`, ...['0', '3'].flatMap((i) => [`${p}.mlp.${i}.weight`, `${p}.mlp.${i}.bias`])];
    for (let i = 0; i < config.shortcuts.length; i++) {
      const p = `blocks.${i}`;
      names.push(`down.${i}.weight`, `down.${i}.bias`);
      names.push(...((config.block ?? 'attention') === 'mlp' ? mlp(p) : [`${p}.norm1.weight`, `${p}.norm1.bias`,
        `${p}.attn.in_proj_weight`, `${p}.attn.in_proj_bias`, `${p}.attn.out_proj.weight`, `${p}.attn.out_proj.bias`,
        ...mlp(`${p}.mlp`)]));
    }
    return names;
  }

  /**
   * (B, [T,] M, H) taps -> (B, C) scores: `labelLogits` (the frozen head's label rows) of the corrected top hidden
   * state at each row's pivot token (`lastIndex`, when every position was sent); an ensemble's are the log of its
   * members' mean class probabilities.
   *
   * Only the positions that count are run: the real tokens (padding is never attended to, so it changes nothing
   * at them) and the pivots, and `up` at the pivots only.
   *
   * @param {{shape: number[], data: Float32Array}} acts decoded taps, F32
   * @param {{shape: number[], data: ArrayLike<number|bigint>} | null} attentionMask (B, T), 1 = real token
   * @param {{data: ArrayLike<number|bigint>} | ArrayLike<number|bigint> | null} lastIndex (B,) pivot positions
   * @param {(hidden: object) => object | Promise<object>} labelLogits (B, H) F32 tensor -> (B, C) F32 tensor
   * @returns {Promise<{dtype: 'F32', shape: number[], data: Float32Array}>} (B, C)
   */
  async classify(acts, attentionMask, lastIndex, labelLogits) {
    let batch = this.#batch(acts, attentionMask);
    let pivots = null; // null: every row is a pivot (the pivot tokens only were sent)
    if (batch.lengths !== null) ({ batch, pivots } = realTokens(batch, pivotIndex(lastIndex, ...acts.shape.slice(0, 2))));
    const B = acts.shape[0];
    const pivotHidden = (ladder) => tensor('F32', [B, batch.H], ladder.#readout(ladder.#ladder(batch), batch, pivots));
    if (this.members === null) return labelLogits(pivotHidden(this));
    const logp = [];
    let shape;
    for (const m of this.members) {
      const scores = await labelLogits(pivotHidden(m));
      shape = scores.shape;
      logp.push(logSoftmax(scores.data, shape[1]));
    }
    return tensor('F32', shape, meanProbabilityLog(logp));
  }

  /**
   * (B, [T,] M, H) shortcut activations -> (B, [T,] H) corrected top hidden state (one ladder only).
   *
   * @param {{shape: number[], data: Float32Array}} acts decoded taps, F32
   * @param {{shape: number[], data: ArrayLike<number|bigint>} | null} [attentionMask] (B, T), 1 = real token
   * @returns {{dtype: 'F32', shape: number[], data: Float32Array}}
   */
  hidden(acts, attentionMask = null) {
    if (this.members !== null) {
      throw new ConfigError(`an ensemble of ${this.members.length} ladders has no single hidden state: use classify()`);
    }
    const batch = this.#batch(acts, attentionMask);
    return tensor('F32', [...acts.shape.slice(0, -2), batch.H], this.#readout(this.#ladder(batch), batch, null));
  }

  /**
   * `acts` (B, [T,] M, H), checked against this config, as the rows a ladder runs on: a Batch of every position.
   * @returns {Batch}
   */
  #batch(acts, attentionMask) {
    const { shape, data } = acts;
    if (!(data instanceof Float32Array)) throw new ConfigError('activations must be float32 (decode the taps first)');
    if (shape[shape.length - 2] !== this.numLayers) {
      throw new ConfigError(`activations of shape [${shape}]: expected (..., ${this.numLayers}, H)`);
    }
    if (this.block === 'attention' && shape.length !== 4) {
      throw new ConfigError('the attention side block needs every position: activations of shape (B, T, M, H)');
    }
    const sequences = shape.length === 4;
    return {
      taps: data, M: this.numLayers, H: shape[shape.length - 1],
      lengths: sequences ? new Int32Array(shape[0]).fill(shape[1]) : null,
      keys: sequences && attentionMask !== null ? indices(attentionMask.data) : null,
    };
  }

  /**
   * The ladder over a Batch: each tap RMS-normalised and projected down (the normalisation's scale applied to the
   * projection, which reads the taps in place), gated into the side state and through its block. Returns the
   * side state (rows, r) before `up`.
   * @param {Batch} batch
   */
  #ladder({ taps, M, H, lengths, keys }) {
    const rows = taps.length / (M * H);
    const s = this.state;
    const r = this.width;
    let h = new Float32Array(rows * r);
    const down = new Float32Array(rows * r);
    for (let i = 0; i < M; i++) {
      const scale = rmsScales(taps, rows, M, H, i);
      matmulT(taps, i * H, M * H, s[`down.${i}.weight`], 0, H, down, 0, r, rows, r, H);
      const bias = s[`down.${i}.bias`];
      const mu = 1 / (1 + Math.exp(-s.gate[i] / this.gateTemperature)); // sigmoid(alpha_i / T)
      for (let n = 0; n < rows; n++) {
        for (let o = n * r, j = 0; j < r; o++, j++) h[o] = mu * h[o] + (1 - mu) * (down[o] * scale[n] + bias[j]);
      }
      h = this.tokenWise ? this.mlp(`blocks.${i}`, h, rows) : this.attention(`blocks.${i}`, h, lengths, keys);
    }
    return h;
  }

  /**
   * `up` of the side state `h` (rows, r) plus the top tap: (rows, H), or of the rows `pivots` only (when given), as
   * a Float32Array.
   * @param {Float32Array} h
   * @param {Batch} batch
   * @param {Int32Array | null} pivots
   */
  #readout(h, { taps, M, H }, pivots) {
    const r = this.width;
    const x = pivots === null ? h : gatherRows(h, pivots, r);
    const rows = x.length / r;
    const out = linear(x, rows, r, this.state['up.weight'], this.state['up.bias'], H);
    for (let n = 0; n < rows; n++) {
      const a = ((pivots === null ? n : pivots[n]) * M + M - 1) * H;
      for (let k = 0; k < H; k++) out[n * H + k] += taps[a + k];
    }
    return out;
  }

  /** x + MLP(LayerNorm(x)) over rows of r, as MLPBlock; a new array. */
  mlp(prefix, x, rows) {
    const s = this.state;
    const r = this.width;
    const normed = layerNorm(x, r, s[`${prefix}.norm.weight`], s[`${prefix}.norm.bias`]);
    const inner = s[`${prefix}.mlp.0.bias`].length;
    const hidden = linear(normed, rows, r, s[`${prefix}.mlp.0.weight`], s[`${prefix}.mlp.0.bias`], inner);
    for (let j = 0; j < hidden.length; j++) hidden[j] = gelu(hidden[j]);
    const out = linear(hidden, rows, inner, s[`${prefix}.mlp.3.weight`], s[`${prefix}.mlp.3.bias`], r);
    for (let j = 0; j < out.length; j++) out[j] += x[j];
    return out;
  }

  /**
   * Multi-head self-attention (causal unless the config is bidirectional; padding keys blocked) + MLP over the
   * sequences of `lengths` rows of r, as AttentionBlock; a new array.
   */
  attention(prefix, x, lengths, keys) {
    const s = this.state;
    const r = this.width;
    const rows = x.length / r;
    const h = layerNorm(x, r, s[`${prefix}.norm1.weight`], s[`${prefix}.norm1.bias`]);
    const qkv = linear(h, rows, r, s[`${prefix}.attn.in_proj_weight`], s[`${prefix}.attn.in_proj_bias`], 3 * r); // (rows, 3r)
    const attended = multiHeadAttention(qkv, r, this.heads, this.causal, lengths, keys); // (rows, r)
    const y = linear(attended, rows, r, s[`${prefix}.attn.out_proj.weight`], s[`${prefix}.attn.out_proj.bias`], r);
    for (let j = 0; j < y.length; j++) y[j] += x[j];
    return this.mlp(`${prefix}.mlp`, y, rows);
  }
}

/**
 * Scaled dot-product attention of each head over `qkv` (rows, 3r: queries, keys, values side by side) -> (rows, r),
 * as nn.MultiheadAttention's core, within each sequence of `lengths` consecutive rows: query t sees keys 0..t
 * (`causal`) or all, less those `keys` marks 0 (null: none). A query that sees no key attends to nothing.
 *
 * Per sequence and head, two products of matmulT: the scores of the queries and keys, read in place, and their
 * softmax weights times the values, copied transposed (d, keys) first so that both run over contiguous rows. Keys
 * past the last one that may be read would get no weight: they are left out.
 */
function multiHeadAttention(qkv, r, heads, causal, lengths, keys) {
  const d = r / heads;
  const stride = 3 * r;
  const scale = 1 / Math.sqrt(d);
  const attended = new Float32Array((qkv.length / stride) * r);
  const longest = lengths.reduce((a, n) => Math.max(a, n), 0);
  const weights = new Float32Array(longest * longest); // (queries, keys)
  const values = new Float32Array(d * longest); // one head's values, transposed
  for (let b = 0, row0 = 0; b < lengths.length; row0 += lengths[b], b++) {
    const n = lengths[b];
    let width = n; // the keys read
    const blocked = [];
    if (keys !== null) {
      while (width > 0 && keys[row0 + width - 1] === 0) width--;
      for (let j = 0; j < width; j++) if (keys[row0 + j] === 0) blocked.push(j);
    }
    for (let head = 0; head < heads; head++) {
      const q0 = row0 * stride + head * d;
      matmulT(qkv, q0, stride, qkv, q0 + r, stride, weights, 0, width, n, width, d);
      for (let t = 0, at = 0; t < n; t++, at += width) {
        for (const j of blocked) weights[at + j] = -Infinity;
        softmaxRow(weights, at, causal ? Math.min(t + 1, width) : width, width, scale);
      }
      for (let j = 0, v = q0 + 2 * r; j < width; j++, v += stride) {
        for (let c = 0; c < d; c++) values[c * width + j] = qkv[v + c];
      }
      matmulT(weights, 0, width, values, 0, width, attended, row0 * r + head * d, r, n, d, width);
    }
  }
  return attended;
}

/**
 * The row of `width` at `at` of `weights` -> the softmax of its first `n` entries times `scale` (> 0), in place,
 * with float64 sums, and zeros after them; all zeros when those `n` are all -Infinity (a query that sees no key).
 */
function softmaxRow(weights, at, n, width, scale) {
  const end = at + n;
  let max = -Infinity;
  for (let j = at; j < end; j++) if (weights[j] > max) max = weights[j];
  if (max === -Infinity) {
    weights.fill(0, at, at + width);
    return;
  }
  let sum = 0;
  for (let j = at; j < end; j++) sum += (weights[j] = Math.exp(scale * (weights[j] - max)));
  for (let j = at; j < end; j++) weights[j] /= sum;
  weights.fill(0, end, at + width);
}

/** Member `j` of an ensemble: a one-ladder SideNetwork of the `members.j.*` tensors. */
function memberOf(config, state, j) {
  const prefix = `members.${j}.`;
  const own = {};
  for (const [name, t] of Object.entries(state)) if (name.startsWith(prefix)) own[name.slice(prefix.length)] = t;
  return new SideNetwork({ ...config, members: 1 }, own);
}

/** name -> Float32Array of the tensors `required`; every missing or non-F32 tensor named in one ConfigError. */
function checkedState(state, required) {
  const missing = required.filter((n) => !(n in state));
  const wrong = required.filter((n) => n in state && state[n].dtype !== 'F32').map((n) => `${n} (${state[n].dtype})`);
  const problems = [];
  if (missing.length) problems.push(`side network tensors missing: ${missing.join(', ')}`);
  if (wrong.length) problems.push(`side network tensors must be F32, got ${wrong.join(', ')}`);
  if (problems.length) throw new ConfigError(problems);
  return Object.fromEntries(required.map((n) => [n, state[n].data]));
}

/** 1 / sqrt(mean(a^2) + eps) of each row's layer `i` of `acts` (rows, M, H), as in_norm's scale: a Float64Array. */
function rmsScales(acts, rows, M, H, i) {
  const scales = new Float64Array(rows);
  for (let n = 0; n < rows; n++) {
    const a = (n * M + i) * H;
    let squares = 0;
    for (let k = 0; k < H; k++) squares += acts[a + k] * acts[a + k];
    scales[n] = 1 / Math.sqrt(squares / H + EPS_RMS);
  }
  return scales;
}

/** The rows b T + lastIndex[b] of (B, T) positions: each row's pivot token, checked to lie within 0..T-1. */
function pivotIndex(lastIndex, B, T) {
  if (lastIndex === null || lastIndex === undefined) {
    throw new ConfigError('hidden states of every position need lastIndex (each row\'s pivot token) to classify');
  }
  const last = indices(lastIndex.data ?? lastIndex);
  if (last.length !== B) throw new ConfigError(`lastIndex holds ${last.length} positions for ${B} rows`);
  for (let b = 0; b < B; b++) {
    if (!(last[b] >= 0 && last[b] < T)) throw new ConfigError(`lastIndex[${b}] = ${last[b]} is outside 0..${T - 1}`);
    last[b] += b * T;
  }
  return last;
}

/**
 * `batch` (every position of its sequences) less the rows no pivot depends on: those that are neither a key (a real
 * token) nor a pivot. Attention gives a padding key no weight, so the states left are those of the whole batch
 * (the terms left out were zeros). Returns the smaller Batch and the pivots' rows in it.
 * @param {Batch} batch
 * @param {Int32Array} pivots rows of `batch`, one per sequence, in order
 * @returns {{batch: Batch, pivots: Int32Array}}
 */
function realTokens(batch, pivots) {
  const { taps, M, H, lengths, keys } = batch;
  if (keys === null) return { batch, pivots };
  const kept = [];
  const keptLengths = new Int32Array(lengths.length);
  const keptPivots = new Int32Array(lengths.length);
  for (let b = 0, row = 0; b < lengths.length; b++) {
    for (let end = row + lengths[b]; row < end; row++) {
      if (row === pivots[b]) keptPivots[b] = kept.length;
      else if (keys[row] === 0) continue;
      kept.push(row);
      keptLengths[b] += 1;
    }
  }
  if (kept.length === taps.length / (M * H)) return { batch, pivots };
  const width = M * H;
  return {
    batch: { taps: gatherRows(taps, kept, width), M, H, lengths: keptLengths, keys: Int32Array.from(kept, (row) => keys[row]) },
    pivots: keptPivots,
  };
}

/** Rows `index` of `x` (rows of `width`), in that order, as a new Float32Array. */
function gatherRows(x, index, width) {
  const out = new Float32Array(index.length * width);
  index.forEach((row, n) => out.set(x.subarray(row * width, (row + 1) * width), n * width));
  return out;
}

/** log(mean_j exp(logp_j)) element by element over K same-sized log-probability arrays, stably (log-sum-exp). */
function meanProbabilityLog(logp) {
  const out = new Float32Array(logp[0].length);
  const logK = Math.log(logp.length);
  for (let e = 0; e < out.length; e++) {
    let max = -Infinity;
    for (const l of logp) if (l[e] > max) max = l[e];
    let sum = 0;
    for (const l of logp) sum += Math.exp(l[e] - max);
    out[e] = max + Math.log(sum) - logK;
  }
  return out;
}

/**
 * The side network's forward pass in plain JavaScript, for the web device: src/mobillm/bundle/sidenet.py's
 * `NpSideNetwork` step for step (tests/test_web_bundle.py holds the two equal within 1e-5 of the values' scale).
 *
 * Tensors follow wire/tensor.mjs (`{dtype, shape, data}`); the maths runs on Float32Array buffers allocated once
 * per operation, never per element, with float64 accumulators in the dot products. The config is the saved
 * `side_config.json` as a plain object (snake_case keys, as the Python side writes it); the server validated it
 * when it trained. Reading the files is runtime.mjs's `loadSideNetwork`.
 */
import { ConfigError } from '../exceptions.mjs';
import { numel, tensor } from '../wire/tensor.mjs';

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

/** The dot product of `a` from `ai` and `b` from `bi` over `n` elements, in four independent float64 sums. */
function dot(a, ai, b, bi, n) {
  let s0 = 0;
  let s1 = 0;
  let s2 = 0;
  let s3 = 0;
  let k = 0;
  for (; k + 3 < n; k += 4) {
    s0 += a[ai + k] * b[bi + k];
    s1 += a[ai + k + 1] * b[bi + k + 1];
    s2 += a[ai + k + 2] * b[bi + k + 2];
    s3 += a[ai + k + 3] * b[bi + k + 3];
  }
  for (; k < n; k++) s0 += a[ai + k] * b[bi + k];
  return s0 + s1 + s2 + s3;
}

/**
 * `x` (rows of `inDim`) times `weight`^T (outDim, inDim) plus `bias` (outDim), as nn.Linear: a new Float32Array
 * of rows of outDim. Two rows by four outputs at a time: each weight read serves two rows and each input read
 * four outputs (1.5-3x the speed of one dot product at a time in V8), with float64 sums.
 */
function linear(x, rows, inDim, weight, bias, outDim) {
  const y = new Float32Array(rows * outDim);
  let n = 0;
  for (; n + 1 < rows; n += 2) {
    const xa = n * inDim;
    const xb = xa + inDim;
    const ya = n * outDim;
    const yb = ya + outDim;
    let o = 0;
    for (; o + 3 < outDim; o += 4) {
      const w0 = o * inDim;
      const w1 = w0 + inDim;
      const w2 = w1 + inDim;
      const w3 = w2 + inDim;
      let a0 = 0, a1 = 0, a2 = 0, a3 = 0, b0 = 0, b1 = 0, b2 = 0, b3 = 0;
      for (let k = 0; k < inDim; k++) {
        const u = x[xa + k];
        const v = x[xb + k];
        const p0 = weight[w0 + k], p1 = weight[w1 + k], p2 = weight[w2 + k], p3 = weight[w3 + k];
        a0 += u * p0; a1 += u * p1; a2 += u * p2; a3 += u * p3;
        b0 += v * p0; b1 += v * p1; b2 += v * p2; b3 += v * p3;
      }
      y[ya + o] = bias[o] + a0; y[ya + o + 1] = bias[o + 1] + a1; y[ya + o + 2] = bias[o + 2] + a2; y[ya + o + 3] = bias[o + 3] + a3;
      y[yb + o] = bias[o] + b0; y[yb + o + 1] = bias[o + 1] + b1; y[yb + o + 2] = bias[o + 2] + b2; y[yb + o + 3] = bias[o + 3] + b3;
    }
    for (; o < outDim; o++) {
      y[ya + o] = bias[o] + dot(x, xa, weight, o * inDim, inDim);
      y[yb + o] = bias[o] + dot(x, xb, weight, o * inDim, inDim);
    }
  }
  for (; n < rows; n++) {
    for (let o = 0; o < outDim; o++) y[n * outDim + o] = bias[o] + dot(x, n * inDim, weight, o * inDim, inDim);
  }
  return y;
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
   * @param {{shape: number[], data: Float32Array}} acts decoded taps, F32
   * @param {{shape: number[], data: ArrayLike<number|bigint>} | null} attentionMask (B, T), 1 = real token
   * @param {{data: ArrayLike<number|bigint>} | ArrayLike<number|bigint> | null} lastIndex (B,) pivot positions
   * @param {(hidden: object) => object | Promise<object>} labelLogits (B, H) F32 tensor -> (B, C) F32 tensor
   * @returns {Promise<{dtype: 'F32', shape: number[], data: Float32Array}>} (B, C)
   */
  async classify(acts, attentionMask, lastIndex, labelLogits) {
    if (this.members !== null) {
      const logp = [];
      for (const m of this.members) {
        const scores = await m.classify(acts, attentionMask, lastIndex, labelLogits);
        logp.push({ shape: scores.shape, data: logSoftmax(scores.data, scores.shape[1]) });
      }
      return tensor('F32', logp[0].shape, meanProbabilityLog(logp.map((l) => l.data)));
    }
    let hidden = this.hidden(acts, attentionMask);
    if (hidden.shape.length === 3) hidden = pivotRows(hidden, lastIndex);
    return labelLogits(hidden);
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
    const { shape, data } = acts;
    if (!(data instanceof Float32Array)) throw new ConfigError('activations must be float32 (decode the taps first)');
    if (shape[shape.length - 2] !== this.numLayers) {
      throw new ConfigError(`activations of shape [${shape}]: expected (..., ${this.numLayers}, H)`);
    }
    if (this.block === 'attention' && shape.length !== 4) {
      throw new ConfigError('the attention side block needs every position: activations of shape (B, T, M, H)');
    }
    const H = shape[shape.length - 1];
    const lead = shape.slice(0, -2); // [B] or [B, T]
    const rows = numel(lead);
    const mask = attentionMask === null ? null : indices(attentionMask.data);
    const s = this.state;
    const r = this.width;
    let h = new Float32Array(rows * r); // (B, [T,] r)
    const normed = new Float32Array(rows * H);
    for (let i = 0; i < this.numLayers; i++) {
      rmsNormLayer(data, rows, this.numLayers, H, i, normed);
      const down = linear(normed, rows, H, s[`down.${i}.weight`], s[`down.${i}.bias`], r);
      const mu = 1 / (1 + Math.exp(-s.gate[i] / this.gateTemperature)); // sigmoid(alpha_i / T)
      for (let j = 0; j < h.length; j++) h[j] = mu * h[j] + (1 - mu) * down[j];
      h = this.tokenWise ? this.mlp(`blocks.${i}`, h, rows) : this.attention(`blocks.${i}`, h, lead[0], lead[1], mask);
    }
    const out = linear(h, rows, r, s['up.weight'], s['up.bias'], H);
    const top = (this.numLayers - 1) * H;
    for (let n = 0; n < rows; n++) {
      const a = n * this.numLayers * H + top;
      for (let k = 0; k < H; k++) out[n * H + k] += data[a + k];
    }
    return tensor('F32', [...lead, H], out);
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
   * Multi-head self-attention (causal unless the config is bidirectional; padding keys blocked by `mask`) + MLP over
   * (B, T, r), as AttentionBlock; a new array.
   */
  attention(prefix, x, B, T, mask) {
    const s = this.state;
    const r = this.width;
    const rows = B * T;
    const h = layerNorm(x, r, s[`${prefix}.norm1.weight`], s[`${prefix}.norm1.bias`]);
    const qkv = linear(h, rows, r, s[`${prefix}.attn.in_proj_weight`], s[`${prefix}.attn.in_proj_bias`], 3 * r); // (B, T, 3r)
    const attended = multiHeadAttention(qkv, B, T, r, this.heads, this.causal, mask); // (B, T, r)
    const y = linear(attended, rows, r, s[`${prefix}.attn.out_proj.weight`], s[`${prefix}.attn.out_proj.bias`], r);
    for (let j = 0; j < y.length; j++) y[j] += x[j];
    return this.mlp(`${prefix}.mlp`, y, rows);
  }
}

/**
 * Scaled dot-product attention of each head over `qkv` (B, T, 3r: queries, keys, values side by side) -> (B, T, r),
 * as nn.MultiheadAttention's core: query t sees keys 0..t (`causal`) or all, less those `mask` (B, T) marks 0. A
 * query that sees no key (never the case with right padding) attends to nothing.
 */
function multiHeadAttention(qkv, B, T, r, heads, causal, mask) {
  const d = r / heads;
  const stride = 3 * r;
  const scale = 1 / Math.sqrt(d);
  const attended = new Float32Array(B * T * r);
  const weights = new Float64Array(T);
  const sums = new Float64Array(d);
  for (let b = 0; b < B; b++) {
    const row0 = b * T;
    for (let head = 0; head < heads; head++) {
      const k0 = r + head * d;
      const v0 = 2 * r + head * d;
      for (let t = 0; t < T; t++) {
        const q = (row0 + t) * stride + head * d;
        const keys = causal ? t + 1 : T;
        for (let j = 0; j < keys; j++) {
          const blocked = mask !== null && mask[row0 + j] === 0;
          weights[j] = blocked ? -Infinity : scale * dot(qkv, q, qkv, (row0 + j) * stride + k0, d);
        }
        if (!softmaxInPlace(weights, keys)) continue;
        sums.fill(0);
        for (let j = 0; j < keys; j++) {
          const w = weights[j];
          if (w === 0) continue;
          const v = (row0 + j) * stride + v0;
          for (let c = 0; c < d; c++) sums[c] += w * qkv[v + c];
        }
        attended.set(sums, (row0 + t) * r + head * d);
      }
    }
  }
  return attended;
}

/** The softmax of `weights[0..n)`, in place; false (and left alone) when every one is -Infinity. */
function softmaxInPlace(weights, n) {
  let max = -Infinity;
  for (let j = 0; j < n; j++) if (weights[j] > max) max = weights[j];
  if (max === -Infinity) return false;
  let sum = 0;
  for (let j = 0; j < n; j++) sum += (weights[j] = Math.exp(weights[j] - max));
  for (let j = 0; j < n; j++) weights[j] /= sum;
  return true;
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

/** RMS-normalised layer `i` of `acts` (rows, M, H) into `out` (rows, H): a / sqrt(mean(a^2) + eps), as in_norm. */
function rmsNormLayer(acts, rows, M, H, i, out) {
  for (let n = 0; n < rows; n++) {
    const a = (n * M + i) * H;
    let squares = 0;
    for (let k = 0; k < H; k++) squares += acts[a + k] * acts[a + k];
    const scale = 1 / Math.sqrt(squares / H + EPS_RMS);
    for (let k = 0; k < H; k++) out[n * H + k] = acts[a + k] * scale;
  }
}

/** (B, T, H) -> (B, H): each row's hidden state at its pivot position `lastIndex[b]`. */
function pivotRows(hidden, lastIndex) {
  if (lastIndex === null || lastIndex === undefined) {
    throw new ConfigError('hidden states of every position need lastIndex (each row\'s pivot token) to classify');
  }
  const [B, T, H] = hidden.shape;
  const last = indices(lastIndex.data ?? lastIndex);
  if (last.length !== B) throw new ConfigError(`lastIndex holds ${last.length} positions for ${B} rows`);
  const out = new Float32Array(B * H);
  for (let b = 0; b < B; b++) {
    if (!(last[b] >= 0 && last[b] < T)) throw new ConfigError(`lastIndex[${b}] = ${last[b]} is outside 0..${T - 1}`);
    out.set(hidden.data.subarray((b * T + last[b]) * H, (b * T + last[b] + 1) * H), b * H);
  }
  return tensor('F32', [B, H], out);
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

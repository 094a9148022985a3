/**
 * One fine-tuning job on a device bundle from JavaScript, as src/mobillm/recipes/bundle_device.py runs it in
 * Python: the bundle's tokenizer makes the same prompt batches, onnxruntime-web the same taps, the codecs the same
 * wire tensors; they stream through the same session rules (device/client.mjs). The downloaded side network is
 * then scored locally (bundle/sidenet.mjs and the bundle's label rows): test accuracy, zero-shot accuracy and
 * agreement with the server's eval predictions. Nothing is kept per sample but the predictions: validation and
 * test are forwarded again for scoring.
 *
 * The job's settings come from a template built in Python (`mobillm template`, recipes/job_template.py), so the
 * web device never guesses a default; the data decide the label names, their words and the prompt. A job the device
 * was stopped in is resumed from its record (`task.jobState` kept in a device/job_state.mjs store).
 */
import { ConfigError } from '../exceptions.mjs';
import { batchChunks } from '../data/order.mjs';
import { defaultTemplate } from '../data/templates.mjs';
import { getCodec } from '../wire/codecs.mjs';
import { batchTensors } from '../wire/messages.mjs';
import { int64, tensor } from '../wire/tensor.mjs';
import { SideNetwork } from '../bundle/sidenet.mjs';
import { deviceNoise } from '../device/noise.mjs';
import { jobState } from '../device/job_state.mjs';
import { Evaluator } from '../scoring.mjs';
import { streamTensors, StreamStats } from '../device/client.mjs';

/** SideConfig's fields that the data decide (recipes/job_template.py's DATA_FIELDS): null in a template. */
export const DATA_FIELDS = ['num_labels', 'label_token_ids', 'label_names', 'prompt_template'];

/** (B, T, H) taps -> (B, H): each row's position `index[b]`. */
export function pivotRows(tap, index) {
  const [B, T, H] = tap.shape;
  const out = new Float32Array(B * H);
  for (let b = 0; b < B; b += 1) out.set(tap.data.subarray((b * T + Number(index[b])) * H, (b * T + Number(index[b]) + 1) * H), b * H);
  return tensor('F32', [B, H], out);
}

/** M tensors (..., H) -> (..., M, H): the layers side by side, as np.stack(axis=-2). */
export function stackLayers(layers) {
  const M = layers.length;
  const H = layers[0].shape.at(-1);
  const rows = layers[0].data.length / H;
  const out = new Float32Array(rows * M * H);
  layers.forEach((layer, m) => {
    for (let r = 0; r < rows; r += 1) out.set(layer.data.subarray(r * H, (r + 1) * H), (r * M + m) * H);
  });
  return tensor('F32', [...layers[0].shape.slice(0, -1), M, H], out);
}

/** A job's data and settings on a loaded bundle: the Hello, the batches, and their local scoring. */
export class BundleTask {
  /**
   * @param {object} bundle a loaded bundle/runtime.mjs Bundle
   * @param {object} jobTemplate `mobillm template`'s JSON for this bundle
   * @param {{train: object[], validation: object[], test: object[], labelNames: string[]}} dataset data/sources.mjs's
   * @param {{noise?: number}} options
   */
  constructor(bundle, jobTemplate, dataset, { noise = 0 } = {}) {
    deviceNoise(noise); // refuses any noise: the web device does not draw it yet
    if (jobTemplate.fingerprint !== bundle.config.fingerprint) {
      throw new ConfigError(`the template is for the backbone ${jobTemplate.fingerprint}, the bundle holds ${bundle.config.fingerprint}: `
        + 'write the template from this bundle (mobillm template --bundle DIR)');
    }
    this.bundle = bundle;
    this.data = dataset;
    this.jobTemplate = jobTemplate;
    this.prompt = defaultTemplate(dataset.labelNames);
    const side = { ...jobTemplate.side_config }; // the template's key order is SideConfig's, which the Hello keeps
    Object.assign(side, {
      num_labels: dataset.labelNames.length,
      label_token_ids: this.labelTokenIds(this.prompt.labelWords),
      label_names: dataset.labelNames,
      prompt_template: this.prompt.template,
    });
    this.sideConfig = side;
    this.trainConfig = jobTemplate.train_config;
    this.maxLength = jobTemplate.data.max_length;
    this.codec = getCodec(side.codec);
    this.pivot = jobTemplate.pivot_only; // the pivot token only (token-wise blocks), or every position
    this.labelIds = side.label_token_ids;
  }

  /** First token of each label word; words that share it are refused. */
  labelTokenIds(words) {
    const ids = words.map((w) => this.bundle.tokenizer.encode(w, false)[0]);
    if (new Set(ids).size !== ids.length) throw new ConfigError(`label words ${JSON.stringify(words)} share a first token; choose words that start differently`);
    return ids;
  }

  /** The Hello's fields for `job` (the token travels in the handshake, not here). */
  hello(job) {
    return {
      job, model: this.jobTemplate.model, fingerprint: this.jobTemplate.fingerprint, side_config: this.sideConfig,
      train_config: this.trainConfig, train_samples: this.data.train.length, device_epochs: this.jobTemplate.device_epochs,
    };
  }

  /**
   * The record of `job` that device/job_state.mjs keeps to resume it: the Hello, `max_length` and the digests of
   * the validation and train examples (Python's bundle device keeps the same).
   * @param {string} job
   */
  jobState(job) {
    return jobState(this.hello(job), this.data.name, { max_length: this.maxLength },
      { validation: this.data.validation, train: this.data.train }, this.jobTemplate.mobillm_version);
  }

  /**
   * For each batch of `examples` after the first `skip`, in the Python device's order:
   * `{tensors, labels, sampleIds, encoded, tokens, taps}`. `stats` (forward seconds, samples, bytes) counts the work
   * when given.
   */
  async *forward(examples, { shuffle, epoch = 0, stats = null, skip = 0 }) {
    const { prefix, suffix } = this.prompt;
    let index = 0;
    for (const chunk of batchChunks(examples.length, this.trainConfig.batch_size, { shuffle, seed: this.trainConfig.seed, epoch })) {
      index += 1;
      if (index <= skip) continue; // held by the server: never forwarded
      const started = performance.now();
      const rows = chunk.map((i) => examples[i]);
      const tok = this.bundle.tokenizer;
      const tokens = tok.pad(tok.promptIds(prefix, rows.map((e) => e.text), suffix, this.maxLength));
      const taps = await this.bundle.taps(tokens.inputIds, tokens.attentionMask);
      const sent = this.pivot ? taps.map((t) => pivotRows(t, tokens.lastIndex.data)) : taps;
      const encoded = sent.map((t) => this.codec.encode(t));
      const labels = int64(rows.map((e) => e.label));
      const sampleIds = int64(chunk);
      const tensors = batchTensors(encoded, {
        sampleIds, labels,
        attentionMask: this.pivot ? undefined : tokens.attentionMask,
        lastIndex: this.pivot ? undefined : tokens.lastIndex,
      });
      if (stats !== null) {
        stats.seconds += (performance.now() - started) / 1000;
        stats.samples += rows.length;
        stats.bytes += encoded.reduce((n, e) => n + Object.values(e).reduce((m, t) => m + t.data.byteLength, 0), 0) + labels.data.byteLength;
      }
      yield { tensors, labels, sampleIds, encoded, tokens, taps };
    }
  }

  /**
   * `forward`'s batches as a stream source (device/client.mjs's Source): their count, and `{tensors, samples}` for
   * each after the first `skip`.
   */
  source(examples, options) {
    const forward = (skip) => this.forward(examples, { ...options, skip });
    return {
      count: Math.ceil(examples.length / this.trainConfig.batch_size),
      async* batches(skip) {
        for await (const batch of forward(skip)) yield { tensors: batch.tensors, samples: batch.labels.data.length };
      },
    };
  }

  /** (B, H) top hidden states -> a promise of (B, C) logits of the label words' rows of the frozen head. */
  labelLogits(hidden) {
    return this.bundle.labelLogits(hidden, this.labelIds);
  }

  /**
   * One forward pass over `examples` (in order), scored by the side network (and by the bare backbone when
   * `zeroShot`); the side network reads the taps through the codec's round trip, as the server did.
   */
  async score(examples, side, { zeroShot = false, keepLogits = false } = {}) {
    const numLabels = this.sideConfig.num_labels;
    const tuned = new Evaluator(numLabels, { keepLogits });
    const bare = zeroShot ? new Evaluator(numLabels) : null;
    for await (const { labels, sampleIds, encoded, tokens, taps } of this.forward(examples, { shuffle: false })) {
      const acts = stackLayers(encoded.map((e) => this.codec.decode(e))); // (B, [T,] M, H)
      const logits = await side.classify(acts, this.pivot ? null : tokens.attentionMask, tokens.lastIndex, (h) => this.labelLogits(h));
      tuned.add(logits.data, labels.data, sampleIds.data);
      if (bare !== null) {
        const top = pivotRows(taps.at(-1), tokens.lastIndex.data);
        bare.add((await this.labelLogits(top)).data, labels.data, sampleIds.data);
      }
    }
    return { tuned, bare };
  }
}

/**
 * Run one job on the bundle against a `mobillm serve` and score the downloaded side network locally.
 *
 * @param {BundleTask} task
 * @param {object} options `server` (ws:// or wss:// URL), `job`, `token`, `WebSocketImpl`, `socketOptions`,
 *   `maxMessageBytes`, `reconnects`, `backoffMs`, `onSent(stats, samples)`, `savedJob` (a job_state.mjs SavedJob of
 *   `task.jobState(job)`: resumes the job its store held; the caller calls `savedJob.finished()` once it has kept
 *   the result)
 * @returns {Promise<{summary: object, sideNet: {config: object, tensors: object}, predictions: object}>}
 */
export async function runBundleDevice(task, options) {
  const started = performance.now();
  const { server, job, ...stream } = options;
  const stats = new StreamStats();
  const { frame } = await streamTensors(
    server, task.hello(job), task.source(task.data.validation, { shuffle: false }),
    (epoch) => task.source(task.data.train, { shuffle: true, epoch, stats: stats.forward }),
    { ...stream, stats, deviceEpochs: task.jobTemplate.device_epochs },
  );
  const config = frame.header.config;
  const side = new SideNetwork(config, frame.tensors);
  const test = await task.score(task.data.test, side, { zeroShot: true, keepLogits: true });
  const { tuned: localEval } = await task.score(task.data.validation, side);
  const summary = {
    method: 'mobillm', runtime: 'onnxruntime-web', weights: task.bundle.config.weights, task: config.task,
    model: task.jobTemplate.model, codec: config.codec, shortcuts: config.shortcuts, n_train: task.data.train.length,
    n_validation: task.data.validation.length, n_test: task.data.test.length, data_notes: task.data.notes ?? [],
    zero_shot_test: test.bare.scores(), test: test.tuned.scores(), best_val_accuracy: frame.header.val_accuracy ?? null,
    eval_agreement: localEval.agreement(frame.header.eval_sample_ids, frame.header.eval_predictions),
    server_steps: frame.header.step, ...stats.totals(), wall_seconds: (performance.now() - started) / 1000,
  };
  const predictions = { sample_ids: test.tuned.sampleIds, labels: test.tuned.labels, predictions: test.tuned.predictions, logits: test.tuned.logits };
  return { summary, sideNet: { config, tensors: frame.tensors }, predictions };
}

/**
 * The device page (`GET /device` of `mobillm serve --web`): one fine-tuning job from a phone's browser with the
 * web device's modules as they are — the data read by data/sources.mjs from the files picked here, the bundle by
 * bundle/runtime.mjs through Cache Storage (browser/bundle_cache.mjs), the job run by recipes/bundle_device.mjs's
 * BundleTask and runBundleDevice over the browser's WebSocket — then local accuracy on the held-out test part and
 * a box to classify sentences with the downloaded side network, which IndexedDB keeps (browser/model_store.mjs)
 * for later visits, offline too. While a job runs IndexedDB also keeps its record (browser/job_store.mjs: the Hello
 * and the digests of the examples, never the examples), so that a tab closed mid-job and opened again from the same
 * link, with the same file picked, resumes the job where the server has it (device/job_state.mjs).
 *
 * The server serves web/src under /device/src/, so this file imports it as ./src/. When a job ends,
 * `window.mobillmResult` holds runBundleDevice's summary, test predictions and side network (for tests and for
 * whoever wants the numbers from the console).
 */
import { Bundle } from './src/bundle/runtime.mjs';
import { SideNetwork } from './src/bundle/sidenet.mjs';
import { loadDataset } from './src/data/sources.mjs';
import { BundleTask, runBundleDevice } from './src/recipes/bundle_device.mjs';
import { SavedJob } from './src/device/job_state.mjs';
import { ConfigError } from './src/exceptions.mjs';
import { browserCapabilities, chooseBackend } from './src/browser/backend.mjs';
import { cachedReader } from './src/browser/bundle_cache.mjs';
import { SPLIT_ROLES, dataSource, defaultColumns, fileColumns, readPicked } from './src/browser/data_files.mjs';
import { browserJobStore, keptJob } from './src/browser/job_store.mjs';
import { checkToken, readLink, socketUrl } from './src/browser/link.mjs';
import { forgetModel, loadModel, modelRecord, saveModel, unusableReason } from './src/browser/model_store.mjs';
import { formatBytes, formatDuration, percent, samplesInBatches, softmax, timeLeft } from './format.mjs';

const CONFIG_URL = '/device/config.json';
/** A dropped connection is re-opened this often, this far apart, before the job gives up. */
const RECONNECTS = 10;
const BACKOFF_MS = 2000;

const $ = (id) => document.getElementById(id);
const page = {
  config: null, // /device/config.json: {template, bundle: {base (absolute), files}}
  backend: chooseBackend(browserCapabilities()),
  bundles: new Map(), // bundle base -> a promise of {bundle, stats}
  model: null, // {task, side}: what classifies typed sentences
};

function setState(state) {
  $('app').dataset.state = state;
}

/** Show `message` in the page's error box (or in `box`: the data form's); '' hides it. */
function showError(message, box = 'error') {
  $(box).textContent = message;
  $(box).hidden = !message;
}

function setField(section, name, text) {
  $(section).querySelector(`[data-field="${name}"]`).textContent = text;
}

function setStage(text) {
  $('stage').textContent = text;
}

function renderBackend() {
  const { label, reasons, warnings, kind } = page.backend;
  $('backend').textContent = label;
  $('backend').dataset.kind = kind;
  $('backend-reasons').replaceChildren(...reasons.map((r) => Object.assign(document.createElement('li'), { textContent: r })));
  $('warning').textContent = warnings.join(' ');
  $('warning').hidden = warnings.length === 0;
}

/** The job and token from the link's fragment into the form; then out of the address bar (and the history). */
function takeLink() {
  const { job, token } = readLink(location.hash);
  if (job) $('job').value = job;
  if (token) $('token').value = token;
  if (location.hash) history.replaceState(null, '', location.pathname + location.search);
}

async function loadConfig() {
  const response = await fetch(CONFIG_URL, { cache: 'no-store' });
  if (!response.ok) throw new Error(`${CONFIG_URL}: HTTP ${response.status}; is this server started with --web MODEL?`);
  const config = await response.json();
  config.bundle.base = new URL(config.bundle.base, location.href).href;
  return config;
}

/** What the bundle reader has downloaded, and whether the browser keeps it. */
function drawDownload(stats) {
  const where = stats.kept ? 'kept on this device' : `not kept: ${stats.notKept}`;
  const got = stats.downloaded === 0 ? 'none' : `${formatBytes(stats.downloaded)} downloaded`;
  setField('progress', 'download', `${got}, ${where}`);
}

/** The bundle described by `description` ({base, files}), loaded once per page; downloads show in the progress. */
function openBundle(description) {
  if (!page.bundles.has(description.base)) {
    const opened = (async () => {
      const { readFile, stats } = await cachedReader(description, { onBytes: () => drawDownload(stats) });
      const bundle = await Bundle.load(readFile, { threads: page.backend.threads });
      return { bundle, stats };
    })();
    page.bundles.set(description.base, opened);
    opened.catch(() => page.bundles.delete(description.base)); // a failed download is tried again next time
  }
  return page.bundles.get(description.base);
}

// --- the data form -------------------------------------------------------------------------------------------

const mode = () => document.querySelector('input[name="mode"]:checked').value;
const FILE_INPUTS = { file: 'file', train: 'train-file', dev: 'dev-file', test: 'test-file' };
const readFiles = new WeakMap(); // File -> a promise of its {name, data}

/** The picked files, read: `{file}` in one-file mode, `{train, dev?, test?}` otherwise. */
async function pickedFiles() {
  const roles = mode() === 'one' ? ['file'] : SPLIT_ROLES;
  const picked = {};
  for (const role of roles) {
    const file = $(FILE_INPUTS[role]).files[0];
    if (file === undefined) continue;
    if (!readFiles.has(file)) readFiles.set(file, readPicked(file));
    picked[role] = await readFiles.get(file);
  }
  return picked;
}

function fillSelect(select, columns, chosen) {
  select.replaceChildren(...columns.map(({ value, label }) => new Option(label, value, false, value === chosen)));
  select.disabled = columns.length === 0;
}

/** The column choices of the first picked file (the one file, or the train file). */
async function refreshColumns() {
  showError('', 'data-error');
  const noHeader = $('no-header').checked;
  let columns = [];
  try {
    const picked = await pickedFiles();
    const first = picked.file ?? picked.train;
    if (first !== undefined) columns = fileColumns(first, noHeader);
  } catch (err) {
    showError(err.message, 'data-error');
  }
  const chosen = defaultColumns(columns, page.config?.template.data ?? {}, noHeader);
  fillSelect($('text-column'), columns, chosen.text);
  fillSelect($('label-column'), columns, chosen.label);
  $('start').disabled = columns.length === 0 || page.config === null;
}

function switchMode() {
  $('one-file').hidden = mode() !== 'one';
  $('split-files').hidden = mode() === 'one';
  refreshColumns();
}

/** The training cap's help: what an empty box means under the server's template. */
function describeCap() {
  const cap = page.config?.template.data.max_train_samples;
  if (!cap) return;
  $('max-train').placeholder = String(cap);
  $('max-train-help').textContent = `Fewer samples finish sooner; empty trains on ${cap} (the server's setting).`;
}

/** config.json's template with the data fields this form decides (as device.mjs's flags do). */
function jobTemplate() {
  const template = structuredClone(page.config.template);
  const max = $('max-train').value.trim();
  Object.assign(template.data, {
    text_column: $('text-column').value, label_column: $('label-column').value, no_header: $('no-header').checked,
  });
  if (max) template.data.max_train_samples = Number(max);
  return template;
}

function readDataset(picked, template) {
  const { data } = template;
  return loadDataset(dataSource(picked), {
    textColumn: data.text_column, labelColumn: data.label_column, noHeader: data.no_header,
    seed: template.train_config.seed, maxTrainSamples: data.max_train_samples ?? null, maxEvalSamples: data.max_eval_samples ?? null,
  });
}

function addNote(text) {
  $('notes').append(Object.assign(document.createElement('li'), { textContent: text }));
}

// --- resuming a job after a closed tab -----------------------------------------------------------------------

/** The notice of an unfinished job of the form's name that this browser keeps, with a button to forget it. */
async function showSavedJob() {
  const job = $('job').value.trim();
  const entry = job ? await keptJob(job).catch(() => null) : null;
  $('saved-job').hidden = entry === null;
  if (entry === null) return;
  $('saved-job-text').textContent = `This browser holds the unfinished job "${job}", started `
    + `${new Date(entry.savedAt).toLocaleString()} on the data "${entry.record.data}": pick the same file and start `
    + 'to resume it; what the server already has is not sent again.';
}

async function forgetSavedJob() {
  await browserJobStore($('job').value.trim()).remove().catch((err) => showError(`Could not forget the job: ${err.message}`));
  showError('');
  await showSavedJob();
}

/**
 * The job's record in this browser's IndexedDB: a SavedJob that resumes what a closed tab left of the job, or a
 * ConfigError (shown as it is) when the data or settings picked are not the job's. Null where the browser keeps
 * nothing: the job then runs, but cannot be resumed after the tab closes (a note says so).
 */
async function openSavedJob(job, task) {
  const state = await task.jobState(job);
  try {
    return await SavedJob.open(browserJobStore(job), state);
  } catch (err) {
    if (err instanceof ConfigError) throw err;
    addNote(`This job cannot be resumed if the tab closes: the browser keeps nothing for this page (${err.message}).`);
    return null;
  }
}

/** The progress card's line on a resumed job; `held(n)` once the server has said how many batches it holds. */
function resumeView(job) {
  $('resumed').textContent = `Resuming job "${job}": asking the server what it already has…`;
  $('resumed').hidden = false;
  let told = false;
  return {
    held(batches) {
      if (told) return;
      told = true;
      $('resumed').textContent = `Resuming job "${job}": ${batches} batches already on the server.`;
    },
  };
}

// --- a job ---------------------------------------------------------------------------------------------------

function checkMaxTrain() {
  const max = $('max-train').value.trim();
  if (max && !(Number.isInteger(Number(max)) && Number(max) >= 1)) {
    throw new Error(`"Train on at most" must be a whole number of samples, 1 or more (got ${max}), or empty for all`);
  }
}

/** Milliseconds between redraws of the progress while the server trains (acks arrive between the sends). */
const REDRAW_MS = 500;

/**
 * The progress figures: `onSent` for runBundleDevice (samples tapped; it hands over the job's StreamStats), and a
 * redraw every REDRAW_MS of what the acks bring (the server's step and loss) until `stop()`. `plan`: the samples
 * to tap (`total`; `sizes` of the sources in batches of `batchSize`), those scored locally at the end, when the job
 * began, and `onHeld(batches)`, called with the first batch sent: the batches the server held before (a resumed job
 * skips them, so they count as done and not in the rate).
 */
function progressView(plan) {
  let tapped = 0;
  let held = null; // samples of the batches the server held, once the first batch sent tells
  let stats = null;
  const draw = () => {
    if (stats === null) return;
    const elapsed = (performance.now() - plan.started) / 1000;
    const done = tapped + held;
    $('bar').value = done / plan.total;
    setField('progress', 'samples', held ? `${done} / ${plan.total} (${held} before)` : `${done} / ${plan.total}`);
    setField('progress', 'sent', formatBytes(stats.bytesSent));
    setField('progress', 'step', String(stats.ackedSteps.at(-1) ?? 0));
    const loss = stats.losses.at(-1);
    if (loss !== undefined) setField('progress', 'loss', loss.toFixed(4));
    const left = timeLeft(elapsed, tapped, plan.total - held + plan.scoring);
    setField('progress', 'eta', left === null ? '—' : `about ${formatDuration(left)}`);
  };
  const timer = setInterval(draw, REDRAW_MS);
  return {
    onSent(jobStats, samples) {
      stats = jobStats;
      if (held === null) {
        held = samplesInBatches(stats.batchesSkipped, plan.sizes, plan.batchSize);
        plan.onHeld(stats.batchesSkipped);
      }
      tapped += samples;
      draw();
      if (tapped + held === plan.total) setStage('All samples sent; the server finishes training, then the model comes back…');
    },
    stop() {
      clearInterval(timer);
      draw();
    },
  };
}

function showResult(summary) {
  const { zero_shot_test: bare, test } = summary;
  $('accuracy').textContent = `Accuracy on the held-out test part (${test.n} samples, never trained on): `
    + `${percent(test.accuracy)} fine-tuned, ${percent(bare.accuracy)} before.`;
  setField('result', 'zero-shot', percent(bare.accuracy));
  setField('result', 'tuned', percent(test.accuracy));
  setField('result', 'steps', String(summary.server_steps));
  setField('result', 'total-sent', formatBytes(summary.bytes_sent));
  setField('result', 'took', formatDuration(summary.wall_seconds));
  $('result').hidden = false;
}

async function runJob(event) {
  event.preventDefault();
  showError('');
  const job = $('job').value.trim();
  const token = $('token').value.trim();
  $('start').disabled = true;
  $('progress').hidden = false;
  $('result').hidden = true;
  $('resumed').hidden = true;
  try {
    checkMaxTrain();
    setState('checking');
    setStage(`Checking the token for job "${job}"…`);
    const check = await checkToken(location.origin, job, token);
    if (!check.ok) throw new Error(check.message);

    setStage('Reading your data (it stays on this device)…');
    const template = jobTemplate();
    const dataset = readDataset(await pickedFiles(), template);
    $('notes').replaceChildren();
    for (const note of dataset.notes) addNote(note);

    setState('loading-model');
    setStage('Loading the model (downloaded once, then kept on this device)…');
    const { bundle, stats } = await openBundle(page.config.bundle);
    drawDownload(stats);
    const task = new BundleTask(bundle, template, dataset);
    const savedJob = await openSavedJob(job, task);

    setState('training');
    setStage('Training: tapping your samples and streaming their activations…');
    const resumed = savedJob?.resume ? resumeView(job) : null;
    const sizes = [dataset.validation.length, ...Array(template.device_epochs).fill(dataset.train.length)];
    const plan = {
      total: sizes.reduce((a, b) => a + b, 0), sizes, batchSize: template.train_config.batch_size,
      scoring: dataset.test.length + dataset.validation.length, started: performance.now(), onHeld: (n) => resumed?.held(n),
    };
    const progress = progressView(plan);
    let result;
    try {
      result = await runBundleDevice(task, {
        server: socketUrl(location), job, token: token || null, WebSocketImpl: WebSocket, reconnects: RECONNECTS, backoffMs: BACKOFF_MS,
        onSent: progress.onSent, savedJob,
      });
    } finally {
      progress.stop();
    }
    resumed?.held(result.summary.batches_skipped); // every batch was on the server: none sent, none told
    setStage('Done: the fine-tuned model runs on this device.');
    $('bar').value = 1;
    setField('progress', 'eta', '—');
    setField('progress', 'step', String(result.summary.server_steps));
    showResult(result.summary);
    globalThis.mobillmResult = result;
    await keepModel(modelRecord({
      job, template, bundle: page.config.bundle, labelNames: dataset.labelNames, sideNet: result.sideNet, summary: result.summary,
    }), task);
    await savedJob?.finished();
    setState('done');
  } catch (err) {
    showError(err.message);
    setStage('Stopped.');
    setState('failed');
  } finally {
    await showSavedJob();
    $('start').disabled = false;
  }
}

// --- the kept model and the classify box ---------------------------------------------------------------------

/** Keep `record` in IndexedDB (a browser that refuses still classifies now) and classify with it. */
async function keepModel(record, task) {
  let kept = 'kept on this device for later visits';
  try {
    await saveModel(record);
  } catch (err) {
    kept = `not kept for later visits (${err.message})`;
  }
  useModel(record, task, kept);
}

function useModel(record, task, kept) {
  page.model = { task, side: new SideNetwork(record.sideNet.config, record.sideNet.tensors) };
  const accuracy = record.summary.test.accuracy;
  $('model-info').textContent = `Model of job "${record.job}" (labels: ${record.labelNames.join(', ')}; `
    + `${percent(accuracy)} on its test part), ${kept}.`;
  $('classify-form').hidden = false;
  $('classify').hidden = false;
}

/** A model kept by an earlier visit, on the bundle it was trained on (from Cache Storage, offline too). */
async function restoreModel() {
  const record = await loadModel().catch(() => null);
  if (record === null) return;
  const template = page.config?.template ?? record.template; // offline: what the record kept
  const reason = unusableReason(record, template);
  if (reason !== null) {
    $('model-info').textContent = `The model kept by an earlier visit cannot run on this server's model: ${reason}. `
      + 'Fine-tune a new one above.';
    $('classify-form').hidden = true;
    $('classify').hidden = false;
    return;
  }
  const { bundle } = await openBundle(page.config?.bundle ?? record.bundle);
  const empty = { train: [], validation: [], test: [], labelNames: record.labelNames };
  useModel(record, new BundleTask(bundle, record.template, empty), `saved ${new Date(record.savedAt).toLocaleString()}`);
}

async function classify(event) {
  event.preventDefault();
  const text = $('sentence').value.trim();
  if (!text || page.model === null) return;
  const { task, side } = page.model;
  try {
    const { tuned } = await task.score([{ text, label: 0 }], side, { keepLogits: true });
    const probs = softmax(tuned.logits[0]);
    const names = task.data.labelNames;
    const best = tuned.predictions[0];
    const others = names.map((n, i) => `${n} ${percent(probs[i])}`).filter((_, i) => i !== best);
    $('prediction').textContent = `${names[best]}: ${percent(probs[best])} (${others.join(', ')})`;
    $('prediction').dataset.label = names[best];
    $('prediction').dataset.sentence = text;
  } catch (err) {
    showError(`Could not classify: ${err.message}`);
  }
}

async function forget() {
  await forgetModel();
  page.model = null;
  $('classify').hidden = true;
}

async function main() {
  renderBackend();
  takeLink();
  for (const input of document.querySelectorAll('input[type="file"], #no-header')) input.addEventListener('change', refreshColumns);
  for (const radio of document.querySelectorAll('input[name="mode"]')) radio.addEventListener('change', switchMode);
  $('job-form').addEventListener('submit', runJob);
  $('classify-form').addEventListener('submit', classify);
  $('forget').addEventListener('click', forget);
  $('forget-job').addEventListener('click', forgetSavedJob);
  $('job').addEventListener('change', showSavedJob);
  try {
    page.config = await loadConfig();
  } catch (err) {
    showError(`Could not read the job's settings from the server (${err.message}). `
      + 'A model kept by an earlier visit still classifies below; to train, reconnect and reload.');
  }
  describeCap();
  await refreshColumns();
  await showSavedJob();
  setState('ready');
  await restoreModel().catch((err) => showError(`The kept model could not be loaded: ${err.message}`));
}

main();

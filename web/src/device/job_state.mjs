/**
 * What a device keeps of a job it started, so that a new process of it (a reopened browser tab, a restarted
 * `node web/device.mjs`) resumes the job instead of starting it again (docs/protocol.md §6b), as
 * src/mobillm/device/job_state.py keeps it for the Python device.
 *
 * A job's batches are a pure function of its Hello (batch size, seed, codec, shortcut layers...), of the settings
 * that shape the taps outside the Hello (`max_length`) and of the examples streamed: a resumed device makes them
 * again in the same seeded order and skips those the server holds (`Welcome.last_seq`). So the record holds what
 * proves that none of these changed, never a batch — the same record as Python's `job_state.json`:
 *
 *     {mobillm_version, hello: {the Hello header, token null, resume false}, data: 'my.tsv',
 *      settings: {max_length: 128}, data_sha512: {validation: '…', train: '…'}}
 *
 * Where the record lives is a store, injected: `fileJobStore` (device/node_job_store.mjs) for Node, IndexedDB in
 * a browser. The device saves the record once the server has welcomed the job and removes it once the side network
 * is kept; a job that failed keeps it, to be resumed.
 */
import { ConfigError, ProtocolError } from '../exceptions.mjs';
import { sha512 } from '../data/sha512.mjs';
import { makeHeader } from '../wire/messages.mjs';
import { helloDifferences } from '../wire/session.mjs';

/** The file a Node device keeps the record in, in its output directory (Python's JOB_STATE_NAME). */
export const JOB_STATE_NAME = 'job_state.json';

/**
 * Where one job's record is kept. Any object with these members is a store; the record is plain JSON data
 * (structured-clonable, so IndexedDB can hold it as it is).
 *
 * @typedef {object} JobStateStore
 * @property {string} name how messages name the saved state, in a phrase that follows "remove" — e.g. a file's
 *   path, or "this browser's saved job 'alice'"
 * @property {() => Promise<object | null>} load the record saved, or null when there is none
 * @property {(record: object) => Promise<void>} save replace the record; atomically: a crash leaves the old or the
 *   new record, never a part
 * @property {() => Promise<void>} remove forget the record (none saved is not an error)
 */

const encoder = new TextEncoder();

/**
 * SHA-512 (hex) of a split's examples in order, as Python's `examples_sha512`: the text and the label of each as
 * UTF-8 strings, each prefixed with its length in bytes and ':'. WebCrypto's digest where there is one (Node, a
 * secure context), data/sha512.mjs's elsewhere (a page over plain HTTP): the same digest either way.
 * @param {{text: string, label: number}[]} examples
 * @returns {Promise<string>}
 */
export async function examplesSha512(examples) {
  const parts = [];
  let size = 0;
  for (const { text, label } of examples) {
    for (const value of [text, String(label)]) {
      const raw = encoder.encode(value);
      const head = encoder.encode(`${raw.length}:`);
      parts.push(head, raw);
      size += head.length + raw.length;
    }
  }
  const bytes = new Uint8Array(size);
  let at = 0;
  for (const part of parts) {
    bytes.set(part, at);
    at += part.length;
  }
  const subtle = globalThis.crypto?.subtle;
  const digest = subtle ? new Uint8Array(await subtle.digest('SHA-512', bytes)) : sha512(bytes);
  return Array.from(digest, (b) => b.toString(16).padStart(2, '0')).join('');
}

/**
 * A job's record: its Hello, `data` (where the examples came from: shown, not compared, so the file may move), the
 * device-side `settings` that shape its taps, and each streamed split's `examplesSha512`.
 * @param {object} hello the Hello's fields, as DeviceSession takes them
 * @param {string} data
 * @param {object} settings e.g. {max_length}
 * @param {Record<string, {text: string, label: number}[]>} splits name -> examples (validation and train)
 * @param {string} version the mobillm version of the job's template (`mobillm_version`)
 */
export async function jobState(hello, data, settings, splits, version) {
  const digests = {};
  for (const [name, examples] of Object.entries(splits)) digests[name] = await examplesSha512(examples);
  return {
    mobillm_version: version, hello: { ...makeHeader({ ...hello, type: 'hello' }), token: null, resume: false },
    data, settings: { ...settings }, data_sha512: digests,
  };
}

/** The record `raw` as saved, or a ConfigError saying how to start afresh when it is not one this device reads. */
function readRecord(raw, where) {
  const problem = (why) => new ConfigError(`${where} is not a job state this device reads (${why}); remove it to start the job afresh`);
  for (const key of ['hello', 'settings', 'data_sha512']) {
    if (raw === null || typeof raw !== 'object' || typeof raw[key] !== 'object' || raw[key] === null) throw problem(`no ${key}`);
  }
  try {
    return { ...raw, hello: makeHeader({ ...raw.hello, type: 'hello' }) };
  } catch (err) {
    if (err instanceof ProtocolError) throw problem(err.message);
    throw err;
  }
}

const changedKeys = (a, b) => [...new Set([...Object.keys(a), ...Object.keys(b)])].sort()
  .filter((k) => JSON.stringify(a[k]) !== JSON.stringify(b[k]));

/**
 * Refuse to resume the `saved` job as `current` unless it is the same job on the same examples, with the
 * messages of Python's `JobState.check_resumes`: a ConfigError naming what changed and how to start afresh.
 * @param {object} saved the record a store held
 * @param {object} current the record of the job about to run
 * @param {string} where the store's name
 */
export function checkResumes(saved, current, where) {
  const was = saved.hello.job;
  const job = current.hello.job;
  const afresh = `remove ${where} to start it afresh (under another job name while the server still runs it)`;
  if (was !== job) {
    throw new ConfigError(`${where} holds the unfinished job '${was}', not '${job}': run job '${was}' again to resume it, `
      + `or remove ${where} to start '${job}' afresh`);
  }
  const differ = [...helloDifferences(saved.hello, current.hello),
    ...changedKeys(saved.settings, current.settings).map((k) => `settings.${k}`)];
  if (differ.length) {
    throw new ConfigError(`job '${job}' was started with other settings (${differ.join(', ')} differ): run it with the same `
      + `settings to resume it, or ${afresh}`);
  }
  const changed = changedKeys(saved.data_sha512, current.data_sha512);
  if (changed.length) {
    throw new ConfigError(`the data ${current.data} is not what job '${job}' was started with (${saved.data}): its `
      + `${changed.join(' and ')} examples changed; give the same data to resume the job, or ${afresh}`);
  }
}

/**
 * A job and the store that keeps its record, as Python's SavedJob. `resume`: the store held this very job (same
 * Hello, settings and examples), which an earlier process started; a record of another job, other settings or other
 * data is refused by `open` (ConfigError). `started()` saves the record once the server welcomed the job,
 * `finished()` removes it once the side network is kept.
 */
export class SavedJob {
  /**
   * The job whose record is `state` (`jobState`), checked against what `store` holds.
   * @param {JobStateStore} store
   * @param {object} state
   * @returns {Promise<SavedJob>}
   */
  static async open(store, state) {
    const raw = await store.load();
    if (raw !== null) checkResumes(readRecord(raw, store.name), state, store.name);
    return new SavedJob(store, state, raw !== null);
  }

  /** @param {JobStateStore} store @param {object} state @param {boolean} resume */
  constructor(store, state, resume) {
    this.store = store;
    this.state = state;
    this.resume = resume;
  }

  /** Save the record: the server welcomed the job. */
  started() {
    return this.store.save(this.state);
  }

  /** Remove the record: the side network is kept. */
  finished() {
    return this.store.remove();
  }
}

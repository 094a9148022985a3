/**
 * web/src/browser/ and the page's helpers where Node runs them: picked files as a data source and their columns,
 * the bundle reader over a (fake) Cache Storage, the backend choice, the device link and token check, the kept
 * model's checks and the page's store of unfinished jobs over a (fake) IndexedDB. The page itself runs in
 * Chromium: tests/test_web_page.py.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { ConfigError, DataError } from '../src/exceptions.mjs';
import { loadDataset } from '../src/data/sources.mjs';
import { browserCapabilities, chooseBackend } from '../src/browser/backend.mjs';
import { BUNDLE_CACHE, cacheKey, cachedReader } from '../src/browser/bundle_cache.mjs';
import { dataSource, defaultColumns, fileColumns, readPicked } from '../src/browser/data_files.mjs';
import { checkToken, readLink, socketUrl } from '../src/browser/link.mjs';
import { browserJobStore, keptJob } from '../src/browser/job_store.mjs';
import { RECORD_VERSION, loadModel, modelRecord, saveModel, unusableReason } from '../src/browser/model_store.mjs';
import { SavedJob, jobState } from '../src/device/job_state.mjs';
import { formatBytes, formatDuration, samplesInBatches, softmax, timeLeft } from '../page/format.mjs';
import { RULES } from '../tools/py/session.mjs';

const bytes = (text) => new TextEncoder().encode(text);
const picked = (name, text) => ({ name, data: bytes(text) });

function tsv(n, offset = 0) {
  const rows = ['sentence\tlabel'];
  for (let i = 0; i < n; i += 1) rows.push(`text number ${i + offset}\t${i % 2 ? 'positive' : 'negative'}`);
  return `${rows.join('\n')}\n`;
}

describe('picked data files', () => {
  it('reads a File the page was given, refusing other types', async () => {
    const file = await readPicked(new File([tsv(2)], 'mine.tsv'));
    assert.equal(file.name, 'mine.tsv');
    assert.equal(new TextDecoder().decode(file.data), tsv(2));
    const refused = (err) => err instanceof DataError && /unsupported file type \.txt/.test(err.message);
    await assert.rejects(readPicked(new File(['x'], 'notes.txt')), refused);
  });

  it('one file is split 80/10/10 by loadDataset', () => {
    const data = loadDataset(dataSource({ file: picked('reviews.tsv', tsv(50)) }));
    assert.equal(data.train.length + data.validation.length + data.test.length, 50);
    assert.ok(data.train.length >= 40 && data.test.length >= 4, 'a stratified 80/10/10 split');
    assert.equal(data.name, 'reviews');
  });

  it('split files load as a directory under their roles, whatever their names', () => {
    const source = dataSource({ train: picked('my train.TSV', tsv(20)), test: picked('held out.tsv', tsv(6, 100)) });
    assert.deepEqual(source.files.map((f) => f.name), ['train.tsv', 'test.tsv']);
    const data = loadDataset(source);
    assert.equal(data.test.length, 6);
    assert.equal(data.train.length + data.validation.length, 20); // dev carved out of train
    assert.throws(() => dataSource({ dev: picked('dev.tsv', tsv(4)) }), /pick a training file/);
  });

  it('offers the header names, JSONL keys, or positions of a file without a header', () => {
    const csv = fileColumns(picked('a.csv', 'review,stars,label\n"good, really",5,1\n'), false);
    assert.deepEqual(csv.map((c) => c.value), ['review', 'stars', 'label']);
    assert.deepEqual(fileColumns(picked('a.jsonl', '\n{"text": "hi", "y": 1}\n'), false).map((c) => c.value), ['text', 'y']);
    const positions = fileColumns(picked('a.tsv', 'a rather long first text of the file\t1\n'), true);
    assert.deepEqual(positions.map((c) => c.value), ['0', '1']);
    assert.match(positions[0].label, /^column 0 \(“a rather long first tex…”\)$/);
    assert.throws(() => fileColumns(picked('a.jsonl', '{"a": 1}\n'), true), /applies to \.tsv\/\.csv files/);
    assert.throws(() => fileColumns(picked('a.jsonl', '[1, 2]\n'), false), /a JSON object per line/);
    assert.throws(() => fileColumns(picked('a.tsv', '\n\n'), false), /a\.tsv is empty/);
  });

  it('selects the template\'s columns when the file has them, else first and last', () => {
    const defaults = { text_column: 'sentence', label_column: 'label' };
    const cols = (...names) => names.map((value) => ({ value, label: value }));
    assert.deepEqual(defaultColumns(cols('id', 'label', 'sentence'), defaults, false), { text: 'sentence', label: 'label' });
    assert.deepEqual(defaultColumns(cols('review', 'stars', 'y'), defaults, false), { text: 'review', label: 'y' });
    assert.deepEqual(defaultColumns(cols('0', '1', '2'), defaults, true), { text: '0', label: '1' });
  });
});

/** An in-memory CacheStorage with one cache, as much of it as the reader uses. */
function fakeCaches() {
  const entries = new Map();
  const cache = {
    match: async (key) => (entries.has(key) ? new Response(entries.get(key)) : undefined),
    put: async (key, response) => { entries.set(key, new Uint8Array(await response.arrayBuffer())); },
    delete: async (key) => entries.delete(typeof key === 'string' ? key : key.url),
    keys: async () => [...entries.keys()].map((url) => ({ url })),
  };
  const opened = [];
  return { entries, opened, open: async (name) => { opened.push(name); return cache; } };
}

/** A server of `files` ({name: Uint8Array}) under `base` that honours Range, counting requests. */
function fakeServer(base, files) {
  const requests = [];
  const fetchImpl = async (url, { headers = {} } = {}) => {
    requests.push({ url: String(url), range: headers.Range });
    const body = files[String(url).slice(base.length)];
    if (body === undefined) return new Response('not found', { status: 404 });
    const match = /^bytes=(\d+)-(\d+)$/.exec(headers.Range ?? '');
    if (match === null) return new Response(body);
    return new Response(body.slice(Number(match[1]), Number(match[2]) + 1), { status: 206 });
  };
  return { requests, fetchImpl };
}

describe('the bundle reader over Cache Storage', () => {
  const base = 'https://phone.test:8765/device/bundle/k1/';
  const files = { 'bundle.json': bytes('{"a": 1}'), 'lm_head.safetensors': bytes('0123456789abcdef') };
  const description = { base, files: { 'bundle.json': { size: 8 }, 'lm_head.safetensors': { size: 16 } } };

  it('downloads each file and span once; a second reader (a second visit) downloads nothing', async () => {
    const caches = fakeCaches();
    const server = fakeServer(base, files);
    let counted = 0;
    const first = await cachedReader(description, { caches, fetchImpl: server.fetchImpl, onBytes: (n) => { counted += n; } });
    assert.deepEqual(await first.readFile('bundle.json'), files['bundle.json']);
    assert.deepEqual(await first.readFile('lm_head.safetensors', [4, 8]), bytes('4567'));
    assert.equal(server.requests.length, 2);
    assert.equal(server.requests[1].range, 'bytes=4-7');
    assert.equal(first.stats.downloaded, 12);
    assert.equal(counted, 12);
    assert.deepEqual(caches.opened, [BUNDLE_CACHE]);
    assert.ok(caches.entries.has(cacheKey(base, 'lm_head.safetensors', [4, 8])));

    const second = await cachedReader(description, { caches, fetchImpl: server.fetchImpl });
    assert.deepEqual(await second.readFile('bundle.json'), files['bundle.json']);
    assert.deepEqual(await second.readFile('lm_head.safetensors', [4, 8]), bytes('4567'));
    assert.equal(server.requests.length, 2);
    assert.deepEqual(second.stats, { downloaded: 0, cached: 12, kept: true, notKept: null });
  });

  it('goes on without keeping when the browser refuses to store a file (its quota), and keeps none of the bundle', async () => {
    const caches = fakeCaches();
    const server = fakeServer(base, files);
    const first = await cachedReader(description, { caches, fetchImpl: server.fetchImpl });
    assert.deepEqual(await first.readFile('bundle.json'), files['bundle.json']);
    const cache = await caches.open(BUNDLE_CACHE);
    cache.put = async () => { throw new Error('Unexpected internal error.'); };
    assert.deepEqual(await first.readFile('lm_head.safetensors'), files['lm_head.safetensors']);
    assert.equal(first.stats.kept, false);
    assert.match(first.stats.notKept, /refused to keep lm_head\.safetensors \(0\.0 MiB\): Unexpected internal error/);
    assert.equal(caches.entries.size, 0); // half a bundle is not kept either
    assert.deepEqual(await first.readFile('lm_head.safetensors', [0, 4]), bytes('0123')); // and it still reads
    assert.equal(server.requests.length, 3);
  });

  it('answers null for a file the bundle does not list, without asking the server', async () => {
    const server = fakeServer(base, files);
    const { readFile } = await cachedReader(description, { caches: fakeCaches(), fetchImpl: server.fetchImpl });
    assert.equal(await readFile('taps.onnx.data'), null);
    assert.equal(server.requests.length, 0);
  });

  it('never keeps a cut download, and replaces a damaged kept file', async () => {
    const caches = fakeCaches();
    const cut = fakeServer(base, { 'bundle.json': bytes('{"a"') });
    const reader = await cachedReader(description, { caches, fetchImpl: cut.fetchImpl });
    await assert.rejects(reader.readFile('bundle.json'), /got 4 bytes, expected 8; reload the page/);
    assert.equal(caches.entries.size, 0);
    caches.entries.set(cacheKey(base, 'bundle.json'), bytes('{"'));
    const server = fakeServer(base, files);
    const again = await cachedReader(description, { caches, fetchImpl: server.fetchImpl });
    assert.deepEqual(await again.readFile('bundle.json'), files['bundle.json']);
    assert.equal(server.requests.length, 1);
  });

  it('forgets the files of another bundle when it opens', async () => {
    const caches = fakeCaches();
    caches.entries.set('https://phone.test:8765/device/bundle/old/taps.onnx', bytes('old'));
    caches.entries.set(cacheKey(base, 'bundle.json'), files['bundle.json']);
    await cachedReader(description, { caches, fetchImpl: fakeServer(base, files).fetchImpl });
    assert.deepEqual([...caches.entries.keys()], [cacheKey(base, 'bundle.json')]);
  });

  it('without Cache Storage (not a secure context) downloads every time', async () => {
    const server = fakeServer(base, files);
    const reader = await cachedReader(description, { caches: undefined, fetchImpl: server.fetchImpl });
    await reader.readFile('bundle.json');
    await reader.readFile('bundle.json');
    assert.equal(server.requests.length, 2);
    assert.equal(reader.stats.kept, false);
  });
});

describe('the backend', () => {
  const caps = { secure: true, isolated: true, sharedMemory: true, webgpu: false, cores: 8, origin: 'https://a', storage: true };

  it('runs WASM threads when cross-origin isolated, half the cores up to four', () => {
    const backend = chooseBackend(caps);
    assert.equal(backend.kind, 'wasm-threads');
    assert.equal(backend.threads, 4);
    assert.deepEqual(backend.warnings, []);
    assert.equal(chooseBackend({ ...caps, cores: 4 }).threads, 2);
    assert.equal(chooseBackend({ ...caps, cores: 2 }).kind, 'wasm');
  });

  it('says why it runs on one thread', () => {
    const notIsolated = chooseBackend({ ...caps, isolated: false });
    assert.equal(notIsolated.threads, 1);
    assert.match(notIsolated.reasons[0], /crossOriginIsolated is false/);
    assert.match(chooseBackend({ ...caps, sharedMemory: false }).reasons[0], /no SharedArrayBuffer/);
    const webgpu = chooseBackend({ ...caps, webgpu: true }).reasons.join(' ');
    assert.match(webgpu, /offers WebGPU, but this page runs ONNX Runtime's WASM build/);
  });

  it('outside a secure context warns and says what to do', () => {
    const backend = chooseBackend({ ...caps, secure: false, isolated: false, storage: false, origin: 'http://192.168.1.20:8765' });
    assert.equal(backend.kind, 'wasm');
    assert.match(backend.warnings[0], /^http:\/\/192\.168\.1\.20:8765 is plain HTTP/);
    assert.match(backend.warnings[0], /--certfile CERT\.pem --keyfile KEY\.pem/);
    assert.match(backend.reasons.join(' '), /no WebGPU outside a secure context/);
  });

  it('reads what a page scope grants', () => {
    const scope = {
      isSecureContext: true, crossOriginIsolated: false, SharedArrayBuffer, navigator: { hardwareConcurrency: 6 },
      location: { origin: 'https://x' },
    };
    assert.deepEqual(browserCapabilities(scope), {
      secure: true, isolated: false, sharedMemory: true, webgpu: false, cores: 6, origin: 'https://x', storage: false,
    });
  });
});

describe('the device link', () => {
  it('reads job and token from the fragment', () => {
    assert.deepEqual(readLink('#job=alice&token=abc%2Bdef'), { job: 'alice', token: 'abc+def' });
    assert.deepEqual(readLink(''), { job: '', token: '' });
    assert.equal(socketUrl({ protocol: 'https:', host: 'phone.lan:8765' }), 'wss://phone.lan:8765');
    assert.equal(socketUrl({ protocol: 'http:', host: '127.0.0.1:9' }), 'ws://127.0.0.1:9');
  });

  it('checks the token with Bearer before any socket, and says what a refusal means', async () => {
    const seen = [];
    const answer = (status, body) => async (url, init) => {
      seen.push({ url: String(url), auth: init.headers.Authorization ?? null });
      return new Response(JSON.stringify(body), { status });
    };
    assert.deepEqual(await checkToken('https://s:1', 'alice', 'tok', answer(200, { ok: true })), { ok: true });
    assert.deepEqual(seen, [{ url: 'https://s:1/jobs/alice/auth', auth: 'Bearer tok' }]);
    const refused = await checkToken('https://s:1', 'alice', 'bad', answer(401, { ok: false, error: 'invalid_token', message: 'x' }));
    assert.equal(refused.ok, false);
    assert.match(refused.message, /refused this token for job "alice".*mobillm token create --job alice --link URL/);
    const none = await checkToken('https://s:1', 'alice', '', answer(401, { ok: false, error: 'no_token' }));
    assert.match(none.message, /no token: open the device link/);
    assert.equal(seen.at(-1).auth, null); // asked without a token: a server run with --no-auth answers 200
    assert.match((await checkToken('https://s:1', 'a', 't', answer(500, { message: 'boom' }))).message, /HTTP 500: boom/);
    const down = await checkToken('https://s:1', 'a', 't', async () => { throw new TypeError('Failed to fetch'); });
    assert.match(down.message, /could not reach the server at https:\/\/s:1 \(Failed to fetch\)/);
  });
});

describe('the kept model', () => {
  const template = { model: 'tiny', fingerprint: 'f1', side_config: { shortcuts: [2, 4] } };
  const record = modelRecord({
    job: 'alice', template, bundle: { base: 'https://x/', files: {} }, labelNames: ['a', 'b'],
    sideNet: { config: { shortcuts: [2, 4] }, tensors: {} }, summary: {},
  });

  it('classifies on a bundle of the same backbone and layers only', () => {
    assert.equal(record.version, RECORD_VERSION);
    assert.equal(unusableReason(record, template), null);
    assert.match(unusableReason(record, { ...template, fingerprint: 'f2' }), /trained on another model \(tiny\)/);
    assert.match(unusableReason(record, { ...template, side_config: { shortcuts: [1, 4] } }), /reads layers \[2,4\]/);
    assert.match(unusableReason({ ...record, version: 0 }, template), /another version/);
  });
});

/**
 * An IDBFactory as small as the browser modules need: versioned databases of object stores keyed by `put`'s key,
 * every request answered on a later task, values stored as structured clones, `oncomplete` after the requests.
 */
function fakeIndexedDB() {
  const databases = new Map(); // name -> {version, stores: Map<name, Map<key, value>>}
  const later = (request, run, after = () => {}) => {
    setTimeout(() => {
      try {
        request.result = run();
      } catch (err) {
        request.error = err;
        request.onerror?.();
        return;
      }
      request.onsuccess?.();
      after();
    });
    return request;
  };
  const connect = (entry) => ({
    objectStoreNames: { contains: (name) => entry.stores.has(name) },
    createObjectStore: (name) => entry.stores.set(name, new Map()),
    close() {},
    transaction(name, mode) {
      const rows = entry.stores.get(name);
      if (!rows) throw new DOMException(`no object store ${name}`, 'NotFoundError');
      const tx = {};
      const finish = () => setTimeout(() => tx.oncomplete?.());
      const write = (run) => {
        if (mode !== 'readwrite') throw new DOMException('read-only transaction', 'ReadOnlyError');
        return later({}, run, finish);
      };
      tx.objectStore = () => ({
        get: (key) => later({}, () => structuredClone(rows.get(key)), finish),
        put: (value, key) => write(() => { rows.set(key, structuredClone(value)); return key; }),
        delete: (key) => write(() => { rows.delete(key); }),
      });
      return tx;
    },
  });
  return {
    databases,
    open(name, version) {
      const request = {};
      setTimeout(() => {
        if (!databases.has(name)) databases.set(name, { version: 0, stores: new Map() });
        const entry = databases.get(name);
        request.result = connect(entry);
        if (version > entry.version) {
          entry.version = version;
          request.onupgradeneeded?.();
        }
        request.onsuccess?.();
      });
      return request;
    },
  };
}

describe('the page\'s store of unfinished jobs', () => {
  const SPLITS = { validation: [{ text: 'a', label: 0 }], train: [{ text: 'b', label: 1 }, { text: 'c', label: 0 }] };
  const state = (splits = SPLITS) => jobState({ ...RULES.hello, job: 'alice' }, 'reviews', { max_length: 64 }, splits, '0.1.0');

  it('keeps one record per job name, which a reopened page resumes, and forgets it when the job is done', async () => {
    const idb = fakeIndexedDB();
    const store = browserJobStore('alice', idb);
    assert.equal(store.name, "this browser's saved job 'alice'");
    const first = await SavedJob.open(store, await state());
    assert.equal(first.resume, false);
    assert.equal(await store.load(), null); // nothing saved before the server welcomes the job
    await first.started();
    const kept = await keptJob('alice', idb);
    assert.deepEqual(kept.record, await state());
    assert.ok(Math.abs(kept.savedAt - Date.now()) < 60_000);
    assert.equal(await keptJob('bob', idb), null); // another job's name, another record
    assert.ok(!JSON.stringify(kept).includes('"text"')); // digests of the examples, never the examples

    const reopened = await SavedJob.open(browserJobStore('alice', idb), await state());
    assert.equal(reopened.resume, true);
    await reopened.finished();
    assert.equal(await keptJob('alice', idb), null);
    await browserJobStore('alice', idb).remove(); // none saved is not an error
  });

  it('refuses changed data, saying how to start afresh', async () => {
    const idb = fakeIndexedDB();
    await (await SavedJob.open(browserJobStore('alice', idb), await state())).started();
    const changed = await state({ ...SPLITS, train: [{ text: 'b', label: 0 }, { text: 'c', label: 0 }] });
    await assert.rejects(SavedJob.open(browserJobStore('alice', idb), changed), (err) => err instanceof ConfigError
      && err.message.includes("its train examples changed; give the same data to resume the job, or remove this browser's "
        + "saved job 'alice' to start it afresh"));
  });

  it('shares the database with the kept model, whichever opens it first', async () => {
    const idb = fakeIndexedDB();
    await saveModel({ job: 'x' }, idb);
    await browserJobStore('alice', idb).save({ hello: {} });
    assert.deepEqual(await loadModel(idb), { job: 'x' });
    assert.deepEqual([...idb.databases.get('mobillm-device').stores.keys()].sort(), ['jobs', 'models']);
    const old = fakeIndexedDB(); // a database of the first version (models only) is upgraded
    old.databases.set('mobillm-device', { version: 1, stores: new Map([['models', new Map([['last', { job: 'y' }]])]]) });
    await browserJobStore('alice', old).save({ hello: {} });
    assert.deepEqual(await loadModel(old), { job: 'y' });
  });

  it('fails plainly where the browser keeps nothing', async () => {
    await assert.rejects(browserJobStore('alice', undefined).load(), /keeps no data for pages \(no IndexedDB\)/);
  });
});

describe('the page\'s figures', () => {
  it('formats sizes, durations, time left and probabilities', () => {
    assert.equal(formatBytes(999), '999 B');
    assert.equal(formatBytes(12_345), '12.3 KB');
    assert.equal(formatBytes(4_500_000), '4.5 MB');
    assert.equal(formatDuration(42.4), '42 s');
    assert.equal(formatDuration(200), '3 min 20 s');
    assert.equal(formatDuration(3900), '1 h 5 min');
    assert.equal(timeLeft(10, 0, 100), null);
    assert.equal(timeLeft(10, 25, 100), 30);
    // validation 10 (batches of 4: 4 4 2), then two epochs of 6 (4 2): the first 4 batches hold 10 + 4 samples
    assert.equal(samplesInBatches(0, [10, 6, 6], 4), 0);
    assert.equal(samplesInBatches(4, [10, 6, 6], 4), 14);
    assert.equal(samplesInBatches(7, [10, 6, 6], 4), 22);
    const p = softmax([1000, 1000 + Math.log(3)]);
    assert.ok(Math.abs(p[0] - 0.25) < 1e-12 && Math.abs(p[1] - 0.75) < 1e-12);
  });
});

/** The job record a device keeps to resume a job (device/job_state.mjs) and Node's file store of it. */
import assert from 'node:assert/strict';
import { mkdtemp, readFile, readdir, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, test } from 'node:test';

import { ConfigError } from '../src/exceptions.mjs';
import { sha512 } from '../src/data/sha512.mjs';
import { JOB_STATE_NAME, SavedJob, checkResumes, examplesSha512, jobState } from '../src/device/job_state.mjs';
import { fileJobStore } from '../src/device/node_job_store.mjs';
import { RULES } from '../tools/py/session.mjs';

const SPLITS = {
  validation: [{ text: 'ünïcode text', label: 0 }, { text: 'b', label: 1 }],
  train: [{ text: 'c', label: 1 }, { text: 'a longer sentence', label: 0 }],
};
const state = (changes = {}) => jobState({ ...RULES.hello, ...changes.hello }, changes.data ?? 'data/d.tsv',
  changes.settings ?? { max_length: 64 }, changes.splits ?? SPLITS, '0.1.0');
const refused = (pattern) => (err) => err instanceof ConfigError && pattern.test(err.message);

describe('examplesSha512', () => {
  test('hashes each field with its UTF-8 length, the same with and without WebCrypto', async () => {
    const examples = [{ text: 'ü', label: 3 }];
    const want = Array.from(sha512(new TextEncoder().encode('2:ü1:3')), (b) => b.toString(16).padStart(2, '0')).join('');
    assert.equal(await examplesSha512(examples), want);
    const { crypto } = globalThis;
    Object.defineProperty(globalThis, 'crypto', { value: undefined, configurable: true });
    try {
      assert.equal(await examplesSha512(examples), want); // data/sha512.mjs, as a page over plain HTTP has it
    } finally {
      Object.defineProperty(globalThis, 'crypto', { value: crypto, configurable: true });
    }
  });

  test('tells apart a moved boundary between text and label', async () => {
    assert.notEqual(await examplesSha512([{ text: 'a1', label: 0 }]), await examplesSha512([{ text: 'a', label: 10 }]));
  });
});

describe('checkResumes', () => {
  test('the same job on the same examples resumes, wherever the file now is', async () => {
    checkResumes(await state(), await state({ data: 'elsewhere/d.tsv' }), 'the store');
  });

  test('changed examples are refused, naming the split and how to start afresh', async () => {
    const splits = { ...SPLITS, train: [{ text: 'c', label: 0 }, SPLITS.train[1]] };
    const [saved, current] = [await state(), await state({ splits })];
    assert.throws(() => checkResumes(saved, current, 'out/job_state.json'), refused(
      /^the data data\/d\.tsv is not what job 'sst2-run_1\.a' was started with \(data\/d\.tsv\): its train examples changed; give the same data to resume the job, or remove out\/job_state\.json to start it afresh/,
    ));
  });

  test('other settings are refused, naming the fields', async () => {
    const trainConfig = { ...RULES.hello.train_config, lr: 0.5 };
    const [a, b] = [await state(), await state({ hello: { train_config: trainConfig }, settings: { max_length: 32 } })];
    assert.throws(() => checkResumes(a, b, 'S'), refused(/\(train_config\.lr, settings\.max_length differ\): run it with the same settings/));
  });

  test("another job's record is refused, naming both jobs", async () => {
    const [a, b] = [await state(), await state({ hello: { job: 'other' } })];
    assert.throws(() => checkResumes(a, b, 'S'), refused(/S holds the unfinished job 'sst2-run_1\.a', not 'other'/));
  });
});

describe('SavedJob on the Node file store', () => {
  test('saves atomically, resumes the same job, refuses changed data, forgets the job when finished', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'job-state-'));
    const store = fileJobStore(join(dir, 'out'));
    const first = await SavedJob.open(store, await state());
    assert.equal(first.resume, false);
    await first.started();
    assert.deepEqual(await readdir(join(dir, 'out')), [JOB_STATE_NAME]); // no temporary file left
    const record = JSON.parse(await readFile(join(dir, 'out', JOB_STATE_NAME), 'utf8'));
    assert.deepEqual(Object.keys(record), ['mobillm_version', 'hello', 'data', 'settings', 'data_sha512']);
    assert.equal(record.hello.token, null);
    assert.equal(record.hello.resume, false);

    assert.equal((await SavedJob.open(store, await state())).resume, true);
    const splits = { ...SPLITS, validation: SPLITS.validation.slice(1) };
    await assert.rejects(SavedJob.open(store, await state({ splits })), refused(/its validation examples changed/));

    await first.finished();
    assert.deepEqual(await readdir(join(dir, 'out')), []);
    assert.equal((await SavedJob.open(store, await state({ splits }))).resume, false);
  });

  test('a file that is not a record is refused with how to start afresh', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'job-state-'));
    await writeFile(join(dir, JOB_STATE_NAME), '{"hello": {"job": "x"}}');
    await assert.rejects(SavedJob.open(fileJobStore(dir), await state()),
      refused(/job_state\.json is not a job state this device reads \(no settings\); remove it to start the job afresh/));
    await writeFile(join(dir, JOB_STATE_NAME), '{"hello": {"job": "x"');
    await assert.rejects(SavedJob.open(fileJobStore(dir), await state()), refused(/is not JSON; remove it/));
  });
});

/**
 * The WebSocket adapter: which failures resume the job, and whole jobs against a scripted server — cut mid-job, and
 * resumed by a new process from its saved record.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { WebSocketServer } from 'ws';
import WebSocket from 'ws';

import { ConfigError, ConnectionLost, ProtocolError, ServerRefused } from '../src/exceptions.mjs';
import { readFrame, writeFrame } from '../src/wire/frame.mjs';
import { batchTensors } from '../src/wire/messages.mjs';
import { int64, tensor } from '../src/wire/tensor.mjs';
import { resumes, streamTensors, SUBPROTOCOL, TOKEN_PREFIX } from '../src/device/client.mjs';
import { jobState, SavedJob } from '../src/device/job_state.mjs';
import { RULES } from '../tools/py/session.mjs';

describe('resumes', () => {
  test('a dropped connection resumes, whatever its close code', () => {
    for (const code of [1000, 1001, 1006, 1011, 1012]) assert.equal(resumes(new ConnectionLost(`closed (${code})`)), true);
  });

  test('a server Error, a protocol error or a bug ends the job', () => {
    assert.equal(resumes(new ServerRefused('busy', 'full')), false);
    assert.equal(resumes(new ProtocolError('unexpected', 'x')), false);
    assert.equal(resumes(new TypeError('bug')), false);
  });
});

const header = (bytes) => JSON.parse(readFrame(new Uint8Array(bytes)).header);
const send = (ws, fields, tensors = {}) => ws.send(writeFrame(tensors, JSON.stringify({ v: 1, ...fields })));

/**
 * A scripted server: welcomes, acks every batch, drops the first connection after `dropAfter` batches; it starts
 * holding seqs 0..`lastSeq` (a job an earlier device process sent those of).
 */
function scriptedServer({ dropAfter = Infinity, refuse = null, lastSeq = -1 } = {}) {
  const wss = new WebSocketServer({ port: 0, handleProtocols: (offered) => (offered.has(SUBPROTOCOL) ? SUBPROTOCOL : false) });
  const seen = { protocols: [], batches: [], hellos: [], dones: [], connections: 0 };
  let held = lastSeq;
  wss.on('connection', (ws, request) => {
    seen.connections += 1;
    seen.protocols.push(request.headers['sec-websocket-protocol']);
    const first = seen.connections === 1;
    let batches = 0;
    ws.on('message', (data) => {
      const h = header(data);
      if (h.type === 'hello') {
        seen.hellos.push(h);
        if (refuse) return send(ws, { type: 'error', code: refuse, message: 'no' });
        return send(ws, { type: 'welcome', session: 's', window: 2, last_seq: held, step: 0 });
      }
      if (h.type === 'batch') {
        batches += 1;
        if (first && batches > dropAfter) return ws.terminate(); // this one never arrives
        if (h.seq > held) { held = h.seq; seen.batches.push(h.seq); }
        return send(ws, { type: 'ack', seq: h.seq, step: held + 1, loss: 0.5 });
      }
      if (h.type === 'done') return seen.dones.push(h.epoch);
      if (h.type === 'get_side_net') {
        return send(ws, { type: 'side_net', config: { task: 'classification' }, step: held + 1 }, { w: tensor('F32', [2], new Float32Array([1, 2])) });
      }
      return undefined;
    });
  });
  return new Promise((resolve) => wss.on('listening', () => resolve({ wss, seen, url: `ws://127.0.0.1:${wss.address().port}` })));
}

/** A Source of `n` one-sample batches; `made` collects the sample id of each batch it computes. */
function batches(n, made = []) {
  return {
    count: n,
    async* batches(skip) {
      for (let i = skip; i < n; i += 1) {
        made.push(i);
        const act = { values: tensor('F32', [1, 4], new Float32Array(4).fill(i)) };
        yield { tensors: batchTensors([act], { sampleIds: int64([i]), labels: int64([i % 2]) }), samples: 1 };
      }
    },
  };
}

/** A JobStateStore in memory. */
function memoryStore(record = null) {
  const store = {
    name: 'the test store',
    record,
    load: async () => store.record,
    save: async (r) => { store.record = r; },
    remove: async () => { store.record = null; },
  };
  return store;
}

const EXAMPLES = { validation: [{ text: 'a', label: 0 }], train: [{ text: 'b', label: 1 }] };

describe('streamTensors', () => {
  test('a job cut after two batches resumes: every batch held once, the side network downloaded', async () => {
    const { wss, seen, url } = await scriptedServer({ dropAfter: 2 });
    try {
      const { frame, stats } = await streamTensors(url, RULES.hello, batches(1), () => batches(5), {
        WebSocketImpl: WebSocket, token: 'tok-1', backoffMs: 10,
      });
      assert.deepEqual(seen.batches, [0, 1, 2, 3, 4, 5]);
      assert.equal(stats.reconnects, 1);
      assert.deepEqual(seen.hellos.map((h) => h.resume), [false, true]);
      assert.deepEqual(seen.protocols[0].split(',').map((p) => p.trim()), [SUBPROTOCOL, `${TOKEN_PREFIX}tok-1`]);
      assert.deepEqual(Array.from(frame.tensors.w.data), [1, 2]);
      assert.equal(stats.losses.at(-1), 0.5);
    } finally {
      wss.close();
    }
  });

  test('a job an earlier process started resumes from its record: what the server holds is skipped, never computed', async () => {
    const state = await jobState(RULES.hello, 'd.tsv', { max_length: 8 }, EXAMPLES, '0.1.0');
    const store = memoryStore(state);
    const { wss, seen, url } = await scriptedServer({ lastSeq: 3 }); // the eval batch and train 0..2 of epoch 0
    try {
      const savedJob = await SavedJob.open(store, state);
      assert.equal(savedJob.resume, true);
      const made = { eval: [], train: [[], []] };
      const { stats } = await streamTensors(url, RULES.hello, batches(1, made.eval), (epoch) => batches(3, made.train[epoch]), {
        WebSocketImpl: WebSocket, backoffMs: 10, deviceEpochs: 2, savedJob,
      });
      assert.deepEqual(seen.hellos.map((h) => h.resume), [true]);
      assert.deepEqual(seen.batches, [4, 5, 6]); // epoch 1's three batches, numbered on
      assert.deepEqual(made, { eval: [], train: [[], [0, 1, 2]] });
      assert.deepEqual(seen.dones, [0, 1]); // the finished epoch's Done again, then the new one's
      assert.equal(stats.batchesSkipped, 4);
      assert.equal(stats.batchesSent, 3);
      assert.deepEqual(store.record, state); // kept until the caller has kept the result
    } finally {
      wss.close();
    }
  });

  test('a fresh job saves its record once welcomed', async () => {
    const state = await jobState(RULES.hello, 'd.tsv', { max_length: 8 }, EXAMPLES, '0.1.0');
    const store = memoryStore();
    const { wss, seen, url } = await scriptedServer();
    try {
      const savedJob = await SavedJob.open(store, state);
      assert.equal(savedJob.resume, false);
      await streamTensors(url, RULES.hello, batches(1), () => batches(2), { WebSocketImpl: WebSocket, savedJob });
      assert.deepEqual(seen.hellos.map((h) => h.resume), [false]);
      assert.deepEqual(seen.batches, [0, 1, 2]);
      assert.deepEqual(store.record, state);
      await savedJob.finished();
      assert.equal(store.record, null);
    } finally {
      wss.close();
    }
  });

  test('a server holding more batches than the job makes is another job: refused before anything is sent', async () => {
    const state = await jobState(RULES.hello, 'd.tsv', { max_length: 8 }, EXAMPLES, '0.1.0');
    const { wss, seen, url } = await scriptedServer({ lastSeq: 9 });
    try {
      const savedJob = await SavedJob.open(memoryStore(state), state);
      await assert.rejects(
        streamTensors(url, RULES.hello, batches(1), () => batches(2), { WebSocketImpl: WebSocket, savedJob }),
        (err) => err instanceof ConfigError && /holds 10 batches .* makes 3/.test(err.message),
      );
      assert.deepEqual(seen.batches, []);
    } finally {
      wss.close();
    }
  });

  test("a server's Error ends the job with a ServerRefused, and is not retried", async () => {
    const { wss, seen, url } = await scriptedServer({ refuse: 'fingerprint_mismatch' });
    try {
      await assert.rejects(
        streamTensors(url, RULES.hello, batches(1), () => batches(1), { WebSocketImpl: WebSocket, backoffMs: 10 }),
        (err) => err instanceof ServerRefused && err.code === 'fingerprint_mismatch',
      );
      assert.equal(seen.connections, 1);
    } finally {
      wss.close();
    }
  });
});

/** The WebSocket adapter: which failures resume the job, and a whole job against a scripted server. */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { WebSocketServer } from 'ws';
import WebSocket from 'ws';

import { ConnectionLost, ProtocolError, ServerRefused } from '../src/exceptions.mjs';
import { readFrame, writeFrame } from '../src/wire/frame.mjs';
import { batchTensors } from '../src/wire/messages.mjs';
import { int64, tensor } from '../src/wire/tensor.mjs';
import { resumes, streamTensors, SUBPROTOCOL, TOKEN_PREFIX } from '../src/device/client.mjs';
import { RULES } from './py/session.mjs';

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

/** A scripted server: welcomes, acks every batch, drops the first connection after `dropAfter` batches. */
function scriptedServer({ dropAfter = Infinity, refuse = null } = {}) {
  const wss = new WebSocketServer({ port: 0, handleProtocols: (offered) => (offered.has(SUBPROTOCOL) ? SUBPROTOCOL : false) });
  const seen = { protocols: [], batches: [], hellos: [], connections: 0 };
  let held = -1;
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
      if (h.type === 'get_side_net') {
        return send(ws, { type: 'side_net', config: { task: 'classification' }, step: held + 1 }, { w: tensor('F32', [2], new Float32Array([1, 2])) });
      }
      return undefined;
    });
  });
  return new Promise((resolve) => wss.on('listening', () => resolve({ wss, seen, url: `ws://127.0.0.1:${wss.address().port}` })));
}

async function* batches(n) {
  for (let i = 0; i < n; i += 1) {
    const act = { values: tensor('F32', [1, 4], new Float32Array(4).fill(i)) };
    yield { tensors: batchTensors([act], { sampleIds: int64([i]), labels: int64([i % 2]) }), samples: 1 };
  }
}

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

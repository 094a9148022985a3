/**
 * The JS DeviceSession: tests/session_rules.json (the table tests/test_session.py runs on the Python session),
 * and the send window.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';

import { ProtocolError, ServerRefused } from '../src/exceptions.mjs';
import { writeFrame } from '../src/wire/frame.mjs';
import { decodeMessage } from '../src/wire/messages.mjs';
import { SendWindow } from '../src/wire/protocol.mjs';
import { DeviceSession, State } from '../src/wire/session.mjs';
import { RULES, expected, runCase } from '../tools/py/session.mjs';

describe('the shared session rules', () => {
  for (const testCase of RULES.cases) {
    test(testCase.name, () => {
      const seen = runCase(testCase);
      testCase.steps.forEach((step, i) => {
        assert.deepEqual(seen[i], expected(step), `step ${i}: ${JSON.stringify(step)}`);
      });
    });
  }
});

const WELCOME = { type: 'welcome', v: 1, session: 's', window: 2, last_seq: -1, step: 0 };
const welcome = (fields) => writeFrame({}, JSON.stringify({ ...WELCOME, ...fields }));

describe('DeviceSession', () => {
  test('the opened event carries the Welcome as decoded', () => {
    const session = new DeviceSession(RULES.hello);
    session.hello();
    const opened = session.receive(welcome({ window: 3, step: 7 }));
    assert.equal(opened.kind, 'opened');
    assert.deepEqual(opened.welcome, { type: 'welcome', v: 1, session: 's', window: 3, last_seq: -1, step: 7 });
    assert.equal(session.window.size, 3);
  });

  test('an ArrayBuffer is read as the bytes it holds', () => {
    const session = new DeviceSession(RULES.hello);
    session.hello();
    const bytes = welcome();
    assert.equal(session.receive(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.length)).kind, 'opened');
  });

  test('the Hello is the table hello with its defaults, resume set by the session', () => {
    const session = new DeviceSession(RULES.hello);
    const { header } = decodeMessage(session.hello());
    assert.equal(header.job, RULES.hello.job);
    assert.equal(header.train_config.schedule, 'cosine');
    assert.equal(header.resume, false);
  });

  test('a bad Hello is refused when the session is made, naming the field', () => {
    assert.throws(() => new DeviceSession({ ...RULES.hello, job: 'a/b' }),
      (err) => err instanceof ProtocolError && err.code === 'bad_header' && /job/.test(err.message));
  });

  test('a server Error closes the session and carries its code and message', () => {
    const session = new DeviceSession(RULES.hello);
    session.hello();
    const header = { type: 'error', v: 1, code: 'fingerprint_mismatch', message: 'other backbone' };
    const error = writeFrame({}, JSON.stringify(header));
    assert.throws(() => session.receive(error),
      (err) => err instanceof ServerRefused && err.code === 'fingerprint_mismatch' && err.detail === 'other backbone');
    assert.equal(session.state, State.CLOSED);
  });
});

describe('SendWindow', () => {
  test('refuses a size below 1', () => {
    assert.throws(() => new SendWindow(0), RangeError);
    assert.throws(() => new SendWindow(1.5), RangeError);
  });

  test('numbers, keeps and resends in order', () => {
    const window = new SendWindow(3);
    const seqs = [];
    for (let i = 0; i < 3; i++) window.add((seq) => (seqs.push(seq), new Uint8Array([seq])));
    assert.deepEqual(seqs, [0, 1, 2]);
    assert.ok(window.full);
    assert.throws(() => window.add(() => new Uint8Array()), (err) => err.code === 'window_full');
    window.ack(1);
    assert.deepEqual(window.welcome(0).map((d) => d[0]), [2]);
    assert.equal(window.nextSeq, 3);
    assert.throws(() => window.ack(0), (err) => err.code === 'out_of_order');
  });

  test('an encode that throws takes no seq', () => {
    const window = new SendWindow(2);
    assert.throws(() => window.add(() => { throw new ProtocolError('bad_batch', 'x'); }));
    assert.equal(window.add((seq) => new Uint8Array([seq]))[0], 0);
  });
});

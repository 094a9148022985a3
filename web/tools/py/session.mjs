/**
 * Runs tests/session_rules.json on the JS DeviceSession. Imported by web/test/session.test.mjs; run by
 * tests/test_web_session.py as `node web/tools/py/session.mjs`, it prints {case name: [what each step observed]}
 * as JSON, for pytest to compare with the table (and with the Python session's observations).
 */
import { readFileSync } from 'node:fs';
import { pathToFileURL } from 'node:url';

import { PayloadTooBig, ProtocolError, ServerRefused } from '../../src/exceptions.mjs';
import { writeFrame } from '../../src/wire/frame.mjs';
import { decodeMessage } from '../../src/wire/messages.mjs';
import { DeviceSession } from '../../src/wire/session.mjs';
import { DTYPES, int64, tensor } from '../../src/wire/tensor.mjs';

/** The table, tests/session_rules.json. */
export const RULES = JSON.parse(readFileSync(new URL('../../../tests/session_rules.json', import.meta.url), 'utf8'));

/** What a step names beyond its action: the keys it expects to observe. */
const OBSERVED = ['error', 'refused', 'event', 'resend', 'seq', 'loss', 'step', 'resume', 'expect'];
const EVENTS = { opened: 'opened', acked: 'acked', sideNetArrived: 'side_net_arrived' };

/** The step's expectations: what `runCase` must observe for it. */
export function expected(step) {
  return Object.fromEntries(OBSERVED.filter((k) => k in step).map((k) => [k, step[k]]));
}

/** A tensor of the table's {dtype, shape, data}. */
function tableTensor({ dtype, shape, data }) {
  const values = DTYPES[dtype].array === BigInt64Array ? data.map(BigInt) : data;
  return tensor(dtype, shape, DTYPES[dtype].array.from(values));
}

const tableTensors = (spec = {}) => Object.fromEntries(Object.entries(spec).map(([k, v]) => [k, tableTensor(v)]));

/** A server message as the table describes it; the header is written as it stands (no defaults, any fields). */
function serverBytes(step) {
  return writeFrame(tableTensors(step.tensors), JSON.stringify({ v: 1, ...step.server }));
}

/** Runs one action or one receive; returns what it yields (an event, bytes or nothing). */
function act(session, step, sent) {
  if ('expect' in step) return undefined;
  if ('server' in step) return session.receive(serverBytes(step));
  if ('server_text' in step) return session.receive(step.server_text);
  switch (step.do) {
    case 'hello': return session.hello();
    case 'connection_lost': return session.connectionLost();
    case 'done': return session.done(step.epoch);
    case 'get_side_net': return session.getSideNet();
    case 'batch': {
      const tensors = { sample_ids: int64([step.sample]), ...tableTensors(RULES.batch) };
      const data = session.batch(step.split, step.epoch, tensors);
      sent.set(decodeMessage(data).header.seq, data);
      return data;
    }
    default: throw new Error(`unknown step ${JSON.stringify(step)}`);
  }
}

/** How a resent message reads in the table: 'batch SEQ' (flagged when its bytes changed), 'done EPOCH', ... */
function describeResent(data, sent) {
  const { header } = decodeMessage(data);
  if (header.type === 'batch') {
    const same = Buffer.from(sent.get(header.seq) ?? []).equals(Buffer.from(data));
    return `batch ${header.seq}${same ? '' : ' (changed)'}`;
  }
  return header.type === 'done' ? `done ${header.epoch}` : header.type;
}

/** Everything a step's outcome can show; `expected` picks what the table names. */
function observe(session, step, outcome, sent) {
  if ('expect' in step) {
    const held = {
      state: session.state, opens: session.opens, held: session.held, side_net_pending: session.sideNetPending,
      window_full: () => session.windowFull, all_acked: () => session.allAcked,
      pending: () => [...session.window.pending.keys()],
    };
    const read = (k) => (typeof held[k] === 'function' ? held[k]() : held[k]);
    return { expect: Object.fromEntries(Object.keys(step.expect).map((k) => [k, read(k)])) };
  }
  if (outcome instanceof Uint8Array) {
    const { header } = decodeMessage(outcome);
    return { seq: header.seq, resume: header.resume };
  }
  if (outcome === undefined) return {};
  const seen = { event: EVENTS[outcome.kind] };
  if (outcome.kind === 'opened') seen.resend = outcome.resend.map((data) => describeResent(data, sent));
  if (outcome.kind === 'acked') Object.assign(seen, { seq: outcome.ack.seq, loss: outcome.ack.loss });
  if (outcome.kind === 'sideNetArrived') seen.step = outcome.frame.header.step;
  return seen;
}

/** What a thrown error shows: a ProtocolError's code, too_big, or a ServerRefused's code; anything else is a bug. */
function failure(err) {
  if (err instanceof ServerRefused) return { refused: err.code };
  if (err instanceof ProtocolError) return { error: err.code };
  if (err instanceof PayloadTooBig) return { error: 'too_big' };
  throw err;
}

/**
 * Run one case of the table; for each step, what it observed of the keys the step names (plus any error).
 * @returns {object[]}
 */
export function runCase(testCase) {
  const options = { resume: testCase.resume ?? false };
  if (testCase.max_bytes) options.maxBytes = testCase.max_bytes;
  const session = new DeviceSession(RULES.hello, options);
  const sent = new Map();
  return testCase.steps.map((step) => {
    let seen;
    try {
      seen = observe(session, step, act(session, step, sent), sent);
    } catch (err) {
      return failure(err);
    }
    const names = Object.keys(expected(step));
    return Object.fromEntries(Object.entries(seen).filter(([k]) => names.includes(k)));
  });
}

if (import.meta.url === pathToFileURL(process.argv[1]).href) {
  const results = Object.fromEntries(RULES.cases.map((c) => [c.name, runCase(c)]));
  process.stdout.write(JSON.stringify(results));
}

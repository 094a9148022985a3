/**
 * The device's end of a session without I/O, as DeviceSession in src/mobillm/wire/session.py: a plain object that
 * takes the bytes received and hands back the bytes to send; the WebSocket adapter only moves bytes.
 *
 *     hello() ── Hello (resume on a re-open) ──────▶
 *     receive() → {kind: 'opened', resend} ◀── Welcome
 *     batch() / done() / getSideNet() ── Batch … ──▶
 *     receive() → 'acked' | 'sideNetArrived' ◀── Ack | SideNet
 *     receive() throws ServerRefused ◀────────── Error
 *
 * The batches stay in the SendWindow until acked; after a dropped connection `hello()` again, and the 'opened'
 * event of the new Welcome(last_seq) carries what to send again: the batches the server lacks, in order, the Done
 * of every finished epoch, and a pending GetSideNet. A device started again on a job an earlier process of it began
 * (`{resume: true}`, its job state kept: device/job_state.mjs) sends `resume` from its first Hello; that first
 * Welcome tells it how many batches the server `held`: their seqs are not used again, and the device skips those
 * batches.
 */
import { ProtocolError, ServerRefused } from '../exceptions.mjs';
import { DEFAULT_MAX_MESSAGE_BYTES } from './frame.mjs';
import { decodeMessage, encodeMessage, makeHeader } from './messages.mjs';
import { SendWindow } from './protocol.mjs';

/** Where one connection of a session stands (Python's State). */
export const State = Object.freeze({
  CONNECTING: 'connecting', // the Hello is sent, the Welcome awaited
  OPEN: 'open', // the Welcome arrived
  CLOSED: 'closed', // the connection ended; the device may open it again
});

/**
 * The device's end of one job's session, across reconnects; `window` exists from the first Welcome.
 *
 * `resume`: an earlier process of this device started the job (a reopened tab, a restarted device). The first Hello
 * then asks to resume it, and the first Welcome sets `held`, the batches the server holds (`last_seq + 1`): the next
 * batch takes seq `held`, and the device skips its first `held` batches, which it makes again in the same order.
 * `held` is 0 for a job this process started.
 */
export class DeviceSession {
  /**
   * @param {object} hello the Hello's fields (job, token, model, fingerprint, side_config, train_config,
   *   train_samples, device_epochs); validated here (ProtocolError bad_header)
   * @param {{maxBytes?: number, resume?: boolean}} [options] the largest message accepted from the server; whether
   *   an earlier process started the job
   */
  constructor(hello, { maxBytes = DEFAULT_MAX_MESSAGE_BYTES, resume = false } = {}) {
    this.helloMessage = makeHeader({ ...hello, type: 'hello' });
    this.maxBytes = maxBytes;
    this.resume = resume;
    this.state = State.CLOSED;
    /** @type {SendWindow | null} */
    this.window = null;
    this.held = 0;
    this.doneEpochs = [];
    this.sideNetPending = false;
    this.opens = 0; // Welcomes received; every one after the first is a resumed session
  }

  /**
   * Open (or re-open) the connection: the Hello's bytes, with `resume` once a session existed (or from the first
   * one, for a job an earlier process started).
   */
  hello() {
    if (this.state !== State.CLOSED) throw new ProtocolError('unexpected', `hello on a ${this.state} session`);
    this.state = State.CONNECTING;
    return encodeMessage({ ...this.helloMessage, resume: this.resume || this.window !== null });
  }

  /** The connection ended; what is unacked stays in the window for the next `hello()`. */
  connectionLost() {
    this.state = State.CLOSED;
  }

  /**
   * One message from the server: {kind: 'opened', welcome, resend} | {kind: 'acked', ack} |
   * {kind: 'sideNetArrived', frame}. Throws ServerRefused for an Error; ProtocolError for a text frame
   * (bad_frame), a message the server does not send at this point (unexpected) or an ack out of order; WireError
   * for bytes that are not a message.
   * @param {Uint8Array | ArrayBuffer | string} data
   */
  receive(data) {
    if (typeof data === 'string') {
      throw new ProtocolError('bad_frame', 'the server sent a text frame; the protocol is binary');
    }
    const frame = decodeMessage(data instanceof ArrayBuffer ? new Uint8Array(data) : data, { maxBytes: this.maxBytes });
    const message = frame.header;
    if (message.type === 'error') {
      this.state = State.CLOSED;
      throw new ServerRefused(message.code, message.message);
    }
    if (this.state === State.CONNECTING && message.type === 'welcome') return this.#open(message);
    if (this.state === State.OPEN && message.type === 'ack') {
      this.window.ack(message.seq);
      return { kind: 'acked', ack: message };
    }
    if (this.state === State.OPEN && message.type === 'side_net') {
      this.sideNetPending = false;
      return { kind: 'sideNetArrived', frame };
    }
    const expected = this.state === State.CONNECTING ? 'welcome' : 'ack or side_net';
    throw new ProtocolError('unexpected', `expected ${expected} from the server, got ${message.type}`);
  }

  #open(welcome) {
    this.state = State.OPEN;
    this.opens += 1;
    if (this.window === null) {
      this.window = new SendWindow(welcome.window);
      if (this.resume) { // numbering goes on after what the server holds of the earlier process's batches
        this.held = welcome.last_seq + 1;
        this.window.nextSeq = this.held;
      }
      return { kind: 'opened', welcome, resend: [] };
    }
    const resend = this.window.welcome(welcome.last_seq);
    for (const epoch of this.doneEpochs) resend.push(encodeMessage({ type: 'done', epoch }));
    if (this.sideNetPending) resend.push(encodeMessage({ type: 'get_side_net' }));
    return { kind: 'opened', welcome, resend };
  }

  /** Whether the window holds as many unacked batches as the server allows (wait for an ack). */
  get windowFull() {
    return this.#window().full;
  }

  /** Whether every batch sent has been acked. */
  get allAcked() {
    return this.#window().pending.size === 0;
  }

  /**
   * The next Batch (next seq), kept until acked. Throws ProtocolError window_full when full, bad_batch for
   * tensors the server would refuse.
   * @param {'train' | 'eval'} split
   * @param {number} epoch
   * @param {Record<string, object>} tensors e.g. from messages.mjs's batchTensors
   */
  batch(split, epoch, tensors) {
    return this.#window().add((seq) => encodeMessage({ type: 'batch', seq, split, epoch }, tensors));
  }

  /** Done(epoch): every batch of `epoch` is sent (and sent again after every reconnect). */
  done(epoch) {
    this.#window();
    const data = encodeMessage({ type: 'done', epoch });
    this.doneEpochs.push(epoch);
    return data;
  }

  /** Ask for the side network (asked again after a reconnect until it arrives). */
  getSideNet() {
    this.#window();
    this.sideNetPending = true;
    return encodeMessage({ type: 'get_side_net' });
  }

  #window() {
    if (this.window === null) throw new ProtocolError('unexpected', 'the session has not been welcomed yet');
    return this.window;
  }
}

/**
 * The dotted names of the fields where `hello` differs from `held`, the Hello a job was started with, apart from
 * `token` and `resume` (as wire/session.py's `hello_differences`): a session may attach to the job only when there
 * are none (docs/protocol.md §3). Both are headers as `makeHeader` writes them.
 * @param {object} held
 * @param {object} hello
 * @returns {string[]}
 */
export function helloDifferences(held, hello) {
  const strip = ({ token, resume, ...rest }) => rest;
  return differences(strip(held), strip(hello), '');
}

const isPlainObject = (x) => x !== null && typeof x === 'object' && !Array.isArray(x);

function differences(a, b, prefix) {
  const out = [];
  for (const key of [...new Set([...Object.keys(a), ...Object.keys(b)])].sort()) {
    const x = a[key];
    const y = b[key];
    if (isPlainObject(x) && isPlainObject(y)) out.push(...differences(x, y, `${prefix}${key}.`));
    else if (JSON.stringify(x) !== JSON.stringify(y)) out.push(prefix + key);
  }
  return out;
}

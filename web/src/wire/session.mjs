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
 * of every finished epoch, and a pending GetSideNet.
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

/** The device's end of one job's session, across reconnects; `window` exists from the first Welcome. */
export class DeviceSession {
  /**
   * @param {object} hello the Hello's fields (job, token, model, fingerprint, side_config, train_config,
   *   train_samples, device_epochs); validated here (ProtocolError bad_header)
   * @param {{maxBytes?: number}} [options] the largest message accepted from the server
   */
  constructor(hello, { maxBytes = DEFAULT_MAX_MESSAGE_BYTES } = {}) {
    this.helloMessage = makeHeader({ ...hello, type: 'hello' });
    this.maxBytes = maxBytes;
    this.state = State.CLOSED;
    /** @type {SendWindow | null} */
    this.window = null;
    this.doneEpochs = [];
    this.sideNetPending = false;
    this.opens = 0; // Welcomes received; every one after the first is a resumed session
  }

  /** Open (or re-open) the connection: the Hello's bytes, with `resume` once a session existed. */
  hello() {
    if (this.state !== State.CLOSED) throw new ProtocolError('unexpected', `hello on a ${this.state} session`);
    this.state = State.CONNECTING;
    return encodeMessage({ ...this.helloMessage, resume: this.window !== null });
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

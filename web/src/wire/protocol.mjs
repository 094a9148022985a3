/**
 * The device's send window, as src/mobillm/wire/protocol.py's SendWindow: sequence numbers, unacked batches and
 * what to resend after a Welcome. (The server's receive order lives with the Python server only.)
 */
import { ProtocolError } from '../exceptions.mjs';

/**
 * Every batch gets the next sequence number and is kept until its Ack arrives, so a dropped connection loses
 * nothing: after Welcome(last_seq) the batches the server lacks are resent. At most `size` batches are in flight;
 * the device waits only when the window is full.
 */
export class SendWindow {
  /** @param {number} size the most unacked batches (the Welcome's `window`, >= 1) */
  constructor(size) {
    if (!Number.isSafeInteger(size) || size < 1) {
      throw new RangeError(`window size must be an integer >= 1, got ${size}`);
    }
    this.size = size;
    this.nextSeq = 0;
    /** @type {Map<number, Uint8Array>} seq -> the encoded batch, in send order */
    this.pending = new Map();
  }

  /** Whether `size` batches are unacked (the next `add` would throw window_full). */
  get full() {
    return this.pending.size >= this.size;
  }

  /**
   * Assign the next sequence number, encode the message with it, keep it until acked.
   * @param {(seq: number) => Uint8Array} encode
   * @returns {Uint8Array}
   */
  add(encode) {
    if (this.full) throw new ProtocolError('window_full', `${this.size} batches are already unacked`);
    const seq = this.nextSeq;
    const data = encode(seq);
    this.pending.set(seq, data);
    this.nextSeq += 1;
    return data;
  }

  /** Forget batch `seq`: the server stored it (ProtocolError out_of_order when it is not in flight). */
  ack(seq) {
    if (!this.pending.delete(seq)) {
      throw new ProtocolError('out_of_order', `ack for seq ${seq}, which is not in flight`);
    }
  }

  /**
   * The server holds every batch up to `lastSeq`: forget those, return the rest to resend, in order.
   * @param {number} lastSeq
   * @returns {Uint8Array[]}
   */
  welcome(lastSeq) {
    for (const seq of [...this.pending.keys()]) {
      if (seq <= lastSeq) this.pending.delete(seq);
    }
    return [...this.pending.values()];
  }
}

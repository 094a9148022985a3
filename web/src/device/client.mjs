/**
 * The device's WebSocket adapter, as src/mobillm/device/client.py: stream encoded taps to the server, download the
 * side network. The session's rules (Hello, Welcome, the window, what to resend after a reconnect, the server's
 * Error) are wire/session.mjs's DeviceSession's; this adapter connects, reconnects with a backoff and moves bytes.
 *
 * It runs on the browser's `WebSocket` or on Node's `ws` package (the same event interface; Node 20 has no
 * WebSocket of its own). Browsers cannot set `Authorization` on a WebSocket, so the job token travels as a
 * subprotocol: the device offers `mobillm.v1` and `mobillm.token.<token>`, and the server echoes `mobillm.v1`
 * only (docs/protocol.md §1).
 *
 * With a SavedJob (device/job_state.mjs) a job an earlier process of the device started is resumed: the sources skip
 * the batches the server holds without computing them.
 */
import { ConfigError, ConnectionLost, ServerRefused } from '../exceptions.mjs';
import { DeviceSession } from '../wire/session.mjs';
import { DEFAULT_MAX_MESSAGE_BYTES } from '../wire/frame.mjs';

/** The subprotocol every device offers and the server echoes. */
export const SUBPROTOCOL = 'mobillm.v1';
/** The prefix of the subprotocol value that carries the job's token. */
export const TOKEN_PREFIX = 'mobillm.token.';

/** What a job cost the device: forward work, bytes both ways, waits, the server's steps and losses. */
export class StreamStats {
  constructor() {
    /** forward passes of training batches: seconds, samples, payload bytes (taps + labels) */
    this.forward = { seconds: 0, samples: 0, bytes: 0 };
    this.bytesSent = 0;
    this.bytesReceived = 0;
    this.batchesSent = 0;
    /** batches not sent because the server held them (a job an earlier process of the device started) */
    this.batchesSkipped = 0;
    this.windowWaitSeconds = 0;
    /** training steps the server had done when each batch was acked (shows the overlap) */
    this.ackedSteps = [];
    this.losses = [];
    this.reconnects = 0;
  }

  /** The summary's figures, per training sample where it says so (the Python device's names). */
  totals() {
    const n = Math.max(1, this.forward.samples);
    return {
      device_seconds_per_sample: this.forward.seconds / n, bytes_per_sample: this.forward.bytes / n,
      bytes_sent: this.bytesSent, bytes_received: this.bytesReceived, batches_sent: this.batchesSent,
      batches_skipped: this.batchesSkipped, window_wait_seconds: this.windowWaitSeconds, reconnects: this.reconnects,
    };
  }
}

/** One connection's receive side: bytes into the session; acks wake the sender, the SideNet resolves a promise. */
class Link {
  constructor(ws, session, stats) {
    this.ws = ws;
    this.session = session;
    this.stats = stats;
    this.failure = null;
    this.waiters = [];
    this.opened = new Promise((resolve, reject) => { this.resolveOpened = resolve; this.rejectOpened = reject; });
    this.sideNet = new Promise((resolve, reject) => { this.resolveSideNet = resolve; this.rejectSideNet = reject; });
    this.sideNet.catch(() => {}); // a link dropped before anyone asked for the side network is not an error
    this.opened.catch(() => {});
    ws.binaryType = 'arraybuffer';
    ws.onmessage = (event) => this.receive(event.data);
    ws.onclose = (event) => this.fail(new ConnectionLost(`the server closed the connection (${event.code}${event.reason ? ` ${event.reason}` : ''})`));
    ws.onerror = () => this.fail(new ConnectionLost('the connection failed'));
  }

  receive(data) {
    if (this.failure !== null) return;
    try {
      const bytes = typeof data === 'string' ? data : new Uint8Array(data);
      this.stats.bytesReceived += bytes.length;
      const event = this.session.receive(bytes);
      if (event.kind === 'opened') this.resolveOpened(event);
      else if (event.kind === 'acked') {
        this.stats.ackedSteps.push(event.ack.step);
        if (event.ack.loss !== null && event.ack.loss !== undefined) this.stats.losses.push(event.ack.loss);
      } else if (event.kind === 'sideNetArrived') this.resolveSideNet(event.frame);
      this.notify();
    } catch (err) { // a server Error, or bytes the session refuses: the job ends, the socket closes
      this.fail(err);
      this.ws.close();
    }
  }

  fail(err) {
    if (this.failure !== null) return;
    this.failure = err;
    this.rejectOpened(err);
    this.rejectSideNet(err);
    this.notify();
  }

  notify() {
    const waiters = this.waiters;
    this.waiters = [];
    for (const wake of waiters) wake();
  }

  /** Resolves once `condition()` holds; throws the link's failure if it fails first. */
  async waitFor(condition) {
    while (!condition()) {
      if (this.failure !== null) throw this.failure;
      await new Promise((resolve) => this.waiters.push(resolve));
    }
  }

  send(data) {
    if (this.failure !== null) throw this.failure;
    if (this.ws.readyState !== 1) throw new ConnectionLost('the connection is not open');
    this.ws.send(data);
  }
}

/**
 * Open a WebSocket; resolves once open. A refused handshake is a ServerRefused (HTTP 401: `auth`) where the
 * implementation lets the status be seen (Node's `ws`); a browser sees only a failed connection, which is why
 * the page checks the token over HTTP first (`GET /jobs/{job}/token`).
 */
function connect(WebSocketImpl, url, protocols, options) {
  return new Promise((resolve, reject) => {
    const ws = options === undefined ? new WebSocketImpl(url, protocols) : new WebSocketImpl(url, protocols, options);
    const refuse = (err) => { ws.onopen = ws.onerror = ws.onclose = null; reject(err); };
    ws.onopen = () => { ws.onopen = ws.onerror = ws.onclose = null; resolve(ws); };
    ws.onerror = (event) => refuse(new ConnectionLost(`could not connect to ${url}: ${event?.message ?? 'connection failed'}`));
    ws.onclose = (event) => refuse(new ConnectionLost(`could not connect to ${url} (${event.code})`));
    if (typeof ws.on === 'function') { // Node's ws: the refused handshake's status and body
      ws.on('unexpected-response', (request, response) => {
        let body = '';
        response.on('data', (chunk) => { body += chunk; });
        response.on('end', () => {
          const code = response.statusCode === 401 ? 'auth' : 'unexpected';
          refuse(new ServerRefused(code, `HTTP ${response.statusCode} in the handshake: ${body.trim()}`));
          ws.terminate?.();
        });
      });
    }
  });
}

/**
 * Whether the device reconnects after `err` and resumes the job (as device/client.py's `_DROPPED`): yes for a
 * connection that closed or failed without the server's Error, whatever its close code (1012 job_lost, 1001,
 * 1006...); no for a server's Error (it arrives before the close it announces), a refused handshake, bytes that
 * break the protocol, or a bug — those end the job.
 * @param {unknown} err
 */
export function resumes(err) {
  return err instanceof ConnectionLost;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * The WebSocket under a DeviceSession, re-opened after a dropped connection: the new Welcome tells the session
 * what to send again (the unacked batches the server lacks, every finished epoch's Done, a pending GetSideNet).
 */
class Connection {
  constructor(url, session, stats, { token, WebSocketImpl, socketOptions, reconnects, backoffMs }) {
    this.url = `${url.replace(/\/+$/, '')}/jobs/${session.helloMessage.job}`;
    this.session = session;
    this.stats = stats;
    this.protocols = token ? [SUBPROTOCOL, `${TOKEN_PREFIX}${token}`] : [SUBPROTOCOL];
    this.WebSocketImpl = WebSocketImpl;
    this.socketOptions = socketOptions;
    this.reconnectsLeft = reconnects;
    this.backoffMs = backoffMs;
    this.link = null;
  }

  async open() {
    const ws = await connect(this.WebSocketImpl, this.url, this.protocols, this.socketOptions);
    this.session.connectionLost(); // a connection that dropped before a reconnect noticed
    const link = new Link(ws, this.session, this.stats);
    let opened;
    try {
      link.send(this.session.hello());
      opened = await link.opened; // the session refuses anything but a Welcome first
    } catch (err) {
      ws.close();
      throw err;
    }
    this.link = link;
    if (this.session.opens > 1) this.stats.reconnects += 1;
    for (const data of opened.resend) link.send(data); // what the server lacks, in order, then what followed it
  }

  /** Send once; after a dropped connection the session's resend on the next Welcome covers `data`. */
  async send(data) {
    await this.run((link) => link.send(data), false);
  }

  /** `op(link)`; on a dropped connection reconnect (bounded) and, if `retry`, run it again. */
  async run(op, retry = true) {
    for (;;) {
      try {
        return await op(this.link);
      } catch (err) {
        if (!resumes(err)) throw err;
        await this.reopen(err);
        if (!retry) return undefined;
      }
    }
  }

  async reopen(err) {
    this.close();
    for (;;) {
      if (this.reconnectsLeft <= 0) throw new ConnectionLost(`lost the connection to the server and could not resume: ${err.message}`);
      this.reconnectsLeft -= 1;
      await sleep(this.backoffMs);
      try {
        return await this.open();
      } catch (again) { // the server may still be restarting
        if (!resumes(again)) throw again;
        err = again;
      }
    }
  }

  close() {
    if (this.link !== null) {
      this.link.fail(new ConnectionLost('closed by the device'));
      this.link.ws.close();
    }
    this.session.connectionLost();
  }
}

/**
 * The batches of one split (or one device epoch of it), in their seeded order, as device/client.py's Source:
 * `count` of them, and `batches(skip)`, which yields every one after the first `skip` without computing those (a
 * resumed job skips the batches the server holds).
 * @typedef {{count: number, batches: (skip: number) => AsyncIterable<{tensors: object, samples: number}>}} Source
 */

/**
 * Run one job from the device's side; resolves to `{frame, stats}`: the SideNet frame and what it cost.
 *
 * Sends the `evaluation` batches first (the server can then score step 0 and every epoch), then for each epoch
 * `train(epoch)`'s batches and a Done. A source's batches are `{tensors, samples}` (the Batch tensors of
 * wire/messages.mjs's `batchTensors` and the number of samples). Connects to `{url}/jobs/{job}` with the token as a
 * subprotocol. A dropped connection is re-opened up to `reconnects` times, `backoffMs` apart, without losing or
 * repeating a batch; a server's Error ends the job with a ServerRefused.
 *
 * `savedJob` keeps the job's record: saved once the server welcomes the job; when an earlier process saved it
 * (`savedJob.resume`), the first Hello resumes the job and the batches the server holds are skipped, every epoch's
 * Done sent again. The caller removes the record (`savedJob.finished()`) once it has kept the result.
 *
 * @param {string} url ws:// or wss:// address of a `mobillm serve`
 * @param {object} hello the Hello's fields (wire/messages.mjs)
 * @param {Source} evaluation
 * @param {(epoch: number) => Source} train
 * @param {object} options `WebSocketImpl` (the browser's WebSocket, or Node's `ws`), `token`, `socketOptions`
 *   (passed to the constructor, e.g. `ws`'s `{maxPayload, ca}`), `stats`, `deviceEpochs` (1), `maxMessageBytes`,
 *   `onSent(stats, samples)`, `reconnects` (30), `backoffMs` (2000), `savedJob` (a job_state.mjs SavedJob)
 */
export async function streamTensors(url, hello, evaluation, train, options) {
  const {
    WebSocketImpl, token = null, socketOptions, stats = new StreamStats(), deviceEpochs = 1,
    maxMessageBytes = DEFAULT_MAX_MESSAGE_BYTES, onSent = null, reconnects = 30, backoffMs = 2000, savedJob = null,
  } = options;
  const session = new DeviceSession(hello, { maxBytes: maxMessageBytes, resume: savedJob?.resume ?? false });
  const conn = new Connection(url, session, stats, { token, WebSocketImpl, socketOptions, reconnects, backoffMs });
  await conn.open();
  try {
    const sources = [evaluation];
    for (let epoch = 0; epoch < deviceEpochs; epoch += 1) sources.push(train(epoch));
    const total = sources.reduce((n, source) => n + source.count, 0);
    if (session.held > total) {
      throw new ConfigError(`the server holds ${session.held} batches of job '${session.helloMessage.job}', this device makes `
        + `${total}: it is another job of that name; choose another job name`);
    }
    await savedJob?.started();
    let held = session.held;
    const sendAll = async (split, epoch, source) => {
      const skip = Math.min(held, source.count);
      held -= skip;
      stats.batchesSkipped += skip;
      for await (const { tensors, samples } of source.batches(skip)) {
        const waited = performance.now();
        await conn.run((link) => link.waitFor(() => !session.windowFull));
        stats.windowWaitSeconds += (performance.now() - waited) / 1000;
        const data = session.batch(split, epoch, tensors);
        await conn.send(data);
        stats.bytesSent += data.length;
        stats.batchesSent += 1;
        onSent?.(stats, samples);
      }
    };
    await sendAll('eval', 0, evaluation);
    for (let epoch = 0; epoch < deviceEpochs; epoch += 1) {
      await sendAll('train', epoch, sources[epoch + 1]);
      await conn.send(session.done(epoch));
    }
    await conn.run((link) => link.waitFor(() => session.allAcked));
    await conn.send(session.getSideNet());
    const frame = await conn.run((link) => link.sideNet); // after a reconnect the session asks again
    return { frame, stats };
  } finally {
    conn.close();
  }
}

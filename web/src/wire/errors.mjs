/**
 * The protocol's error codes, as src/mobillm/wire/errors.py: each code's wire string, the WebSocket close code
 * of the session it ends (RFC 6455 §7.4.1) and what it means. tests/test_web_wire.py checks this table against
 * the Python enum, so the two cannot drift.
 */
import { registerCodes } from '../exceptions.mjs';

/** code -> {closeCode, description} */
export const ERROR_CODES = Object.freeze({
  bad_frame: { closeCode: 1002, description: "the bytes are not one well-formed safetensors blob with a JSON 'mobillm' header" },
  bad_version: { closeCode: 1002, description: "the header's protocol version 'v' is missing or not the one this side speaks" },
  unknown_type: { closeCode: 1002, description: "the header's 'type' names no known message" },
  bad_header: { closeCode: 1002, description: 'the header fields fail validation (missing, extra, wrong type or out of range)' },
  bad_batch: { closeCode: 1002, description: "a Batch's tensors are missing, of the wrong dtype, or of inconsistent shapes" },
  unexpected_tensors: { closeCode: 1002, description: 'a message carries tensors it must not carry' },
  unexpected: { closeCode: 1002, description: 'a message that this side does not accept at all, or not at this point of the session' },
  out_of_order: { closeCode: 1002, description: 'a sequence number outside the expected order (gap, or ack of a batch not in flight)' },
  window_full: { closeCode: 1002, description: 'more unacked batches than the window allows' },
  auth: { closeCode: 1008, description: 'the token is missing or wrong for this job' },
  fingerprint_mismatch: { closeCode: 1008, description: "the device's backbone is not the server's backbone" },
  unknown_model: { closeCode: 1008, description: 'the server cannot load the backbone the Hello names' },
  cache_full: { closeCode: 1008, description: "the job's activation cache reached its byte limit; the batch was not stored" },
  too_big: { closeCode: 1009, description: 'a message exceeds the maximum message size' },
  busy: { closeCode: 1013, description: 'the server already serves its maximum number of sessions; try again later' },
  idle_timeout: { closeCode: 1001, description: "no message arrived within the server's idle timeout" },
  internal: { closeCode: 1011, description: 'the other side failed unexpectedly; the session is closed, nothing else is affected' },
  job_lost: { closeCode: 1012, description: 'the process holding the job went away; the device reconnects and resumes the job' },
});

registerCodes(Object.keys(ERROR_CODES));

/** Whether the session is closed after an Error message (every code but job_lost). */
export function sendsError(code) {
  return code !== 'job_lost';
}

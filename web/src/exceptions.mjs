/** One exception tree for the web device, as src/mobillm/exceptions.py for the Python one. */

/** Base of every error the web device raises on purpose. */
export class MobillmError extends Error {
  constructor(message) {
    super(message);
    this.name = new.target.name;
  }
}

/** A setting is invalid; the message names every bad field and how to fix it. */
export class ConfigError extends MobillmError {
  /** @param {string | string[]} problems */
  constructor(problems) {
    const list = Array.isArray(problems) ? problems : [problems];
    super(list.join('; '));
    this.problems = list;
  }
}

/** A data file cannot be read as asked. */
export class DataError extends MobillmError {}

/** Bytes from the other side could not be decoded or are not valid. */
export class WireError extends MobillmError {}

/** An encoded tensor is malformed or names an unknown codec. */
export class CodecError extends WireError {}

/** A message is malformed or not allowed at this point of the session; `code` is an ErrorCode's string. */
export class ProtocolError extends WireError {
  /**
   * @param {string} code one of wire/errors.mjs's ERROR_CODES (an unknown code is a bug: TypeError)
   * @param {string} message
   */
  constructor(code, message) {
    if (!KNOWN_CODES.has(code)) throw new TypeError(`unknown error code ${JSON.stringify(code)}`);
    super(`${code}: ${message}`);
    this.code = code;
    this.detail = message;
  }
}

/** A frame exceeds the configured maximum message size. */
export class PayloadTooBig extends WireError {}

/** The server refused the session: an Error message (`code`), or the handshake refused (HTTP 401 is `auth`). */
export class ServerRefused extends MobillmError {
  constructor(code, message) {
    super(`server error ${code}: ${message}`);
    this.code = code;
    this.detail = message;
  }
}

const KNOWN_CODES = new Set();
/** Called once by wire/errors.mjs with the protocol's codes (the codes belong to the wire layer, above this one). */
export function registerCodes(codes) {
  for (const code of codes) KNOWN_CODES.add(code);
}

/** The connection dropped (or could not be opened): what a reconnect can cure, unlike a server's Error. */
export class ConnectionLost extends MobillmError {}

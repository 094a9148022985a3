"""The protocol's error codes: the one home of each code's meaning and of the WebSocket close code it ends a
session with (RFC 6455 §7.4.1).

``ErrorCode`` is a ``StrEnum``, so a member compares equal to its string (``ErrorCode.AUTH == "auth"``) and goes
into JSON and log lines as that string. An unknown code is a bug: ``ErrorCode("nope")`` raises ``ValueError``,
and so does ``ProtocolError("nope", ...)`` (this module registers the enum with it, see
:class:`mobillm.exceptions.ProtocolError`).
"""

from __future__ import annotations

from enum import StrEnum

from mobillm.exceptions import ProtocolError

__all__ = ["ErrorCode"]


class ErrorCode(StrEnum):
    """One member per code: its wire string, the close code of the session it ends, and what it means."""

    close_code: int
    description: str

    def __new__(cls, value: str, close_code: int, description: str) -> ErrorCode:
        member = str.__new__(cls, value)
        member._value_ = value
        member.close_code = close_code
        member.description = description
        return member

    # 1002 protocol error: the bytes or the order of the messages break the protocol
    BAD_FRAME = "bad_frame", 1002, "the bytes are not one well-formed safetensors blob with a JSON 'mobillm' header"
    BAD_VERSION = "bad_version", 1002, "the header's protocol version 'v' is missing or not the one this side speaks"
    UNKNOWN_TYPE = "unknown_type", 1002, "the header's 'type' names no known message"
    BAD_HEADER = "bad_header", 1002, "the header fields fail validation (missing, extra, wrong type or out of range)"
    BAD_BATCH = "bad_batch", 1002, "a Batch's tensors are missing, of the wrong dtype, or of inconsistent shapes"
    UNEXPECTED_TENSORS = "unexpected_tensors", 1002, "a message carries tensors it must not carry"
    UNEXPECTED = "unexpected", 1002, "a message that this side does not accept at all, or not at this point of the session"
    OUT_OF_ORDER = "out_of_order", 1002, "a sequence number outside the expected order (gap, or ack of a batch not in flight)"
    WINDOW_FULL = "window_full", 1002, "more unacked batches than the window allows"
    # 1008 policy violation: well-formed, but this server will not do it
    AUTH = "auth", 1008, "the token is missing or wrong for this job"
    FINGERPRINT_MISMATCH = "fingerprint_mismatch", 1008, "the device's backbone is not the server's backbone"
    UNKNOWN_MODEL = "unknown_model", 1008, "the server cannot load the backbone the Hello names"
    CACHE_FULL = "cache_full", 1008, "the job's activation cache reached its byte limit; the batch was not stored"
    TOO_BIG = "too_big", 1009, "a message exceeds the maximum message size"
    BUSY = "busy", 1013, "the server already serves its maximum number of sessions; try again later"
    IDLE_TIMEOUT = "idle_timeout", 1001, "no message arrived within the server's idle timeout"
    INTERNAL = "internal", 1011, "the other side failed unexpectedly; the session is closed, nothing else is affected"
    # 1012 service restart, and no Error message: the device takes it for a dropped connection and resumes
    JOB_LOST = "job_lost", 1012, "the process holding the job went away; the device reconnects and resumes the job"

    @property
    def sends_error(self) -> bool:
        """Whether the session is closed after an ``Error`` message (every code but ``job_lost``)."""
        return self is not ErrorCode.JOB_LOST


ProtocolError.register_codes(ErrorCode)

"""What crosses between device and server: error codes, frames, codecs, messages, protocol and sessions."""

from mobillm.wire import errors as _errors  # noqa: F401 - registers ErrorCode with ProtocolError

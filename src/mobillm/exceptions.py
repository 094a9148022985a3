"""One exception tree for the whole project (see ../shared/style.md §4)."""

from __future__ import annotations

from typing import Callable, ClassVar


class MobillmError(Exception):
    """Base of every error mobillm raises on purpose."""


class ConfigError(MobillmError, ValueError):
    """A setting is invalid; the message names every bad field and how to fix it."""

    def __init__(self, problems: str | list[str]):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems))


class DataError(MobillmError, ValueError):
    """A data file or data set cannot be read as asked."""


class ModelLoadError(MobillmError):
    """A backbone could not be located or loaded."""


class WireError(MobillmError):
    """Bytes from the other side could not be decoded or are not valid."""


class CodecError(WireError, ValueError):
    """An encoded tensor is malformed or names an unknown codec."""


class ProtocolError(WireError):
    """A message is valid on its own but not allowed at this point of the session.

    ``code`` is a member of :class:`mobillm.wire.errors.ErrorCode`, given as the member or its string; an unknown
    code raises ``ValueError``. The enum belongs to the wire layer, above this module, so this module does not
    import it: ``mobillm.wire.errors`` hands it over with :meth:`register_codes` when it is imported (every
    ``mobillm.wire`` import does so, see ``wire/__init__.py``)."""

    _codes: ClassVar[Callable[[str], str] | None] = None

    def __init__(self, code: str, message: str):
        if ProtocolError._codes is None:
            raise RuntimeError("ProtocolError needs the error codes: import mobillm.wire first")
        self.code, self.detail = ProtocolError._codes(code), message
        super().__init__(f"{self.code}: {message}")

    @staticmethod
    def register_codes(codes: Callable[[str], str]) -> None:
        """Set the code type (``ErrorCode``): called once by ``mobillm.wire.errors``."""
        ProtocolError._codes = codes

    def __reduce__(self):
        """Rebuild from (code, message): a job running in another process (a Ray actor) raises it across."""
        return type(self), (str(self.code), self.detail)


class PayloadTooBig(WireError):
    """A frame exceeds the configured maximum message size."""


class ServerRefused(MobillmError):
    """The server refused the session: it answered with an ``Error`` message (``code``: an ``ErrorCode``), or
    refused the WebSocket handshake (HTTP 401 is ``auth``)."""

    def __init__(self, code: str, message: str):
        self.code = code
        super().__init__(f"server error {code}: {message}")


class JobLost(MobillmError):
    """The process that held a job went away (a Ray actor died). The server closes the device's connection
    without an ``Error``, so the device reconnects and resumes the job wherever it now lives."""

"""One exception tree for the whole project (see ../shared/style.md §4)."""

from __future__ import annotations


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
    """A message is valid on its own but not allowed at this point of the session."""

    def __init__(self, code: str, message: str):
        self.code, self.detail = code, message
        super().__init__(f"{code}: {message}")

    def __reduce__(self):
        """Rebuild from (code, message): a job running in another process (a Ray actor) raises it across."""
        return type(self), (self.code, self.detail)


class PayloadTooBig(WireError):
    """A frame exceeds the configured maximum message size."""


class JobLost(MobillmError):
    """The process that held a job went away (a Ray actor died). The server closes the device's connection
    without an ``Error``, so the device reconnects and resumes the job wherever it now lives."""

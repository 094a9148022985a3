"""The two ends of a session without I/O: plain objects that take the bytes received and hand back the bytes
to send (the shape of the websockets library's sans-I/O ``protocol.py``).

    DeviceSession                                   ServerSession
    hello() ── Hello(resume on a re-open) ─────────▶ receive() → HelloReceived      (adapter opens the job)
    receive() → Opened(resend) ◀──────── Welcome ── welcome(last_seq, step)
    batch() / done() / get_side_net() ── Batch … ──▶ receive() → BatchReceived | DoneReceived | SideNetRequested
    receive() → Acked | SideNetArrived ◀── Ack … ── (the job's answers, sent by the adapter)
    receive() raises ServerRefused ◀──────── Error ── fail(err) → Failure(Error bytes, close code)

The device's batches stay in its :class:`~mobillm.wire.protocol.SendWindow` until acked; after a dropped
connection ``hello()`` again, and the ``Opened`` event of the new ``Welcome(last_seq)`` carries what to send
again: the batches the server lacks, in order, the ``Done`` of every finished epoch, and a pending
``GetSideNet``. A device started again on a job an earlier process of it began (``DeviceSession(resume=True)``,
its job state kept: ``device/job_state.py``) sends ``resume`` from its first ``Hello``; that first ``Welcome``
tells it how many batches the server ``held``: their seqs are not used again, and the device skips those
batches. The server-side order and duplicate rules belong to the job (``ReceiveOrder``), which outlives
connections. The adapters (``device/client.py``, ``server/app.py``) only move bytes; tests drive these objects
directly (``tests/loopback.py``).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from mobillm.exceptions import JobLost, PayloadTooBig, ProtocolError, ServerRefused, WireError
from mobillm.wire.errors import ErrorCode
from mobillm.wire.frame import DEFAULT_MAX_MESSAGE_BYTES, Framework
from mobillm.wire.messages import (
    Ack,
    Batch,
    Done,
    Error,
    Frame,
    GetSideNet,
    Hello,
    SideNet,
    Welcome,
    decode_message,
    encode_message,
)
from mobillm.wire.protocol import SendWindow

__all__ = [
    "State", "DeviceSession", "Opened", "Acked", "SideNetArrived", "ServerSession", "HelloReceived",
    "BatchReceived", "DoneReceived", "SideNetRequested", "Failure", "failure", "hello_differences",
]


class State(enum.Enum):
    """Where one connection of a session stands."""

    CONNECTING = "connecting"  # before the Hello (device: sent, awaiting the Welcome; server: awaited)
    OPEN = "open"  # Welcome sent / received
    CLOSED = "closed"  # the connection ended; the device may open it again


# -- device -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Opened:
    """The server welcomed the device; ``resend``: what to send again, in order, before anything new."""

    welcome: Welcome
    resend: list[bytes]


@dataclass(frozen=True)
class Acked:
    """The server stored batch ``ack.seq``; its window slot is free."""

    ack: Ack


@dataclass(frozen=True)
class SideNetArrived:
    """The trained side network (``frame.header`` is a ``SideNet``)."""

    frame: Frame


class DeviceSession:
    """The device's end of one job's session, across reconnects. ``window`` exists from the first Welcome.
    Batches carry torch tensors or numpy arrays; the side network arrives as ``framework`` says (``"np"``:
    numpy, for a device without torch).

    ``resume``: an earlier process of this device started the job (a restarted device, a reopened tab). The
    first ``Hello`` then asks to resume it, and the first ``Welcome`` sets ``held``, the batches the server
    holds (``last_seq + 1``): the next batch takes seq ``held``, and the device skips its first ``held``
    batches, which it makes again in the same order. ``held`` is 0 for a job this process started."""

    def __init__(self, hello: Hello, *, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, framework: Framework = "pt",
                 resume: bool = False):
        self.hello_message, self.max_bytes, self.framework = hello, max_bytes, framework
        self.resume = resume
        self.state = State.CLOSED
        self.window: SendWindow | None = None
        self.held = 0
        self.done_epochs: list[int] = []
        self.side_net_pending = False
        self.opens = 0  # Welcomes received; every one after the first is a resumed session

    def hello(self) -> bytes:
        """Open (or re-open) the connection: the ``Hello``, with ``resume`` once a session existed (or from the
        first one, for a job an earlier process started)."""
        if self.state is not State.CLOSED:
            raise ProtocolError(ErrorCode.UNEXPECTED, f"hello on a {self.state.value} session")
        self.state = State.CONNECTING
        resume = self.resume or self.window is not None
        return encode_message(self.hello_message.model_copy(update={"resume": resume}))

    def connection_lost(self) -> None:
        """The connection ended; what is unacked stays in the window for the next :meth:`hello`."""
        self.state = State.CLOSED

    def receive(self, data: bytes) -> Opened | Acked | SideNetArrived:
        """One message from the server. Raises ``ServerRefused`` for an ``Error``, ``ProtocolError`` for a
        message the server does not send at this point (``unexpected``) or an ack out of order, ``WireError``
        for bytes that are not a message."""
        if isinstance(data, str):
            raise ProtocolError(ErrorCode.BAD_FRAME, "the server sent a text frame; the protocol is binary")
        frame = decode_message(data, max_bytes=self.max_bytes, framework=self.framework)
        message = frame.header
        if isinstance(message, Error):
            self.state = State.CLOSED
            raise ServerRefused(message.code, message.message)
        if self.state is State.CONNECTING and isinstance(message, Welcome):
            return self._open(message)
        if self.state is State.OPEN and isinstance(message, Ack):
            self.window.ack(message.seq)
            return Acked(message)
        if self.state is State.OPEN and isinstance(message, SideNet):
            self.side_net_pending = False
            return SideNetArrived(frame)
        expected = "welcome" if self.state is State.CONNECTING else "ack or side_net"
        raise ProtocolError(ErrorCode.UNEXPECTED, f"expected {expected} from the server, got {message.type}")

    def _open(self, welcome: Welcome) -> Opened:
        self.state = State.OPEN
        self.opens += 1
        if self.window is None:
            self.window = SendWindow(welcome.window)
            if self.resume:  # numbering goes on after what the server holds of the earlier process's batches
                self.held = self.window.next_seq = welcome.last_seq + 1
            return Opened(welcome, [])
        resend = self.window.welcome(welcome.last_seq)
        resend += [encode_message(Done(epoch=epoch)) for epoch in self.done_epochs]
        if self.side_net_pending:
            resend.append(encode_message(GetSideNet()))
        return Opened(welcome, resend)

    @property
    def window_full(self) -> bool:
        return self._window().full

    @property
    def all_acked(self) -> bool:
        return not self._window().pending

    def batch(self, split: str, epoch: int, tensors: Mapping) -> bytes:
        """The next ``Batch`` (next seq), kept until acked. Raises ``ProtocolError(window_full)`` when full."""
        return self._window().add(lambda seq: encode_message(Batch(seq=seq, split=split, epoch=epoch), tensors))

    def done(self, epoch: int) -> bytes:
        """``Done(epoch)``: every batch of ``epoch`` is sent (and sent again after every reconnect)."""
        self._window()
        self.done_epochs.append(epoch)
        return encode_message(Done(epoch=epoch))

    def get_side_net(self) -> bytes:
        """Ask for the side network (asked again after a reconnect until it arrives)."""
        self._window()
        self.side_net_pending = True
        return encode_message(GetSideNet())

    def _window(self) -> SendWindow:
        if self.window is None:
            raise ProtocolError(ErrorCode.UNEXPECTED, "the session has not been welcomed yet")
        return self.window


def hello_differences(held: Hello, hello: Hello) -> list[str]:
    """The dotted names of the fields where ``hello`` differs from ``held``, the Hello a job was started with,
    apart from ``token`` and ``resume``: a session may attach to the job only when there are none (§3)."""
    return _differences(*(h.model_dump(exclude={"token", "resume"}) for h in (held, hello)))


def _differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(a.keys() | b.keys()):
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            out += _differences(x, y, f"{prefix}{key}.")
        elif x != y:
            out.append(prefix + key)
    return out


# -- server -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class HelloReceived:
    """The device's Hello: open its job (may block), then send :meth:`ServerSession.welcome`."""

    hello: Hello


@dataclass(frozen=True)
class BatchReceived:
    """A Batch for the job: ``JobSession.receive(data, frame)``, then send the ``Ack`` it returns."""

    data: bytes
    frame: Frame

    @property
    def batch(self) -> Batch:
        return self.frame.header


@dataclass(frozen=True)
class DoneReceived:
    """The device finished sending ``epoch``."""

    epoch: int


@dataclass(frozen=True)
class SideNetRequested:
    """The device asks for the side network: send ``JobSession.side_net()`` once training ends."""


@dataclass(frozen=True)
class Failure:
    """How a session ends on a failure: ``data`` (the ``Error`` message, None for ``job_lost``) then a close
    with ``close_code`` and the code as the reason."""

    code: ErrorCode
    message: str
    data: bytes | None = field(repr=False)

    @property
    def close_code(self) -> int:
        return self.code.close_code

    @property
    def reason(self) -> str:
        return str(self.code)


def failure(code: ErrorCode | str, message: str) -> Failure:
    """The ``Failure`` of ``code`` (unknown: ``ValueError``)."""
    code = ErrorCode(code)
    data = encode_message(Error(code=code, message=message)) if code.sends_error else None
    return Failure(code, message, data)


class ServerSession:
    """The server's end of one connection. ``url_job``: the job the connection's URL names (None: none);
    ``authenticated``: the handshake checked a token for it, so the Hello must name that job."""

    def __init__(self, *, window: int, url_job: str | None = None, authenticated: bool = False,
                 max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES):
        self.window, self.url_job, self.authenticated, self.max_bytes = window, url_job, authenticated, max_bytes
        self.state = State.CONNECTING
        self.hello: Hello | None = None

    def receive(self, data: bytes | str) -> HelloReceived | BatchReceived | DoneReceived | SideNetRequested:
        """One message from the device. Raises ``WireError`` (a ``ProtocolError`` with its code, or
        ``PayloadTooBig``) for anything refused: hand it to :meth:`fail`."""
        if self.state is State.CLOSED:
            raise ProtocolError(ErrorCode.UNEXPECTED, "the session is closed")
        if isinstance(data, str):
            raise ProtocolError(ErrorCode.BAD_FRAME, "text frames are not part of the protocol; send binary safetensors")
        frame = decode_message(data, max_bytes=self.max_bytes)
        message = frame.header
        if self.state is State.CONNECTING:
            return self._hello(message)
        if isinstance(message, Batch):
            return BatchReceived(data, frame)
        if isinstance(message, Done):
            return DoneReceived(message.epoch)
        if isinstance(message, GetSideNet):
            return SideNetRequested()
        raise ProtocolError(ErrorCode.UNEXPECTED, f"a device does not send {message.type} in an open session")

    def _hello(self, message) -> HelloReceived:
        if not isinstance(message, Hello):
            raise ProtocolError(ErrorCode.BAD_HEADER, f"the first message must be hello, got {message.type}")
        if self.hello is not None:
            raise ProtocolError(ErrorCode.UNEXPECTED, "a second hello while the job is being opened")
        if (self.authenticated or self.url_job is not None) and message.job != self.url_job:
            raise ProtocolError(ErrorCode.AUTH, f"this connection is for job {self.url_job!r}, not {message.job!r}")
        self.hello = message
        return HelloReceived(message)

    def welcome(self, session: str, last_seq: int, step: int) -> bytes:
        """The job is open: the ``Welcome`` to send (``last_seq``: the highest seq the job holds)."""
        if self.state is not State.CONNECTING or self.hello is None:
            raise ProtocolError(ErrorCode.UNEXPECTED, "welcome before a hello")
        self.state = State.OPEN
        return encode_message(Welcome(session=session, window=self.window, last_seq=last_seq, step=step))

    def fail(self, err: BaseException) -> Failure:
        """The one mapping from a failure to the ``Error`` and close code that end this session: a
        ``ProtocolError``'s own code, ``too_big``, ``bad_frame`` for any other ``WireError``, ``job_lost``
        (no Error: the device resumes) and ``internal`` for anything unexpected (its detail stays in the log)."""
        self.state = State.CLOSED
        if isinstance(err, ProtocolError):
            return failure(err.code, str(err))
        if isinstance(err, PayloadTooBig):
            return failure(ErrorCode.TOO_BIG, str(err))
        if isinstance(err, WireError):
            return failure(ErrorCode.BAD_FRAME, str(err))
        if isinstance(err, JobLost):
            return failure(ErrorCode.JOB_LOST, str(err))
        return failure(ErrorCode.INTERNAL, f"internal error: {type(err).__name__}")

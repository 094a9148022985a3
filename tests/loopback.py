"""An in-memory transport between a ``DeviceSession`` and a ``ServerSession``: two queues of messages, a job
behind the server end (anything with the ``JobSession`` seam), and ``cut()`` to drop a connection with what
is in flight both ways. No sockets, no threads: a whole session runs in milliseconds.

It lives with the tests, not in ``wire/``: only tests use it, and the library carries no test-only code.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import torch

from mobillm.wire.frame import DEFAULT_MAX_MESSAGE_BYTES
from mobillm.wire.messages import Ack, Frame, Hello, SideNet, encode_message
from mobillm.wire.protocol import ReceiveOrder
from mobillm.wire.session import (
    BatchReceived,
    DeviceSession,
    DoneReceived,
    Failure,
    HelloReceived,
    Opened,
    ServerSession,
    SideNetRequested,
)


def batch_tensors(seq: int) -> dict[str, torch.Tensor]:
    """A Batch's tensors that the frame checks accept; ``sample_ids`` = [seq] so a test can follow it."""
    return {"sample_ids": torch.tensor([seq]), "labels": torch.tensor([0]), "act.0.data": torch.zeros(2)}


class FakeJob:
    """The ``JobSession`` seam with the job's order rule (``ReceiveOrder``) and nothing else: it records the
    sample ids it stored, the ``Done``s and every receive (duplicates included)."""

    def __init__(self):
        self.order = ReceiveOrder()
        self.stored: list[int] = []
        self.received: list[int] = []
        self.done: list[int] = []

    @property
    def last_seq(self) -> int:
        return self.order.last_seq

    @property
    def step(self) -> int:
        return len(self.stored)

    async def receive(self, data: bytes, frame: Frame) -> Ack:
        seq = frame.header.seq
        self.received.append(seq)
        if self.order.accept(seq):
            self.stored.append(int(frame.tensors["sample_ids"][0]))
        return Ack(seq=seq, step=self.step)

    async def device_done(self, epoch: int) -> None:
        self.done.append(epoch)

    async def side_net(self) -> bytes:
        return encode_message(SideNet(config={"fake": True}, step=self.step), {"w": torch.ones(2)})


class Loopback:
    """One device session and the server sessions of its successive connections, joined in memory.
    ``failures``: how each server session ended (the ``Error`` bytes are queued to the device)."""

    def __init__(self, device: DeviceSession, open_job: Callable[[Hello], FakeJob], *, window: int = 4,
                 url_job: str | None = None, authenticated: bool = False,
                 max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES):
        self.device, self.open_job = device, open_job
        self.window, self.url_job, self.authenticated, self.max_bytes = window, url_job, authenticated, max_bytes
        self.to_server: deque[bytes | str] = deque()
        self.to_device: deque[bytes] = deque()
        self.server: ServerSession | None = None
        self.job: FakeJob | None = None
        self.failures: list[Failure] = []

    async def connect(self) -> Opened:
        """Open a connection: Hello, Welcome, and the device's resend sent at once (as the adapter does)."""
        self.server = ServerSession(window=self.window, url_job=self.url_job, authenticated=self.authenticated,
                                    max_bytes=self.max_bytes)
        self.send(self.device.hello())
        await self.to_server_all()
        (opened,) = self.to_device_all()
        self.send(*opened.resend)
        return opened

    def send(self, *data: bytes | str) -> None:
        """Device → server, queued until delivered."""
        self.to_server.extend(data)

    async def to_server_all(self, limit: int | None = None) -> None:
        """Deliver up to ``limit`` queued messages to the server session; its answers queue for the device.
        A failure ends the connection there, as the adapter's close does (the rest in flight is lost)."""
        n = 0
        while self.to_server and (limit is None or n < limit):
            n += 1
            data = self.to_server.popleft()
            try:
                reply = await self._answer(self.server.receive(data))
            except Exception as err:
                failure = self.server.fail(err)
                self.failures.append(failure)
                if failure.data is not None:
                    self.to_device.append(failure.data)
                self.to_server.clear()
                return
            if reply is not None:
                self.to_device.append(reply)

    async def _answer(self, event) -> bytes | None:
        if isinstance(event, HelloReceived):
            self.job = self.open_job(event.hello)
            return self.server.welcome("s1", self.job.last_seq, self.job.step)
        if isinstance(event, BatchReceived):
            return encode_message(await self.job.receive(event.data, event.frame))
        if isinstance(event, DoneReceived):
            await self.job.device_done(event.epoch)
            return None
        if isinstance(event, SideNetRequested):
            return await self.job.side_net()
        raise AssertionError(f"no answer for {event!r}")

    def to_device_all(self, limit: int | None = None) -> list:
        """Deliver up to ``limit`` queued messages to the device session; its events, in order."""
        events = []
        while self.to_device and (limit is None or len(events) < limit):
            events.append(self.device.receive(self.to_device.popleft()))
        return events

    def cut(self) -> None:
        """The connection drops: whatever is in flight either way is lost."""
        self.to_server.clear()
        self.to_device.clear()
        self.device.connection_lost()
        self.server = None

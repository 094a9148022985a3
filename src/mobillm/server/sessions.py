"""What the WebSocket front end needs of a job, wherever the job runs: the seam between the front end and a
session manager (in this process: :class:`~mobillm.server.manager.SessionManager`; on a Ray cluster:
:class:`~mobillm.server.ray_manager.RayManager`).

The calls are coroutines so that a job in another process is awaited without blocking the event loop; a job
in this process answers them at once, exactly as before the seam existed.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Protocol

from mobillm.server.status import JobStatus
from mobillm.wire.messages import Ack, Frame, Hello

if TYPE_CHECKING:
    from mobillm.server.job import Job

#: How often a session waiting for the end of training looks again (seconds).
FINISH_POLL = 0.05


class JobSession(Protocol):
    """One device connection's view of its job. ``last_seq`` and ``step`` are read for the ``Welcome``."""

    @property
    def last_seq(self) -> int: ...

    @property
    def step(self) -> int: ...

    async def receive(self, data: bytes, frame: Frame) -> Ack:
        """Validate, cache and queue one batch (``frame`` is ``data`` decoded); the ``Ack`` to send."""

    async def device_done(self, epoch: int) -> None:
        """The device finished sending ``epoch``."""

    async def side_net(self) -> bytes:
        """Wait until training ends; the encoded ``SideNet`` message."""


class Sessions(Protocol):
    """Where jobs live. ``open`` may block (it may load a model or restore a job from disk): the front end
    calls it from a thread. It raises ``ProtocolError`` for a Hello it refuses. ``status`` (any thread): every
    job, by name, for the status page and /metrics."""

    def open(self, hello: Hello) -> JobSession: ...

    def status(self) -> list[JobStatus]: ...


class LocalSession:
    """A job in this process, driven straight from the event loop (no thread hop per batch)."""

    def __init__(self, job: Job):
        self.job = job

    @property
    def last_seq(self) -> int:
        return self.job.order.last_seq

    @property
    def step(self) -> int:
        return self.job.trainer.step_count

    async def receive(self, data: bytes, frame: Frame) -> Ack:
        return self.job.receive(data, frame)

    async def device_done(self, epoch: int) -> None:
        self.job.device_done(epoch)

    async def side_net(self) -> bytes:
        # Polled rather than waited for in a thread: every job waiting at once would hold a thread of the
        # default executor (cores + 4 of them) and so delay every other session's ``open``.
        while not self.job.wait(0):
            await asyncio.sleep(FINISH_POLL)
        return await asyncio.to_thread(self.job.side_net_message)

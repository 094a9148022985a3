"""The device's WebSocket adapter: stream encoded taps to the server, download the side network.

The session's rules (Hello, Welcome, the window, what to resend after a reconnect, the server's Error) are
:class:`~mobillm.wire.session.DeviceSession`'s; this adapter connects, reconnects with a backoff and moves
bytes. Forward passes run in a worker thread so the connection stays responsive; the device waits only when
``window`` batches are unacked, never for a training step.

:func:`stream_tensors` streams any source of Batch tensors (torch or numpy) and imports no torch: the bundle
runtime's device uses it as is; :func:`stream` is the torch backbone's source on top of it. With a
:class:`~mobillm.device.job_state.SavedJob` a job an earlier process of the device started is resumed: the
sources skip the batches the server holds without computing them.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import islice
from typing import TYPE_CHECKING, Any, Callable

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from mobillm.device.job_state import SavedJob
from mobillm.device.stats import TapStats
from mobillm.exceptions import ConfigError, ServerRefused
from mobillm.procfs import peak_rss_bytes
from mobillm.wire.errors import ErrorCode
from mobillm.wire.frame import DEFAULT_MAX_MESSAGE_BYTES, Framework
from mobillm.wire.messages import Batch, Frame, Hello
from mobillm.wire.session import Acked, DeviceSession, Opened, SideNetArrived

if TYPE_CHECKING:
    from mobillm.data.batching import BaseBatcher
    from mobillm.device.noise import ActivationNoise
    from mobillm.device.taps import TappedBackbone
    from mobillm.wire.codecs import Codec

__all__ = ["StreamStats", "BatchSource", "Source", "stream", "stream_tensors"]

#: Batches to send: each one's tensors (``Batch.tensors``) and its number of samples.
BatchSource = Iterable[tuple[Mapping[str, Any], int]]


@dataclass(frozen=True)
class Source:
    """The batches of one split (or one device epoch of it), in their seeded order: ``count`` of them, and
    ``batches(skip)``, which yields every one after the first ``skip`` without computing those (a resumed job
    skips the batches the server holds)."""

    count: int
    batches: Callable[[int], BatchSource]


@dataclass
class StreamStats:
    forward: TapStats = field(default_factory=TapStats)
    bytes_sent: int = 0
    bytes_received: int = 0
    batches_sent: int = 0
    #: batches not sent because the server held them (a job an earlier process of the device started)
    batches_skipped: int = 0
    window_wait_seconds: float = 0.0
    #: training steps the server had done when each batch was acked (shows the overlap)
    acked_steps: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    reconnects: int = 0

    def totals(self) -> dict:
        """What the run cost, for its summary: per training sample, bytes, waits and the peak memory so far."""
        n = max(1, self.forward.samples)
        return {
            "device_seconds_per_sample": self.forward.seconds / n, "bytes_per_sample": self.forward.bytes / n,
            "bytes_sent": self.bytes_sent, "bytes_received": self.bytes_received, "batches_sent": self.batches_sent,
            "batches_skipped": self.batches_skipped, "window_wait_seconds": self.window_wait_seconds, "peak_memory_bytes": peak_rss_bytes(),
        }

    def record(self, elapsed: float) -> dict:
        """One ``metrics.jsonl`` line of progress, ``elapsed`` seconds into the run."""
        return dict(
            time=time.time(), batches_sent=self.batches_sent, bytes_sent=self.bytes_sent, bytes_received=self.bytes_received,
            forward_seconds=self.forward.seconds, samples_per_s=self.forward.samples / elapsed,
            server_step=self.acked_steps[-1] if self.acked_steps else 0,
            server_loss=self.losses[-1] if self.losses else None, device_peak_memory_bytes=peak_rss_bytes(),
        )


class _Link:
    """One connection's receive side: bytes into the session; acks wake the sender, the SideNet resolves a
    future."""

    def __init__(self, ws, session: DeviceSession, stats: StreamStats):
        self.ws, self.session, self.stats = ws, session, stats
        self.changed = asyncio.Event()
        self.side_net: asyncio.Future[Frame] = asyncio.get_running_loop().create_future()
        self.failure: BaseException | None = None

    async def receive(self) -> None:
        try:
            async for data in self.ws:
                self.stats.bytes_received += len(data)
                event = self.session.receive(data)
                if isinstance(event, Acked):
                    self.stats.acked_steps.append(event.ack.step)
                    if event.ack.loss is not None:
                        self.stats.losses.append(event.ack.loss)
                elif isinstance(event, SideNetArrived):
                    self.side_net.set_result(event.frame)
                self.changed.set()
        except BaseException as err:  # noqa: BLE001 - handed to the sending side
            self.failure = err
        finally:
            if self.failure is None:
                self.failure = ConnectionError("the server closed the connection")
            if not self.side_net.done():
                self.side_net.set_exception(self.failure)
                self.side_net.exception()  # mark it seen: a link dropped before anyone asked is not an error
            self.changed.set()

    async def wait_for(self, condition) -> None:
        while not condition():
            if self.failure is not None:
                raise self.failure
            self.changed.clear()
            await self.changed.wait()


_DROPPED = (ConnectionClosed, ConnectionError, OSError)  # what a reconnect can cure (not a server's Error)


class _Connection:
    """The WebSocket under a :class:`DeviceSession`, re-opened after a dropped connection: the new ``Welcome``
    tells the session what to send again (the unacked batches the server lacks, every finished epoch's
    ``Done``, a pending ``GetSideNet``), and this sends it."""

    def __init__(self, url: str, session: DeviceSession, token: str | None, cafile: str | None,
                 stats: StreamStats, reconnects: int, backoff: float):
        self.url = f"{url.rstrip('/')}/jobs/{session.hello_message.job}"
        self.session, self.stats = session, stats
        self.headers = {"Authorization": f"Bearer {token}"} if token else None
        self.tls = ssl.create_default_context(cafile=cafile) if url.startswith("wss://") else None
        self.reconnects_left, self.backoff = reconnects, backoff
        self.link: _Link | None = None

    async def open(self) -> None:
        try:
            ws = await connect(self.url, max_size=self.session.max_bytes, compression=None, ping_timeout=None,
                               additional_headers=self.headers, ssl=self.tls)
        except InvalidStatus as err:
            body = err.response.body.decode(errors="replace").strip()
            code = ErrorCode.AUTH if err.response.status_code == 401 else ErrorCode.UNEXPECTED
            raise ServerRefused(code, f"HTTP {err.response.status_code} in the handshake: {body}") from None
        self.session.connection_lost()  # a connection that dropped before a reconnect noticed
        try:
            await ws.send(self.session.hello())
            opened: Opened = self.session.receive(await ws.recv())  # the session refuses anything but Welcome
        except BaseException:
            await ws.close()
            raise
        self.link = _Link(ws, self.session, self.stats)
        self.receiver = asyncio.create_task(self.link.receive())
        if self.session.opens > 1:
            self.stats.reconnects += 1
        for data in opened.resend:  # what the server lacks, in order, then what followed it
            await ws.send(data)

    async def send(self, data: bytes) -> None:
        """Send once; after a dropped connection the session's resend on the next Welcome covers ``data``."""
        await self.run(lambda link: link.ws.send(data), retry=False)

    async def run(self, op, retry: bool = True):
        """``op(link)``; on a dropped connection reconnect (bounded) and, if ``retry``, run it again."""
        while True:
            try:
                return await op(self.link)
            except _DROPPED as err:
                await self._reopen(err)
                if not retry:
                    return None

    async def _reopen(self, err: BaseException) -> None:
        await self.close()
        while True:
            if self.reconnects_left <= 0:
                raise ConnectionError(f"lost the connection to the server and could not resume: {err}") from err
            self.reconnects_left -= 1
            await asyncio.sleep(self.backoff)
            try:
                return await self.open()
            except _DROPPED as again:  # the server may still be restarting
                err = again

    async def close(self) -> None:
        self.receiver.cancel()
        await self.link.ws.close()
        self.session.connection_lost()


async def stream_tensors(
    url: str,
    hello: Hello,
    evaluation: Source,
    train: Callable[[int], Source],
    *,
    stats: StreamStats | None = None,
    framework: Framework = "pt",
    device_epochs: int = 1,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    on_sent: Callable[[StreamStats, int], None] | None = None,
    token: str | None = None,
    cafile: str | None = None,
    reconnects: int = 30,
    backoff: float = 2.0,
    saved_job: SavedJob | None = None,
) -> tuple[Frame, StreamStats]:
    """Run one job from the device's side; return the ``SideNet`` frame (its tensors torch, or numpy with
    ``framework="np"``) and what it cost.

    Sends the ``evaluation`` batches first (the server can then score step 0 and every epoch), then for each
    epoch ``train(epoch)``'s batches and a ``Done``. The sources are iterated in a worker thread (their forward
    passes do not block the connection). Connects to ``{url}/jobs/{job}``, presenting ``token`` in the
    handshake; a ``wss://`` URL is verified against the system's CAs or ``cafile``. A dropped connection is
    re-opened up to ``reconnects`` times (``backoff`` seconds apart) without losing or repeating a batch.
    ``on_sent(stats, samples)`` is called after every batch.

    ``saved_job`` keeps the job's state: saved once the server welcomes the job; when an earlier process saved
    it (``saved_job.resume``), the first Hello resumes the job and the batches the server holds are skipped,
    every epoch's ``Done`` sent again. The caller removes the state (``saved_job.finished()``) once it has kept
    the result.
    """
    stats = stats if stats is not None else StreamStats()
    session = DeviceSession(hello, max_bytes=max_message_bytes, framework=framework, resume=saved_job is not None and saved_job.resume)
    conn = _Connection(url, session, token, cafile, stats, reconnects, backoff)
    await conn.open()
    try:
        sources = [evaluation] + [train(epoch) for epoch in range(device_epochs)]
        total = sum(source.count for source in sources)
        if session.held > total:
            raise ConfigError(f"the server holds {session.held} batches of job {hello.job!r}, this device makes {total}: "
                              "it is another job of that name; choose another job name")
        if saved_job is not None:
            saved_job.started()
        held = session.held

        async def send_all(split: str, epoch: int, source: Source) -> None:
            nonlocal held
            skip = min(held, source.count)
            held -= skip
            stats.batches_skipped += skip
            iterator: Iterator = iter(source.batches(skip))
            while (item := await asyncio.to_thread(next, iterator, None)) is not None:
                tensors, samples = item
                waited = time.perf_counter()
                await conn.run(lambda link: link.wait_for(lambda: not session.window_full))
                stats.window_wait_seconds += time.perf_counter() - waited
                data = session.batch(split, epoch, tensors)
                await conn.send(data)
                stats.bytes_sent += len(data)
                stats.batches_sent += 1
                if on_sent:
                    on_sent(stats, samples)

        await send_all("eval", 0, evaluation)
        for epoch, source in enumerate(sources[1:]):
            await send_all("train", epoch, source)
            await conn.send(session.done(epoch))
        await conn.run(lambda link: link.wait_for(lambda: session.all_acked))
        await conn.send(session.get_side_net())
        frame = await conn.run(lambda link: link.side_net)  # after a reconnect the session asks again
    finally:
        await conn.close()
    return frame, stats


async def stream(
    url: str,
    hello: Hello,
    backbone: TappedBackbone,
    codec: Codec,
    batcher: BaseBatcher,
    train: list,
    evaluation: list,
    *,
    batch_size: int,
    seed: int,
    pivot: bool,
    noise: ActivationNoise | None = None,
    **options,
) -> tuple[Frame, StreamStats]:
    """:func:`stream_tensors` with the torch backbone's taps of ``evaluation`` and ``train`` (each epoch in the
    batcher's seeded order); nothing is kept once a batch is acked (local scoring forwards the split again).
    ``noise`` is added to every tap before the codec (the same draw for a sample in every epoch and resend).
    ``options`` are :func:`stream_tensors`' keyword options (``device_epochs``, ``max_message_bytes``,
    ``on_sent``, ``token``, ``cafile``, ``reconnects``, ``backoff``, ``saved_job``), passed on as they are."""
    from mobillm.device.inference import tap_batches

    stats = StreamStats()

    def source(examples: list, split: str, epoch: int, tap_stats: TapStats | None) -> Source:
        def batches(skip: int) -> BatchSource:
            encoded = islice(batcher.batches(examples, batch_size, shuffle=split == "train", seed=seed, epoch=epoch), skip, None)
            for tapped in tap_batches(backbone, codec, encoded, pivot, tap_stats, noise, split):  # skipped: never forwarded
                b = tapped.batch
                yield Batch.tensors(tapped.taps, sample_ids=b.sample_ids, labels=b.labels, loss_mask=b.loss_mask,
                                    attention_mask=None if pivot else b.attention_mask,
                                    last_index=None if pivot else b.last_index), len(b)

        return Source(-(-len(examples) // batch_size), batches)

    return await stream_tensors(
        url, hello, source(evaluation, "eval", 0, None), lambda epoch: source(train, "train", epoch, stats.forward),
        stats=stats, **options,
    )

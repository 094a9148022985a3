"""Which batch a job's training thread trains next: the device's live epochs as their batches arrive (with idle
replays while it waits), then the epochs replayed from the activation cache in :func:`epoch_order`.

The feed deals in sequence numbers only; the batches themselves stay in the cache.
"""

from __future__ import annotations

import collections
import queue
from typing import Callable, Iterator

from mobillm.training.order import epoch_order

_DONE = object()  # queued by ``done``: the device finished the live epoch being trained


class BatchFeed:
    """The seqs a job holds, by split and device epoch, and the order training reads them in.

    ``idle_replays``: while no live batch is queued, train again on the live epoch's batches received so far
    (round robin, oldest first), each up to this many times (``TrainConfig.idle_replays``)."""

    def __init__(self, device_epochs: int, idle_replays: int, seed: int):
        self.train_seqs: list[list[int]] = [[] for _ in range(device_epochs)]
        self.eval_seqs: list[int] = []
        self.idle_replays, self.seed = idle_replays, seed
        self._incoming: queue.Queue = queue.Queue()
        self._replayable: collections.deque[tuple[int, int]] = collections.deque()  # (seq, times replayed)

    # -- from the event loop (or a restore) --------------------------------------------------------------
    def add(self, seq: int, split: str, epoch: int, queued: bool = True) -> None:
        """Hold batch ``seq``; a training batch is also queued for its live epoch unless ``queued`` is False."""
        if split == "eval":
            self.eval_seqs.append(seq)
            return
        self.train_seqs[epoch].append(seq)
        if queued:
            self._incoming.put(seq)

    def done(self) -> None:
        """The device finished sending the live epoch that training reads now (or next)."""
        self._incoming.put(_DONE)

    def requeue(self, from_epoch: int, done_epochs: set[int]) -> None:
        """After a restore: queue the held batches of the live epochs not yet trained, each closed if it was."""
        for epoch in range(from_epoch, len(self.train_seqs)):
            for seq in self.train_seqs[epoch]:
                self._incoming.put(seq)
            if epoch in done_epochs:
                self._incoming.put(_DONE)

    @property
    def has_training(self) -> bool:
        return any(self.train_seqs)

    # -- from the training thread ------------------------------------------------------------------------
    def epoch(self, epoch: int, replay: Callable[[int], object]) -> Iterator[int]:
        """The seqs of training epoch ``epoch``; ``replay(seq)`` trains an idle replay during a live epoch."""
        if epoch < len(self.train_seqs):
            return self._live(replay)
        seqs = list(self.train_seqs[-1])
        return iter([seqs[i] for i in epoch_order(len(seqs), epoch, self.seed)])

    def _live(self, replay: Callable[[int], object]) -> Iterator[int]:
        """Batches of a device epoch as they arrive, until the device says that epoch is done."""
        self._replayable.clear()
        while (seq := self._next_live(replay)) is not _DONE:
            if self.idle_replays:
                self._replayable.append((seq, 0))
            yield seq

    def _next_live(self, replay: Callable[[int], object]):
        """The next queued batch; while none is queued, replay received ones (round robin, oldest first)."""
        while self._replayable:
            try:
                return self._incoming.get_nowait()
            except queue.Empty:
                seq, times = self._replayable.popleft()
                replay(seq)
                if times + 1 < self.idle_replays:
                    self._replayable.append((seq, times + 1))
        return self._incoming.get()

"""The server's activation cache: what the device sent, still encoded, so epochs replay with no device work.

Batches are kept as the very bytes that arrived (a validated safetensors message): no re-encoding, and the
same decoder reads them back. Every batch is written to disk before it is acked (write, then rename: a crash
never leaves a half-written entry under its final name), so a restarted server still holds it; memory keeps
copies up to a limit so that replaying epochs rarely reads the disk.
"""

from __future__ import annotations

from pathlib import Path

import safetensors.torch
import torch

from mobillm.exceptions import ProtocolError
from mobillm.files import write_atomic
from mobillm.wire.errors import ErrorCode


class ActivationCache:
    """``memory_limit_bytes``: copies kept in memory; ``limit_bytes``: all the job may hold (None: no limit)."""

    def __init__(self, directory: str | Path, memory_limit_bytes: int, limit_bytes: int | None = None):
        self.directory = Path(directory)
        self.memory_limit = memory_limit_bytes
        self.limit_bytes = limit_bytes
        self._memory: dict[int, bytes] = {}
        self._sizes: dict[int, int] = {}  # every entry, all on disk
        self.memory_bytes = 0
        self.disk_bytes = 0

    def put(self, seq: int, data: bytes) -> None:
        if seq in self._sizes:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        write_atomic(self._path(seq), data)
        self._sizes[seq] = len(data)
        self.disk_bytes += len(data)
        if self.memory_bytes + len(data) <= self.memory_limit:
            self._memory[seq] = data
            self.memory_bytes += len(data)

    def admit(self, seq: int, size: int) -> None:
        """Refuse (``cache_full``) a new entry of ``size`` bytes that would pass the limit; a held ``seq`` passes."""
        if self.limit_bytes is not None and seq not in self._sizes and self.total_bytes + size > self.limit_bytes:
            raise ProtocolError(ErrorCode.CACHE_FULL, f"the job's activation cache holds {self.total_bytes:,} bytes; this batch "
                                              f"would pass its limit of {self.limit_bytes:,} (serve --max-cache-mb)")

    def get(self, seq: int) -> bytes:
        if seq in self._memory:
            return self._memory[seq]
        if seq in self._sizes:
            return self._path(seq).read_bytes()
        raise KeyError(seq)

    def tensors(self, seq: int) -> dict[str, torch.Tensor]:
        """The tensors of entry ``seq``, read back without validation: the bytes were validated before they were put."""
        return safetensors.torch.load(self.get(seq))

    def restore(self) -> list[int]:
        """Index the entries a previous server process left on disk (half-written ones are dropped)."""
        for tmp in self.directory.glob("*.tmp"):
            tmp.unlink()
        for path in self.directory.glob("*.safetensors"):
            self._sizes[int(path.stem)] = path.stat().st_size
        self.disk_bytes = sum(self._sizes.values())
        return self.seqs()

    def drop_from(self, seq: int) -> None:
        """Forget (and delete) every entry from ``seq`` on: what lies past a gap is resent by the device."""
        for s in [s for s in self._sizes if s >= seq]:
            self.disk_bytes -= self._sizes.pop(s)
            if s in self._memory:
                self.memory_bytes -= len(self._memory.pop(s))
            self._path(s).unlink(missing_ok=True)

    @property
    def total_bytes(self) -> int:
        """Bytes the job holds (all on disk; the memory copies are not counted twice): the per-job limit."""
        return self.disk_bytes

    def __contains__(self, seq: int) -> bool:
        return seq in self._sizes

    def __len__(self) -> int:
        return len(self._sizes)

    def seqs(self) -> list[int]:
        return sorted(self._sizes)

    def _path(self, seq: int) -> Path:
        return self.directory / f"{seq:09d}.safetensors"

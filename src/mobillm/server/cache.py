"""The server's activation cache: what the device sent, still encoded, so epochs replay with no device work.

Batches are kept as the very bytes that arrived (a validated safetensors message): no re-encoding, and the
same decoder reads them back. Memory holds them up to a limit; beyond it they go to files on disk.
"""

from __future__ import annotations

import os
from pathlib import Path


class ActivationCache:
    def __init__(self, directory: str | Path, memory_limit_bytes: int):
        self.directory = Path(directory)
        self.memory_limit = memory_limit_bytes
        self._memory: dict[int, bytes] = {}
        self._on_disk: set[int] = set()
        self.memory_bytes = 0
        self.disk_bytes = 0

    def put(self, seq: int, data: bytes) -> None:
        if seq in self._memory or seq in self._on_disk:
            return
        if self.memory_bytes + len(data) <= self.memory_limit:
            self._memory[seq] = data
            self.memory_bytes += len(data)
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self._path(seq)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)  # a crash never leaves a half-written entry under its final name
        self._on_disk.add(seq)
        self.disk_bytes += len(data)

    def get(self, seq: int) -> bytes:
        if seq in self._memory:
            return self._memory[seq]
        if seq in self._on_disk:
            return self._path(seq).read_bytes()
        raise KeyError(seq)

    @property
    def total_bytes(self) -> int:
        """Bytes held in memory and on disk together (what the per-job limit counts)."""
        return self.memory_bytes + self.disk_bytes

    def __contains__(self, seq: int) -> bool:
        return seq in self._memory or seq in self._on_disk

    def __len__(self) -> int:
        return len(self._memory) + len(self._on_disk)

    def seqs(self) -> list[int]:
        return sorted([*self._memory, *self._on_disk])

    def _path(self, seq: int) -> Path:
        return self.directory / f"{seq:09d}.safetensors"

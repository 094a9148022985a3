"""The order of a split's batches: one function for the torch batcher and the bundle runtime's device, so both
send the same samples in the same batches."""

from __future__ import annotations

import random
from collections.abc import Iterator

from mobillm.exceptions import ConfigError

__all__ = ["batch_chunks"]


def batch_chunks(n: int, batch_size: int, *, shuffle: bool, seed: int = 0, epoch: int = 0,
                 drop_last: bool = False) -> Iterator[list[int]]:
    """Indices ``0..n-1`` in chunks of ``batch_size``; with ``shuffle`` the order is a pure function of
    (seed, epoch)."""
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    order = list(range(n))
    if shuffle:
        random.Random(f"mobillm-batches:{seed}:{epoch}").shuffle(order)
    for start in range(0, n, batch_size):
        chunk = order[start : start + batch_size]
        if drop_last and len(chunk) < batch_size:
            return
        yield chunk

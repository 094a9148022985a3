"""The order in which an epoch's batches are trained — one function for the server and the local recipe.

The split run equals the single-process run (same loss curve) only because both replay the cached epochs in
this same order: epoch 0 in the order the device produced the batches, every later epoch a permutation seeded
by the training seed and the epoch.
"""

from __future__ import annotations

import random


def epoch_order(n: int, epoch: int, seed: int) -> list[int]:
    """Positions ``0..n-1`` of an epoch's batches in training order: as sent for epoch 0, shuffled after."""
    order = list(range(n))
    if epoch:
        random.Random(seed * 1000 + epoch).shuffle(order)
    return order

"""How much of a prompt an attack recovered: position-aligned token recovery, exact prompts, ROUGE-L, canaries,
bag-of-words F1, and bootstrap intervals over prompts."""

from __future__ import annotations

import random
from collections.abc import Sequence

__all__ = ["bag_f1", "bootstrap_ci", "canary_recovered", "lcs_length", "rouge_l", "token_hits"]


def lcs_length(a: Sequence, b: Sequence) -> int:
    """Length of the longest common subsequence of ``a`` and ``b`` (O(len(a) * len(b)) time, O(len(b)) memory)."""
    row = [0] * (len(b) + 1)
    for x in a:
        prev = 0  # row[j - 1] of the previous line
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], prev + 1 if x == y else max(row[j], row[j - 1])
    return row[-1]


def rouge_l(reference: Sequence, candidate: Sequence) -> float:
    """ROUGE-L F1: the LCS's harmonic mean of precision (over ``candidate``) and recall (over ``reference``)."""
    if not reference or not candidate:
        return float(not reference and not candidate)
    lcs = lcs_length(reference, candidate)
    return 0.0 if lcs == 0 else 2 * lcs / (len(reference) + len(candidate))


def token_hits(truth: Sequence[int], guess: Sequence[int], mask: Sequence[bool]) -> tuple[int, int]:
    """(recovered, counted): positions where ``mask`` is set and ``guess`` equals ``truth``, and how many are set."""
    if len(truth) != len(guess) or len(truth) != len(mask):
        raise ValueError(f"truth, guess and mask differ in length: {len(truth)}, {len(guess)}, {len(mask)}")
    counted = [t == g for t, g, m in zip(truth, guess, mask) if m]
    return sum(counted), len(counted)


def canary_recovered(truth: Sequence[int], guess: Sequence[int], span: tuple[int, int]) -> bool:
    """Whether every token of the canary at positions ``[start, end)`` was recovered at its position."""
    start, end = span
    return list(truth[start:end]) == list(guess[start:end])


def bag_f1(truth: set, guess: set) -> float:
    """F1 of a predicted set of tokens against the set that occurs (1.0 when both are empty)."""
    if not truth and not guess:
        return 1.0
    hits = len(truth & guess)
    return 0.0 if hits == 0 else 2 * hits / (len(truth) + len(guess))


def bootstrap_ci(numerators: Sequence[float], denominators: Sequence[float] | None = None, *, samples: int = 1000,
                 seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """``(estimate, low, high)`` of ``sum(numerators) / sum(denominators)`` with a percentile bootstrap over items.

    Items are prompts: resampling them keeps each prompt's tokens together. Without ``denominators`` it is a mean.
    """
    if not numerators:
        raise ValueError("bootstrap_ci needs at least one item")
    den = list(denominators) if denominators is not None else [1.0] * len(numerators)
    num = list(numerators)
    if len(den) != len(num):
        raise ValueError(f"{len(num)} numerators but {len(den)} denominators")

    def ratio(idx) -> float:
        d = sum(den[i] for i in idx)
        return sum(num[i] for i in idx) / d if d else 0.0

    rng = random.Random(seed)
    n = len(num)
    stats = sorted(ratio([rng.randrange(n) for _ in range(n)]) for _ in range(samples))
    tail = (1 - level) / 2
    return ratio(range(n)), stats[int(tail * (samples - 1))], stats[int(round((1 - tail) * (samples - 1)))]

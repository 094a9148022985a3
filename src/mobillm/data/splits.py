"""Seeded splits and subsets of a data set: 80/10/10 for data that comes unsplit, missing splits carved out of train.

Splits a loader makes itself use a ``split_seed`` (default :data:`SPLIT_SEED`), not the run's ``seed``: the test set
of a data set stays the same whatever seed a run trains with; ``seed`` only picks the :func:`subset`.
"""

from __future__ import annotations

import random
from collections import defaultdict

from mobillm.exceptions import DataError

__all__ = ["SPLIT_FRACTIONS", "SPLIT_SEED", "fill_missing", "split_examples", "split_note", "subset"]

SPLIT_SEED = 0
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)  # train / validation / test, for data that does not come split


def split_examples(examples: list, seed: int, fractions: tuple[float, ...] = SPLIT_FRACTIONS, stratify: bool = True) -> list[list]:
    """Seeded split stratified by label: part k>0 gets round(n_class * fractions[k]) of each class, part 0 the rest.

    Every part keeps the input order. No part with a positive fraction is left empty. ``stratify=False`` treats
    the examples as one class (unlabelled data, e.g. causal LM).
    """
    wanted = sum(f > 0 for f in fractions)
    if len(examples) < wanted:
        raise DataError(f"need at least {wanted} examples to make {wanted} splits, got {len(examples)}")
    by_label: dict[int, list[int]] = defaultdict(list)
    for i, e in enumerate(examples):
        by_label[e.label if stratify else 0].append(i)
    rng = random.Random(f"mobillm-split:{seed}")
    parts: list[list[int]] = [[] for _ in fractions]
    for label in sorted(by_label):
        idx = by_label[label]
        rng.shuffle(idx)
        start = 0
        for k in range(1, len(fractions)):
            n = round(len(idx) * fractions[k])
            parts[k].extend(idx[start:start + n])
            start += n
        parts[0].extend(idx[start:])
    for k, f in enumerate(fractions):  # tiny data sets: take from the largest part
        if f > 0 and not parts[k]:
            parts[k].append(max(parts, key=len).pop())
    return [[examples[i] for i in sorted(p)] for p in parts]


def fill_missing(splits: dict[str, list], seed: int, stratify: bool = True) -> list[str]:
    """Carve a missing validation and/or test split out of train (seeded, stratified, 10% each)."""
    missing = [s for s in ("validation", "test") if s not in splits]
    if not missing:
        return []
    fractions = (1.0 - SPLIT_FRACTIONS[1] * len(missing),) + tuple(SPLIT_FRACTIONS[1] for _ in missing)
    parts = split_examples(splits["train"], seed, fractions, stratify)
    splits["train"] = parts[0]
    splits.update(zip(missing, parts[1:]))
    return [
        f"no {' or '.join(missing)} split: carved out of train (seeded, stratified, {SPLIT_FRACTIONS[1]:.0%} each): "
        + ", ".join(f"{len(splits[s])} {s}" for s in ("train", *missing))
    ]


def split_note(train, validation, test, seed: int) -> str:
    sizes = f"{len(train)}/{len(validation)}/{len(test)}"
    return f"split {sizes} (train/validation/test, 80/10/10 stratified, split seed {seed})"


def subset(items: list, n: int | None, seed: int, split: str) -> list:
    """A seeded random subset of ``n`` items (all when ``n`` is None or too large), in the split's order."""
    if n is None or n >= len(items):
        return items
    picked = sorted(random.Random(f"mobillm-subset:{split}:{seed}").sample(range(len(items)), n))
    return [items[i] for i in picked]

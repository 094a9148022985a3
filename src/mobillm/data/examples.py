"""Labelled examples and the classification data set every loader returns; raw labels mapped to ids."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from mobillm.exceptions import DataError

__all__ = ["SENTIMENT_LABELS", "Example", "TextDataset", "to_examples"]

SENTIMENT_LABELS = ["negative", "positive"]  # the names of labels 0/1 when a file gives no names
_INT = re.compile(r"[+-]?\d+")


@dataclass(frozen=True)
class Example:
    """One labelled text; ``label`` indexes :attr:`TextDataset.label_names`."""

    text: str
    label: int


@dataclass
class TextDataset:
    """A classification data set: three splits plus what the loader had to do to produce them."""

    name: str
    label_names: list[str]  # index = label id, e.g. ["negative", "positive"]
    train: list[Example]
    validation: list[Example]
    test: list[Example]
    notes: list[str] = field(default_factory=list)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)


def to_examples(
    name: str, splits: dict[str, list[tuple[str, Any]]], label_names: list[str] | None
) -> tuple[dict[str, list[Example]], list[str], list[str]]:
    """Map raw labels to ids consistently over all splits; drop empty texts. Returns (splits, label_names, notes)."""
    notes: list[str] = []
    raw = [label for records in splits.values() for _, label in records]
    if not raw:
        raise DataError(f"{name}: the data set is empty")
    ints = all(
        (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, str) and _INT.fullmatch(v.strip()))
        for v in raw
    )
    if ints:
        ids = sorted({int(v) for v in raw})
        if ids[0] < 0:
            raise DataError(f"{name}: label {ids[0]} is negative; labels must be 0..N-1 or names")
        if label_names is None:
            if ids[-1] == 1:
                label_names = list(SENTIMENT_LABELS)
                notes.append("label names not given: 0=negative, 1=positive assumed (binary sentiment)")
            else:
                label_names = [str(i) for i in range(ids[-1] + 1)]
        elif ids[-1] >= len(label_names):
            raise DataError(
                f"{name}: label {ids[-1]} is out of range for {len(label_names)} label names {label_names} "
                f"(labels must be 0..{len(label_names) - 1})"
            )
        convert = lambda v: int(v)  # noqa: E731
    else:
        names = sorted({str(v).strip() for v in raw})
        if label_names is None:
            label_names = names
            mapping = ", ".join(f"{i}={n}" for i, n in enumerate(names))
            notes.append(f"string labels mapped to ids in sorted order: {mapping}")
        else:
            unknown = [n for n in names if n not in label_names]
            if unknown:
                raise DataError(f"{name}: labels {unknown} are not among label_names {label_names}")
        index = {n: i for i, n in enumerate(label_names)}
        convert = lambda v: index[str(v).strip()]  # noqa: E731
    if len(label_names) < 2:
        raise DataError(f"{name}: classification needs at least two labels, found {label_names}")
    out: dict[str, list[Example]] = {}
    for split, records in splits.items():
        examples, empty = [], 0
        for text, label in records:
            if not isinstance(text, str):
                raise DataError(f"{name} ({split}): text {text!r} is not a string")
            if not text.strip():
                empty += 1
                continue
            examples.append(Example(text, convert(label)))
        if empty:
            notes.append(f"{split}: dropped {empty} rows with empty text")
        out[split] = examples
    if not any(out.values()):
        raise DataError(f"{name}: every text is empty")
    return out, list(label_names), notes

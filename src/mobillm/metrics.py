"""Process measurements both sides report (peak memory from the kernel, not from Python)."""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path


class Curve:
    """``(step, value)`` points of one metric in fixed memory: it keeps the steps that are multiples of
    ``stride``, and doubles the stride whenever more than ``max_points`` are kept — an even sample of a long run."""

    def __init__(self, max_points: int = 400):
        self.max_points = max_points
        self.points: list[tuple[int, float]] = []
        self.stride = 1

    def add(self, step: int, value: float) -> None:
        while self.points and self.points[-1][0] >= step:  # steps done again after a resume replace the old ones
            self.points.pop()
        if step % self.stride:
            return
        self.points.append((step, value))
        while len(self.points) > self.max_points:
            self.stride *= 2
            self.points = [p for p in self.points if p[0] % self.stride == 0]


class MetricsLog:
    """Append-only ``metrics.jsonl``: one JSON object per event, flushed at once so a crash loses nothing.

    ``curves`` names the fields to follow in memory as well: each record with a ``step`` and a finite value of
    such a field adds a point to ``self.curves[field]`` (what the server's status page draws). A log that
    follows curves first reads the records already in its file (a resumed job's history)."""

    def __init__(self, path: str | Path | None, curves: tuple[str, ...] = ()):
        self.path = Path(path) if path else None
        self.curves = {name: Curve() for name in curves}
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.curves and self.path.is_file():
                for line in self.path.read_text().splitlines():
                    self._follow(json.loads(line))

    def write(self, **record) -> None:
        if self.path:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")
        self._follow(record)

    def _follow(self, record: dict) -> None:
        if "step" not in record:
            return
        for name, curve in self.curves.items():
            value = record.get(name)
            if isinstance(value, (int, float)) and math.isfinite(value):
                curve.add(record["step"], float(value))


def classification_scores(predictions: Sequence[int], labels: Sequence[int], num_labels: int) -> dict[str, float]:
    """Accuracy next to balanced accuracy and the majority-class baseline, honest on imbalanced data.
    ``predictions`` and ``labels``: class ids (lists, or torch/numpy vectors)."""
    predictions, labels = _ids(predictions), _ids(labels)
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels")
    if not labels:
        return {"accuracy": float("nan"), "balanced_accuracy": float("nan"), "majority_baseline": float("nan"), "n": 0}
    hits, counts = Counter(), Counter(labels)
    for p, y in zip(predictions, labels):
        hits[y] += p == y
    recalls = [hits[c] / counts[c] for c in range(num_labels) if counts[c]]
    return {
        "accuracy": sum(hits.values()) / len(labels),
        "balanced_accuracy": sum(recalls) / len(recalls),
        "majority_baseline": counts.most_common(1)[0][1] / len(labels),
        "n": len(labels),
    }


def _ids(values) -> list[int]:
    return [int(v) for v in (values.tolist() if hasattr(values, "tolist") else values)]

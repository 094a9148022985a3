"""Process measurements both sides report (peak memory from the kernel, not from Python)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import torch


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (``VmHWM``), the figure the benchmarks compare."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource  # not Linux: ru_maxrss is the nearest equivalent (bytes on macOS, KiB elsewhere)
    import sys

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024


class MetricsLog:
    """Append-only ``metrics.jsonl``: one JSON object per event, flushed at once so a crash loses nothing."""

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path else None
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, **record) -> None:
        if self.path:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")


def classification_scores(predictions: torch.Tensor, labels: torch.Tensor, num_labels: int) -> dict[str, float]:
    """Accuracy next to balanced accuracy and the majority-class baseline, honest on imbalanced data."""
    predictions, labels = predictions.long().cpu(), labels.long().cpu()
    if len(labels) == 0:
        return {"accuracy": float("nan"), "balanced_accuracy": float("nan"), "majority_baseline": float("nan"), "n": 0}
    recalls = [
        float((predictions[labels == c] == c).float().mean()) for c in range(num_labels) if bool((labels == c).any())
    ]
    majority = Counter(labels.tolist()).most_common(1)[0][1] / len(labels)
    return {
        "accuracy": float((predictions == labels).float().mean()),
        "balanced_accuracy": sum(recalls) / len(recalls),
        "majority_baseline": majority,
        "n": len(labels),
    }

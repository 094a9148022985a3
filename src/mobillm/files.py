"""File names of everything mobillm writes, in one place (PEFT-like checkpoints)."""

import json
from pathlib import Path

SIDE_CONFIG_NAME = "side_config.json"
SIDE_WEIGHTS_NAME = "side_network.safetensors"
METRICS_NAME = "metrics.jsonl"
SUMMARY_NAME = "summary.json"


def write_summary(out: Path, summary: dict) -> None:
    """Write a run's ``summary.json``, adding the device throughput (samples/s) its seconds/sample imply."""
    seconds = summary.get("device_seconds_per_sample")
    if seconds:
        summary["device_samples_per_second"] = 1.0 / seconds
    (Path(out) / SUMMARY_NAME).write_text(json.dumps(summary, indent=2) + "\n")

"""File names of everything mobillm writes, in one place (PEFT-like checkpoints)."""

import json
import os
from pathlib import Path

SIDE_CONFIG_NAME = "side_config.json"
SIDE_WEIGHTS_NAME = "side_network.safetensors"
METRICS_NAME = "metrics.jsonl"
SUMMARY_NAME = "summary.json"
#: a device's saved job state (device/job_state.py), kept in its output directory while the job runs
JOB_STATE_NAME = "job_state.json"
#: A job's name, which names its folder under the server's --jobs-dir: 1-64 letters, digits, '_', '.', '-', never
#: starting with '.' (so never '..'). The Hello's ``job`` field and the server's URL and token checks use it.
JOB_NAME_PATTERN = r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}$"


def write_atomic(path: Path, data: bytes | str, mode: int | None = None) -> None:
    """Write ``path`` through a temporary file and a rename: a crash leaves the old file or the new, never half.

    ``mode`` (e.g. 0o600) is set before the rename, so the file is never readable with looser permissions."""
    path = Path(path)
    tmp = path.with_suffix(".tmp")
    if isinstance(data, str):
        tmp.write_text(data)
    else:
        tmp.write_bytes(data)
    if mode is not None:
        os.chmod(tmp, mode)
    os.replace(tmp, path)


def write_summary(out: Path, summary: dict) -> None:
    """Write a run's ``summary.json``, adding the device throughput (samples/s) its seconds/sample imply."""
    seconds = summary.get("device_seconds_per_sample")
    if seconds:
        summary["device_samples_per_second"] = 1.0 / seconds
    (Path(out) / SUMMARY_NAME).write_text(json.dumps(summary, indent=2) + "\n")

"""What every benchmark writes: the machine it ran on, and its rows as results.json + results.csv.

Scripts run as ``python benchmarks/NAME.py``, so this sibling module imports as ``bench_io``.
"""

from __future__ import annotations

import csv
import json
import os
import platform
from pathlib import Path


def machine() -> str:
    """Architecture and the cores this process may use (what a 2-core CI box or a shared VM gives it)."""
    return f"{platform.machine()}, {platform.processor() or 'cpu'}, {len(os.sched_getaffinity(0))} cores"


def write_rows(out: Path, rows: list[dict], **meta) -> None:
    """``out/results.json`` = ``{**meta, "rows": rows}`` and ``out/results.csv`` = the rows, one per line."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({**meta, "rows": rows}, indent=2) + "\n")
    with (out / "results.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

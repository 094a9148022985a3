"""What every benchmark shares: where SST-2 and the results live, the machine line, results.json/.csv, plots."""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
from collections.abc import Callable
from pathlib import Path

#: The repository root when mobillm runs from a checkout (src/mobillm/bench/io.py -> four levels up).
_CHECKOUT = Path(__file__).resolve().parents[3]


def number_list(kind: type[int] | type[float]) -> Callable[[str], list]:
    """An argparse ``type=`` for comma-separated numbers ("8,16,32"): a bad value is a usage error, not a traceback."""
    noun = "integers" if kind is int else "numbers"

    def parse(text: str) -> list:
        try:
            return [kind(x) for x in text.split(",")]
        except ValueError:
            raise argparse.ArgumentTypeError(f"takes comma-separated {noun} such as 1,2,3, not {text!r}") from None

    return parse


def sst2_dir() -> Path:
    """SST-2 as the project keeps it (``../shared/data/sst2`` beside the checkout), or ``$MOBILLM_SST2``."""
    if "MOBILLM_SST2" in os.environ:
        return Path(os.environ["MOBILLM_SST2"])
    for root in (Path.cwd(), _CHECKOUT):
        if (root.parent / "shared" / "data" / "sst2").is_dir():
            return root.parent / "shared" / "data" / "sst2"
    return _CHECKOUT.parent / "shared" / "data" / "sst2"


def require_sst2() -> Path:
    path = sst2_dir()
    if not (path / "test.tsv").is_file():
        raise SystemExit(f"SST-2 not found at {path} (set MOBILLM_SST2 to the folder holding train/dev/test.tsv)")
    return path


def results_dir(name: str) -> Path:
    """``results/NAME`` under the current directory: where ``--out`` points unless told otherwise."""
    return Path("results") / name


def machine() -> str:
    """Architecture and the cores this process may use (what a 2-core CI box or a shared VM gives it)."""
    return f"{platform.machine()}, {platform.processor() or 'cpu'}, {len(os.sched_getaffinity(0))} cores"


def write_rows(out: Path, rows: list[dict], **meta) -> None:
    """``out/results.json`` = ``{**meta, "rows": rows}`` and ``out/results.csv`` = the rows, one per line."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({**meta, "rows": rows}, indent=2) + "\n")
    fields = list(dict.fromkeys(k for row in rows for k in row))
    with (out / "results.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def pyplot():
    """matplotlib's pyplot on the file-only Agg back end (benchmarks run on machines with no screen)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_lines(path: Path, lines: dict[str, list[tuple[float, float]]], xlabel: str, ylabel: str, *,
               hline: float | None = None, log_y: bool = False, title: str | None = None, legend_size: int = 8) -> None:
    """One PNG of labelled (x, y) series: the benchmarks' curves, all drawn alike."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for label, points in lines.items():
        ax.plot(*zip(*points), marker=".", label=label)
    if hline is not None:
        ax.axhline(hline, color="grey", linestyle=":", linewidth=1)
    if log_y:
        ax.set_yscale("log")
    if title:
        ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=legend_size)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

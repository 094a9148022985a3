"""SST-2, the same 2,000 training samples for every method: side tuning (nf4) vs LoRA, BitFit, full FT.

Each method runs as ``mobillm train`` in a fresh process, so its peak memory (VmHWM) is its own. Model
selection uses dev.tsv only; accuracy is on test.tsv (the GLUE validation set).

    python benchmarks/sst2_methods.py [--methods side,lora,bitfit,full] [--train-samples 2000] [--extra "--codec nf4"]

Writes results/sst2_methods/{results.json,results.csv,accuracy_memory.png} and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

from mobillm.bench.io import machine, write_rows

ROOT = Path(__file__).resolve().parents[1]
SST2 = ROOT.parent / "shared" / "data" / "sst2"


def run_method(method: str, args, out: Path, extra: list[str]) -> dict:
    run_dir = out / method
    cmd = [
        sys.executable, "-m", "mobillm", "train", "--method", method, "--data", str(SST2),
        "--max-train-samples", str(args.train_samples), "--max-eval-samples", str(args.eval_samples),
        "--seed", str(args.seed), "--output-dir", str(run_dir), *extra,
    ]
    print("$", shlex.join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["command"] = shlex.join(["mobillm", *cmd[3:]])
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default="side,lora,bitfit,full")
    parser.add_argument("--train-samples", type=int, default=2000)
    parser.add_argument("--eval-samples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--extra", default="", help="extra `mobillm train` options for every method")
    parser.add_argument("--side-extra", default="--codec nf4", help="extra options for the side method only")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "sst2_methods")
    args = parser.parse_args()
    if not SST2.is_dir():
        sys.exit(f"SST-2 not found at {SST2}")
    args.out.mkdir(parents=True, exist_ok=True)
    # Methods run earlier (e.g. `--methods bitfit,full` after `--methods side,lora`) are kept unless re-run.
    previous = args.out / "results.json"
    rows = json.loads(previous.read_text())["rows"] if previous.is_file() else []
    for method in args.methods.split(","):
        rows = [r for r in rows if r["method"] != method]
        extra = shlex.split(args.extra) + (shlex.split(args.side_extra) if method == "side" else [])
        s = run_method(method, args, args.out, extra)
        rows.append({
            "method": method, "test_accuracy": s["test"]["accuracy"], "zero_shot": s.get("zero_shot_test", {}).get("accuracy"),
            "best_val_accuracy": s["best_val_accuracy"], "best_epoch": s["best_epoch"],
            "device_seconds_per_sample": s["device_seconds_per_sample"], "peak_memory_mib": s["peak_memory_bytes"] / 2**20,
            "bytes_per_sample": s.get("bytes_per_sample"), "command": s["command"],
        })
    write_rows(args.out, rows, machine=machine())
    plot(rows, args.out / "accuracy_memory.png")
    print(f"\nmachine: {machine()}\n")
    print("| method | test acc | zero-shot | best val | device peak MiB | device s/sample |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        zs = f"{100 * r['zero_shot']:.2f}%" if r["zero_shot"] is not None else "—"
        print(f"| {r['method']} | {100 * r['test_accuracy']:.2f}% | {zs} | {100 * r['best_val_accuracy']:.2f}% | "
              f"{r['peak_memory_mib']:.0f} | {r['device_seconds_per_sample']:.4f} |")


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    names = [r["method"] for r in rows]
    for ax, key, label in zip(
        axes, ["test_accuracy", "peak_memory_mib", "device_seconds_per_sample"], ["SST-2 test accuracy", "device peak memory (MiB)", "device s / training sample"]
    ):
        values = [r[key] * (100 if key == "test_accuracy" else 1) for r in rows]
        ax.bar(names, values, color=["tab:green" if n == "side" else "tab:gray" for n in names])
        ax.set_title(label)
        if key == "test_accuracy":
            ax.set_ylim(min(values) - 5, 100)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()

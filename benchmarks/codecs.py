"""SST-2 accuracy and bytes on the wire per training sample for every activation codec (the paper's Table 4).

One device pass taps the raw (fp32) activations of the same 2,000 training / 1,000 validation / 872 test
samples; each codec then encodes and decodes those taps exactly as the device and the server would (the codecs
work token by token, so this equals tapping with the codec) and a side network is trained on them with the
same ``fit_side`` as ``mobillm train --method side``. Same samples, seed and side network for every codec.

    python benchmarks/codecs.py [--train-samples 2000] [--codecs none,fp16,bf16,fp8,int8,fp4,nf4] [--block attention]

Writes results/codecs/{results.json,results.csv,codecs.png}.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from bench_io import machine, write_rows

ROOT = Path(__file__).resolve().parents[1]
SST2 = ROOT.parent / "shared" / "data" / "sst2"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-samples", type=int, default=2000)
    parser.add_argument("--eval-samples", type=int, default=1000)
    parser.add_argument("--codecs", default="none,fp16,bf16,fp8,int8,fp4,nf4")
    parser.add_argument("--block", default="attention")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "codecs")
    args = parser.parse_args()
    if not SST2.is_dir():
        sys.exit(f"SST-2 not found at {SST2}")

    from mobillm.backbone import FrozenHead
    from mobillm.device.inference import TappedBatch, tap_examples
    from mobillm.device.taps import TappedBackbone
    from mobillm.task import TaskOptions, prepare_task
    from mobillm.training.config import TrainConfig
    from mobillm.training.local import fit_side
    from mobillm.wire.codecs import encoded_nbytes, get_codec

    options = TaskOptions(data=str(SST2), codec="none", block=args.block, max_train_samples=args.train_samples,
                          max_eval_samples=args.eval_samples)
    task = prepare_task(options, seed=0)
    head = FrozenHead.from_model(task.model)
    backbone = TappedBackbone(task.model, task.side_config.shortcuts)
    raw, pivot = get_codec("none"), task.side_config.pivot_only
    started = time.perf_counter()
    splits = {
        "train": tap_examples(backbone, raw, task.batcher, task.data.train, 16, pivot, "taps (train)", shuffle=True, seed=0),
        "validation": tap_examples(backbone, raw, task.batcher, task.data.validation, 16, pivot, "taps (validation)"),
        "test": tap_examples(backbone, raw, task.batcher, task.data.test, 16, pivot, "taps (test)"),
    }
    print(f"device pass: {time.perf_counter() - started:.0f} s", flush=True)
    config = TrainConfig(method="side")
    rows = []
    for name in args.codecs.split(","):
        codec = get_codec(name)

        def recode(items):
            return [TappedBatch([codec.encode(raw.decode(t)) for t in item.taps], item.batch, item.top) for item in items]

        train, val, test = (recode(splits[s]) for s in ("train", "validation", "test"))
        n = sum(len(item.batch) for item in train)
        nbytes = sum(sum(encoded_nbytes(t) for t in item.taps) + item.batch.labels.nbytes for item in train)
        side_config = task.side_config.model_copy(update={"codec": name})
        result = fit_side(side_config, head, config, train, val, test)
        rows.append({"codec": name, "test_accuracy": result["test"]["accuracy"], "best_val_accuracy": result["best_val_accuracy"],
                     "best_epoch": result["best_epoch"], "bytes_per_sample": nbytes / n,
                     "zero_shot_test": result["zero_shot_test"]["accuracy"]})
        print(f"{name:5s} test {100 * rows[-1]['test_accuracy']:.2f}%  val {100 * result['best_val_accuracy']:.2f}%  "
              f"{rows[-1]['bytes_per_sample']:,.0f} B/sample", flush=True)
    write_rows(args.out, rows, machine=machine(), block=args.block)
    base = {r["codec"]: r for r in rows}
    print(f"\nmachine: {machine()}; block {args.block}\n")
    print("| codec | test acc | Δ vs none | best val | bytes / sample | × fp16 |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        delta = f"{100 * (r['test_accuracy'] - base['none']['test_accuracy']):+.2f}" if "none" in base else "—"
        ratio = f"{r['bytes_per_sample'] / base['fp16']['bytes_per_sample']:.2f}" if "fp16" in base else "—"
        print(f"| {r['codec']} | {100 * r['test_accuracy']:.2f}% | {delta} | {100 * r['best_val_accuracy']:.2f}% | "
              f"{r['bytes_per_sample']:,.0f} | {ratio} |")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    ax.scatter([r["bytes_per_sample"] / 1000 for r in rows], [100 * r["test_accuracy"] for r in rows])
    for r in rows:
        ax.annotate(r["codec"], (r["bytes_per_sample"] / 1000, 100 * r["test_accuracy"]), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("kB per training sample on the wire")
    ax.set_ylabel("SST-2 test accuracy (%)")
    fig.tight_layout()
    fig.savefig(args.out / "codecs.png", dpi=120)


if __name__ == "__main__":
    main()

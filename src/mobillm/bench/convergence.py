"""Accuracy against wall time: LoRA on the device vs mobillm with and without the activation cache (the
paper's convergence figure), SST-2 test accuracy, 4,000 training samples.

- LoRA: ``mobillm train --method lora`` on the device's core, one thread; its time axis is the sum of its
  training steps' seconds (the validations it runs to draw the curve are not counted against it).
- mobillm: ``mobillm serve`` and a 60 Mbps shaped link on one core, ``mobillm device`` on the other, one thread
  each (``mobillm.bench.split``); the time axis is the server's wall clock from the first training batch's
  arrival. ``cache``: the device sends one epoch and the server replays the rest; ``no cache``: the device
  re-sends every epoch (``--device-epochs`` = epochs, the paper's MobiLLM); ``replay``: the cache, and the
  server spends its waits for the device's next batch training again on the batches it holds, each up to
  ``--idle-replays`` times (``mobillm device --idle-replays``). These run the torch device (``mobillm device
  --runtime torch``, §12's); ``cache-onnx`` is ``cache`` with the device on ONNX Runtime (``--runtime onnx``, the
  default of ``mobillm device`` for classification) on a device bundle of ``--bundle-weights``, exported once
  under results/bundles (``mobillm.bench.models.device_bundle``), not timed.

Every run validates on the SST-2 test sentences (all 872; ``--test-samples``), ``--evals-per-epoch`` times an
epoch. Two targets: (a) the lower of the two methods' best accuracies minus 1 point, (b) LoRA's best minus 1
point.

    mobillm bench convergence [--quick] [--train-samples 4000] [--mbps 60] [--methods lora,cache,no-cache,replay,cache-onnx]
                              [--bundle-weights fp32]

Writes results/convergence/{results.json,results.csv,convergence.png}.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mobillm.bench.io import machine, plot_lines, require_sst2, results_dir, write_rows
from mobillm.bench.models import device_bundle, device_checkpoint
from mobillm.bench.split import run_lora, run_split, sst2_as
from mobillm.recipes.job_bundle import DEFAULT_BUNDLE_WEIGHTS

TEST_SAMPLES = 872
#: --methods name -> (curve label, device epochs: None = all of them, idle replays: None = --idle-replays, device runtime)
SPLIT_METHODS = {"cache": ("mobillm, cache", 1, 0, "torch"), "no-cache": ("mobillm, no cache", None, 0, "torch"),
                 "replay": ("mobillm, cache + idle replays", 1, None, "torch"),
                 "cache-onnx": ("mobillm, cache, ONNX device", 1, 0, "onnx")}


def _first(curve: list[tuple[float, float]], target: float) -> float | None:
    return next((t for t, acc in curve if acc >= target), None)


def device_options(method: str, idle_replays: int, bundle_weights: str) -> tuple[str, ...]:
    """The ``mobillm device`` options of a split method: its idle replays and its runtime, always named (the
    device's own default runtime is ONNX Runtime, which §12's torch arms must not silently become)."""
    _, _, replays, runtime = SPLIT_METHODS[method]
    bundle = ("--bundle", str(device_bundle("smollm2-135m", bundle_weights))) if runtime == "onnx" else ()
    return "--idle-replays", str(idle_replays if replays is None else replays), "--runtime", runtime, *bundle


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="mobillm bench convergence", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="200 training and 100 test sentences, one validation per epoch, methods lora,cache,no-cache")
    parser.add_argument("--train-samples", type=int, default=4000)
    parser.add_argument("--mbps", type=float, default=60)
    parser.add_argument("--side-epochs", type=int, default=3)
    parser.add_argument("--lora-epochs", type=int, default=1)
    parser.add_argument("--evals-per-epoch", type=int, default=4)
    parser.add_argument("--test-samples", type=int, default=TEST_SAMPLES, help="test sentences each validation scores (all 872)")
    parser.add_argument("--idle-replays", type=int, default=4, help="for the replay method (default 4)")
    parser.add_argument("--bundle-weights", default=DEFAULT_BUNDLE_WEIGHTS, help="the cache-onnx device bundle's weight format")
    parser.add_argument("--methods", default=None,
                        help=f"comma-separated: lora (always run: the targets are LoRA's) and any of {','.join(SPLIT_METHODS)} "
                             "(default: all)")
    parser.add_argument("--out", type=Path, default=results_dir("convergence"))
    args = parser.parse_args(argv)
    if args.quick:
        args.train_samples, args.evals_per_epoch, args.test_samples = 200, 1, 100
        args.methods = args.methods or "lora,cache,no-cache"  # the targets' rows; replay is a fourth split run
    methods = [m for m in (args.methods or ",".join(SPLIT_METHODS)).split(",") if m and m != "lora"]
    if unknown := set(methods) - set(SPLIT_METHODS):
        parser.error(f"unknown methods {sorted(unknown)}: choose from lora,{','.join(SPLIT_METHODS)}")
    data = sst2_as(args.out / "data", require_sst2(), validation="test", test_rows=16)
    model = str(device_checkpoint("smollm2-135m", "fp32"))
    common = dict(train_samples=args.train_samples, eval_samples=args.test_samples, batch_size=16)
    curves, summaries = {}, {}

    summary, metrics = run_lora(args.out / "lora", data, model, epochs=args.lora_epochs, evals_per_epoch=args.evals_per_epoch, **common)
    seconds = {r["step"]: r["train_seconds"] for r in metrics if "train_seconds" in r}
    curves["LoRA (device)"] = [(seconds[h["step"]], h["val_accuracy"]) for h in summary["history"]]
    summaries["LoRA (device)"] = summary
    print(f"LoRA: best {100 * max(a for _, a in curves['LoRA (device)']):.2f}% after {max(seconds.values()):.0f} s of training", flush=True)
    for method in methods:
        name, device_epochs, _, _ = SPLIT_METHODS[method]
        run = run_split(args.out / method, data, model, args.mbps, epochs=args.side_epochs,
                        device_epochs=device_epochs or args.side_epochs, evals_per_epoch=args.evals_per_epoch,
                        extra=device_options(method, args.idle_replays, args.bundle_weights), **common)
        curves[name] = [(v["seconds"], v["val_accuracy"]) for v in run.validations()]
        summaries[name] = run.device_summary
        print(f"{name}: best {100 * max(a for _, a in curves[name]):.2f}% in {curves[name][-1][0]:.0f} s", flush=True)

    lora_best = max(a for _, a in curves["LoRA (device)"])
    rows = []
    for name, curve in curves.items():
        best = max(a for _, a in curve)
        rows.append({"method": name, "best_test_accuracy": best, "seconds_to_best": _first(curve, best),
                     "total_seconds": curve[-1][0], "points": len(curve)})
    for r in rows:
        if r["method"] == "LoRA (device)":
            continue
        target_a = min(r["best_test_accuracy"], lora_best) - 0.01
        for key, target in (("a", target_a), ("b", lora_best - 0.01)):
            mine, lora = _first(curves[r["method"]], target), _first(curves["LoRA (device)"], target)
            r[f"target_{key}"] = target
            r[f"seconds_to_{key}"], r[f"lora_seconds_to_{key}"] = mine, lora
            r[f"speedup_{key}"] = lora / mine if mine and lora else None
    write_rows(args.out, rows, machine=machine(), train_samples=args.train_samples, mbps=args.mbps,
               curves={k: v for k, v in curves.items()})
    print(f"\nmachine: {machine()}; {args.train_samples} training samples, {args.mbps:g} Mbps, SST-2 test ({args.test_samples})\n")
    print("| method | best test acc | target (a) | s to (a) | LoRA s to (a) | speed-up (a) | target (b) | s to (b) | speed-up (b) |")
    print("|---|---|---|---|---|---|---|---|---|")
    fmt = lambda x, f="{:.0f}": "not reached" if x is None else f.format(x)  # noqa: E731
    for r in rows:
        if r["method"] == "LoRA (device)":
            print(f"| {r['method']} | {100 * r['best_test_accuracy']:.2f}% | | | | | | | |")
            continue
        print(f"| {r['method']} | {100 * r['best_test_accuracy']:.2f}% | {100 * r['target_a']:.2f}% | {fmt(r['seconds_to_a'])} | "
              f"{fmt(r['lora_seconds_to_a'])} | {fmt(r['speedup_a'], '{:.2f}×')} | {100 * r['target_b']:.2f}% | "
              f"{fmt(r['seconds_to_b'])} | {fmt(r['speedup_b'], '{:.2f}×')} |")
    plot_lines(args.out / "convergence.png", curves, "seconds (LoRA: its training steps; mobillm: server wall clock)",
               "SST-2 test accuracy")


if __name__ == "__main__":
    main()

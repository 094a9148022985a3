"""How the link's bandwidth limits split training (the paper's Table 5): device idle time, time per epoch and
time to a target accuracy at 10/60/100 Mbps × batch 12/20/30.

Each configuration is a real split run (``mobillm serve`` and the shaped link on one core, ``mobillm device``
on the other, one thread each; see ``mobillm.bench.split``), nf4 activations, the activation cache on (the
device sends one epoch; later epochs replay on the server). Measured from the runs' own logs:

- epoch time: from the device's first to its last training batch sent;
- device idle: that time minus the device's forward seconds — time spent waiting on the link/window;
- time to target: seconds from the first training batch's arrival (step-0 validation) to the first server
  validation at or above the target (default: the lowest best validation accuracy of all runs minus 1 point,
  so that every run has one).

The link limits training where bytes/sample × 8 / bandwidth exceeds the device's seconds/sample; the table
prints both sides of that inequality and the bandwidth where they meet.

    mobillm bench bandwidth [--quick] [--train-samples 1000] [--mbps 10,60,100] [--batches 12,20,30]

Writes results/bandwidth/{results.json,results.csv,bandwidth.png}.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mobillm.bench.io import machine, number_list, plot_lines, require_sst2, results_dir, write_rows
from mobillm.bench.models import device_checkpoint
from mobillm.bench.split import run_split, sst2_as


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="mobillm bench bandwidth", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="200 samples, batch 20, 10 and 100 Mbps")
    parser.add_argument("--train-samples", type=int, default=1000)
    parser.add_argument("--eval-samples", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--mbps", default="10,60,100", type=number_list(float))
    parser.add_argument("--batches", default="12,20,30", type=number_list(int))
    parser.add_argument("--target", type=float, default=None, help="validation accuracy to reach (default: see above)")
    parser.add_argument("--out", type=Path, default=results_dir("bandwidth"))
    args = parser.parse_args(argv)
    if args.quick:
        args.train_samples, args.batches, args.mbps = 200, [20], [10.0, 100.0]
    data = sst2_as(args.out / "data", require_sst2(), validation="dev", test_rows=16)
    model = str(device_checkpoint("smollm2-135m", "fp32"))
    rows, curves = [], {}
    for batch in args.batches:
        for mbps in args.mbps:
            run = run_split(args.out / f"b{batch}-{mbps:g}mbps", data, model, mbps, train_samples=args.train_samples,
                            eval_samples=args.eval_samples, batch_size=batch, epochs=args.epochs, device_epochs=1,
                            evals_per_epoch=2)
            sent = [r for r in run.device_metrics if "forward_seconds" in r and "time" in r]
            n_eval_batches = -(-args.eval_samples // batch)
            train = sent[n_eval_batches - 1:]  # from the last eval batch: the first training batch's start
            epoch = train[-1]["time"] - train[0]["time"]
            forward = train[-1]["forward_seconds"] - train[0]["forward_seconds"]
            s = run.device_summary
            rows.append({
                "batch": batch, "mbps": mbps, "epoch_seconds": epoch, "device_idle_seconds": max(0.0, epoch - forward),
                "device_idle_fraction": max(0.0, epoch - forward) / epoch, "device_seconds_per_sample": s["device_seconds_per_sample"],
                "bytes_per_sample": s["bytes_per_sample"], "link_seconds_per_sample": s["bytes_per_sample"] * 8 / (mbps * 1e6),
                "best_val_accuracy": s["best_val_accuracy"], "test_accuracy_16": s["test"]["accuracy"],
            })
            curves[(batch, mbps)] = [(v["seconds"], v["val_accuracy"]) for v in run.validations()]
            r = rows[-1]
            print(f"B={batch:2d} {mbps:5g} Mbps: epoch {r['epoch_seconds']:6.1f} s, device idle {100 * r['device_idle_fraction']:4.1f}%, "
                  f"link {r['link_seconds_per_sample']:.4f} vs device {r['device_seconds_per_sample']:.4f} s/sample, "
                  f"best val {100 * r['best_val_accuracy']:.2f}%", flush=True)
    target = args.target if args.target is not None else min(r["best_val_accuracy"] for r in rows) - 0.01
    for r in rows:
        hit = [t for t, acc in curves[(r["batch"], r["mbps"])] if acc >= target]
        r["target_accuracy"], r["seconds_to_target"] = target, hit[0] if hit else None
    device_rate = sum(r["device_seconds_per_sample"] for r in rows) / len(rows)
    bytes_per_sample = sum(r["bytes_per_sample"] for r in rows) / len(rows)
    crossover = bytes_per_sample * 8 / device_rate / 1e6
    write_rows(args.out, rows, machine=machine(), train_samples=args.train_samples, crossover_mbps=crossover)
    print(f"\nmachine: {machine()}; {args.train_samples} training samples, {args.epochs} epochs, target {100 * target:.2f}%")
    print(f"the link limits training below {crossover:.1f} Mbps ({bytes_per_sample:,.0f} B/sample at {device_rate:.4f} device s/sample)\n")
    print("| batch | Mbps | epoch s | device idle | link s/sample | device s/sample | s to target | best val |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        to_target = f"{r['seconds_to_target']:.1f}" if r["seconds_to_target"] is not None else "not reached"
        print(f"| {r['batch']} | {r['mbps']:g} | {r['epoch_seconds']:.1f} | {100 * r['device_idle_fraction']:.1f}% | "
              f"{r['link_seconds_per_sample']:.4f} | {r['device_seconds_per_sample']:.4f} | {to_target} | {100 * r['best_val_accuracy']:.2f}% |")
    plot_lines(args.out / "bandwidth.png", {f"B={b}, {mbps:g} Mbps": points for (b, mbps), points in curves.items()},
               "seconds since the first training batch reached the server", "validation accuracy", hline=target,
               legend_size=7)


if __name__ == "__main__":
    main()

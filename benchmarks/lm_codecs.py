"""Causal LM on the device: bytes per sample and device peak memory for each activation codec.

Causal LM sends every position, so the codec sets the traffic. Each codec runs in a fresh process (its own
VmHWM): load SmolLM2-135M-Instruct, tap held-out instruction examples (the SST-2 pairs that
``causal_lm_demo.py`` writes) at the default shortcut layers, and report the encoded bytes per sample and the
response-token loss of the backbone seen *through the codec* (a fresh side network: the top shortcut's
decoded activations through the frozen head) next to the raw backbone's — what the codec alone costs before
any training.

    python benchmarks/lm_codecs.py [--samples 128] [--codecs none,fp16,bf16,fp8,int8,fp4,nf4]

Writes results/lm_codecs/{results.json,results.csv,lm_codecs.png}.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from mobillm.bench.io import machine, write_rows

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "results" / "causal_lm" / "sst2_instructions"


def measure(codec: str, samples: int) -> dict:
    """One codec, in this process (run by the parent in a fresh subprocess)."""
    from mobillm.backbone import FrozenHead
    from mobillm.device.inference import evaluate_tapped, tap_split, zero_shot_tapped
    from mobillm.device.stats import TapStats
    from mobillm.device.taps import TappedBackbone
    from mobillm.procfs import peak_rss_bytes
    from mobillm.recipes.task import TaskOptions, prepare_task
    from mobillm.sidenet import SideNetwork
    from mobillm.wire.codecs import get_codec

    task = prepare_task(TaskOptions(task="causal-lm", data=str(DATA), codec=codec, max_train_samples=1), seed=0)
    head = FrozenHead.from_model(task.model)
    backbone = TappedBackbone(task.model, task.side_config.shortcuts)
    stats = TapStats()
    tapped = list(tap_split(backbone, get_codec(codec), task.batcher, task.data.test[:samples], 16, False, codec, stats))
    through = evaluate_tapped(SideNetwork(task.side_config), head, get_codec(codec), tapped).scores()
    raw = zero_shot_tapped(task.side_config, head, tapped).scores()
    tokens = sum(int(t.batch.attention_mask.sum()) for t in tapped)
    return {
        "codec": codec, "bytes_per_sample": stats.bytes / stats.samples, "tokens_per_sample": tokens / stats.samples,
        "loss_through_codec": through["loss"], "raw_backbone_loss": raw["loss"],
        "device_seconds_per_sample": stats.seconds / stats.samples, "peak_memory_mib": peak_rss_bytes() / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--codecs", default="none,fp16,bf16,fp8,int8,fp4,nf4")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "lm_codecs")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one codec and print JSON
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.samples)))
        return
    if not DATA.is_dir():
        sys.exit(f"{DATA} not found: run benchmarks/causal_lm_demo.py first (it writes the instruction pairs)")
    rows = []
    for codec in args.codecs.split(","):
        done = subprocess.run([sys.executable, __file__, "--one", codec, "--samples", str(args.samples)],
                              check=True, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        r = rows[-1]
        print(f"{codec:5s} {r['bytes_per_sample']:>10,.0f} B/sample  loss through codec {r['loss_through_codec']:.4f} "
              f"(raw {r['raw_backbone_loss']:.4f})  peak {r['peak_memory_mib']:.0f} MiB", flush=True)
    write_rows(args.out, rows, machine=machine(), samples=args.samples)
    fp16 = next((r["bytes_per_sample"] for r in rows if r["codec"] == "fp16"), None)
    print(f"\nmachine: {machine()}; {args.samples} held-out SST-2 instruction samples\n")
    print("| codec | bytes / sample | × fp16 | response loss through the codec | device peak memory |")
    print("|---|---|---|---|---|")
    for r in rows:
        ratio = f"{r['bytes_per_sample'] / fp16:.2f}" if fp16 else "—"
        print(f"| {r['codec']} | {r['bytes_per_sample']:,.0f} | {ratio} | {r['loss_through_codec']:.4f} | {r['peak_memory_mib']:.0f} MiB |")
    plot(rows, args.out / "lm_codecs.png")


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.4))
    names = [r["codec"] for r in rows]
    a.bar(names, [r["bytes_per_sample"] / 1000 for r in rows], color="#2a7ab9")
    a.set_title("activation kB per sample (all positions)", fontsize=10)
    b.bar(names, [r["loss_through_codec"] for r in rows], color="#d98c1f")
    b.axhline(rows[0]["raw_backbone_loss"], color="k", lw=1, ls="--", label="raw backbone")
    b.set_title("response loss of the backbone through the codec", fontsize=10)
    b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()

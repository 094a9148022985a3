"""Device peak memory and seconds per training sample, one fresh process per (method, batch, length).

Methods: ``mobillm`` (the device: frozen backbone forward under inference_mode, taps encoded with nf4 inside
the hooks — what `mobillm device` runs per batch), ``side-local`` (LST-style side tuning done on the device:
the same forward plus the side network's training), and the PEFT baselines ``lora``, ``bitfit``, ``full``
(forward + backward + AdamW step on the device). SmolLM2-135M-Instruct with fp32 weights, random token ids of
the given length, 3 steps after one warm-up step. VmHWM counts the whole process, loading included.

    python benchmarks/memory.py [--quick]      # --quick: batch 16, length 128 only

Writes results/memory/{results.json,results.csv,memory.png}. The process also reports VmRSS after the imports
and after the model load, which splits the peak into what the interpreter, the weights and the work cost.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench_io import machine, write_rows

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("mobillm", "side-local", "lora", "bitfit", "full")


def _status(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(method: str, batch: int, length: int, steps: int = 3) -> dict:
    import torch

    from mobillm.backbone import FrozenHead, default_shortcuts, load_pretrained
    from mobillm.device.taps import TappedBackbone
    from mobillm.sidenet import SideConfig, SideNetwork
    from mobillm.training.baselines import baseline_logits, prepare_baseline
    from mobillm.training.config import TrainConfig
    from mobillm.training.side_trainer import SideTrainer
    from mobillm.wire.codecs import get_codec

    after_imports = _status("VmRSS")
    model, _ = load_pretrained("smollm2-135m")
    after_load = _status("VmRSS")
    torch.manual_seed(0)
    ids = torch.randint(10, model.config.vocab_size, (batch, length))
    mask = torch.ones_like(ids)
    last = torch.full((batch,), length - 1)
    labels = torch.randint(0, 2, (batch,))
    label_ids = torch.tensor([31, 32])
    if method in ("mobillm", "side-local"):
        L, H = model.config.num_hidden_layers, model.config.hidden_size
        config = SideConfig(hidden_size=H, num_backbone_layers=L, shortcuts=default_shortcuts(L), num_labels=2,
                            label_token_ids=label_ids.tolist(), codec="nf4")
        head = FrozenHead.from_model(model)
        backbone = TappedBackbone(model, config.shortcuts)
        codec = get_codec("nf4")
        trainer = SideTrainer(SideNetwork(config), head, "nf4", TrainConfig(method="side"), 100) if method == "side-local" else None

        def step():
            taps = backbone(ids, mask, None, codec.encode)
            if trainer is not None:
                trainer.train_batch(taps, labels, mask, last)
    else:
        model, params = prepare_baseline(model, TrainConfig(method=method))
        optimizer = torch.optim.AdamW(params, lr=1e-5)

        def step():
            model.train()
            optimizer.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(baseline_logits(model, ids, mask, last, label_ids), labels)
            loss.backward()
            optimizer.step()

    step()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = (time.perf_counter() - start) / (steps * batch)
    return {"method": method, "batch": batch, "length": length, "peak_mib": _status("VmHWM"),
            "rss_after_imports_mib": after_imports, "rss_after_load_mib": after_load, "seconds_per_sample": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "memory")
    parser.add_argument("--one", nargs=3, help=argparse.SUPPRESS)  # internal: method batch length
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one[0], int(args.one[1]), int(args.one[2]))))
        return
    grid = [(16, 128)] if args.quick else [(b, t) for t in (64, 128, 256) for b in (8, 16, 32)]
    rows = []
    for batch, length in grid:
        for method in args.methods.split(","):
            done = subprocess.run([sys.executable, __file__, "--one", method, str(batch), str(length)], check=True,
                                  capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            r = rows[-1]
            print(f"{method:10s} B={batch:3d} T={length:3d} peak {r['peak_mib']:7.0f} MiB (imports {r['rss_after_imports_mib']:.0f}, "
                  f"+weights {r['rss_after_load_mib']:.0f})  {r['seconds_per_sample']:.4f} s/sample", flush=True)
    write_rows(args.out, rows, machine=machine())
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    length = 128 if any(r["length"] == 128 for r in rows) else rows[0]["length"]
    for method in args.methods.split(","):
        pts = [(r["batch"], r["peak_mib"]) for r in rows if r["method"] == method and r["length"] == length]
        ax.plot(*zip(*pts), marker="o", label=method)
    ax.set_xlabel("batch size")
    ax.set_ylabel("device peak memory (MiB)")
    ax.set_title(f"SmolLM2-135M, fp32 weights, sequence length {length}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out / "memory.png", dpi=120)


if __name__ == "__main__":
    main()

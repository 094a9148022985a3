"""Why the device targets are missed or met: where a training step's time and the device's memory go.

Time: ``torch.profiler`` over the device's step (mobillm: forward only, fp32 or int8 weights) and LoRA's step
(forward, backward, optimizer), SmolLM2-135M, batch 16, length 128, the same thread count; each phase is a
``record_function`` range, and the top operators by self CPU time are listed. Memory: VmRSS of a fresh
process after each stage of the device's start (torch import, transformers, tokenizer, weights, first
forward) for each device weight format.

    mobillm bench profile [--quick]

Writes results/profile/{results.json,results.csv,ops.txt,profile.png}.
"""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
from pathlib import Path

from mobillm.bench.io import machine, pyplot, results_dir, write_rows
from mobillm.procfs import status_mib


def stages(source: str, batch: int, length: int) -> dict:
    """VmRSS (MiB) after each stage of a device's start, in this (fresh) process."""
    out = {"python": status_mib("VmRSS")}
    import torch

    out["import torch"] = status_mib("VmRSS")
    importlib.import_module("transformers")
    out["import transformers"] = status_mib("VmRSS")
    from transformers import AutoTokenizer

    from mobillm.backbone import default_shortcuts, load_pretrained, resolve_model
    from mobillm.device.taps import TappedBackbone
    from mobillm.wire.codecs import get_codec

    found = resolve_model(source)
    AutoTokenizer.from_pretrained(found.path, **({"gguf_file": found.gguf_file} if found.gguf_file else {}))
    out["tokenizer"] = status_mib("VmRSS")
    model, _ = load_pretrained(source)
    out["model loaded"] = status_mib("VmRSS")
    backbone = TappedBackbone(model, default_shortcuts(model.config.num_hidden_layers))
    ids = torch.randint(10, model.config.vocab_size, (batch, length))
    backbone(ids, torch.ones_like(ids), None, get_codec("nf4").encode)
    out["first forward"] = status_mib("VmRSS")
    return out


def profile_steps(batch: int, length: int, sources: dict[str, str]) -> tuple[list[dict], str]:
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    from mobillm.backbone import default_shortcuts, load_pretrained
    from mobillm.device.taps import TappedBackbone
    from mobillm.train_config import TrainConfig
    from mobillm.training.baselines import baseline_logits, prepare_baseline
    from mobillm.wire.codecs import get_codec

    torch.manual_seed(0)
    rows, tables = [], []
    label_ids = torch.tensor([31, 32])
    for name, source in sources.items():
        model, _ = load_pretrained(source)
        ids = torch.randint(10, model.config.vocab_size, (batch, length))
        mask, last, labels = torch.ones_like(ids), torch.full((batch,), length - 1), torch.randint(0, 2, (batch,))
        if name.startswith("mobillm"):
            backbone, codec = TappedBackbone(model, default_shortcuts(model.config.num_hidden_layers)), get_codec("nf4")

            def step():
                with record_function("forward"):
                    backbone(ids, mask, None, codec.encode)
        else:
            model, params = prepare_baseline(model, TrainConfig(method="lora"))
            optimizer = torch.optim.AdamW(params, lr=1e-5)

            def step():
                model.train()
                optimizer.zero_grad(set_to_none=True)
                with record_function("forward"):
                    loss = torch.nn.functional.cross_entropy(baseline_logits(model, ids, mask, last, label_ids), labels)
                with record_function("backward"):
                    loss.backward()
                with record_function("optimizer"):
                    optimizer.step()

        step()  # warm-up
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(2):
                step()
        events = prof.key_averages()
        phases = {e.key: e.cpu_time_total / 2e6 for e in events if e.key in ("forward", "backward", "optimizer")}
        rows.append({"method": name, **{f"{k}_seconds": v for k, v in phases.items()}, "step_seconds": sum(phases.values())})
        tables.append(f"== {name} (batch {batch}, length {length}; 2 steps)\n"
                      + events.table(sort_by="self_cpu_time_total", row_limit=12))
        print(f"{name:13s} " + "  ".join(f"{k} {v:.3f} s" for k, v in phases.items()), flush=True)
    return rows, "\n\n".join(tables)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="mobillm bench profile", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="batch 8, length 64")
    parser.add_argument("--out", type=Path, default=results_dir("profile"))
    parser.add_argument("--stages", nargs=3, help=argparse.SUPPRESS)  # internal: source batch length
    args = parser.parse_args(argv)
    if args.stages:
        print(json.dumps(stages(args.stages[0], int(args.stages[1]), int(args.stages[2]))))
        return
    from mobillm.bench.models import device_checkpoint

    batch, length = (8, 64) if args.quick else (16, 128)
    sources = {"mobillm-gguf": "smollm2-135m", **{f"mobillm-{w}": str(device_checkpoint("smollm2-135m", w)) for w in ("fp32", "int8", "nf4")}}
    memory = []
    for name, source in sources.items():
        done = subprocess.run([sys.executable, "-m", "mobillm.bench.profile", "--stages", source, str(batch), str(length)],
                              capture_output=True, text=True, check=True)
        memory.append({"method": name, **json.loads(done.stdout.strip().splitlines()[-1])})
        print(name, " ".join(f"{k}: {v:.0f}" for k, v in memory[-1].items() if k != "method"), flush=True)
    timing, ops = profile_steps(batch, length, {"mobillm-fp32": sources["mobillm-fp32"], "mobillm-int8": sources["mobillm-int8"],
                                                "lora": sources["mobillm-fp32"]})
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ops.txt").write_text(ops + "\n")
    write_rows(args.out, [*({"kind": "memory", **m} for m in memory), *({"kind": "time", **t} for t in timing)],
               machine=machine(), batch=batch, length=length)
    print("\n| device start (MiB, VmRSS after) | " + " | ".join(m["method"] for m in memory) + " |")
    print("|---|" + "---|" * len(memory))
    for stage in [k for k in memory[0] if k != "method"]:
        print(f"| {stage} | " + " | ".join(f"{m[stage]:.0f}" for m in memory) + " |")
    print("\n| step (s) | forward | backward | optimizer | total |\n|---|---|---|---|---|")
    for t in timing:
        print(f"| {t['method']} | {t.get('forward_seconds', 0):.3f} | {t.get('backward_seconds', 0):.3f} | "
              f"{t.get('optimizer_seconds', 0):.3f} | {t['step_seconds']:.3f} |")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    names = [t["method"] for t in timing]
    bottom = [0.0] * len(names)
    for phase in ("forward", "backward", "optimizer"):
        values = [t.get(f"{phase}_seconds", 0.0) for t in timing]
        ax.bar(names, values, bottom=bottom, label=phase)
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.set_ylabel(f"seconds per step (B={batch}, T={length})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out / "profile.png", dpi=120)


if __name__ == "__main__":
    main()

"""Device peak memory and seconds per training sample, one fresh process per (model, method, batch, length).

Methods: ``mobillm`` (the device: frozen backbone forward under inference_mode, taps encoded with nf4 inside
the hooks — what `mobillm device` runs per batch) with fp32, ``int8`` or ``nf4`` backbone weights
(``mobillm-int8``…), ``mobillm-gguf`` (the same, loading the GGUF file directly: its dequantisation transient
counts), ``side-local`` (LST-style side tuning done on the device: the same forward plus the side network's
training), the PEFT baselines ``lora``, ``bitfit``, ``full`` (forward + backward + AdamW on the device), and
the device on ONNX Runtime: ``bundle-fp32``, ``bundle-int8``, ``bundle-int8-dynamic``, ``bundle-int4``,
``bundle-int8-smooth`` (a device bundle's taps graph, taps encoded with nf4 in numpy — what ``mobillm device
--runtime onnx`` runs per batch, in a process that never imports torch). Every other method except
``mobillm-gguf`` loads a device checkpoint (``mobillm convert``); checkpoints and bundles are made once
beforehand in a process of their own. Random token ids of the
given length. VmHWM counts the whole process, loading included. Every method runs on ``--threads`` CPU threads
(default 1: the same for the device and the baselines).

    mobillm bench memory [--quick] [--model smollm2-135m|opt-1.3b] [--methods …] [--threads 1]
    python benchmarks/memory.py ...                                 # the same

``--quick``: batch 16, length 128 only, one timed step after the warm-up step (full: three). ``opt-1.3b``
(random weights, memory only): one step per configuration, no warm-up, length 64, no ``full`` (fp32 weights +
gradients + two AdamW moments = 20.8 GB before any activation, more than the 24 GB machine can hold with
them); its bundles hold a placeholder tokenizer (``bench.models.placeholder_tokenizer``) and no smoothed format.
Writes results/memory[-MODEL]/{results.json,results.csv,memory.png}; the process also reports VmRSS after the
imports and after the load.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from mobillm.bench.io import machine, number_list, plot_lines, results_dir, write_rows
from mobillm.bundle.config import SMOOTHED_FORMATS
from mobillm.bundle.config import WEIGHT_FORMATS as BUNDLE_FORMATS
from mobillm.procfs import status_mib

BUNDLE = "bundle-"
METHODS = ("mobillm-gguf", "mobillm", "mobillm-int8", "mobillm-nf4", "side-local", "lora", "bitfit", "full",
           *(BUNDLE + w for w in BUNDLE_FORMATS))


def _weights(method: str) -> str:
    if method.startswith(BUNDLE):
        return method.removeprefix(BUNDLE)
    return method.rpartition("-")[2] if method.startswith("mobillm-") and method != "mobillm-gguf" else "fp32"


def _timed(step, warmup: bool, steps: int, batch: int) -> float:
    """Seconds per sample of ``steps`` calls of ``step`` (after one untimed call when ``warmup``)."""
    if warmup:
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / (steps * batch)


def bundle_step(source: str, batch: int, length: int, threads: int):
    """The bundle device's per-batch work, torch-free: the taps graph, then nf4 encoding of every tap."""
    import numpy as np

    from mobillm.bundle.runtime import Bundle
    from mobillm.wire.np_codecs import get_np_codec

    bundle = Bundle.load(source, threads=threads)
    ids = np.random.default_rng(0).integers(10, bundle.config.vocab_size, (batch, length))
    mask = np.ones_like(ids)
    codec = get_np_codec("nf4")
    return lambda: [codec.encode(tap) for tap in bundle.taps(ids, mask)]


def measure_bundle(source: str, batch: int, length: int, warmup: bool, steps: int, threads: int) -> dict:
    import mobillm.bundle.runtime  # noqa: F401  (the runtime's imports: numpy, onnxruntime, tokenizers)
    import mobillm.wire.np_codecs  # noqa: F401

    after_imports = status_mib("VmRSS")
    step = bundle_step(source, batch, length, threads)
    after_load = status_mib("VmRSS")
    seconds = _timed(step, warmup, steps, batch)
    return {"peak_mib": status_mib("VmHWM"), "rss_after_imports_mib": after_imports, "rss_after_load_mib": after_load,
            "seconds_per_sample": seconds, "torch_imported": "torch" in sys.modules}


def measure(model_name: str, method: str, batch: int, length: int, warmup: bool, steps: int, source: str,
            threads: int) -> dict:
    row = {"model": model_name, "method": method, "weights": _weights(method), "batch": batch, "length": length,
           "threads": threads, "timed_steps": steps}
    if method.startswith(BUNDLE):
        return {**row, **measure_bundle(source, batch, length, warmup, steps, threads)}
    import torch

    torch.set_num_threads(threads)
    after_imports = status_mib("VmRSS")
    step = torch_step(method, source, batch, length)
    after_load = status_mib("VmRSS")  # the model's weights and the step's state (a first step has not run)
    seconds = _timed(step, warmup, steps, batch)
    return {**row, "peak_mib": status_mib("VmHWM"), "rss_after_imports_mib": after_imports,
            "rss_after_load_mib": after_load, "seconds_per_sample": seconds}


def torch_step(method: str, source: str, batch: int, length: int):
    """One device step of ``method`` on random ids: the torch device's forward + nf4 taps, or a baseline's
    forward + backward + AdamW step."""
    import torch

    from mobillm.backbone import FrozenHead, default_shortcuts, load_pretrained
    from mobillm.device.taps import TappedBackbone
    from mobillm.sidenet import SideConfig, SideNetwork
    from mobillm.train_config import TrainConfig
    from mobillm.training.baselines import baseline_logits, prepare_baseline
    from mobillm.training.side_trainer import SideTrainer
    from mobillm.wire.codecs import get_codec

    model, _ = load_pretrained(source)
    torch.manual_seed(0)
    ids = torch.randint(10, model.config.vocab_size, (batch, length))
    mask = torch.ones_like(ids)
    last = torch.full((batch,), length - 1)
    labels = torch.randint(0, 2, (batch,))
    label_ids = torch.tensor([31, 32])
    if method.startswith("mobillm") or method == "side-local":
        L, H = model.config.num_hidden_layers, model.config.hidden_size
        config = SideConfig(hidden_size=H, num_backbone_layers=L, shortcuts=default_shortcuts(L), num_labels=2,
                            label_token_ids=label_ids.tolist(), codec="nf4")
        trainer = None
        if method == "side-local":
            trainer = SideTrainer(SideNetwork(config), FrozenHead.from_model(model), "nf4", TrainConfig(method="side"), 100)
        backbone = TappedBackbone(model, config.shortcuts)
        codec = get_codec("nf4")

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

    return step


def interleaved(methods: list[str], sources: dict[str, str], batch: int, length: int, rounds: int,
                threads: int) -> dict[str, float]:
    """Seconds per sample of every method, measured round-robin in this one process (one warm-up step each, then
    ``rounds`` rounds of one step per method): on a shared CPU every method sees the same load."""
    import torch

    torch.set_num_threads(threads)
    steps = {m: (bundle_step(sources[m], batch, length, threads) if m.startswith(BUNDLE)
                 else torch_step(m, sources[m], batch, length)) for m in methods}
    for step in steps.values():
        step()
    seconds = dict.fromkeys(methods, 0.0)
    for _ in range(rounds):
        for m, step in steps.items():
            start = time.perf_counter()
            step()
            seconds[m] += time.perf_counter() - start
    return {m: s / (rounds * batch) for m, s in seconds.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="mobillm bench memory", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--model", default="smollm2-135m", choices=("smollm2-135m", "opt-1.3b"))
    parser.add_argument("--methods", default=None, help=f"comma-separated subset of {','.join(METHODS)}")
    parser.add_argument("--batches", default=None, type=number_list(int), help="comma-separated batch sizes (default 8,16,32)")
    parser.add_argument("--lengths", default=None, type=number_list(int), help="comma-separated lengths (default 64,128,256; opt-1.3b: 64)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of every method (torch and ONNX Runtime)")
    parser.add_argument("--interleave", type=int, default=0, metavar="ROUNDS",
                        help="time only: every method in this one process, round-robin for ROUNDS rounds (B 16 / T 128 "
                             "unless --batches/--lengths give one each); fair on a shared CPU; writes interleaved.json")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--one", nargs=8, help=argparse.SUPPRESS)  # internal: model method batch length warmup steps source threads
    args = parser.parse_args(argv)
    if args.one:
        model, method, batch, length, warmup, steps, source, threads = args.one
        print(json.dumps(measure(model, method, int(batch), int(length), warmup == "1", int(steps), source, int(threads))))
        return
    from mobillm.bench.models import device_bundle, device_checkpoint

    big = args.model == "opt-1.3b"
    # opt-1.3b: no full fine-tuning (does not fit), no GGUF, no smoothed bundle (memory as int8-dynamic's; its
    # calibration would smooth random weights)
    skip = ("full", "mobillm-gguf", *(BUNDLE + w for w in SMOOTHED_FORMATS)) if big else ()
    default_methods = [m for m in METHODS if m != "mobillm-nf4" and m not in skip]
    methods = args.methods.split(",") if args.methods else default_methods
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        parser.error(f"--methods: unknown {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    if args.quick:
        batches, lengths = [16], [128]
    else:
        batches = args.batches or [8, 16, 32]
        lengths = args.lengths or ([64] if big else [64, 128, 256])
    out = args.out or results_dir("memory" if not big else f"memory-{args.model}")
    warmup, steps = not big, 1 if big or args.quick else 3  # untimed warm-up step (not for opt-1.3b), timed steps
    sources = {m: "smollm2-135m" if m == "mobillm-gguf" else
               str((device_bundle if m.startswith(BUNDLE) else device_checkpoint)(args.model, _weights(m))) for m in methods}
    if args.interleave:
        batch, length = (args.batches or [16])[0], (args.lengths or [128])[0]
        speed = interleaved(methods, sources, batch, length, args.interleave, args.threads)
        out.mkdir(parents=True, exist_ok=True)
        (out / "interleaved.json").write_text(json.dumps(
            {"machine": machine(), "model": args.model, "batch": batch, "length": length, "threads": args.threads,
             "rounds": args.interleave, "seconds_per_sample": speed}, indent=2) + "\n")
        base = speed.get("lora")
        print("\n| method | s/sample | ÷ LoRA |\n|---|---|---|")
        for m, s in speed.items():
            print(f"| {m} | {s:.4f} | {s / base:.2f} |" if base else f"| {m} | {s:.4f} | — |")
        return
    rows = []
    for length in lengths:
        for batch in batches:
            for method in methods:
                cmd = [sys.executable, "-m", "mobillm.bench.memory", "--one", args.model, method, str(batch), str(length),
                       str(int(warmup)), str(steps), sources[method], str(args.threads)]
                done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
                if done.returncode:
                    raise SystemExit(f"{method} B={batch} T={length} failed:\n{done.stderr[-3000:]}")
                rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
                r = rows[-1]
                print(f"{method:13s} B={batch:3d} T={length:3d} peak {r['peak_mib']:7.0f} MiB (imports "
                      f"{r['rss_after_imports_mib']:.0f}, after load {r['rss_after_load_mib']:.0f})  "
                      f"{r['seconds_per_sample']:.4f} s/sample", flush=True)
    write_rows(out, rows, machine=machine(), model=args.model)
    _table(rows)
    _plot(rows, methods, out / "memory.png", args.model)


def _table(rows: list[dict]) -> None:
    """Markdown: peak and s/sample per method, and the ratio to LoRA in the same (batch, length)."""
    lora = {(r["batch"], r["length"]): r for r in rows if r["method"] == "lora"}
    print("\n| method | B | T | peak MiB | ÷ LoRA peak | s/sample | ÷ LoRA s/sample |\n|---|---|---|---|---|---|---|")
    for r in rows:
        base = lora.get((r["batch"], r["length"]))
        peak = f"{r['peak_mib'] / base['peak_mib']:.3f}" if base else "—"
        speed = f"{r['seconds_per_sample'] / base['seconds_per_sample']:.2f}" if base else "—"
        print(f"| {r['method']} | {r['batch']} | {r['length']} | {r['peak_mib']:.0f} | {peak} | "
              f"{r['seconds_per_sample']:.4f} | {speed} |")


def _plot(rows: list[dict], methods: list[str], path: Path, model: str) -> None:
    length = 128 if any(r["length"] == 128 for r in rows) else rows[0]["length"]
    lines = {m: [(r["batch"], r["peak_mib"]) for r in rows if r["method"] == m and r["length"] == length] for m in methods}
    plot_lines(path, lines, "batch size", "device peak memory (MiB)", log_y=True, title=f"{model}, sequence length {length}",
               legend_size=7)


if __name__ == "__main__":
    main()

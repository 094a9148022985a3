"""Runs the timed benchmarks share: a mobillm job split over three processes (server, shaped link, device),
and the LoRA baseline on the device, each process pinned to its own core with one thread.

Pinning (``os.sched_setaffinity``) keeps the device and the server from taking each other's core, which is
what a phone and a GPU box would not do; on a 2-core machine the device gets core 0, the server and the link
core 1. Every process loads ``model``; the benchmarks pass SmolLM2's fp32 device checkpoint
(``mobillm.bench.models.device_checkpoint``: the GGUF file's weights de-quantised once), so that no run spends
the ~20 s transformers' GGUF loader takes to parse the file before training starts. Time axes come from the
runs' own ``metrics.jsonl`` (wall-clock ``time`` of each validation on the server; the baseline's summed
training-step seconds), never from this process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from mobillm.ports import free_port, wait_listening

DEVICE_CORE, SERVER_CORE = 0, 1


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1"}


def _pinned(core: int):
    cores = sorted(os.sched_getaffinity(0))
    return lambda: os.sched_setaffinity(0, {cores[core % len(cores)]})


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def sst2_as(directory: Path, sst2: Path, validation: str, test_rows: int) -> Path:
    """A data folder over SST-2 without copying it: train.tsv and dev.tsv (``validation``: 'dev' or 'test')
    linked, test.tsv the first ``test_rows`` of test.tsv (the device scores it locally before streaming)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, target in (("train.tsv", sst2 / "train.tsv"), ("dev.tsv", sst2 / f"{validation}.tsv")):
        link = directory / name
        link.unlink(missing_ok=True)
        link.symlink_to(target.resolve())
    lines = (sst2 / "test.tsv").read_text().splitlines()[: test_rows + 1]
    (directory / "test.tsv").write_text("\n".join(lines) + "\n")
    return directory


@dataclass
class SplitRun:
    """A finished split job: the device's summary and metrics, the server's metrics."""

    device_summary: dict
    device_metrics: list[dict]
    server_metrics: list[dict]

    def validations(self) -> list[dict]:
        """Server validations with ``seconds`` since the step-0 one (the first training batch's arrival)."""
        vals = [r for r in self.server_metrics if r.get("event") == "validation"]
        return [{**r, "seconds": r["time"] - vals[0]["time"]} for r in vals]


def run_split(out: Path, data: Path, model: str, mbps: float, *, train_samples: int, eval_samples: int, batch_size: int,
              epochs: int, device_epochs: int, evals_per_epoch: int, extra: tuple[str, ...] = ()) -> SplitRun:
    """``mobillm serve`` (core 1) ← shaped link at ``mbps`` (core 1) ← ``mobillm device`` (core 0)."""
    shutil.rmtree(out, ignore_errors=True)  # metrics files append: a previous run's lines must not mix in
    out.mkdir(parents=True)
    server_port, link_port = free_port(), free_port()
    py = [sys.executable, "-m"]
    with (out / "server.log").open("w") as log:
        server = subprocess.Popen([*py, "mobillm", "serve", "--no-auth", "--port", str(server_port), "--jobs-dir",
                                   str(out / "jobs")], stdout=log, stderr=subprocess.STDOUT, env=_env(),
                                  preexec_fn=_pinned(SERVER_CORE))
        link = subprocess.Popen([*py, "mobillm.bench.link", str(link_port), str(server_port), str(mbps)],
                                stdout=subprocess.DEVNULL, env=_env(), preexec_fn=_pinned(SERVER_CORE))
        try:
            wait_listening(server_port, server)
            wait_listening(link_port, link)
            cmd = [*py, "mobillm", "device", "--server", f"ws://127.0.0.1:{link_port}", "--job", "bench", "--model", model, "--data", str(data),
                   "--max-train-samples", str(train_samples), "--max-eval-samples", str(eval_samples),
                   "--batch-size", str(batch_size), "--epochs", str(epochs), "--device-epochs", str(device_epochs),
                   "--evals-per-epoch", str(evals_per_epoch), "--patience", "1000", "--output-dir", str(out / "device"), *extra]
            done = subprocess.run(cmd, capture_output=True, text=True, env=_env(), preexec_fn=_pinned(DEVICE_CORE))
            if done.returncode:
                raise RuntimeError(f"device failed:\n{done.stderr[-3000:]}")
        finally:
            for p in (link, server):
                p.terminate()
                p.wait()
    return SplitRun(json.loads((out / "device" / "summary.json").read_text()), jsonl(out / "device" / "metrics.jsonl"),
                    jsonl(out / "jobs" / "bench" / "metrics.jsonl"))


def run_lora(out: Path, data: Path, model: str, *, train_samples: int, eval_samples: int, batch_size: int, epochs: int,
             evals_per_epoch: int) -> tuple[dict, list[dict]]:
    """``mobillm train --method lora`` on the device's core; returns (summary, metrics lines)."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "mobillm", "train", "--method", "lora", "--model", model, "--data", str(data), "--max-train-samples",
           str(train_samples), "--max-eval-samples", str(eval_samples), "--batch-size", str(batch_size),
           "--epochs", str(epochs), "--evals-per-epoch", str(evals_per_epoch), "--patience", "1000", "--output-dir", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=_env(), preexec_fn=_pinned(DEVICE_CORE))
    if done.returncode:
        raise RuntimeError(f"lora failed:\n{done.stderr[-3000:]}")
    return json.loads((out / "summary.json").read_text()), jsonl(out / "metrics.jsonl")

"""Load: many simulated devices against one `mobillm serve` process on loopback (tiny model).

Each simulated device is an asyncio task with its own job and token. It skips the backbone (its activations
are random, int8-encoded at the tiny model's width) and streams through the real protocol: Hello, a window of
unacked batches, Done, GetSideNet. Measured: every job finishes without an error, the ack latency of each batch
(send → ack, p50/p95), throughput (training samples acked per second, all devices together), and the server
process's peak memory (VmHWM).

    python benchmarks/load.py [--devices 16] [--batches 40]

Writes results/load/{results.json,ack_latency.png}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from mobillm.bench.io import machine
from mobillm.procfs import status_mib

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
H, B, SHORTCUTS = 64, 8, [2, 4]



async def device(url: str, hello, token: str, batches: int, window: int, latencies: list[float]) -> int:
    """One simulated device; returns the server's training steps for its job."""
    from websockets.asyncio.client import connect

    from mobillm.wire.codecs import get_codec
    from mobillm.wire.messages import (
        Ack,
        Batch,
        Done,
        Error,
        GetSideNet,
        SideNet,
        decode_message,
        encode_message,
    )

    codec = get_codec("int8")
    sent: dict[int, float] = {}
    async with connect(f"{url}/jobs/{hello.job}", additional_headers={"Authorization": f"Bearer {token}"},
                       compression=None, max_size=64 << 20) as ws:
        await ws.send(encode_message(hello))
        welcome = decode_message(await ws.recv()).header
        if isinstance(welcome, Error):
            raise RuntimeError(f"{hello.job}: {welcome.code}: {welcome.message}")
        plan = [("eval", i) for i in range(2)] + [("train", i) for i in range(batches)]
        acked, result = asyncio.Event(), None

        async def receive():
            nonlocal result
            async for data in ws:
                frame = decode_message(data, max_bytes=64 << 20)
                if isinstance(frame.header, Ack):
                    latencies.append(time.perf_counter() - sent.pop(frame.header.seq))
                    acked.set()
                elif isinstance(frame.header, SideNet):
                    result = frame.header
                    return
                else:
                    raise RuntimeError(f"{hello.job}: {frame.header}")

        receiver = asyncio.create_task(receive())
        for seq, (split, i) in enumerate(plan):
            while len(sent) >= window:
                acked.clear()
                await acked.wait()
            taps = [codec.encode(torch.randn(B, H)) for _ in SHORTCUTS]
            tensors = Batch.tensors(taps, sample_ids=torch.arange(i * B, (i + 1) * B), labels=torch.arange(B) % 2)
            data = encode_message(Batch(seq=seq, split=split, epoch=0), tensors)
            sent[seq] = time.perf_counter()
            await ws.send(data)
        await ws.send(encode_message(Done(epoch=0)))
        while sent:
            acked.clear()
            await acked.wait()
        await ws.send(encode_message(GetSideNet()))
        await receiver
        return result.step


async def run(url: str, hellos, tokens, batches: int, window: int, latencies: list[float]):
    return await asyncio.gather(*(device(url, h, t, batches, window, latencies) for h, t in zip(hellos, tokens)))


def tiny_jobs(scratch: Path, names: list[str], batches: int) -> tuple[list, list[str]]:
    """One Hello per job name (the tiny model saved under ``scratch``, 2 epochs of ``batches`` batches), and
    each job's token in ``scratch/jobs``."""
    from conftest import save_tiny_model

    from mobillm.backbone import fingerprint, load_pretrained
    from mobillm.server.auth import TokenStore
    from mobillm.sidenet import SideConfig
    from mobillm.train_config import TrainConfig
    from mobillm.wire.messages import Hello

    model_dir = scratch / "model"
    if not model_dir.is_dir():
        save_tiny_model(model_dir, hidden=H)
    model, _ = load_pretrained(str(model_dir))
    side = SideConfig(hidden_size=H, num_backbone_layers=4, shortcuts=SHORTCUTS, width=16, block="mlp", num_labels=2,
                      label_token_ids=[5, 6], codec="int8")
    config = TrainConfig(method="side", epochs=2, batch_size=B)
    hellos = [Hello(job=name, model=str(model_dir), fingerprint=fingerprint(model), side_config=side,
                    train_config=config, train_samples=batches * B) for name in names]
    return hellos, [TokenStore(scratch / "jobs").create(h.job) for h in hellos]


def start_server(jobs_dir: Path, window: int, *options: str) -> tuple[subprocess.Popen, str]:
    """``mobillm serve`` as a process of its own (``options`` appended), its output in ``jobs_dir/../server.log``
    (a file, not a pipe nobody drains); the process and its ws:// URL."""
    log = jobs_dir.parent / "server.log"
    with log.open("w") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "mobillm", "serve", "--port", "0", "--jobs-dir", str(jobs_dir), "--window", str(window),
             *options],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "TQDM_DISABLE": "1"},
        )
    while not (lines := [line for line in log.read_text().splitlines() if "listening on" in line]):
        if server.poll() is not None:
            sys.exit(f"the server did not start; see {log}")
        time.sleep(0.1)
    return server, f"ws://127.0.0.1:{int(lines[0].rsplit(':', 1)[1])}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=16)
    parser.add_argument("--batches", type=int, default=40, help="training batches per device (of 8 samples)")
    parser.add_argument("--window", type=int, default=8)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "load")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="mobillm-load-"))
    hellos, tokens = tiny_jobs(scratch, [f"device{i:02d}" for i in range(args.devices)], args.batches)
    server, url = start_server(scratch / "jobs", args.window)
    try:
        latencies: list[float] = []
        start = time.perf_counter()
        steps = asyncio.run(run(url, hellos, tokens, args.batches, args.window, latencies))
        wall = time.perf_counter() - start
        server_peak = status_mib("VmHWM", server.pid)
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert all(s == 2 * args.batches for s in steps), steps  # every job trained both epochs
    q = statistics.quantiles(latencies, n=100)
    result = {
        "machine": machine(), "devices": args.devices,
        "batches_per_device": args.batches + 2, "batch_size": B, "window": args.window, "jobs_finished": len(steps),
        "wall_seconds": wall, "samples_acked_per_second": args.devices * (args.batches + 2) * B / wall,
        "training_steps_per_second": sum(steps) / wall, "ack_latency_p50_ms": 1000 * q[49],
        "ack_latency_p95_ms": 1000 * q[94], "server_peak_memory_mib": server_peak,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.4))
    ax.hist([1000 * x for x in latencies], bins=50, color="#2a7ab9")
    ax.set_xlabel("ack latency (ms)")
    ax.set_title(f"{args.devices} simulated devices, one server, loopback")
    fig.tight_layout()
    fig.savefig(args.out / "ack_latency.png", dpi=120)


if __name__ == "__main__":
    main()

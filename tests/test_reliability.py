"""No lost data: a connection cut mid-stream is resumed, every sample is trained exactly once per epoch, and the
side network equals that of an uninterrupted run."""

from __future__ import annotations

import asyncio
import threading

import torch
from servers import CuttingProxy, ThreadServer, device_setup

from mobillm.device.client import stream
from mobillm.ports import free_port
from mobillm.server.manager import SessionManager
from mobillm.train_config import TrainConfig


def test_a_stream_cut_three_times_trains_exactly_what_an_uninterrupted_one_does(toy_task, tmp_path):
    model_dir, data_dir = toy_task
    manager = SessionManager(tmp_path / "jobs")
    server = ThreadServer(manager, window=4)
    hello, backbone, codec, batcher, data = device_setup(model_dir, data_dir, max_train=128)
    config = TrainConfig(method="side", epochs=3, batch_size=8, patience=5)
    run = dict(batch_size=8, seed=0, pivot=True, device_epochs=2)

    def job(name: str, port: int, **extra):
        h = hello.model_copy(update={"job": name, "train_config": config, "device_epochs": 2})
        return asyncio.run(stream(f"ws://127.0.0.1:{port}", h, backbone, codec, batcher, data.train, data.validation,
                                  **run, **extra))

    straight, straight_stats = job("straight", server.port)
    proxy = CuttingProxy([server.port], cuts=3, after=15_000)
    cut, cut_stats = job("cut", proxy.port, backoff=0.05)

    assert cut_stats.reconnects == 3 and proxy.connections == 4
    batches = 128 // 8
    for name in ("straight", "cut"):
        trained = manager.jobs[name]
        assert [len(seqs) for seqs in trained.feed.train_seqs] == [batches, batches]  # each batch once per device epoch
        assert trained.samples_trained == 3 * 128  # epochs 1-2 as sent, epoch 3 replayed from the cache
    assert cut.header.step == straight.header.step == 3 * batches
    assert cut.tensors.keys() == straight.tensors.keys()
    assert all(torch.equal(cut.tensors[k], straight.tensors[k]) for k in cut.tensors)
    assert cut.header.eval_predictions == straight.header.eval_predictions


def _serve(jobs_dir, port: int):
    import subprocess
    import sys

    server = subprocess.Popen(
        [sys.executable, "-m", "mobillm", "serve", "--port", str(port), "--jobs-dir", str(jobs_dir), "--window", "4"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    while "listening on" not in server.stdout.readline():
        assert server.poll() is None, "the server did not start"
    return server


def test_a_server_killed_mid_training_resumes_from_its_checkpoint(toy_task, tmp_path):
    import json
    import signal
    import time

    from mobillm.server.auth import TokenStore

    model_dir, data_dir = toy_task
    hello, backbone, codec, batcher, data = device_setup(model_dir, data_dir, max_train=256)
    config = TrainConfig(method="side", epochs=8, batch_size=8, patience=8)
    batches = 256 // 8

    def run(job: str, port: int, outcome: dict) -> None:
        h = hello.model_copy(update={"job": job, "train_config": config})
        outcome["result"] = asyncio.run(stream(
            f"ws://127.0.0.1:{port}", h, backbone, codec, batcher, data.train, data.validation, batch_size=8, seed=0,
            pivot=True, token=tokens.create(job), reconnects=120, backoff=0.25,
        ))

    port = free_port()
    jobs = tmp_path / "jobs"
    tokens = TokenStore(jobs)
    server = _serve(jobs, port)
    try:
        straight: dict = {}
        run("straight", port, straight)

        killed: dict = {}
        device = threading.Thread(target=run, args=("killed", port, killed))
        device.start()
        metrics = jobs / "killed" / "metrics.jsonl"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # kill once the job is past its first epoch checkpoint
            lines = metrics.read_text().split("\n")[:-1] if metrics.exists() else []  # not a line being appended
            steps = [json.loads(line).get("step", 0) for line in lines]
            if steps and max(steps) >= batches + 8:
                break
            time.sleep(0.01)
        server.send_signal(signal.SIGKILL)
        server.wait()
        server = _serve(jobs, port)
        device.join(timeout=240)
        assert not device.is_alive()
    finally:
        server.terminate()
        server.wait(timeout=30)

    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    resumed = [r for r in records if r.get("event") == "resumed"]
    assert len(resumed) == 1 and 1 <= resumed[0]["from_epoch"] < config.num_epochs  # mid-training, from a checkpoint
    (frame, stats), (reference, _) = killed["result"], straight["result"]
    assert stats.reconnects >= 1
    assert frame.header.step == reference.header.step
    assert all(torch.equal(frame.tensors[k], reference.tensors[k]) for k in reference.tensors)
    assert frame.header.eval_predictions == reference.header.eval_predictions

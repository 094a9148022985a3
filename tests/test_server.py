"""Server and device over a real WebSocket on loopback."""

from __future__ import annotations

import asyncio
import collections
import json
import subprocess
import sys
import textwrap
import time

import pytest
from servers import ThreadServer, device_setup, start_server

from mobillm.device.client import stream
from mobillm.device.taps import TappedBackbone
from mobillm.exceptions import ServerRefused
from mobillm.server.auth import TokenStore
from mobillm.server.manager import SessionManager
from mobillm.train_config import TrainConfig
from mobillm.wire.errors import ErrorCode

DEVICE_SCRIPT = textwrap.dedent(
    """
    import gc, json, sys
    import torch
    from mobillm.cli import app
    app(sys.argv[2:], standalone_mode=False)
    trainer_modules = [m for m in ("mobillm.training.side_trainer", "mobillm.training.step", "mobillm.training.loop", "mobillm.server.job") if m in sys.modules]
    optimizers = sum(isinstance(o, torch.optim.Optimizer) for o in gc.get_objects())
    open(sys.argv[1], "w").write(json.dumps({"trainer_modules": trainer_modules, "optimizers": optimizers}))
    """
)


def test_server_and_device_in_two_processes(toy_task, tmp_path):
    model_dir, data_dir = toy_task
    server, port = start_server(tmp_path / "jobs")
    token = TokenStore(tmp_path / "jobs").create("toy")
    try:
        report = tmp_path / "device-report.json"
        args = [
            "device", "--runtime", "torch", "--server", f"ws://127.0.0.1:{port}", "--job", "toy", "--token", token, "--model", model_dir, "--data", data_dir,
            "--codec", "nf4", "--shortcuts", "2,4", "--width", "16", "--lr", "3e-3", "--epochs", "6", "--patience", "6",
            "--max-eval-samples", "64", "--output-dir", str(tmp_path / "device"),
        ]
        done = subprocess.run([sys.executable, "-c", DEVICE_SCRIPT, str(report), *args], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    finally:
        server.terminate()
        server.wait(timeout=30)
    summary = json.loads((tmp_path / "device" / "summary.json").read_text())
    assert summary["test"]["accuracy"] >= summary["zero_shot_test"]["accuracy"] + 0.2
    assert summary["eval_agreement"] == 1.0  # the downloaded side network reproduces the server's eval
    assert summary["bytes_sent"] > summary["bytes_per_sample"] * summary["n_train"]
    # The device ran forward passes only: no trainer code, no optimizer in its process.
    device_state = json.loads(report.read_text())
    assert device_state == {"trainer_modules": [], "optimizers": 0}
    # The server trained, and the loss went down; its epochs 2..6 replayed from the activation cache.
    records = [json.loads(line) for line in (tmp_path / "jobs" / "toy" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "step" in r and "loss" in r]
    assert len(losses) > 16 and sum(losses[-10:]) / 10 < 0.7 * sum(losses[:10]) / 10
    assert records[-1]["event"] == "finished"
    assert (tmp_path / "jobs" / "toy" / "side_network" / "side_network.safetensors").is_file()

    # The split run is the single-process run cut in two: same data order, seed and steps, same loss curve.
    from mobillm.recipes.local import RunOptions, train

    local = train(
        RunOptions(model=model_dir, data=data_dir, codec="nf4", shortcuts="2,4", width=16, max_eval_samples=64, output_dir=tmp_path / "local"),
        TrainConfig(method="side", lr=3e-3, epochs=6, patience=6),
    )
    local_losses = [json.loads(line)["loss"] for line in (tmp_path / "local" / "metrics.jsonl").read_text().splitlines()]
    assert len(local_losses) == len(losses)
    assert max(abs(a - b) for a, b in zip(local_losses, losses)) < 1e-4
    assert local["test"]["accuracy"] == summary["test"]["accuracy"]


def test_device_forward_passes_overlap_the_servers_training_steps(toy_task, tmp_path, monkeypatch):
    """With training slowed to 50 ms a step, the device still streams at forward speed: it waits only for
    acks (sent on receipt), never for training."""
    from mobillm.training.side_trainer import SideTrainer

    slow = SideTrainer.train_batch

    def slow_train_batch(self, *args, **kwargs):
        time.sleep(0.05)
        return slow(self, *args, **kwargs)

    monkeypatch.setattr(SideTrainer, "train_batch", slow_train_batch)
    model_dir, data_dir = toy_task
    manager = SessionManager(tmp_path / "jobs")
    server = ThreadServer(manager, window=4)
    hello, backbone, codec, batcher, data = device_setup(model_dir, data_dir)
    frame, stats = asyncio.run(stream(
        f"ws://127.0.0.1:{server.port}", hello, backbone, codec, batcher, data.train, data.validation,
        batch_size=8, seed=0, pivot=True,
    ))
    batches = len(data.train) // 8
    assert stats.batches_sent == batches + len(data.validation) // 8
    # When the last training batch was acked, the server had trained only part of them: the device's
    # forward passes ran while the server was inside training steps.
    assert stats.acked_steps[-1] < batches - 4
    assert frame.header.step == batches
    assert stats.forward.samples == len(data.train)


def test_server_refuses_a_backbone_with_another_fingerprint(toy_task, tmp_path):
    model_dir, data_dir = toy_task
    server = ThreadServer(SessionManager(tmp_path / "jobs"), window=2)
    hello, backbone, codec, batcher, data = device_setup(model_dir, data_dir)
    forged = hello.model_copy(update={"fingerprint": "0" * 32})
    with pytest.raises(ServerRefused, match=ErrorCode.FINGERPRINT_MISMATCH):
        asyncio.run(stream(f"ws://127.0.0.1:{server.port}", forged, backbone, codec, batcher, data.train, data.validation,
                           batch_size=8, seed=0, pivot=True))


def test_device_epochs_resends_every_epoch_and_the_cache_replays_otherwise(toy_task, tmp_path):
    model_dir, data_dir = toy_task
    server = ThreadServer(SessionManager(tmp_path / "jobs"), window=4)
    hello, backbone, codec, batcher, data = device_setup(model_dir, data_dir, max_train=64)
    url = f"ws://127.0.0.1:{server.port}"
    batches = 64 // 8
    for job, device_epochs in (("paper", 2), ("cached", 1)):
        config = TrainConfig(method="side", epochs=2, batch_size=8, patience=5)
        h = hello.model_copy(update={"job": job, "device_epochs": device_epochs, "train_config": config})
        frame, stats = asyncio.run(stream(url, h, backbone, codec, batcher, data.train, data.validation,
                                          batch_size=8, seed=0, pivot=True, device_epochs=device_epochs))
        assert frame.header.step == 2 * batches  # two epochs trained either way
        assert stats.forward.samples == 64 * device_epochs  # ... but the device computed them once with the cache


def test_idle_replays_spend_the_servers_waits_on_batches_it_holds(toy_task, tmp_path, monkeypatch):
    """A slow device leaves the server waiting; with idle_replays=2 it trains again on batches already received,
    each at most twice and only after its own live step, and the step count still follows the device's batches."""
    from mobillm.server.job import Job

    forward, train_on, trained = TappedBackbone.forward, Job._train_on, []

    def slow_forward(self, *args, **kwargs):
        time.sleep(0.05)
        return forward(self, *args, **kwargs)

    def recorded(self, seq, replay=False):
        trained.append((seq, replay))
        return train_on(self, seq, replay)

    monkeypatch.setattr(TappedBackbone, "forward", slow_forward)
    monkeypatch.setattr(Job, "_train_on", recorded)
    server = ThreadServer(SessionManager(tmp_path / "jobs"), window=4)
    hello, backbone, codec, batcher, data = device_setup(*toy_task, max_train=64)
    config = TrainConfig(method="side", epochs=1, batch_size=8, idle_replays=2)
    frame, _ = asyncio.run(stream(f"ws://127.0.0.1:{server.port}", hello.model_copy(update={"train_config": config}),
                                  backbone, codec, batcher, data.train, data.validation, batch_size=8, seed=0, pivot=True))
    live = [seq for seq, replay in trained if not replay]
    replays = collections.Counter(seq for seq, replay in trained if replay)
    assert len(live) == 64 // 8 and frame.header.step == 64 // 8  # replays are not steps of the schedule
    assert replays and max(replays.values()) <= 2
    assert all(trained.index((seq, False)) < trained.index((seq, True)) for seq in replays)


def test_server_refuses_an_unknown_codec_in_the_hello(toy_task, tmp_path):
    model_dir, data_dir = toy_task
    server = ThreadServer(SessionManager(tmp_path / "jobs"), window=2)
    hello, backbone, codec, batcher, data = device_setup(model_dir, data_dir)
    with pytest.raises(ServerRefused, match="bad_header.*int3.*nf4"):
        asyncio.run(stream(f"ws://127.0.0.1:{server.port}", hello.model_copy(update={"side_config": hello.side_config.model_copy(update={"codec": "int3"})}), backbone, codec,
                           batcher, data.train, data.validation, batch_size=8, seed=0, pivot=True))

"""The torch device's local scoring forwards validation and test again instead of keeping their taps (design §3):
the same scores as scoring kept taps all at once, the same noise in every pass, and a peak memory that does not
grow with the data.

The memory test (:func:`peaks.assert_flat_peak`) taps four layers: 128 KiB per sample uncompressed, so keeping the
eval and test taps would add well over 10% to a process of torch and transformers at the larger size."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import save_tiny_model
from peaks import FLAGS, assert_flat_peak
from servers import ThreadServer, start_server

from mobillm.backbone import FrozenHead
from mobillm.device.inference import evaluate_tapped, tap_split, zero_shot_tapped
from mobillm.device.noise import ActivationNoise, load_secret
from mobillm.device.taps import TappedBackbone
from mobillm.recipes.device import DeviceOptions, run_device
from mobillm.recipes.task import prepare_task
from mobillm.server.auth import TokenStore
from mobillm.server.manager import SessionManager
from mobillm.sidenet import SideNetwork
from mobillm.train_config import TrainConfig
from mobillm.wire.codecs import get_codec


def test_device_peak_memory_does_not_grow_with_eval_and_test(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the server and the device share this machine's cores
    model = save_tiny_model(tmp_path / "model")
    server, port = start_server(tmp_path / "jobs")
    tokens = TokenStore(tmp_path / "jobs")
    try:
        assert_flat_peak(tmp_path, lambda data, out, job: subprocess.run([
            sys.executable, "-m", "mobillm", "device", "--runtime", "torch", "--server", f"ws://127.0.0.1:{port}", "--job", job,
            "--token", tokens.create(job), "--model", str(model), "--data", str(data), "--shortcuts", "1,2,3,4",
            *FLAGS, "--width", "16", "--epochs", "1", "--output-dir", str(out),
        ], capture_output=True, text=True, timeout=300))
    finally:
        server.terminate()
        server.wait(timeout=30)


def _task(model_dir: str, data_dir: str, out: Path, block: str) -> DeviceOptions:
    return DeviceOptions(model=model_dir, data=data_dir, codec="int8", shortcuts="2,4", width=16, block=block,
                         max_eval_samples=64, noise=0.5, job=f"eval-{block}", output_dir=out)


@pytest.mark.parametrize("block", ["mlp", "attention"])  # the pivot token only, and every position
def test_device_scores_equal_scoring_the_kept_taps(toy_task, tmp_path, block):
    model_dir, data_dir = toy_task
    server = ThreadServer(SessionManager(tmp_path / "jobs"), window=4)
    options = _task(model_dir, data_dir, tmp_path / "device", block).model_copy(update={"server": f"ws://127.0.0.1:{server.port}"})
    config = TrainConfig(method="side", lr=3e-3, epochs=2, batch_size=16)
    summary = run_device(options, config)
    assert summary["eval_agreement"] == 1.0  # validation forwarded again: the noisy taps the server scored

    # today's reference: every test tap kept, then scored all at once (zero-shot and side network)
    task = prepare_task(options, config.seed)
    backbone, head, codec = TappedBackbone(task.model, [2, 4]), FrozenHead.from_model(task.model), get_codec("int8")
    noise = ActivationNoise(0.5, load_secret(options.output_dir))
    kept = list(tap_split(backbone, codec, task.batcher, task.data.test, 16, block == "mlp", "test", noise=noise, split="test"))
    side = SideNetwork.from_pretrained(options.output_dir / "side_network")
    assert summary["test"] == evaluate_tapped(side, head, codec, kept).scores()
    assert summary["zero_shot_test"] == zero_shot_tapped(task.side_config, head, kept).scores()
    assert summary["test"] != summary["zero_shot_test"]


def test_a_second_forward_draws_the_same_noise(toy_task, tmp_path):
    model_dir, data_dir = toy_task
    options = _task(model_dir, data_dir, tmp_path, "attention")
    task = prepare_task(options, 0)
    backbone, codec = TappedBackbone(task.model, [2, 4]), get_codec("none")
    examples = task.data.validation[:40]

    def taps(noise):
        return [t["data"] for item in tap_split(backbone, codec, task.batcher, examples, 16, False, "eval", noise=noise,
                                                split="eval") for t in item.taps]

    noise = ActivationNoise(0.5, b"a device secret of sixteen bytes+")
    first, again, clean = taps(noise), taps(noise), taps(None)
    assert len(first) == 2 * 3
    assert all(torch.equal(a, b) for a, b in zip(first, again))  # bit for bit: the draws are seeded per sample
    assert not any(torch.allclose(a, c) for a, c in zip(first, clean))

"""`mobillm device --runtime onnx --bundle DIR`: a whole device job on an exported bundle, in a process that never
imports torch or transformers, against a server that trains the side network as for the torch device."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import save_tiny_model, write_toy_sentiment
from peaks import FLAGS, assert_flat_peak
from servers import ThreadServer

from mobillm.backbone import load_pretrained
from mobillm.bundle.sidenet import NpSideNetwork
from mobillm.export import export_bundle
from mobillm.server.manager import SessionManager

DEVICE = """
import json, sys
from mobillm.cli import app
code = app(sys.argv[1:], standalone_mode=False)
print("MODULES " + json.dumps(sorted(m for m in ("torch", "transformers") if m in sys.modules)))
sys.exit(code or 0)
"""


@pytest.fixture(scope="module")
def bundle_job(tmp_path_factory) -> tuple[Path, Path]:
    """(bundle, data) of a tiny Llama saved as a checkpoint the server loads by path, and the toy task."""
    root = tmp_path_factory.mktemp("bundle-job")
    model_dir = save_tiny_model(root / "model")
    model, tokenizer = load_pretrained(str(model_dir))
    export_bundle(model, tokenizer, root / "bundle", [2, 4], source=str(model_dir))
    return root / "bundle", write_toy_sentiment(root / "data", n_train=48, n_eval=24)


def _run_device(bundle: Path, data: Path, port: int, out: Path, *options: str,
                job: str = "onnx") -> subprocess.CompletedProcess:
    args = ["device", "--runtime", "onnx", "--bundle", str(bundle), "--data", str(data), "--server",
            f"ws://127.0.0.1:{port}", "--job", job, "--width", "16", "--epochs", "1", "--batch-size", "8",
            "--output-dir", str(out), *options]
    return subprocess.run([sys.executable, "-c", DEVICE, *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("block,codec,noise,members", [("mlp", "int8", 0.0, 1), ("attention", "nf4", 0.5, 1),
                                                       ("attention", "nf4", 0.0, 3)])
def test_a_whole_device_job_on_a_bundle_without_torch(bundle_job, tmp_path, block, codec, noise, members):
    bundle, data = bundle_job
    server = ThreadServer(SessionManager(tmp_path / "jobs"), window=2)
    out = tmp_path / "device"
    run = _run_device(bundle, data, server.port, out, "--block", block, "--codec", codec, "--noise", str(noise),
                      "--members", str(members), *(("--bagging",) if members > 1 else ()))
    assert run.returncode == 0, run.stderr[-3000:]
    modules = [line for line in run.stdout.splitlines() if line.startswith("MODULES ")]
    assert modules == ["MODULES []"], run.stdout[-2000:]  # neither torch nor transformers, ever
    summary = json.loads((out / "summary.json").read_text())
    assert summary["runtime"] == "onnx" and summary["n_train"] == 48 and summary["n_test"] == 24
    assert summary["server_steps"] >= 48 // 8 and summary["batches_sent"] == (24 + 48) // 8
    for scores in (summary["test"], summary["zero_shot_test"]):
        assert scores["n"] == 24 and 0.0 <= scores["accuracy"] <= 1.0
    # the device's numpy side network predicts what the server's torch one predicted on the same eval taps (with
    # noise: the validation split forwarded again for scoring carries the same draws as when it was sent)
    assert summary["eval_agreement"] >= 0.95, summary["eval_agreement"]
    assert summary["noise"] == noise and (noise == 0) != (out / "noise_secret").exists()
    side = NpSideNetwork.from_pretrained(out / "side_network")
    assert side.block == block and side.config["codec"] == codec and side.config["members"] == members
    assert (side.members is None) == (members == 1) and len(side.members or [side]) == members
    hello = json.loads((tmp_path / "jobs" / "onnx" / "hello.json").read_text())  # what the server trained
    assert hello["train_config"]["bagging"] == (members > 1) and hello["side_config"]["members"] == members
    job_dir = tmp_path / "jobs" / "onnx"
    assert job_dir.is_dir()


def test_bundle_device_peak_memory_does_not_grow_with_eval_and_test(bundle_job, tmp_path):
    bundle, _ = bundle_job
    server = ThreadServer(SessionManager(tmp_path / "jobs"), window=2)
    assert_flat_peak(tmp_path, lambda data, out, job: _run_device(bundle, data, server.port, out, *FLAGS, job=job))


def test_bundle_device_refusals(bundle_job, tmp_path):
    bundle, data = bundle_job
    wrong = _run_device(bundle, data, 1, tmp_path / "a", "--shortcuts", "1,3")
    assert wrong.returncode != 0 and "fixed when it was exported" in " ".join(wrong.stderr.split())
    causal = _run_device(bundle, data, 1, tmp_path / "b", "--task", "causal-lm")
    assert causal.returncode != 0 and "use --runtime torch" in " ".join(causal.stderr.split())

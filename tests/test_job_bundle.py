"""The bundle a job exports when no --bundle is given: exported once, reused for the same request, exported again
for another, and a clear refusal where the install cannot export."""

from __future__ import annotations

import importlib.util
import subprocess

import pytest
from conftest import save_tiny_model

from mobillm.bundle.config import BundleConfig
from mobillm.exceptions import ConfigError, MobillmError
from mobillm.recipes.job_bundle import job_bundle


def test_a_jobs_bundle_is_exported_once_and_again_for_another_request(tmp_path, monkeypatch):
    model = str(save_tiny_model(tmp_path / "tiny"))
    bundle = job_bundle(model, "1,3", "fp32", tmp_path / "run" / "bundle")
    config = BundleConfig.load(bundle)
    assert config.shortcuts == [1, 3] and config.weights == "fp32"
    assert (bundle / "taps.onnx").is_file() and not (bundle / "generate.onnx").exists()  # classification only
    assert (bundle / "lm_head.safetensors").is_file() and not (bundle / "head.onnx").exists()  # no full head
    written = (bundle / "taps.onnx").stat().st_mtime_ns

    assert job_bundle(model, "1,3", "fp32", bundle) == bundle  # the same request: reused, not exported again
    assert (bundle / "taps.onnx").stat().st_mtime_ns == written

    # another request replaces it (the exporter itself stubbed: one real export per test is enough)
    commands = []

    def export(command):
        commands.append(command)
        assert not bundle.exists()  # the old bundle's files are gone before the new export writes
        bundle.mkdir()
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(subprocess, "run", export)
    (bundle / "norm.onnx").unlink()  # an older version's bundle, without a file this one reads
    job_bundle(model, "1,3", "fp32", bundle)
    assert len(commands) == 1  # the same request, exported again
    job_bundle(model, "2", "int8-dynamic", bundle)
    assert len(commands) == 2
    assert commands[1][1:] == ["-m", "mobillm", "export", str(bundle), "--model", model, "--weights", "int8-dynamic",
                               "--no-generate", "--shortcuts", "2"]
    assert '"int8-dynamic"' in (bundle / "export_request.json").read_text()


def test_a_failed_export_leaves_no_bundle_that_a_later_run_would_reuse(tmp_path):
    with pytest.raises(MobillmError, match="exporting the device bundle failed"):
        job_bundle(str(tmp_path / "no-such-model"), None, "fp32", tmp_path / "bundle")
    assert not (tmp_path / "bundle" / "export_request.json").exists()


def test_a_bundle_put_there_by_hand_is_never_replaced(tmp_path):
    directory = tmp_path / "bundle"
    directory.mkdir()
    (directory / "bundle.json").write_text("{}")
    with pytest.raises(MobillmError, match="run it with --bundle"):
        job_bundle("smollm2-135m", None, "fp32", directory)
    assert (directory / "bundle.json").read_text() == "{}"


def test_an_install_without_the_exporter_is_told_what_to_do(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxscript" else real(name, *a))
    with pytest.raises(MobillmError, match=r"onnxscript.*mobillm\[export\].*--bundle DIR.*--runtime torch"):
        job_bundle("smollm2-135m", None, "fp32", tmp_path / "bundle")
    with pytest.raises(ConfigError, match="--bundle-weights"):
        job_bundle("smollm2-135m", None, "nf4", tmp_path / "bundle")


def test_device_and_finetune_run_classification_on_an_exported_bundle_by_default(tmp_path, monkeypatch):
    """--runtime auto: a classification job exports (once) and runs a bundle; causal LM stays on torch."""
    from typer.testing import CliRunner

    from mobillm.cli import app
    from mobillm.recipes import bundle_device, device, job_bundle

    seen = []
    monkeypatch.setattr(job_bundle, "job_bundle", lambda model, shortcuts, weights, directory:
                        seen.append(("export", model, shortcuts, weights, directory)) or directory)
    monkeypatch.setattr(bundle_device, "run_bundle_device", lambda options, config: seen.append(("onnx", options.bundle)) or {})
    monkeypatch.setattr(device, "run_device", lambda options, config: seen.append(("torch", options.task)) or {})
    monkeypatch.setattr("mobillm.cli.print_summary", lambda summary: None)
    runner = CliRunner()
    out = tmp_path / "run"
    assert runner.invoke(app, ["device", "--model", "m", "--shortcuts", "2", "--output-dir", str(out)]).exit_code == 0
    assert seen == [("export", "m", "2", job_bundle.DEFAULT_BUNDLE_WEIGHTS, out / "bundle"), ("onnx", out / "bundle")]
    seen.clear()
    assert runner.invoke(app, ["device", "--bundle", str(tmp_path / "b"), "--bundle-weights", "fp32"]).exit_code == 0
    assert seen == [("onnx", tmp_path / "b")]  # a given bundle is run as it is
    seen.clear()
    assert runner.invoke(app, ["device", "--task", "causal-lm", "--data", "x.jsonl"]).exit_code == 0
    assert seen == [("torch", "causal-lm")]
    seen.clear()
    assert runner.invoke(app, ["device", "--runtime", "torch"]).exit_code == 0
    assert seen == [("torch", "classification")]

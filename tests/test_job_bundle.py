"""The bundle cache: the bundle a job runs when no --bundle is given, exported once per machine and reused for the same
request (model, shortcuts, weights), a bundle of its own for another or for a changed model; written whole or not
at all; and a clear refusal where the install cannot export."""

from __future__ import annotations

import fcntl
import importlib.util
import json
import os
import subprocess
from pathlib import Path

import pytest
from conftest import save_tiny_model

from mobillm.bundle.config import BundleConfig
from mobillm.exceptions import ConfigError, MobillmError
from mobillm.recipes.job_bundle import CACHE_ENV, bundle_cache, bundle_files, bundle_request, job_bundle


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A bundle cache of the test's own ($MOBILLM_CACHE)."""
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache" / "bundles"


def test_a_bundle_is_exported_once_into_the_cache_and_again_for_another_request(tmp_path, cache, monkeypatch):
    model = str(save_tiny_model(tmp_path / "tiny"))
    bundle = job_bundle(model, "1,3", "fp32")
    assert bundle.parent == cache and bundle_cache() == cache
    config = BundleConfig.load(bundle)
    assert config.shortcuts == [1, 3] and config.weights == "fp32"
    assert (bundle / "taps.onnx").is_file() and not (bundle / "generate.onnx").exists()  # classification only
    assert (bundle / "lm_head.safetensors").is_file() and not (bundle / "head.onnx").exists()  # no full head
    assert "export_request.json" not in bundle_files(bundle) and "bundle.json" in bundle_files(bundle)
    assert [p.name for p in cache.iterdir()] == [bundle.name]  # no staging folder left behind
    written = (bundle / "taps.onnx").stat().st_mtime_ns

    assert job_bundle(model, "1,3", "fp32") == bundle  # the same request: reused, not exported again
    assert (bundle / "taps.onnx").stat().st_mtime_ns == written

    # other requests get folders of their own (the exporter itself stubbed: one real export per test is enough)
    commands = []

    def export(command):
        commands.append(command)
        staging = Path(command[4])
        assert staging.parent == cache and staging.name.startswith(".") and not any(staging.iterdir())
        return _fake_export(command)

    monkeypatch.setattr(subprocess, "run", export)
    (bundle / "norm.onnx").unlink()  # a damaged bundle (or an older version's, without a file this one reads)
    assert job_bundle(model, "1,3", "fp32") == bundle
    assert len(commands) == 1 and (bundle / "norm.onnx").is_file()  # the same request, exported again
    other = job_bundle(model, "2", "int8-dynamic")
    assert len(commands) == 2 and other != bundle and other.parent == cache
    assert commands[1][1:4] == ["-m", "mobillm", "export"]
    assert commands[1][5:] == ["--model", model, "--weights", "int8-dynamic", "--no-generate", "--shortcuts", "2"]
    assert '"int8-dynamic"' in (other / "export_request.json").read_text()
    assert bundle.is_dir()  # the first bundle is still there for whoever asks for it

    (Path(model) / "config.json").touch()  # the model changed (its mtime): a bundle of its own
    changed = job_bundle(model, "2", "int8-dynamic")
    assert len(commands) == 3 and changed not in (bundle, other)


def _fake_export(command):
    """What `mobillm export` writes, empty: for the tests of the cache's bookkeeping."""
    staging = Path(command[4])
    (staging / "bundle.json").write_text("{}")
    for name in ("taps.onnx", "norm.onnx", "lm_head.safetensors", "tokenizer.json"):
        (staging / name).write_bytes(b"")
    return subprocess.CompletedProcess(command, 0)


def _model(tmp_path) -> str:
    """A local model folder (its identity is its files; nothing loads it when the exporter is stubbed)."""
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    return str(tmp_path / "model")


def test_an_export_removes_what_killed_exports_left_and_keeps_a_running_ones(tmp_path, cache, monkeypatch):
    cache.mkdir(parents=True)
    stale, running = cache / ".dead-export", cache / ".running-export"
    for staging in (stale, running):
        staging.mkdir()
        (staging / "taps.onnx").write_bytes(b"half")
    held = os.open(running, os.O_RDONLY)
    fcntl.flock(held, fcntl.LOCK_EX)  # another command exporting into it now
    monkeypatch.setattr(subprocess, "run", _fake_export)
    try:
        bundle = job_bundle(_model(tmp_path), None, "fp32")
    finally:
        os.close(held)
    assert not stale.exists() and (running / "taps.onnx").is_file()
    assert sorted(p.name for p in cache.iterdir()) == sorted([bundle.name, running.name])


def test_of_two_commands_exporting_the_same_bundle_the_second_keeps_the_firsts(tmp_path, cache, monkeypatch):
    model = _model(tmp_path)

    def export(command):  # while this one exports, another command finishes the same bundle first
        for target in (Path(command[4]), cache / Path(command[4]).name[1:].rsplit("-", 1)[0]):
            target.mkdir(exist_ok=True)
            (target / "bundle.json").write_text("{}" if target.name.startswith(".") else '{"first": true}')
            for name in ("taps.onnx", "norm.onnx", "lm_head.safetensors", "tokenizer.json"):
                (target / name).write_bytes(b"")
            if not target.name.startswith("."):
                (target / "export_request.json").write_text(json.dumps(bundle_request(model, None, "fp32")))
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(subprocess, "run", export)
    bundle = job_bundle(model, None, "fp32")
    assert json.loads((bundle / "bundle.json").read_text()) == {"first": True}
    assert [p.name for p in cache.iterdir()] == [bundle.name]


def test_a_failed_export_leaves_nothing_that_a_later_command_would_reuse(tmp_path, cache):
    with pytest.raises(MobillmError, match="exporting the device bundle failed"):
        job_bundle(str(tmp_path / "no-such-model"), None, "fp32")
    assert list(cache.iterdir()) == []


def test_an_install_without_the_exporter_is_told_what_to_do(tmp_path, cache, monkeypatch):
    model = str(save_tiny_model(tmp_path / "tiny"))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxscript" else real(name, *a))
    with pytest.raises(MobillmError, match=r"onnxscript.*mobillm\[export\].*--bundle DIR.*--runtime torch"):
        job_bundle(model, None, "fp32")
    with pytest.raises(ConfigError, match="--bundle-weights"):
        job_bundle(model, None, "nf4")


def test_device_and_finetune_run_classification_on_an_exported_bundle_by_default(tmp_path, monkeypatch):
    """--runtime auto: a classification job exports (once) and runs a bundle; causal LM stays on torch."""
    from typer.testing import CliRunner

    from mobillm.cli import app
    from mobillm.recipes import bundle_device, device, job_bundle

    seen = []
    monkeypatch.setattr(job_bundle, "job_bundle", lambda model, shortcuts, weights:
                        seen.append(("export", model, shortcuts, weights)) or tmp_path / "cached")
    monkeypatch.setattr(bundle_device, "run_bundle_device", lambda options, config: seen.append(("onnx", options.bundle)) or {})
    monkeypatch.setattr(device, "run_device", lambda options, config: seen.append(("torch", options.task)) or {})
    monkeypatch.setattr("mobillm.cli.print_summary", lambda summary: None)
    runner = CliRunner()
    out = tmp_path / "run"
    assert runner.invoke(app, ["device", "--model", "m", "--shortcuts", "2", "--output-dir", str(out)]).exit_code == 0
    assert seen == [("export", "m", "2", job_bundle.DEFAULT_BUNDLE_WEIGHTS), ("onnx", tmp_path / "cached")]
    seen.clear()
    assert runner.invoke(app, ["device", "--bundle", str(tmp_path / "b"), "--bundle-weights", "fp32"]).exit_code == 0
    assert seen == [("onnx", tmp_path / "b")]  # a given bundle is run as it is
    seen.clear()
    assert runner.invoke(app, ["device", "--task", "causal-lm", "--data", "x.jsonl"]).exit_code == 0
    assert seen == [("torch", "causal-lm")]
    seen.clear()
    assert runner.invoke(app, ["device", "--runtime", "torch"]).exit_code == 0
    assert seen == [("torch", "classification")]

"""The command line: train, then predict and evaluate on the device with the saved side network."""

from __future__ import annotations

import json
import subprocess
import sys

from typer.testing import CliRunner

from mobillm.cli import app

runner = CliRunner()


def test_train_predict_evaluate(toy_task, tmp_path):
    model_dir, data_dir = toy_task
    out = tmp_path / "run"
    result = runner.invoke(app, [
        "train", "--model", model_dir, "--data", data_dir, "--codec", "int8", "--shortcuts", "2,4", "--width", "16",
        "--lr", "3e-3", "--epochs", "6", "--max-eval-samples", "64", "--output-dir", str(out),
    ])
    assert result.exit_code == 0, result.output
    assert "fine-tuned test accuracy" in result.output
    summary = json.loads((out / "summary.json").read_text())

    result = runner.invoke(app, ["evaluate", "--side-network", str(out / "side_network"), "--model", model_dir, "--data", data_dir])
    assert result.exit_code == 0, result.output
    accuracy = float(result.output.split("accuracy=")[1].split()[0])
    assert abs(accuracy - summary["test"]["accuracy"]) < 1e-4  # local inference == what training measured (4 decimals printed)

    result = runner.invoke(app, ["predict", "--side-network", str(out / "side_network"), "--model", model_dir,
                                 "great fun good movie", "awful bad boring plot"])
    assert result.exit_code == 0, result.output
    lines = [line.split("\t")[0] for line in result.output.strip().splitlines() if "\t" in line]
    assert lines == ["positive", "negative"]


def test_bad_input_gives_a_clear_error(toy_task, tmp_path):
    model_dir, data_dir = toy_task
    result = runner.invoke(app, ["train", "--model", model_dir, "--data", data_dir, "--shortcuts", "0,9", "--output-dir", str(tmp_path)])
    assert result.exit_code == 2 and "valid layers are 1..4" in result.output
    result = runner.invoke(app, ["train", "--model", model_dir, "--data", str(tmp_path / "missing.tsv")])
    assert result.exit_code == 2 and "missing.tsv" in result.output
    result = runner.invoke(app, ["train", "--model", model_dir, "--data", data_dir, "--codec", "int3"])
    assert result.exit_code == 2 and "int3" in result.output and "nf4" in result.output


def test_convert_then_train_on_int8_device_weights(toy_task, tmp_path):
    """`mobillm convert` writes a device checkpoint that every --model option takes; the side network trains on it."""
    model_dir, data_dir = toy_task
    result = runner.invoke(app, ["convert", str(tmp_path / "int8"), "--model", model_dir, "--weights", "int8"])
    assert result.exit_code == 0, result.output
    assert "int8 weights" in result.output
    result = runner.invoke(app, [
        "train", "--model", str(tmp_path / "int8"), "--data", data_dir, "--shortcuts", "2,4", "--width", "16",
        "--lr", "3e-3", "--epochs", "6", "--max-eval-samples", "64", "--output-dir", str(tmp_path / "run"),
    ])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["test"]["accuracy"] > 0.8  # the toy task is learnable through the int8 backbone
    result = runner.invoke(app, ["convert", str(tmp_path / "x"), "--model", model_dir, "--weights", "int4"])
    assert result.exit_code == 2 and "int4" in result.output


def test_bench_rejects_unknown_names():
    result = runner.invoke(app, ["bench", "speed"])
    assert result.exit_code == 2 and "unknown benchmark 'speed'" in result.output
    result = runner.invoke(app, ["bench", "all", "--model", "opt-1.3b"])
    assert result.exit_code == 2 and "only --quick" in result.output


def test_bench_help_reaches_the_benchmark(capsys):
    """`mobillm bench NAME --help` shows that benchmark's own options (argparse), `bench --help` the command's."""
    result = runner.invoke(app, ["bench", "memory", "--help"])
    assert result.exit_code == 0 and "--batches" in capsys.readouterr().out + result.output
    result = runner.invoke(app, ["bench", "--help"])
    assert result.exit_code == 0 and "--quick" in result.output and "--batches" not in result.output


def test_the_server_without_ray_never_imports_ray(tmp_path):
    """Ray is an optional extra: the in-process server (the default) must not even import it."""
    code = (
        "import sys\n"
        "from mobillm.cli import app\n"
        "from mobillm.server.app import Server\n"
        "from mobillm.server.manager import SessionManager\n"
        f"Server(SessionManager({str(tmp_path)!r}))\n"
        "app(['serve', '--help'], standalone_mode=False)\n"
        "assert 'ray' not in sys.modules, 'ray was imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "--ray" in done.stdout


def test_serve_with_ray_options_but_no_ray_says_what_to_do(tmp_path, monkeypatch):
    result = runner.invoke(app, ["serve", "--jobs-dir", str(tmp_path), "--ray-actors", "2"])
    assert result.exit_code == 2 and "give --ray too" in result.output
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    monkeypatch.delitem(sys.modules, "mobillm.server.ray_manager", raising=False)
    result = runner.invoke(app, ["serve", "--jobs-dir", str(tmp_path), "--ray", "local"])
    assert result.exit_code == 2 and "pip install 'mobillm[ray]'" in result.output

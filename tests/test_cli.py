"""The command line: train, then predict and evaluate on the device with the saved side network."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from mobillm.cli import app

runner = CliRunner()


def test_train_predict_evaluate(toy_task, tmp_path):
    model_dir, data_dir = toy_task
    out = tmp_path / "run"
    result = runner.invoke(app, [
        "train", "--model", model_dir, "--data", data_dir, "--codec", "int8", "--shortcuts", "2,4", "--width", "16",
        "--lr", "3e-3", "--epochs", "6", "--max-eval-samples", "64", "--output-dir", str(out),
        "--side-init", "backbone", "--gate-temperature", "0.1",
    ])
    assert result.exit_code == 0, result.output
    assert "fine-tuned test accuracy" in result.output
    summary = json.loads((out / "summary.json").read_text())
    saved = json.loads((out / "side_network" / "side_config.json").read_text())
    assert (saved["init"], saved["gate_temperature"]) == ("backbone", 0.1)

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


# -- options against the config models -------------------------------------------------------------------------
def _commands():
    """(command line words, {parameter: (default, Literal choices or None, flag)}) of every typer command,
    sub-apps included (`token create`), read from the command functions' signatures."""
    import inspect
    from typing import Literal, get_args, get_origin, get_type_hints

    def params(callback):
        hints = get_type_hints(callback, include_extras=True)
        out = {}
        for name, parameter in inspect.signature(callback).parameters.items():
            hint, flag = hints[name], "--" + name.replace("_", "-")
            if get_origin(hint) is not None and hasattr(hint, "__metadata__"):  # Annotated[type, typer.Option(...)]
                decls = getattr(hint.__metadata__[0], "param_decls", None) or ()
                flag = next((d for d in decls if d.startswith("--")), flag)
                hint = get_args(hint)[0]
            choices = get_args(hint) if get_origin(hint) is Literal else None
            out[name] = (parameter.default, choices, flag)
        return out

    def walk(typer_app, prefix):
        for info in typer_app.registered_commands:
            yield (*prefix, info.name or info.callback.__name__.replace("_", "-")), params(info.callback)
        for group in typer_app.registered_groups:
            yield from walk(group.typer_instance, (*prefix, group.name))

    return list(walk(app, ()))


def test_every_option_default_is_its_config_fields_default():
    """An option named like a config field has that field's default, so the CLI and the models cannot drift."""
    from mobillm.recipes.device import DeviceOptions
    from mobillm.recipes.local import RunOptions
    from mobillm.recipes.task import TaskOptions
    from mobillm.train_config import TrainConfig

    models = {"train": (RunOptions, TrainConfig), "device": (DeviceOptions, TrainConfig),
              "finetune": (DeviceOptions, TrainConfig)}
    own = {("finetune", "output_dir")}  # finetune writes under its own folder (server + device), not DeviceOptions'
    checked = set()
    for words, params in _commands():
        name = " ".join(words)
        fields = {}
        for model in models.get(name, (TaskOptions, TrainConfig)):
            fields.update(model.model_fields)
        for param_name, (default, _, _) in params.items():
            if param_name in fields and (name, param_name) not in own and not fields[param_name].is_required():
                assert default == fields[param_name].default, (name, param_name, default)
                checked.add((name, param_name))
        if name in models:  # every task and training option reaches the command's options
            missing = set(TaskOptions.model_fields) - set(params)
            assert not missing, (name, missing)
    assert ("evaluate", "batch_size") in checked and ("device", "server") in checked and ("convert", "model") in checked
    assert len(checked) > 60


def test_fixed_choices_match_their_homes():
    """The Literals typer checks option values against are the registries' and the config models' sets."""
    from typing import get_args

    from mobillm import cli
    from mobillm.backbone.weights import WEIGHT_FORMATS
    from mobillm.recipes.task import TaskOptions
    from mobillm.sidenet.blocks import SIDE_BLOCKS
    from mobillm.sidenet.config import Init
    from mobillm.train_config import Method, Schedule
    from mobillm.wire.codecs import CODECS

    assert list(get_args(cli.CodecName)) == list(CODECS)
    assert set(get_args(cli.BlockName)) == set(SIDE_BLOCKS)
    assert get_args(cli.SideInitName) == get_args(Init)
    assert get_args(cli.TaskKind) == get_args(TaskOptions.model_fields["task"].annotation)
    assert get_args(cli.MethodName) == get_args(Method) and get_args(cli.ScheduleName) == get_args(Schedule)
    assert get_args(cli.WeightFormat) == WEIGHT_FORMATS
    from mobillm.bundle.config import WEIGHT_FORMATS as BUNDLE_FORMATS
    from mobillm.recipes.job_bundle import DEFAULT_BUNDLE_WEIGHTS, WEB_BUNDLE_WEIGHTS

    assert get_args(cli.BundleWeightFormat) == BUNDLE_FORMATS and DEFAULT_BUNDLE_WEIGHTS in BUNDLE_FORMATS
    assert WEB_BUNDLE_WEIGHTS in BUNDLE_FORMATS


REQUIRED_ARGUMENTS = {"predict": ["some text"], "generate": ["a prompt"], "convert": ["out"]}


def test_a_bad_choice_exits_2_naming_the_choices_before_any_work(monkeypatch):
    """`mobillm evaluate --split foo` (and every option with a fixed set) is refused by the parser: no model loads."""
    from mobillm import cli

    def no_work(*args, **kwargs):
        raise AssertionError("a command ran with a bad option value")

    monkeypatch.setattr(cli, "_local_model", no_work)
    monkeypatch.setattr(cli, "_device", no_work)
    monkeypatch.setattr(cli, "_train_config", no_work)
    tried = set()
    for words, params in _commands():
        name = " ".join(words)
        for _, choices, flag in params.values():
            if choices:
                result = runner.invoke(app, [*words, *REQUIRED_ARGUMENTS.get(name, []), flag, "foo"])
                assert result.exit_code == 2, (name, flag, result.output)
                text = " ".join(result.output.replace("│", " ").split())
                assert "'foo'" in text and all(f"'{choice}'" in text for choice in choices), (name, flag, text)
                tried.add((name, flag))
    expected = {("evaluate", "--split"), ("train", "--method"), ("convert", "--weights")} | {
        (name, flag) for name in ("train", "device", "finetune") for flag in ("--task", "--codec", "--block", "--schedule")}
    assert expected <= tried, expected - tried


def test_no_header_reaches_the_loader_from_train_and_device(toy_task, tmp_path, monkeypatch):
    """`--no-header` is plumbed through TaskOptions: the task's data is the headerless file's every row."""
    from mobillm.recipes import device as device_recipe
    from mobillm.recipes import local as local_recipe
    from mobillm.recipes.task import TaskOptions, prepare_task

    model_dir, data_dir = toy_task
    rows = (Path(data_dir) / "train.tsv").read_text().splitlines()[1:41]  # 40 data rows, the header dropped
    headerless = tmp_path / "export.tsv"
    headerless.write_text("\n".join(rows) + "\n")
    task = prepare_task(TaskOptions(model=model_dir, data=str(headerless), no_header=True), seed=0)
    assert len(task.data.train) + len(task.data.validation) + len(task.data.test) == 40
    result = runner.invoke(app, ["train", "--model", model_dir, "--data", str(headerless), "--output-dir", str(tmp_path)])
    assert result.exit_code == 2 and "--no-header" in " ".join(result.output.split())
    result = runner.invoke(app, ["train", "--task", "causal-lm", "--model", model_dir, "--data", str(headerless),
                                 "--no-header"])
    assert result.exit_code == 2 and "causal-LM data is JSONL" in result.output

    seen = []
    monkeypatch.setattr(local_recipe, "train", lambda options, config: seen.append(options) or {})
    monkeypatch.setattr(device_recipe, "run_device", lambda options, config: seen.append(options) or {})
    monkeypatch.setattr("mobillm.cli.print_summary", lambda summary: None)
    for command, runtime in (("train", []), ("device", ["--runtime", "torch"])):
        result = runner.invoke(app, [command, *runtime, "--data", str(headerless), "--no-header", "--text-column", "0"])
        assert result.exit_code == 0, result.output
    assert [(o.no_header, o.text_column) for o in seen] == [(True, "0"), (True, "0")]


def test_loading_a_model_shows_one_progress_line(toy_task, tmp_path):
    """Each command that loads a backbone says so in one line of its own (no transformers bar)."""
    model_dir, _ = toy_task
    result = runner.invoke(app, ["convert", str(tmp_path / "fp32"), "--model", model_dir, "--weights", "fp32"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("loading ")]
    assert len(lines) == 1 and f"loading {model_dir} (transformers, " in lines[0] and lines[0].endswith(" s")
    assert "it/s" not in result.output


def test_template_states_every_setting_of_a_web_job(tmp_path):
    """`mobillm template`: the Hello of a job on a bundle less what the data decide, validated by the models."""
    from mobillm.bundle.config import BundleConfig
    from mobillm.sidenet import SideConfig
    from mobillm.train_config import TrainConfig
    from mobillm.wire.messages import Hello

    BundleConfig(model="tiny", fingerprint="abc123", model_type="llama", num_layers=4, shortcuts=[2, 4], hidden_size=32,
                 vocab_size=96, kv_heads=2, head_dim=8, pad_token_id=0, opset=18).save(tmp_path)
    result = runner.invoke(app, ["template", "--bundle", str(tmp_path), "--codec", "int8", "--lr", "0.002"])
    assert result.exit_code == 0, result.output
    template = json.loads(result.stdout)
    side = template["side_config"]
    assert list(side) == list(SideConfig.model_fields)  # every field, in the order the Hello writes them
    assert [k for k, v in side.items() if v is None] == ["num_labels", "label_token_ids", "label_names", "prompt_template"]
    assert (side["codec"], side["shortcuts"], side["hidden_size"], side["members"]) == ("int8", [2, 4], 32, 5)
    assert template["pivot_only"] is False and side["bidirectional"] is True
    assert template["train_config"] == TrainConfig(method="side", lr=0.002).model_dump(mode="json")
    # filled in as the web device does, it is a Hello the server accepts
    side.update(num_labels=2, label_token_ids=[5, 6], label_names=["neg", "pos"], prompt_template="{text}")
    Hello(job="j", model=template["model"], fingerprint=template["fingerprint"], side_config=side,
          train_config=template["train_config"], train_samples=3)

    mlp = json.loads(runner.invoke(app, ["template", "--bundle", str(tmp_path), "--block", "mlp"]).stdout)
    assert mlp["pivot_only"] is True and mlp["side_config"]["bidirectional"] is False
    bad = runner.invoke(app, ["template", "--bundle", str(tmp_path), "--width", "10"])
    assert bad.exit_code != 0 and "attention_heads" in bad.output
    missing = runner.invoke(app, ["template", "--bundle", str(tmp_path / "nope")])
    assert missing.exit_code != 0 and "mobillm export" in missing.output

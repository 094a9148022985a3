"""Device-side weight formats for the frozen backbone, and the device checkpoint that stores them.

The device never trains the backbone, so its weights can live in 8 or 4 bits (weight-only: activations
stay fp32). The side network is trained on what the quantized backbone produces, so the accuracy cost is
measured (BENCHMARKS.md), not assumed. A device checkpoint is a folder the device loads with no
full-precision copy and no GGUF dequantisation transient:

    config.json, tokenizer files        Hugging Face, as save_pretrained writes them
    device_weights.safetensors          the backbone's tensors in the chosen format
    device_weights.json                 {"format", "source", "fingerprint"}

``fingerprint`` is the source checkpoint's (its head is quantized here), so a server holding the source
accepts the device. ``mobillm convert`` writes one; every ``--model`` option accepts one.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from mobillm.exceptions import ConfigError, ModelLoadError
from mobillm.wire.codecs import get_codec

WEIGHT_FORMATS = ("fp32", "int8", "nf4")
META_NAME, WEIGHTS_NAME = "device_weights.json", "device_weights.safetensors"
_NF4 = get_codec("nf4")


def _int8_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8: the row's absmax maps to 127."""
    scale = weight.abs().amax(dim=1).clamp(min=1e-12) / 127
    return torch.round(weight / scale[:, None]).to(torch.int8), scale.to(torch.float32)


class Int8Linear(nn.Module):
    """``nn.Linear`` with int8 weights and a float32 scale per output row (weight-only: fp32 activations).

    Each call dequantizes this one layer's weight for the fp32 matmul: a transient of one layer, never the
    model. Measured and rejected (BENCHMARKS.md §9): torch's ``_weight_int8pack_mm`` (14x slower here) and
    fbgemm's dynamic int8 GEMM (2.9x faster, but per-tensor activation quantization puts a 46% relative
    error on SmolLM2's top hidden state — its outlier channels).
    """

    def __init__(self, qweight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.register_buffer("qweight", qweight)
        self.register_buffer("scale", scale)
        self.register_buffer("bias", bias)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "Int8Linear":
        return cls(*_int8_rows(linear.weight.detach().float()), _detached(linear.bias))

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized weight (also what code reading ``.weight`` gets, e.g. the frozen head)."""
        return self.qweight.float() * self.scale[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight, self.bias)


class Nf4Linear(nn.Module):
    """``nn.Linear`` with NF4 weights (bitsandbytes' blocks of 64, as the ``nf4`` wire codec packs them).

    Each call dequantizes this one layer's weight: a transient of one layer, never the model.
    """

    def __init__(self, data: torch.Tensor, absmax: torch.Tensor, shape: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.register_buffer("data", data)
        self.register_buffer("absmax", absmax)
        self.register_buffer("shape", shape)
        self.register_buffer("bias", bias)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "Nf4Linear":
        encoded = _NF4.encode(linear.weight.detach())
        return cls(encoded["data"], encoded["absmax"], encoded["shape"], _detached(linear.bias))

    @property
    def weight(self) -> torch.Tensor:
        return _NF4.decode({"shape": self.shape, "data": self.data, "absmax": self.absmax})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight, self.bias)


class Int8Embedding(nn.Module):
    """Token embeddings in int8 with a scale per row: a lookup dequantizes only the rows it reads."""

    def __init__(self, qweight: torch.Tensor, scale: torch.Tensor, padding_idx: int | None = None):
        super().__init__()
        self.register_buffer("qweight", qweight)
        self.register_buffer("scale", scale)
        self.padding_idx = padding_idx

    @classmethod
    def from_embedding(cls, embedding: nn.Embedding) -> "Int8Embedding":
        return cls(*_int8_rows(embedding.weight.detach().float()), embedding.padding_idx)

    @property
    def weight(self) -> torch.Tensor:
        return self.qweight.float() * self.scale[:, None]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.qweight[ids].float() * self.scale[ids][..., None]


def _detached(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.detach().float()


def _tied(model: nn.Module) -> bool:
    out, inp = model.get_output_embeddings(), model.get_input_embeddings()
    return out is not None and out.weight is inp.weight


def quantize_weights(model: nn.Module, fmt: str) -> nn.Module:
    """Replace, in place, every ``nn.Linear`` of the decoder and the token embeddings by their ``fmt`` form.

    ``int8``: linear layers and embeddings in int8. ``nf4``: linear layers in NF4, embeddings in int8 (a
    lookup reads a few rows; NF4 would need the whole table decoded). A tied LM head shares the embedding's
    int8 tensors. Works on a model whose weights are on the meta device (the shells ``load_device_model``
    fills).
    """
    if fmt not in WEIGHT_FORMATS:
        raise ConfigError(f"weights: {fmt!r} unknown — choose one of {', '.join(WEIGHT_FORMATS)}")
    if fmt == "fp32":
        return model
    tied = _tied(model)
    linear = Int8Linear if fmt == "int8" else Nf4Linear
    decoder = model.get_decoder()
    for parent in list(decoder.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                setattr(parent, name, linear.from_linear(child))
    embedding = Int8Embedding.from_embedding(model.get_input_embeddings())
    model.set_input_embeddings(embedding)
    head = model.get_output_embeddings()
    if tied:
        model.set_output_embeddings(Int8Linear(embedding.qweight, embedding.scale, None))
    elif isinstance(head, nn.Linear):
        model.set_output_embeddings(linear.from_linear(head))
    return model


def weights_nbytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer, each stored tensor counted once (tied ones included)."""
    seen, total = set(), 0
    for t in [*model.parameters(), *model.buffers()]:
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


def save_device_model(model: nn.Module, tokenizer, directory: str | Path, fmt: str, source: str) -> Path:
    """Quantize ``model`` (in place) and write it as a device checkpoint; returns the folder."""
    from safetensors.torch import save_file

    from mobillm.backbone.head import fingerprint

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    meta = {"format": fmt, "source": source, "fingerprint": fingerprint(model)}
    tied = _tied(model)  # the head is rebuilt from the embeddings on load, so it is not stored twice
    quantize_weights(model, fmt)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if tied:
        state = {k: v for k, v in state.items() if not k.startswith(_head_prefix(model))}
    save_file(state, str(directory / WEIGHTS_NAME))
    model.config.save_pretrained(directory)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    (directory / META_NAME).write_text(json.dumps(meta, indent=2) + "\n")
    return directory


def _head_prefix(model: nn.Module) -> str:
    head = model.get_output_embeddings()
    return next(name for name, module in model.named_modules() if module is head) + "."


def is_device_checkpoint(path: Path) -> bool:
    return (path / META_NAME).is_file()


def checkpoint_source(path: Path) -> str | None:
    """The model a device checkpoint at ``path`` was converted from (None: not a readable device checkpoint)."""
    try:
        source = json.loads((path / META_NAME).read_text()).get("source")
    except (OSError, ValueError, AttributeError):
        return None
    return source if isinstance(source, str) and source else None


def load_device_model(directory: str | Path):
    """``(model, tokenizer)`` from a device checkpoint: the module tree is built with empty (meta) weights,
    shaped for the stored format, then the stored tensors are assigned — peak memory = the stored bytes."""
    from accelerate import init_empty_weights
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    directory = Path(directory)
    try:
        meta = json.loads((directory / META_NAME).read_text())
        config = AutoConfig.from_pretrained(directory)
        tokenizer = AutoTokenizer.from_pretrained(directory) if (directory / "tokenizer_config.json").is_file() else None
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"{directory} is not a readable device checkpoint: {err}") from err
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    quantize_weights(model, meta["format"])
    state = load_file(str(directory / WEIGHTS_NAME))
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    tied_head = _head_prefix(model) if config.tie_word_embeddings else None
    missing = [k for k in missing if not (tied_head and k.startswith(tied_head))]
    if missing or unexpected:
        raise ModelLoadError(f"{directory}: weights do not match the config (missing {missing[:5]}, unexpected {unexpected[:5]})")
    if tied_head:
        embedding = model.get_input_embeddings()
        if isinstance(embedding, Int8Embedding):
            model.set_output_embeddings(Int8Linear(embedding.qweight, embedding.scale, None))
        else:
            model.get_output_embeddings().weight = embedding.weight
    model.eval().requires_grad_(False)
    model.config.mobillm_fingerprint = meta["fingerprint"]
    model.config.mobillm_weights = meta["format"]
    if tokenizer is not None and tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer

"""A device bundle's config (``bundle.json``) and its file names, in one place.

    bundle.json       this config: shortcuts, shapes, the model the server must load, its fingerprint
    taps.onnx         decoder up to the top shortcut: input_ids, attention_mask (B, T) -> tap_<s> (B, T, H)
    generate.onnx     the same decoder with a KV cache: + past_key_<i>/past_value_<i> -> taps + present_*
    head.onnx         the frozen final norm (+ OPT's project_out) and LM head: hidden (N, H) -> logits (N, V);
                      generation only (written with generate.onnx)
    norm.onnx         the frozen final norm (+ OPT's project_out) alone: hidden (N, H) -> normed (N, H')
    lm_head.safetensors  the LM head, fp32: ``weight`` (V, H') (+ ``bias`` (V,)); classification reads its label
                      tokens' rows only, memory-mapped, where head.onnx would hold all V rows a second time beside
                      the taps graph's (tied) input embedding
    tokenizer.json    the fast tokenizer (``tokenizers.Tokenizer.from_file``)

Quantized and large graphs keep their weights beside them (``<graph>.data``, ONNX external data, which ONNX
Runtime maps rather than copies).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from mobillm import __version__
from mobillm.configs import Config

CONFIG_NAME = "bundle.json"
TAPS_NAME = "taps.onnx"
GENERATE_NAME = "generate.onnx"
HEAD_NAME = "head.onnx"
NORM_NAME = "norm.onnx"
LM_HEAD_NAME = "lm_head.safetensors"
TOKENIZER_NAME = "tokenizer.json"
#: what every bundle holds; a bundle for generation adds GENERATION_FILES
CORE_FILES = (CONFIG_NAME, TAPS_NAME, NORM_NAME, LM_HEAD_NAME, TOKENIZER_NAME)
GENERATION_FILES = (GENERATE_NAME, HEAD_NAME)
BUNDLE_FILES = CORE_FILES + GENERATION_FILES

WeightFormat = Literal["fp32", "int8", "int8-dynamic", "int4", "int8-smooth", "web"]
WEIGHT_FORMATS: tuple[str, ...] = ("fp32", "int8", "int8-dynamic", "int4", "int8-smooth", "web")
#: the formats whose matmuls read int8 activations, quantized at run time (onnxruntime's quantize_dynamic)
DYNAMIC_INT8_FORMATS: tuple[str, ...] = ("int8-dynamic", "int8-smooth")
#: the formats made from the torch model (SmoothQuant rewrites its weights first), not from an fp32 bundle
SMOOTHED_FORMATS: tuple[str, ...] = ("int8-smooth", "web")


def tap_name(layer: int) -> str:
    """Graph output holding the hidden states after decoder layer ``layer`` (1-based)."""
    return f"tap_{layer}"


def cache_names(num_layers: int, kind: Literal["past", "present"]) -> list[str]:
    """KV-cache inputs (``past``) or outputs (``present``) of the generation graph, key then value per layer."""
    return [f"{kind}_{part}_{i}" for i in range(num_layers) for part in ("key", "value")]


class BundleConfig(Config):
    """Everything a device needs to run a bundle and to open a session with a server that holds the model."""

    model: str = Field(description="the public model id (alias, hub id, path) the server must load")
    fingerprint: str = Field(description="mobillm.backbone.fingerprint of the source model")
    model_type: str = Field(description="transformers' model_type of the source, e.g. 'llama' or 'opt'")
    num_layers: int = Field(gt=0, description="L of the source model")
    shortcuts: list[int] = Field(min_length=1, description="1-based layers tapped, increasing; the graphs stop at the top one")
    hidden_size: int = Field(gt=0)
    vocab_size: int = Field(gt=0)
    kv_heads: int = Field(gt=0, description="key/value heads per layer of the KV cache")
    head_dim: int = Field(gt=0)
    weights: WeightFormat = "fp32"
    pad_token_id: int = Field(ge=0, description="what the torch batcher pads with (pad, else eos, else 0)")
    eos_token_ids: list[int] = Field(default_factory=list, description="generation stops at any of these")
    bos_token_id: int | None = None
    chat_template: str | None = Field(None, description="the tokenizer's chat template (jinja), if it has one")
    opset: int = Field(ge=17)
    mobillm_version: str = __version__

    @model_validator(mode="after")
    def _check(self) -> "BundleConfig":
        if self.shortcuts != sorted(set(self.shortcuts)) or not 1 <= self.shortcuts[0] <= self.shortcuts[-1] <= self.num_layers:
            raise ValueError(f"shortcuts: {self.shortcuts} must increase strictly within 1..{self.num_layers}")
        return self

    @property
    def cache_layers(self) -> int:
        """Decoder layers in the graphs (and KV-cache entries): up to the top shortcut."""
        return self.shortcuts[-1]

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / CONFIG_NAME
        path.write_text(self.model_dump_json(indent=2) + "\n")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> "BundleConfig":
        return cls.read(Path(directory) / CONFIG_NAME,
                        f"{directory}: no {CONFIG_NAME} — not a device bundle (write one with `mobillm export`)")

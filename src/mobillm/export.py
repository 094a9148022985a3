"""Export a backbone to a device bundle (torch side: runs where torch is, e.g. the server or a workstation).

The graphs are traced from today's torch device path — :class:`~mobillm.device.taps.TappedBackbone` (decoder
truncated at the top shortcut, taps at every position, no LM head) and :class:`~mobillm.backbone.FrozenHead` —
with ``torch.onnx.export(dynamo=True)``, so the bundle computes what the torch device computes: the same
position ids (Llama: 0..T-1 whatever the padding; OPT: from the attention mask) and the same masks, with
dynamic batch, length and cache length. Weight formats:

    fp32          the traced graphs as they are
    int8          MatMulNBits 8-bit, symmetric, block 32 (onnxruntime.quantization.MatMulNBitsQuantizer);
                  weight-only: activations and the matmuls' arithmetic stay fp32
    int8-dynamic  int8 weights per output channel *and* int8 activations, quantized per tensor at run time
                  (onnxruntime.quantization.quantize_dynamic): the matmuls run on the CPU's integer units
    int4          MatMulNBits 4-bit, asymmetric (zero points), block 32, weight-only
    int8-smooth   int8-dynamic on a SmoothQuant'ed model (:mod:`mobillm.backbone.smoothing`: the activations'
                  outlier channels moved into the weights first, an exact rewrite), so the per-tensor activation
                  scales fit; made from the torch model, not from an fp32 bundle
    web           int4 on a SmoothQuant'ed model (alpha 0.5: a 4-bit weight's error is multiplied by its input
                  channel's activation, and smoothing flattens the outlier channels; SmolLM2-135M's tap error 0.095
                  -> 0.029, BENCHMARKS §21), and the token embedding 4-bit too (GatherBlockQuantized, asymmetric,
                  block 32, along the hidden axis; onnxruntime-web's WASM build runs both operators): what a phone's
                  browser downloads (SmolLM2-135M: 86 MiB of graphs, against int4's 177 MiB with its fp32 embedding);
                  made from the torch model. The LM head stays the fp32 row-indexed ``lm_head.safetensors``, of
                  which a device reads (and the page fetches by byte range) only its label tokens' rows

Only the weight matmuls (and in ``web`` the token embedding) are quantized; attention's activation-by-activation
matmuls stay fp32 in every format.
The trade-off, measured on SmolLM2-135M (BENCHMARKS §19): ``int8`` is close to exact (relative error of the taps
~0.04) but no faster than fp32 on an x86 CPU; ``int8-dynamic`` is the fastest by far but its per-tensor
activation scales are coarse against the backbone's outlier channels (tap error 0.10–0.33 on SST-2 sentences),
which ``int8-smooth`` cuts to 0.03–0.15 at the same speed — what matters is the accuracy of a side network
trained on those taps, which ``mobillm bench codecs --weights`` measures (int8-dynamic −3.3 points of SST-2,
int8-smooth +0.5, against the torch device). Memory of the export: ``quantize_dynamic`` holds several copies of
the weights (OPT-1.3B's int8-dynamic graph: killed at 21.1 GB on a 23 GB machine); OPT-1.3B's fp32 export and
its MatMulNBits formats peaked at 10.8 GB at most (BENCHMARKS §19).

The dynamic formats quantize the weights to 7 bits (``reduce_range``): an x86 CPU without VNNI (AVX2 only) multiplies
uint8 activations by int8 weights in 16-bit sums that saturate at 8 bits, and a bundle runs on whatever CPU each
device has. Measured on an AMD EPYC without VNNI, relative tap error of the tiny test models: Llama 0.060 -> 0.011,
OPT 0.072 -> 0.015 (the int8-dynamic figures of BENCHMARKS §19 were measured before it, on VNNI CPUs).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from mobillm.backbone import FrozenHead, decoder_layers, fingerprint
from mobillm.backbone.smoothing import SMOOTHING_ALPHA, smooth_activations
from mobillm.bundle.config import (
    DYNAMIC_INT8_FORMATS,
    GENERATE_NAME,
    GENERATION_FILES,
    HEAD_NAME,
    LM_HEAD_NAME,
    NORM_NAME,
    SMOOTHED_FORMATS,
    TAPS_NAME,
    TOKENIZER_NAME,
    WEIGHT_FORMATS,
    BundleConfig,
    cache_names,
    tap_name,
)
from mobillm.device.taps import TappedBackbone
from mobillm.exceptions import ConfigError, ModelLoadError

OPSET = 18
#: Quantizer settings per weight format: MatMulNBitsQuantizer's (block 32: the finest block the CPU kernels
#: support well); the DYNAMIC_INT8_FORMATS run quantize_dynamic, the SMOOTHED_FORMATS after SmoothQuant.
QUANTIZATION: dict[str, dict] = {
    "int8": {"bits": 8, "block_size": 32, "is_symmetric": True},
    "int8-dynamic": {},
    "int4": {"bits": 4, "block_size": 32, "is_symmetric": False},
    "int8-smooth": {},
    "web": {"bits": 4, "block_size": 32, "is_symmetric": False},
}
#: the formats whose token embedding is quantized too (GatherBlockQuantized, MatMulNBitsQuantizer's Gather)
EMBEDDING_FORMATS: tuple[str, ...] = ("web",)
#: SmoothQuant's migration strength per smoothed format: int8 activations take SMOOTHING_ALPHA (BENCHMARKS §19);
#: 4-bit weights, which take what smoothing moves into them, 0.5 (the one value measured: SmolLM2-135M's tap
#: error ~3x below int4's, §21)
SMOOTHING_ALPHAS: dict[str, float] = {"int8-smooth": SMOOTHING_ALPHA, "web": 0.5}
# Protobuf caps a single .onnx file at 2 GiB: bigger graphs keep their weights in external data.
_SINGLE_FILE_BYTES = 1_800_000_000


class _Taps(nn.Module):
    """(input_ids, attention_mask) (B, T) -> one (B, T, H) hidden state per shortcut layer."""

    def __init__(self, backbone: TappedBackbone):
        super().__init__()
        self.backbone = backbone

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.backbone(input_ids, attention_mask))


class _Generate(nn.Module):
    """(input_ids (B, T), past keys/values (B, kv, P, d) per layer) -> taps of the T new positions + the cache."""

    def __init__(self, backbone: TappedBackbone):
        super().__init__()
        self.backbone = backbone

    def forward(self, input_ids: torch.Tensor, past: list[tuple[torch.Tensor, torch.Tensor]]):
        from transformers import DynamicCache

        taps, cache = self.backbone.step(input_ids, DynamicCache(ddp_cache_data=past))
        return (*taps, *[t for layer in cache.layers for t in (layer.keys, layer.values)])


class _MatMulLinear(nn.Module):
    """``nn.Linear`` kept as its transposed weight, ``x @ W^T + b``, so that it exports as a MatMul on a constant
    weight whatever the input's rank: a linear on a 2-d input exports as a ``Gemm``, which neither ONNX Runtime
    quantizer touches (OPT runs fc1/fc2 on (B*T, H): two thirds of its weights stayed fp32 in every quantized
    format). Same arithmetic as the linear, up to float rounding."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.weight_t = nn.Parameter(linear.weight.detach().t().contiguous(), requires_grad=False)  # (in, out)
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., out)
        y = x @ self.weight_t
        return y if self.bias is None else y + self.bias


def _matmul_linears(layers: nn.ModuleList) -> None:
    """Swap every ``nn.Linear`` inside ``layers`` for a :class:`_MatMulLinear`, in place (one weight copied at a
    time: the old one is freed as its module is replaced)."""
    for layer in layers:
        for name, module in list(layer.named_modules()):
            if isinstance(module, nn.Linear):
                parent, _, attr = name.rpartition(".")
                setattr(layer.get_submodule(parent), attr, _MatMulLinear(module))  # "" is the layer itself


class _Head(nn.Module):
    def __init__(self, head: FrozenHead):
        super().__init__()
        self.head = head

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # (N, H) -> (N, V)
        return self.head(hidden[None])[0]  # 3-d: the LM head exports as a MatMul (quantizable), not a Gemm


class _Norm(nn.Module):
    def __init__(self, head: FrozenHead):
        super().__init__()
        self.head = head

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # (N, H) -> (N, H')
        return self.head.normed(hidden)


def _save_lm_head(head: FrozenHead, path: Path) -> None:
    """The LM head's rows as fp32 safetensors (the device maps them and reads its label tokens' rows only)."""
    from safetensors.torch import save_file

    tensors = {"weight": head.lm_head.weight}
    if head.lm_head.bias is not None:
        tensors["bias"] = head.lm_head.bias
    save_file({k: t.detach().to(torch.float32).contiguous().clone() for k, t in tensors.items()}, str(path))


def export_bundle(
    model: nn.Module,
    tokenizer,
    directory: str | Path,
    shortcuts: list[int],
    weights: str = "fp32",
    source: str = "",
    log: Callable[[str], None] = lambda line: None,
    generate: bool = True,
) -> BundleConfig:
    """Write a device bundle of ``model`` to ``directory`` and return its config.

    ``source`` is the public model id the server must load (an alias, hub id or path). The model's decoder is
    truncated at the top shortcut in place (as :class:`TappedBackbone` does): pass a model you no longer need.
    ``log`` receives one progress line per long step. ``generate=False`` leaves out the generation graph and the
    full head (about half of the export's time): enough for classification jobs, predict and evaluate, not for
    ``generate``.
    """
    if weights not in WEIGHT_FORMATS:
        raise ConfigError(f"--weights {weights!r}: choose one of {', '.join(WEIGHT_FORMATS)}")
    stored = getattr(model.config, "mobillm_weights", "fp32")  # a device checkpoint (`mobillm convert`)
    if stored != "fp32":
        raise ConfigError(
            f"this model holds {stored} device weights: export from the source model or a "
            "`mobillm convert --weights fp32` checkpoint, and choose the bundle's format with --weights"
        )
    if tokenizer is None or not getattr(tokenizer, "is_fast", False):
        raise ModelLoadError("the bundle needs a fast tokenizer (tokenizer.json); this model only has a slow one")
    if weights == "fp32":
        config = _export_fp32(model, tokenizer, Path(directory), shortcuts, source, log, generate)
        log(f"wrote {directory}")
        return config
    if weights in SMOOTHED_FORMATS:
        log(f"SmoothQuant (alpha {SMOOTHING_ALPHAS[weights]}) of the decoder layers, calibrated on random tokens")
        smooth_activations(model, alpha=SMOOTHING_ALPHAS[weights])
    with tempfile.TemporaryDirectory(prefix="mobillm-export-") as tmp:
        _export_fp32(model, tokenizer, Path(tmp), shortcuts, source, log, generate)
        return _quantize_bundle(Path(tmp), Path(directory), weights, log)


def quantize_bundle(
    source: str | Path, directory: str | Path, weights: str, log: Callable[[str], None] = lambda line: None,
) -> BundleConfig:
    """Write a copy of the fp32 bundle ``source`` with ``weights`` (``int8`` | ``int8-dynamic`` | ``int4``)."""
    if weights not in QUANTIZATION:
        raise ConfigError(f"--weights {weights!r}: quantized formats are {', '.join(QUANTIZATION)}")
    if weights in SMOOTHED_FORMATS:
        raise ConfigError(f"--weights {weights} rewrites the torch model's weights before the export: export it from "
                          f"the model (`mobillm export --weights {weights}`), not from an fp32 bundle")
    return _quantize_bundle(Path(source), Path(directory), weights, log)


def _quantize_bundle(source: Path, directory: Path, weights: str, log: Callable[[str], None]) -> BundleConfig:
    config = BundleConfig.load(source)
    if config.weights != "fp32":
        raise ConfigError(f"{source} holds {config.weights} weights: quantize an fp32 bundle")
    directory.mkdir(parents=True, exist_ok=True)
    logging.getLogger("onnxruntime.quantization").setLevel(logging.WARNING)  # one INFO line per node otherwise
    for name in (n for n in (TAPS_NAME, GENERATE_NAME, HEAD_NAME) if (source / n).is_file()):
        log(f"quantizing {name} to {weights}")
        _quantize(source / name, directory / name, weights, config.vocab_size)
        _check(directory / name)
    # the label logits stay exact: the server trains against the fp32 head, and the device reads a few rows of it
    for name in (NORM_NAME, LM_HEAD_NAME, TOKENIZER_NAME):
        shutil.copyfile(source / name, directory / name)
    config = config.model_copy(update={"weights": weights})
    config.save(directory)
    _readable(directory)
    log(f"wrote {directory}")
    return config


def _readable(directory: Path) -> None:
    """Give the bundle and its files read permission for everyone (a public model's graphs): some writers create
    theirs 0600 (safetensors' LM head), and an export folder may be a 0700 temp folder, which a web server running
    as another user could not read (``mobillm serve --web`` serves the bundle)."""
    directory.chmod(directory.stat().st_mode | 0o555)
    for path in directory.iterdir():
        if path.is_file():
            path.chmod(path.stat().st_mode | 0o444)


class _Without(logging.Filter):
    """Drops log records whose message contains ``text``."""

    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def _quantize(source: Path, target: Path, weights: str, vocab_size: int) -> None:
    """Quantize the weight matmuls of one fp32 graph ``source`` (and in the EMBEDDING_FORMATS its token embedding, the
    table of ``vocab_size`` rows) into ``target``, its weights in external data
    (``<graph>.data``): ONNX Runtime maps that file instead of copying the weights out of the parsed graph, which
    takes the load's transient peak off the device (SmolLM2-135M int8-dynamic taps graph: RSS after load 85
    instead of 300 MiB, peak 383 instead of 407 MiB; BENCHMARKS §19)."""
    if weights in DYNAMIC_INT8_FORMATS:
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic

        # the quantizer re-runs ONNX shape inference, which refuses some of the exporter's recorded intermediate
        # shapes (OPT's attention reshapes): drop them, they are only hints. The graph without them goes to a
        # scratch file beside a copy of the source's external weights (a file copy, not read into memory; onnx
        # refuses symbolic and hard links), and the quantizer reads that path: handing it a loaded graph makes it
        # copy, save and reload every weight again (SmolLM2's taps graph: peak 2,236 -> 1,902 MiB).
        model = onnx.load(str(source), load_external_data=False)
        del model.graph.value_info[:]
        with tempfile.TemporaryDirectory(prefix="mobillm-quantize-", dir=target.parent) as scratch:
            graph = Path(scratch) / source.name
            for data in {e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"}:
                shutil.copyfile(source.parent / data, Path(scratch) / data)
            onnx.save(model, str(graph))
            del model
            # MatMulConstBOnly: weights only, attention's activation matmuls stay fp32. The quantizer's advice to
            # run its pre-processing (shape inference, for conv nets) goes to the root logger: not the user's concern.
            root = logging.getLogger()
            root.addFilter(_quiet := _Without("pre-processing before quantization"))
            try:
                quantize_dynamic(graph, target, weight_type=QuantType.QInt8, per_channel=True, reduce_range=True, op_types_to_quantize=["MatMul"],
                                 use_external_data_format=True, extra_options={"MatMulConstBOnly": True})
            finally:
                root.removeFilter(_quiet)
        return
    import numpy as np
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    model = onnx.load(str(source))
    embedding = weights in EMBEDDING_FORMATS
    quantizer = MatMulNBitsQuantizer(model, op_types_to_quantize=("MatMul", "Gather") if embedding else ("MatMul",),
                                     nodes_to_exclude=_other_gathers(model, vocab_size) if embedding else None,
                                     **QUANTIZATION[weights])
    # int4 types need opset 21, to which the quantizer raises the graph, warning that it "may not be valid" (_check
    # checks it); an all-zero block (OPT's padding row) divides by its zero scale, then takes the zero point 8
    chatty = logging.getLogger(MatMulNBitsQuantizer.__module__)
    chatty.addFilter(_quiet := _Without("opset of the input model is under 21"))
    try:
        with np.errstate(divide="ignore", invalid="ignore"):
            quantizer.process()
    finally:
        chatty.removeFilter(_quiet)
    quantizer.model.save_model_to_file(str(target), use_external_data_format=True)


def _other_gathers(model, vocab_size: int) -> list[str]:
    """The Gather nodes of ``model`` (a loaded graph) other than the token embedding's, which the embedding formats
    leave exact: gathers of shapes and indices, and OPT's learned positions (a few rows read at every position,
    whose 4-bit error would add to every tap). The token embedding is the Gather of a float matrix of
    ``vocab_size`` rows (a graph without one, the head's, gets every Gather back); every Gather is named so that
    the quantizer can exclude it by name."""
    import onnx

    tables = {t.name for t in model.graph.initializer
              if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) == 2 and t.dims[0] == vocab_size}
    gathers = [n for n in model.graph.node if n.op_type == "Gather"]
    for i, node in enumerate(gathers):
        node.name = node.name or f"mobillm_gather_{i}"
    return [n.name for n in gathers if n.input[0] not in tables]


def _export_fp32(model, tokenizer, directory: Path, shortcuts: list[int], source: str, log,
                 generate: bool = True) -> BundleConfig:
    directory.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    num_layers = len(decoder_layers(model))
    ident = fingerprint(model)
    head = FrozenHead.from_model(model)
    backbone = TappedBackbone(model, shortcuts)
    _matmul_linears(backbone.decoder.layers)  # after the fingerprint and the head: the exported layers only
    kv_heads, head_dim = _cache_shape(backbone)
    taps = [tap_name(s) for s in backbone.shortcuts]
    past, present = cache_names(backbone.shortcuts[-1], "past"), cache_names(backbone.shortcuts[-1], "present")
    big = sum(p.numel() * 4 for p in model.parameters()) > _SINGLE_FILE_BYTES

    batch, length, cached, total = (torch.export.Dim(n) for n in ("batch", "length", "past", "total"))
    ids = torch.randint(3, max(4, cfg.vocab_size), (2, 5))
    mask = torch.ones_like(ids)
    # distinct tensors per layer: the exporter must not see one input aliased as many
    cache = [(torch.randn(2, kv_heads, 3, head_dim), torch.randn(2, kv_heads, 3, head_dim))
             for _ in range(backbone.shortcuts[-1])]
    graphs = [
        (TAPS_NAME, _Taps(backbone), (ids, mask), ["input_ids", "attention_mask"], taps,
         {"input_ids": {0: batch, 1: length}, "attention_mask": {0: batch, 1: length}}),
        (GENERATE_NAME, _Generate(backbone), (ids, cache), ["input_ids", *past], taps + present,
         {"input_ids": {0: batch, 1: length}, "past": [({0: batch, 2: cached}, {0: batch, 2: cached})] * len(cache)}),
        (HEAD_NAME, _Head(head), (torch.zeros(2, cfg.hidden_size),), ["hidden"], ["logits"], {"hidden": {0: total}}),
        (NORM_NAME, _Norm(head), (torch.zeros(2, cfg.hidden_size),), ["hidden"], ["normed"], {"hidden": {0: total}}),
    ]
    # the exporter warns once per torchvision op it cannot register ("torchvision is not installed"): not ours
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    for name, module, args, inputs, outputs, dynamic in graphs:
        if name in GENERATION_FILES and not generate:
            continue
        log(f"exporting {name} (torch.onnx dynamo, opset {OPSET})")
        with warnings.catch_warnings():  # torch's own pytree deprecations, raised inside the exporter
            warnings.filterwarnings("ignore", category=FutureWarning, message=".*LeafSpec")
            program = torch.onnx.export(
                module.eval(), args, dynamo=True, opset_version=OPSET, input_names=inputs, output_names=outputs,
                dynamic_shapes=dynamic, verbose=False,
            )
        program.save(str(directory / name), external_data=big)
        del program
        _check(directory / name)
    _save_lm_head(head, directory / LM_HEAD_NAME)
    tokenizer.backend_tokenizer.save(str(directory / TOKENIZER_NAME))
    eos = getattr(tokenizer, "eos_token_id", None)
    pad = next((i for i in (tokenizer.pad_token_id, eos) if i is not None), 0)  # as BaseBatcher pads
    config = BundleConfig(
        model=source or getattr(cfg, "_name_or_path", "") or cfg.model_type, fingerprint=ident,
        model_type=cfg.model_type, num_layers=num_layers, shortcuts=backbone.shortcuts, hidden_size=cfg.hidden_size,
        vocab_size=head.lm_head.weight.shape[0], kv_heads=kv_heads, head_dim=head_dim, weights="fp32",
        pad_token_id=pad, eos_token_ids=[] if eos is None else [eos], bos_token_id=tokenizer.bos_token_id,
        chat_template=getattr(tokenizer, "chat_template", None) or None, opset=OPSET,
    )
    config.save(directory)
    _readable(directory)
    return config


def _cache_shape(backbone: TappedBackbone) -> tuple[int, int]:
    """(kv heads, head dim) of the backbone's KV cache, read from one step rather than guessed from the config."""
    _, cache = backbone.step(torch.tensor([[3, 4]]))
    keys = cache.layers[0].keys  # (1, kv, 2, d)
    return int(keys.shape[1]), int(keys.shape[3])


def _check(path: Path) -> None:
    import onnx

    onnx.checker.check_model(str(path))  # by path: graphs with external data are checked too

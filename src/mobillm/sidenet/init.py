"""Initialising the side network from the backbone's weights, LST-style (Sung et al. 2022, arXiv 2206.06522 §3.3).

Each side block i becomes a pruned copy of the backbone layer it reads (shortcut ``s_i``) at width r: r of the
layer's H residual dimensions, its strongest attention heads cut to r/heads dimensions each, and r of its MLP
units, all chosen by weight magnitude (L1 norms — no labels, no data; LST ranks by Fisher information, which needs
both). ``down_i`` starts as the selection of those r dimensions, so block i starts by reading what the backbone
layer reads. ``up`` stays zero: step 0 is still the backbone's zero-shot prediction.

The server needs the weights of the shortcut layers for this. They come from the same public checkpoint it loads
the frozen head from (design §2: the base model is public, the data is not) — the caller passes that model's
decoder layers (``mobillm.backbone.decoder_layers(model)``); nothing of the device's is needed.

Llama-family layers (``q/k/v/o_proj``, gated ``gate/up/down_proj`` MLP, RMSNorm) and OPT layers (``q/k/v/out_proj``,
``fc1/fc2``, LayerNorm) are understood. The copy is approximate by construction: the side blocks have no rotary
positions, a LayerNorm for the backbone's norm, and a plain GELU MLP, for which a gated MLP gives its gate
projection (the activation's input) and its down projection.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from mobillm.exceptions import ConfigError
from mobillm.sidenet.blocks import AttentionBlock, MLPBlock
from mobillm.sidenet.config import SideConfig
from mobillm.sidenet.model import SideNetwork


@dataclass(frozen=True)
class _Layer:
    """One backbone decoder layer's weights, family-neutral: linear modules, read through their ``weight`` (out, in)
    and ``bias`` (``nn.Linear``, or a device checkpoint's int8/nf4 ones, dequantised), and norm parameters."""

    attn_norm: tuple[torch.Tensor, torch.Tensor | None]
    q: nn.Module
    k: nn.Module
    v: nn.Module
    o: nn.Module
    head_dim: int
    mlp_norm: tuple[torch.Tensor, torch.Tensor | None]
    mlp_in: nn.Module
    mlp_out: nn.Module


def _read_layer(layer: nn.Module) -> _Layer:
    attn = getattr(layer, "self_attn", None)
    head_dim = getattr(attn, "head_dim", None)
    if hasattr(attn, "o_proj") and hasattr(layer, "mlp") and hasattr(layer.mlp, "gate_proj"):  # Llama, Mistral, Qwen
        norms = (layer.input_layernorm, layer.post_attention_layernorm)
        mlp_in, mlp_out, o = layer.mlp.gate_proj, layer.mlp.down_proj, attn.o_proj
    elif hasattr(attn, "out_proj") and hasattr(layer, "fc1"):  # OPT
        norms = (layer.self_attn_layer_norm, layer.final_layer_norm)
        mlp_in, mlp_out, o = layer.fc1, layer.fc2, attn.out_proj
    else:
        raise ConfigError(f"init 'backbone': {type(layer).__name__} is neither a Llama- nor an OPT-style decoder layer; "
                          "set the side config's init to 'random'")
    if head_dim is None:
        raise ConfigError(f"init 'backbone': {type(attn).__name__} has no head_dim")
    attn_norm, mlp_norm = ((n.weight, getattr(n, "bias", None)) for n in norms)
    return _Layer(attn_norm, attn.q_proj, attn.k_proj, attn.v_proj, o, head_dim, mlp_norm, mlp_in, mlp_out)


def _top(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest scores, in increasing index order (ties: the lower index)."""
    return torch.sort(torch.topk(scores, k, sorted=True).indices).values


def _copy_linear(dst: nn.Linear, src: nn.Module, rows: torch.Tensor, cols: torch.Tensor, scale: float = 1.0) -> None:
    dst.weight.copy_(src.weight[rows][:, cols] * scale)
    if dst.bias is not None:
        dst.bias.copy_(src.bias[rows] * scale if src.bias is not None else torch.zeros_like(dst.bias))


def _copy_norm(dst: nn.LayerNorm, src: tuple[torch.Tensor, torch.Tensor | None], dims: torch.Tensor) -> None:
    weight, bias = src
    dst.weight.copy_(weight[dims])
    dst.bias.copy_(bias[dims] if bias is not None else torch.zeros_like(dst.bias))


def new_side_network(config: SideConfig, layers: Sequence[nn.Module] | None = None) -> SideNetwork:
    """A fresh side network as ``config.init`` says (seed torch first for a reproducible one): random, or with
    ``init == "backbone"`` initialised from ``layers``, the public backbone's decoder layers. The server and the
    local recipe both start here, so a job's first side network is the same in either."""
    side = SideNetwork(config)
    if config.init == "backbone":
        if layers is None:
            raise ConfigError("a side network with init 'backbone' needs the backbone's decoder layers")
        init_from_backbone(side, layers)
    return side


@torch.no_grad()
def init_from_backbone(side: nn.Module, layers: Sequence[nn.Module]) -> None:
    """Overwrite ``side``'s ``down_i`` and blocks with pruned copies of the shortcut layers in ``layers``.

    ``layers`` are the backbone's decoder layers (index s-1 is shortcut s). ``side`` is a :class:`SideNetwork`
    with 'attention' or 'mlp' blocks; its gates and zero ``up`` are left as they are.
    """
    config = side.config
    r, heads = config.width, config.attention_heads
    for i, s in enumerate(config.shortcuts):
        if s > len(layers):
            raise ConfigError(f"init 'backbone': shortcut layer {s} but only {len(layers)} backbone layers were given")
        w = _read_layer(layers[s - 1])
        H = w.q.weight.shape[1]
        if r > min(H, w.mlp_in.weight.shape[0]):
            raise ConfigError(f"init 'backbone': --width {r} exceeds the backbone's width {H} or MLP size {w.mlp_in.weight.shape[0]}")
        # residual dimensions: what the layer reads (q, k, v, MLP input columns) and writes (o, MLP output rows)
        reads = sum(m.weight.abs().sum(0) for m in (w.q, w.k, w.v, w.mlp_in))
        writes = w.o.weight.abs().sum(1) + w.mlp_out.weight.abs().sum(1)
        dims = _top(reads + writes, r)  # (r,)
        down = side.down[i]
        down.weight.zero_()
        down.weight[torch.arange(r), dims] = 1.0  # down_i picks out those dimensions
        down.bias.zero_()
        block = side.blocks[i]
        if isinstance(block, AttentionBlock):
            _copy_attention(block, w, dims, r, heads)
            mlp = block.mlp
        elif isinstance(block, MLPBlock):
            mlp = block
        else:
            raise ConfigError(f"init 'backbone' knows the 'attention' and 'mlp' blocks, not {config.block!r}")
        _copy_mlp(mlp, w, dims, r)


def _copy_attention(block: AttentionBlock, w: _Layer, dims: torch.Tensor, r: int, heads: int) -> None:
    hd = w.head_dim
    n_q, n_kv = w.q.weight.shape[0] // hd, w.k.weight.shape[0] // hd
    side_hd = r // heads
    if heads > n_q or side_hd > hd:
        raise ConfigError(f"init 'backbone': {heads} side heads of {side_hd} dims do not fit in the backbone's "
                          f"{n_q} heads of {hd}; change --width or the side config's attention_heads")
    q = w.q.weight[:, dims].abs().view(n_q, hd, -1).sum(-1)  # (n_q, hd) magnitude of each q row
    k = w.k.weight[:, dims].abs().view(n_kv, hd, -1).sum(-1)
    v = w.v.weight[:, dims].abs().view(n_kv, hd, -1).sum(-1)
    o = w.o.weight[dims].abs().sum(0).view(n_q, hd)
    group = torch.arange(n_q) // (n_q // n_kv)  # the kv head each q head reads (grouped-query attention)
    per_dim = q + k[group] + v[group] + o  # (n_q, hd)
    chosen = _top(per_dim.sum(1), heads)  # the strongest heads, then the strongest dimensions within each
    within = [_top(per_dim[h], side_hd) for h in chosen.tolist()]
    q_rows = torch.cat([h * hd + d for h, d in zip(chosen.tolist(), within)])
    kv_rows = torch.cat([int(group[h]) * hd + d for h, d in zip(chosen.tolist(), within)])
    # MultiheadAttention scales by 1/sqrt(r/heads); the backbone by 1/sqrt(hd): keep the backbone's logits' scale
    q_scale = math.sqrt(side_hd / hd)
    attn = block.attn
    for part, (src, rows, scale) in enumerate(((w.q, q_rows, q_scale), (w.k, kv_rows, 1.0), (w.v, kv_rows, 1.0))):
        sl = slice(part * r, (part + 1) * r)
        attn.in_proj_weight[sl] = src.weight[rows][:, dims] * scale
        attn.in_proj_bias[sl] = src.bias[rows] * scale if src.bias is not None else 0.0
    _copy_linear(attn.out_proj, w.o, dims, q_rows)
    _copy_norm(block.norm1, w.attn_norm, dims)


def _copy_mlp(mlp: MLPBlock, w: _Layer, dims: torch.Tensor, r: int) -> None:
    units = _top(w.mlp_in.weight[:, dims].abs().sum(1) + w.mlp_out.weight[dims].abs().sum(0), r)
    _copy_linear(mlp.mlp[0], w.mlp_in, units, dims)
    _copy_linear(mlp.mlp[3], w.mlp_out, dims, units)
    _copy_norm(mlp.norm, w.mlp_norm, dims)

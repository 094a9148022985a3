"""Side blocks (``adapter_i`` of design §2). A new block type is one class plus ``@register_block``."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from mobillm.sidenet.config import BLOCK_TOKEN_WISE

SIDE_BLOCKS: dict[str, type["SideBlock"]] = {}


def register_block(cls: type["SideBlock"]) -> type["SideBlock"]:
    """Register a block type under ``cls.name`` (and its ``token_wise`` in the torch-free table of configs)."""
    SIDE_BLOCKS[cls.name] = cls
    BLOCK_TOKEN_WISE[cls.name] = cls.token_wise
    return cls


class SideBlock(nn.Module):
    """A residual block of width r: ``h = x + f(x)``."""

    name: ClassVar[str]
    token_wise: ClassVar[bool]  # False: needs every position from the device (and a KV cache to generate)

    def __init__(self, width: int, heads: int, dropout: float, causal: bool = True):
        super().__init__()


@register_block
class MLPBlock(SideBlock):
    """Token-wise bottleneck MLP: no mixing across tokens, so the pivot token alone suffices."""

    name = "mlp"
    token_wise = True

    def __init__(self, width: int, heads: int = 0, dropout: float = 0.0, causal: bool = True):
        super().__init__(width, heads, dropout, causal)
        self.norm = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Dropout(dropout), nn.Linear(width, width))

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return x + self.mlp(self.norm(x))


@register_block
class AttentionBlock(SideBlock):
    """LST-style token-mixing block: self-attention (causal unless ``causal=False``) + MLP at width r over all
    positions."""

    name = "attention"
    token_wise = False

    def __init__(self, width: int, heads: int = 4, dropout: float = 0.0, causal: bool = True):
        super().__init__(width, heads, dropout, causal)
        self.causal = causal
        self.norm1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.mlp = MLPBlock(width, dropout=dropout)

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if x.dim() != 3:
            raise ValueError("the attention side block needs every position: activations of shape (B, T, r)")
        T = x.shape[1]
        causal = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1) if self.causal else None  # True = may not attend
        pad = None if attention_mask is None else attention_mask == 0
        h = self.norm1(x)
        x = x + self.attn(h, h, h, attn_mask=causal, key_padding_mask=pad, need_weights=False)[0]
        return self.mlp(x)

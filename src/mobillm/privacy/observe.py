"""What a curious server holds: the prompts' taps decoded exactly as the server decodes them.

The backbone runs once per prompt set with raw taps (:class:`TappedBackbone`, no codec); each audited setting then
encodes those raw taps as the device's tap hook would — noise (if any) then the codec, layer by layer over the
whole batch tensor, pivot rows selected first in the pivot-only mode — and decodes them with the server's
``decode_layers``. A codec is deterministic, so this equals tapping with that codec, at one forward pass for all.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from mobillm.data import Batcher, EncodedBatch, Example
from mobillm.device.noise import ActivationNoise
from mobillm.device.taps import TappedBackbone
from mobillm.privacy.prompts import AuditPrompt
from mobillm.wire.codecs import Codec, decode_layers

__all__ = ["RawBatch", "raw_taps", "server_view", "tapped"]


@contextmanager
def tapped(model: nn.Module, shortcuts: list[int]) -> Iterator[TappedBackbone]:
    """A :class:`TappedBackbone` on ``model`` for the duration; afterwards its hooks are removed and the full layer
    list is restored (TappedBackbone truncates the stack in place), so the next one may tap higher layers."""
    decoder = model.get_decoder()
    layers = decoder.layers
    backbone = TappedBackbone(model, shortcuts)
    try:
        yield backbone
    finally:
        backbone.close()
        decoder.layers = layers


@dataclass
class RawBatch:
    batch: EncodedBatch
    taps: list[torch.Tensor]  # one (B, T, H) float32 tensor per shortcut layer, bottom to top


def raw_taps(model: nn.Module, shortcuts: list[int], batcher: Batcher, prompts: list[AuditPrompt],
             batch_size: int = 8) -> list[RawBatch]:
    """One forward pass over ``prompts`` (sample ids = their index), batched and padded as the device does."""
    out = []
    with tapped(model, shortcuts) as backbone:
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            batch = batcher.encode([Example(p.text, 0) for p in chunk], list(range(start, start + len(chunk))))
            if [row[: len(p.ids)].tolist() for row, p in zip(batch.input_ids, chunk)] != [p.ids for p in chunk]:
                raise AssertionError("the audit's prompts differ from the device's batch")  # same tokenizer, same template
            taps = backbone(batch.input_ids, batch.attention_mask, None, lambda x: x.float().clone())
            out.append(RawBatch(batch, taps))
    return out


def server_view(raw: RawBatch, codec: Codec, pivot: bool, noise: ActivationNoise | None = None,
                split: str = "train") -> list[torch.Tensor]:
    """Per prompt of the batch, the decoded activations the server receives: (T, M, H), or (M, H) pivot-only."""
    b = raw.batch
    last = b.last_index if pivot else None
    encode = codec.encode if noise is None else noise.encoder(codec.encode, split, b.sample_ids, last)
    rows = torch.arange(len(b))
    encoded = [encode(t[rows, last] if pivot else t) for t in raw.taps]  # layer by layer, as the tap hook does
    decoded = decode_layers(codec, encoded)  # (B, M, H) or (B, T, M, H)
    if pivot:
        return list(decoded)
    return [decoded[i, : int(b.last_index[i]) + 1] for i in range(len(b))]

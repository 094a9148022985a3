"""Device-side forward passes over a data split, and local inference with a downloaded side network.

Local evaluation runs the activations through the same codec round trip the server saw, so the device's
predictions equal the server's for the same codec (a test asserts it).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from mobillm.backbone import FrozenHead
from mobillm.data import Batcher, EncodedBatch, Example
from mobillm.device.taps import TappedBackbone
from mobillm.sidenet import SideNetwork
from mobillm.wire.codecs import Codec, decode_layers, encoded_nbytes


@dataclass
class TapStats:
    """What the device spent: forward seconds, samples and encoded bytes."""

    seconds: float = 0.0
    samples: int = 0
    bytes: int = 0


@dataclass
class TappedBatch:
    taps: list[dict[str, torch.Tensor]]
    batch: EncodedBatch


def tap_batches(backbone: TappedBackbone, codec: Codec, batches, pivot: bool, stats: TapStats | None = None):
    """Run the frozen backbone on each batch; yield :class:`TappedBatch` with the encoded taps."""
    for batch in batches:
        start = time.perf_counter()
        taps = backbone(batch.input_ids, batch.attention_mask, batch.last_index if pivot else None, codec.encode)
        if stats is not None:
            stats.seconds += time.perf_counter() - start
            stats.samples += len(batch.labels)
            stats.bytes += sum(encoded_nbytes(t) for t in taps) + batch.labels.nbytes
        yield TappedBatch(taps, batch)


def tap_examples(
    backbone: TappedBackbone, codec: Codec, batcher: Batcher, examples: list[Example], batch_size: int, pivot: bool,
    desc: str, stats: TapStats | None = None, shuffle: bool = False, seed: int = 0,
) -> list[TappedBatch]:
    """Forward a whole split once and keep its encoded taps (reused for zero-shot and final scoring)."""
    steps = (len(examples) + batch_size - 1) // batch_size
    batches = tqdm(batcher.batches(examples, batch_size, shuffle=shuffle, seed=seed), total=steps, desc=desc, leave=False, disable=None)
    return list(tap_batches(backbone, codec, batches, pivot, stats))


def predict_tapped(side: SideNetwork, head: FrozenHead, codec: Codec, tapped: list[TappedBatch]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sample_ids, predictions, labels) over cached taps."""
    preds = []
    for item in tapped:
        acts = decode_layers(codec, item.taps)
        mask, last = (None, None) if side.config.token_wise else (item.batch.attention_mask, item.batch.last_index)
        preds.append(side.predict(acts, head, mask, last))
    return (
        torch.cat([t.batch.sample_ids for t in tapped]),
        torch.cat(preds),
        torch.cat([t.batch.labels for t in tapped]),
    )

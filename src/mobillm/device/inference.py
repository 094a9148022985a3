"""Device-side forward passes over a data split, and local scoring with a downloaded side network.

Local evaluation runs the activations through the same codec round trip the server saw, so the device's
predictions equal the server's for the same codec (a test asserts it). The zero-shot score reads the raw top
hidden states the forward pass kept (:attr:`TappedBatch.top`): the bare backbone, with no codec in the way.

Scoring reads any iterable of tapped batches: :func:`tap_split` forwards a split as it is read, so one pass scores
it (side network and zero-shot together, :func:`~mobillm.scoring.score_batches`) and nothing per sample is kept;
``list(tap_split(...))`` keeps a split's taps where they are replayed (``mobillm train``'s epochs, the benchmarks).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from mobillm.backbone import FrozenHead
from mobillm.data import EncodedBatch
from mobillm.data.batching import BaseBatcher
from mobillm.device.noise import ActivationNoise
from mobillm.device.stats import TapStats
from mobillm.device.taps import TappedBackbone
from mobillm.scoring import Evaluator, Scorer, loss_logits, score_batches
from mobillm.sidenet import SideConfig, SideNetwork
from mobillm.wire.codecs import Codec, decode_layers, encoded_nbytes


@dataclass
class TappedBatch:
    taps: list[dict[str, torch.Tensor]]
    batch: EncodedBatch
    #: raw top-shortcut hidden states at the positions the loss reads, (N, H) — for the zero-shot score
    top: torch.Tensor | None = None


def scored_positions(batch: EncodedBatch) -> torch.Tensor:
    """(B, T) bool: where the loss reads — the response tokens (causal LM) or each row's pivot token."""
    if batch.loss_mask is not None:
        return batch.loss_mask.bool()
    mask = torch.zeros(batch.input_ids.shape, dtype=torch.bool)
    mask[torch.arange(len(batch)), batch.last_index] = True
    return mask


def tap_batches(backbone: TappedBackbone, codec: Codec, batches, pivot: bool, stats: TapStats | None = None,
                noise: ActivationNoise | None = None, split: str = "train"):
    """Run the frozen backbone on each batch; yield :class:`TappedBatch` with the encoded taps.

    With ``noise`` each tap gets the sample's own noise (seeded by ``split`` and the sample id) before the codec."""
    for batch in batches:
        start = time.perf_counter()
        last_index = batch.last_index if pivot else None
        encode = codec.encode if noise is None else noise.encoder(codec.encode, split, batch.sample_ids, last_index)
        taps = backbone(batch.input_ids, batch.attention_mask, last_index, encode, keep_top=scored_positions(batch))
        if stats is not None:
            stats.seconds += time.perf_counter() - start
            stats.samples += len(batch)
            stats.bytes += sum(encoded_nbytes(t) for t in taps) + batch.labels.nbytes
            if batch.loss_mask is not None:
                stats.bytes += batch.loss_mask.numel()
        yield TappedBatch(taps, batch, backbone.kept_top)


def tap_split(
    backbone: TappedBackbone, codec: Codec, batcher: BaseBatcher, examples: list, batch_size: int, pivot: bool,
    desc: str, stats: TapStats | None = None, shuffle: bool = False, seed: int = 0,
    noise: ActivationNoise | None = None, split: str = "train",
) -> Iterator[TappedBatch]:
    """Forward a split batch by batch, in the batcher's order, with a progress bar; yield each batch's taps.
    Forwarding a split again yields the same taps: the batches, and with ``noise`` each sample's draws, are
    pure functions of the split, ``seed`` and the sample ids."""
    steps = (len(examples) + batch_size - 1) // batch_size
    batches = tqdm(batcher.batches(examples, batch_size, shuffle=shuffle, seed=seed), total=steps, desc=desc, leave=False, disable=None)
    return tap_batches(backbone, codec, batches, pivot, stats, noise, split)


def side_extras(config: SideConfig, batch: EncodedBatch) -> tuple:
    """``(attention_mask, last_index, loss_mask)`` as the side network reads them: pivot batches need none."""
    masks = (None, None) if config.pivot_only else (batch.attention_mask, batch.last_index)
    return (*masks, batch.loss_mask)


def side_scorer(side: SideNetwork, head: FrozenHead, codec: Codec) -> Scorer[TappedBatch]:
    """Backbone + side network on a tapped batch (decoded as the server decodes it), on the device the side
    network lies on (``head`` must lie there too)."""
    side.eval()
    device = next(side.parameters()).device

    @torch.no_grad()
    def score(item: TappedBatch) -> tuple:
        b = item.batch
        labels, *extras = (None if t is None else t.to(device) for t in (b.labels, *side_extras(side.config, b)))
        return *loss_logits(side, head, decode_layers(codec, item.taps).to(device), labels, *extras), b.sample_ids

    return score


def zero_shot_scorer(config: SideConfig, head: FrozenHead) -> Scorer[TappedBatch]:
    """The bare backbone (its own head on its raw top hidden states) on a tapped batch."""
    fresh = SideNetwork(config)  # only its head mapping is used: verbalizer rows or the whole LM head

    @torch.no_grad()
    def score(item: TappedBatch) -> tuple:
        b = item.batch
        targets = b.labels if b.loss_mask is None else b.labels[b.loss_mask.bool()]
        return fresh.logits(item.top, head), targets, b.sample_ids

    return score


def evaluate_tapped(side: SideNetwork, head: FrozenHead, codec: Codec, tapped: Iterable[TappedBatch]) -> Evaluator:
    """Score backbone + side network over tapped batches (kept, or forwarded as they are read)."""
    return score_batches(tapped, side.config.task, side.config.num_labels, side_scorer(side, head, codec))[0]


def zero_shot_tapped(config: SideConfig, head: FrozenHead, tapped: Iterable[TappedBatch]) -> Evaluator:
    """Score the bare backbone over the same batches."""
    return score_batches(tapped, config.task, config.num_labels, zero_shot_scorer(config, head))[0]

"""On-device generation with the frozen backbone and a downloaded side network (design §2).

The backbone keeps its own KV cache, so each new token costs one backbone step. The side network reads the
shortcut taps of every position so far: a token-wise side network (``mlp`` blocks) needs only the newest
position; token-mixing blocks (``attention``) are re-run over the kept taps — tiny at width r, so no
side-network cache is needed. The taps go through the same codec round trip as in training, so the side
network sees what it was trained on.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from mobillm.backbone import FrozenHead
from mobillm.device.taps import TappedBackbone
from mobillm.sidenet import SideNetwork
from mobillm.wire.codecs import Codec, decode_layers


@dataclass(frozen=True)
class Sampling:
    """Greedy when ``temperature`` is 0; otherwise temperature + nucleus (top-p) sampling, seeded."""

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1 or self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ValueError("need max_new_tokens >= 1, temperature >= 0 and 0 < top_p <= 1")


def _choose(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator) -> int:
    if sampling.temperature == 0:
        return int(logits.argmax())
    probs = torch.softmax(logits.float() / sampling.temperature, dim=-1)
    if sampling.top_p < 1:
        sorted_probs, order = probs.sort(descending=True)
        outside = sorted_probs.cumsum(-1) - sorted_probs >= sampling.top_p  # keep the smallest set reaching top_p
        probs = torch.zeros_like(probs).scatter(0, order, sorted_probs.masked_fill(outside, 0))
    return int(torch.multinomial(probs, 1, generator=generator))


class Generator:
    """Backbone (truncated at the top shortcut, with its KV cache) + side network + frozen LM head."""

    def __init__(self, backbone: TappedBackbone, side: SideNetwork, head: FrozenHead, codec: Codec, eos_ids: set[int]):
        if side.config.task != "causal-lm":
            raise ValueError(f"this side network was trained for {side.config.task}, not causal-lm: use `mobillm predict`")
        self.backbone, self.side, self.head, self.codec, self.eos_ids = backbone, side.eval(), head, codec, eos_ids

    def _next_logits(self, acts: torch.Tensor) -> torch.Tensor:
        """(1, T, M, H) taps so far -> logits (V,) for the next token."""
        if self.side.config.token_wise:
            acts = acts[:, -1:]
        return self.side.logits(self.side.hidden(acts)[0, -1], self.head)

    @torch.inference_mode()
    def generate(self, prompt_ids: list[int], sampling: Sampling = Sampling(), use_cache: bool = True) -> Iterator[int]:
        """Yield new token ids one by one (streaming). ``use_cache=False`` recomputes the whole sequence each
        step — the reference the cached path must equal."""
        generator = torch.Generator().manual_seed(sampling.seed)
        ids = torch.tensor([prompt_ids], dtype=torch.long)
        taps, cache = self.backbone.step(ids, None, self.codec.encode)
        acts = decode_layers(self.codec, taps)  # (1, T, M, H)
        for _ in range(sampling.max_new_tokens):
            token = _choose(self._next_logits(acts), sampling, generator)
            yield token
            if token in self.eos_ids:
                return
            ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
            if use_cache:
                taps, cache = self.backbone.step(ids[:, -1:], cache, self.codec.encode)
                acts = torch.cat([acts, decode_layers(self.codec, taps)], dim=1)
            else:
                acts = decode_layers(self.codec, self.backbone.step(ids, None, self.codec.encode)[0])

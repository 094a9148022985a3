"""Greedy on-device generation on a bundle: the torch :class:`mobillm.device.generate.Generator` without torch.

The bundle's generation graph keeps the backbone's KV cache; the side network reads the taps of every position
so far through the codec's round trip (so it sees what it was trained on); the bundle's head maps its corrected
top hidden state to logits. Greedy decoding only: sampled tokens could not match torch's random stream anyway.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from mobillm.bundle.runtime import Bundle
from mobillm.bundle.sidenet import NpSideNetwork
from mobillm.exceptions import ConfigError
from mobillm.wire.np_codecs import NpCodec


class BundleGenerator:
    """Bundle (truncated decoder with its KV cache, head) + numpy side network, greedy."""

    def __init__(self, bundle: Bundle, side: NpSideNetwork, codec: NpCodec, eos_ids: set[int] | None = None):
        task = side.config.get("task")
        if task != "causal-lm":
            raise ConfigError(f"this side network was trained for {task}, not causal-lm: use `mobillm predict`")
        if list(side.config["shortcuts"]) != list(bundle.config.shortcuts):
            raise ConfigError(
                f"side network taps layers {side.config['shortcuts']}, the bundle {bundle.config.shortcuts}: "
                "export the bundle with the side network's --shortcuts"
            )
        self.bundle, self.side, self.codec = bundle, side, codec
        self.eos_ids = set(bundle.config.eos_token_ids) if eos_ids is None else eos_ids

    def _acts(self, taps: list[np.ndarray]) -> np.ndarray:
        """Taps (1, T, H) per layer -> what the server would decode, stacked as (1, T, M, H)."""
        return np.stack([self.codec.decode(self.codec.encode(t)) for t in taps], axis=-2)

    def _next_logits(self, acts: np.ndarray) -> np.ndarray:
        if self.side.token_wise:
            acts = acts[:, -1:]
        return self.bundle.logits(self.side.hidden(acts)[0, -1:])[0]  # (V,)

    def generate(self, prompt_ids: list[int], max_new_tokens: int = 64) -> Iterator[int]:
        """Yield new token ids one by one (streaming), stopping after an end-of-sequence token."""
        if max_new_tokens < 1 or not prompt_ids:
            raise ConfigError("need a non-empty prompt and max_new_tokens >= 1")
        taps, cache = self.bundle.step(np.array([prompt_ids], np.int64))
        acts = self._acts(taps)
        for _ in range(max_new_tokens):
            token = int(np.argmax(self._next_logits(acts)))
            yield token
            if token in self.eos_ids:
                return
            taps, cache = self.bundle.step(np.array([[token]], np.int64), cache)
            acts = np.concatenate([acts, self._acts(taps)], axis=1)

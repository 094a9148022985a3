"""The device's frozen backbone with taps at the shortcut layers (design §3).

Forward only, under ``torch.inference_mode``. A forward hook on each shortcut layer selects the token
positions the loss reads and encodes them at once, so at most one layer's raw activation is alive at a
time; ``output_hidden_states`` (which keeps all L layers) is never used. Layers above the top shortcut are
dropped, and the LM head is never run here.
"""

from __future__ import annotations

import inspect
from typing import Callable

import torch
from torch import nn

from mobillm.backbone import decoder_layers, validate_shortcuts

Encoded = dict[str, torch.Tensor]


class TappedBackbone(nn.Module):
    """Runs the decoder stack up to the top shortcut layer and returns the encoded taps.

    ``encode`` turns one layer's selected activations into tensors for the wire (a codec's ``encode``);
    with ``None`` the raw tensors are returned.
    """

    def __init__(self, model: nn.Module, shortcuts: list[int]):
        super().__init__()
        layers = decoder_layers(model)
        self.num_layers = len(layers)
        self.shortcuts = validate_shortcuts(list(shortcuts), self.num_layers)
        self.decoder = model.get_decoder()
        # Truncate in place: layers above the top shortcut are never run (and their memory is released).
        self.decoder.layers = layers[: self.shortcuts[-1]]
        self.decoder.requires_grad_(False).eval()
        self._selector: Callable[[torch.Tensor], torch.Tensor] | None = None
        self._encode: Callable[[torch.Tensor], Encoded] | None = None
        self._taps: list[Encoded] = []
        self._keep: torch.Tensor | None = None
        #: raw top-shortcut hidden states at the positions ``keep_top`` marked in the last forward, (N, H)
        self.kept_top: torch.Tensor | None = None
        self._hooks = [self.decoder.layers[s - 1].register_forward_hook(self._hook) for s in self.shortcuts]
        # transformers 5.x names the KV cache ``cache``; older releases ``past_key_values``
        params = inspect.signature(self.decoder.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"

    def close(self) -> None:
        """Remove the hooks (the wrapped model keeps its truncated layer list)."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    def _hook(self, module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output  # (B, T, H)
        selected = self._selector(hidden)  # (B, H) pivot tokens, or (B, T, H)
        self._taps.append(self._encode(selected) if self._encode else selected)
        if self._keep is not None and len(self._taps) == len(self.shortcuts):
            self.kept_top = hidden[self._keep].float().clone()
        return output

    @torch.inference_mode()
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        last_index: torch.Tensor | None = None,
        encode: Callable[[torch.Tensor], Encoded] | None = None,
        keep_top: torch.Tensor | None = None,
    ) -> list[Encoded] | list[torch.Tensor]:
        """One encoded dict (or raw tensor) per shortcut layer, bottom to top.

        With ``last_index`` (B,) only the pivot token of each row is kept (classification); without it all
        positions are kept (causal LM, token-mixing side blocks). ``keep_top`` (B, T) bool also keeps the top
        shortcut's *raw* hidden states at those positions in :attr:`kept_top` — the bare backbone's view,
        before any codec, for scoring its zero-shot predictions.
        """
        if last_index is not None:
            rows = torch.arange(input_ids.shape[0])
            selector = lambda h: h[rows, last_index]  # noqa: E731
        else:
            selector = lambda h: h  # noqa: E731
        return self._run(selector, encode, keep_top, input_ids=input_ids, attention_mask=attention_mask, use_cache=False)[1]

    @torch.inference_mode()
    def step(self, input_ids: torch.Tensor, cache=None, encode: Callable[[torch.Tensor], Encoded] | None = None):
        """Generation: taps of the new tokens (every position) on top of the backbone's KV cache.

        Returns ``(taps, cache)``; pass the cache back with the next tokens (unpadded rows only).
        """
        past = 0 if cache is None else cache.get_seq_length()
        mask = torch.ones(input_ids.shape[0], past + input_ids.shape[1], dtype=torch.long)
        out, taps = self._run(lambda h: h, encode, None, input_ids=input_ids, attention_mask=mask, use_cache=True,
                              **{self._cache_arg: cache})
        return taps, getattr(out, self._cache_arg)

    def _run(self, selector, encode, keep_top, **decoder_args):
        self._selector, self._encode = selector, encode
        self._taps, self._keep, self.kept_top = [], keep_top, None
        try:
            return self.decoder(**decoder_args), self._taps
        finally:
            self._taps, self._selector, self._encode, self._keep = [], None, None, None


def stack_taps(taps: list[torch.Tensor]) -> torch.Tensor:
    """Per-layer activations -> one tensor with the shortcut axis before the hidden axis: (B, [T,] M, H)."""
    return torch.stack(taps, dim=-2)

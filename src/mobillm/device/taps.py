"""The device's frozen backbone with taps at the shortcut layers (design §3).

Forward only, under ``torch.inference_mode``. A forward hook on each shortcut layer selects the token
positions the loss reads and encodes them at once, so at most one layer's raw activation is alive at a
time; ``output_hidden_states`` (which keeps all L layers) is never used. Layers above the top shortcut are
dropped, and the LM head is never run here.
"""

from __future__ import annotations

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
        self._hooks = [self.decoder.layers[s - 1].register_forward_hook(self._hook) for s in self.shortcuts]

    def close(self) -> None:
        """Remove the hooks (the wrapped model keeps its truncated layer list)."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    def _hook(self, module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output  # (B, T, H)
        selected = self._selector(hidden)  # (B, H) pivot tokens, or (B, T, H)
        self._taps.append(self._encode(selected) if self._encode else selected)
        return output

    @torch.inference_mode()
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        last_index: torch.Tensor | None = None,
        encode: Callable[[torch.Tensor], Encoded] | None = None,
    ) -> list[Encoded] | list[torch.Tensor]:
        """One encoded dict (or raw tensor) per shortcut layer, bottom to top.

        With ``last_index`` (B,) only the pivot token of each row is kept (classification); without it all
        positions are kept (causal LM, token-mixing side blocks).
        """
        if last_index is not None:
            rows = torch.arange(input_ids.shape[0])
            self._selector = lambda h: h[rows, last_index]
        else:
            self._selector = lambda h: h
        self._encode = encode
        self._taps = []
        try:
            self.decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
            return self._taps
        finally:
            self._taps, self._selector, self._encode = [], None, None


def stack_taps(taps: list[torch.Tensor]) -> torch.Tensor:
    """Per-layer activations -> one tensor with the shortcut axis before the hidden axis: (B, [T,] M, H)."""
    return torch.stack(taps, dim=-2)

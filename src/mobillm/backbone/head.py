"""The backbone's frozen final norm + LM head (held by the server), the backbone's fingerprint for the session
handshake, and the verbalizer's label tokens."""

from __future__ import annotations

import hashlib

import torch
from torch import nn

from mobillm.exceptions import ConfigError, ModelLoadError


class FrozenHead(nn.Module):
    """The backbone's final norm (+ OPT's ``project_out``) and LM head, frozen. Lives on the server.

    ``token_ids`` restricts the head to a few vocabulary rows (a verbalizer), so classification never
    multiplies by the whole vocabulary.
    """

    def __init__(
        self, norm: nn.Module, lm_head: nn.Linear, project_out: nn.Module | None = None, num_layers: int | None = None
    ):
        super().__init__()
        self.norm = norm
        self.project_out = project_out
        self.lm_head = lm_head
        self.num_layers = num_layers  # L of the backbone it was taken from (None: not known)
        self.requires_grad_(False)

    @property
    def hidden_size(self) -> int:
        """H: the width of the hidden states it reads."""
        return (self.lm_head if self.project_out is None else self.project_out).weight.shape[1]

    @property
    def vocab_size(self) -> int:
        return self.lm_head.weight.shape[0]

    @classmethod
    def from_model(cls, model: nn.Module) -> "FrozenHead":
        decoder = model.get_decoder()
        names = ("norm", "final_layer_norm", "ln_f")
        norm = next((getattr(decoder, n) for n in names if getattr(decoder, n, None) is not None), None)
        if norm is None:
            raise ModelLoadError(f"{type(model).__name__}: cannot find the decoder's final norm")
        return cls(norm, model.get_output_embeddings(), getattr(decoder, "project_out", None),
                   getattr(model.config, "num_hidden_layers", None))

    def normed(self, hidden: torch.Tensor) -> torch.Tensor:
        """What the LM head reads: the final norm (and OPT's projection) applied to a top hidden state."""
        hidden = self.norm(hidden)
        return hidden if self.project_out is None else self.project_out(hidden)

    def forward(self, hidden: torch.Tensor, token_ids: torch.Tensor | None = None) -> torch.Tensor:
        hidden = self.normed(hidden)
        weight = self.lm_head.weight if token_ids is None else self.lm_head.weight[token_ids]
        bias = self.lm_head.bias
        if bias is not None and token_ids is not None:
            bias = bias[token_ids]
        return nn.functional.linear(hidden, weight, bias)


def fingerprint(model: nn.Module) -> str:
    """Identity of a backbone for the session handshake: its config shape plus a hash of the head weights.

    A device checkpoint carries its source's fingerprint: its head is quantized, its identity is not."""
    cfg = model.config
    if getattr(cfg, "mobillm_fingerprint", None):
        return cfg.mobillm_fingerprint
    digest = hashlib.sha256()
    digest.update(f"{cfg.model_type}:{cfg.hidden_size}:{cfg.num_hidden_layers}:{cfg.vocab_size}".encode())
    for tensor in FrozenHead.from_model(model).state_dict().values():
        digest.update(tensor.detach().to(torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:32]


def label_token_ids(tokenizer, label_words: list[str]) -> list[int]:
    """First token of each label word (with its leading space); distinct words must start differently."""
    ids = [tokenizer(w, add_special_tokens=False).input_ids[0] for w in label_words]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"label words {label_words} share a first token; choose words that start differently")
    return ids

"""The side network: a ladder of parallel adapters fed by the backbone's shortcut activations (design §2).

    h0 = 0
    x_i = mu_i * h_{i-1} + (1 - mu_i) * down_i(norm(A_i))     mu_i = sigmoid(alpha_i / T), T = 1 unless set
    h_i = block_i(x_i)                                        residual block of width r
    out = A_top + up(h_M)                                     up zero-initialised
    logits = frozen_head(out)                                 final norm + LM head of the backbone

Because ``up`` starts at zero, step 0 reproduces the backbone's own (zero-shot) predictions exactly.

With ``members = K > 1`` (classification) the side network is an ensemble: K such ladders (``members.j.*``), each
initialised at random on its own, trained on its own loss (``training.step.side_loss``), and scored by the mean of
their class probabilities:

    log p(y) = logsumexp_j log_softmax(logits_j)(y) - log K
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from mobillm.exceptions import ConfigError
from mobillm.files import SIDE_CONFIG_NAME, SIDE_WEIGHTS_NAME
from mobillm.sidenet.blocks import SIDE_BLOCKS
from mobillm.sidenet.config import SideConfig

if TYPE_CHECKING:  # a head is passed in; the side network never loads or builds one
    from mobillm.backbone import FrozenHead


class SideNetwork(nn.Module):
    def __init__(self, config: SideConfig):
        """Randomly initialised, whatever ``config.init`` says: a side network to train starts from
        :func:`mobillm.sidenet.init.new_side_network`, which copies the backbone's layers when ``init == "backbone"``
        (loading a trained one: :meth:`from_pretrained`)."""
        super().__init__()
        self.config = config
        #: An ensemble's ladders, each a one-ladder SideNetwork (``None``: this is one ladder).
        self.members = None
        if config.members > 1:
            one = config.model_copy(update={"members": 1})
            self.members = nn.ModuleList(SideNetwork(one) for _ in range(config.members))
            return
        H, r, M = config.hidden_size, config.width, len(config.shortcuts)
        block = SIDE_BLOCKS[config.block]
        # Backbone activations carry a few very large channels; a scale-free norm keeps down_i well-conditioned.
        self.in_norm = nn.RMSNorm(H, elementwise_affine=False)
        self.down = nn.ModuleList(nn.Linear(H, r) for _ in range(M))
        self.gate = nn.Parameter(torch.zeros(M))  # alpha_i; mu_i = sigmoid(alpha_i / T) = 0.5 at start
        self.blocks = nn.ModuleList(block(r, config.attention_heads, config.dropout, not config.bidirectional) for _ in range(M))
        self.up = nn.Linear(r, H)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        self.classifier = nn.Linear(H, config.num_labels) if config.head == "linear" else None

    def hidden(self, acts: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, [T,] M, H) shortcut activations -> (B, [T,] H) corrected top hidden state (one ladder only)."""
        if self.members is not None:
            raise ValueError(f"an ensemble of {len(self.members)} ladders has no single hidden state: score it "
                             "through forward(), or each of its members")
        if acts.shape[-2:] != (len(self.down), self.config.hidden_size):
            raise ValueError(f"activations of shape {tuple(acts.shape)}: expected (..., {len(self.down)}, {self.config.hidden_size})")
        mu = torch.sigmoid(self.gate / self.config.gate_temperature)
        h = torch.zeros(*acts.shape[:-2], self.config.width, dtype=acts.dtype, device=acts.device)  # (B, [T,] r)
        for i, (down, block) in enumerate(zip(self.down, self.blocks)):
            x = mu[i] * h + (1 - mu[i]) * down(self.in_norm(acts[..., i, :]))
            h = block(x, attention_mask)
        return acts[..., -1, :] + self.up(h)  # (B, [T,] H)

    def forward(
        self,
        acts: torch.Tensor,
        head: FrozenHead,
        attention_mask: torch.Tensor | None = None,
        last_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits: (B, num_labels) for classification, (B, T, vocab) for causal LM.

        For classification from all positions (token-mixing blocks), ``last_index`` picks the pivot token. An
        ensemble returns the log of its members' mean class probabilities.
        """
        if self.members is not None:
            logp = [m(acts, head, attention_mask, last_index).log_softmax(-1) for m in self.members]  # K x (B, C)
            return torch.stack(logp).logsumexp(0) - math.log(len(logp))
        out = self.hidden(acts, attention_mask)
        if self.config.task == "classification" and out.dim() == 3:
            out = out[torch.arange(out.shape[0]), last_index]  # (B, H)
        return self.logits(out, head)

    def logits(self, out: torch.Tensor, head: FrozenHead) -> torch.Tensor:
        """Corrected top hidden states (..., H) -> logits: classifier, verbalizer rows, or the whole LM head.

        With a fresh side network ``out`` is the backbone's own top hidden state, so this is also how the bare
        backbone is scored (zero-shot). An ensemble maps through its first member (its members' heads differ only
        with a trained ``linear`` classifier)."""
        if self.members is not None:
            return self.members[0].logits(out, head)
        if self.classifier is not None:
            return self.classifier(head.normed(out))
        ids = self.config.label_token_ids if self.config.head == "verbalizer" else None
        return head(out, None if ids is None else torch.tensor(ids, device=out.device))

    # -- checkpoints (PEFT-shaped) -------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``side_config.json`` + ``side_network.safetensors`` (trainable tensors only)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / SIDE_CONFIG_NAME).write_text(self.config.model_dump_json(indent=2) + "\n")
        tensors = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        save_file(tensors, directory / SIDE_WEIGHTS_NAME, metadata={"format": "pt"})
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "SideNetwork":
        directory = Path(directory)
        config_path, weights_path = directory / SIDE_CONFIG_NAME, directory / SIDE_WEIGHTS_NAME
        if not config_path.is_file() or not weights_path.is_file():
            raise ConfigError(f"{directory}: expected {SIDE_CONFIG_NAME} and {SIDE_WEIGHTS_NAME} (a saved side network)")
        return cls.from_state(SideConfig.from_pretrained(directory), load_file(weights_path))

    @classmethod
    def from_state(cls, config: SideConfig, state: dict[str, torch.Tensor]) -> "SideNetwork":
        """Rebuild from a config and tensors (a checkpoint or a ``SideNet`` message), strictly."""
        model = cls(config)
        expected = model.state_dict()
        problems = [f"missing tensor {k}" for k in expected if k not in state]
        problems += [f"unexpected tensor {k}" for k in state if k not in expected]
        problems += [
            f"{k}: shape {tuple(state[k].shape)}, expected {tuple(v.shape)}"
            for k, v in expected.items()
            if k in state and state[k].shape != v.shape
        ]
        if problems:
            raise ConfigError(problems)
        model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})
        return model

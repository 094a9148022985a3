"""Training the side network from encoded activations: what the server does with each ``Batch``.

The single-process ``mobillm train --method side`` and the server's sessions both drive this class, so
the two paths share one ``train_step`` and one decoding of the wire format.
"""

from __future__ import annotations

import copy

import torch

from mobillm.backbone import FrozenHead
from mobillm.sidenet.model import SideNetwork
from mobillm.train_config import TrainConfig
from mobillm.training.step import make_optimizer, side_loss, train_step
from mobillm.wire.codecs import decode_layers, get_codec

Encoded = dict[str, torch.Tensor]


class SideTrainer:
    def __init__(self, side: SideNetwork, head: FrozenHead, codec: str, config: TrainConfig, total_steps: int):
        self.side, self.head, self.config = side, head, config
        self.codec = get_codec(codec)
        self.params = [p for p in side.parameters() if p.requires_grad]
        self.optimizer, self.scheduler = make_optimizer(
            self.params, config.learning_rate, config.weight_decay, max(1, total_steps), config.warmup_ratio, config.schedule
        )
        self.step_count = 0

    def activations(self, taps: list[Encoded]) -> torch.Tensor:
        return decode_layers(self.codec, taps)

    def train_batch(
        self,
        taps: list[Encoded],
        labels: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        last_index: torch.Tensor | None = None,
        loss_mask: torch.Tensor | None = None,
        replay: bool = False,
    ) -> float:
        """One optimizer step. A ``replay`` step (a batch trained on again while the server waits) leaves the
        learning-rate schedule and the step count where they are: those follow the device's batches."""
        acts = self.activations(taps)
        self.side.train()
        loss = train_step(
            lambda: side_loss(self.side, self.head, acts, labels, attention_mask, last_index, loss_mask),
            self.params,
            self.optimizer,
            None if replay else self.scheduler,
            self.config.max_grad_norm,
        )
        if not replay:
            self.step_count += 1
        return loss

    def snapshot(self) -> dict[str, torch.Tensor]:
        """A copy of the side network's weights (for keeping the best validation checkpoint)."""
        return copy.deepcopy(self.side.state_dict())

    def restore(self, state: dict[str, torch.Tensor]) -> None:
        self.side.load_state_dict(state)

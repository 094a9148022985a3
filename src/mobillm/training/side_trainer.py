"""Training the side network from encoded activations: what the server does with each ``Batch``.

The single-process ``mobillm train --method side`` and the server's sessions both drive this class, so
the two paths share one ``train_step`` and one decoding of the wire format.

The trainer owns where training runs (``device``, see :func:`mobillm.training.device.resolve_device`): the side
network, its optimizer state and a copy of the frozen head live there; each batch is decoded on the CPU (the
codecs' arithmetic) and moved there once, with its labels and masks. Losses come back as Python floats.

With ``ema_gamma`` the trainer also keeps a power-function average of the weights (``torch.optim.swa_utils``'s
:class:`AveragedModel`), and :attr:`SideTrainer.model` — what is validated, kept as the best and shipped — is that
average.
"""

from __future__ import annotations

import copy

import torch
from torch.optim.swa_utils import AveragedModel

from mobillm.backbone import FrozenHead
from mobillm.scoring import loss_logits
from mobillm.sidenet.model import SideNetwork
from mobillm.train_config import TrainConfig
from mobillm.training.step import bag_weights, drop_positions, make_optimizer, side_loss, train_step
from mobillm.wire.codecs import decode_layers, get_codec

Encoded = dict[str, torch.Tensor]


class SideTrainer:
    def __init__(
        self, side: SideNetwork, head: FrozenHead, codec: str, config: TrainConfig, total_steps: int,
        device: torch.device | str = "cpu",
    ):
        """Moves ``side`` to ``device`` (in place) and keeps ``head`` there: the head itself on the CPU, a copy
        elsewhere (the caller's head stays where it was, for the device-side scoring that shares it)."""
        self.device = torch.device(device)
        self.side = side.to(self.device)
        self.head = head if _on(head, self.device) else copy.deepcopy(head).to(self.device)
        self.config = config
        self.codec = get_codec(codec)
        #: Clipped each on its own: an ensemble's members, else all parameters.
        self.groups = [[p for p in m.parameters() if p.requires_grad] for m in side.members or [side]]
        self.params = [p for group in self.groups for p in group]
        self.optimizer, self.scheduler = make_optimizer(
            self.params, config.learning_rate, config.weight_decay, max(1, total_steps), config.warmup_ratio, config.schedule,
            config.warmup_steps,
        )
        self.step_count = 0
        self.average = None if config.ema_gamma is None else AveragedModel(self.side, multi_avg_fn=power_ema(config.ema_gamma))

    @property
    def model(self) -> SideNetwork:
        """The side network to score, keep and ship: the weights' average with ``ema_gamma``, else the trained one."""
        return self.side if self.average is None else self.average.module

    def activations(self, taps: list[Encoded]) -> torch.Tensor:
        """Decode one batch's taps to (B, [T,] M, H) on the trainer's device."""
        return decode_layers(self.codec, taps).to(self.device)

    def on_device(self, *tensors: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        """Labels and masks moved to the trainer's device (``None`` stays ``None``)."""
        return tuple(None if t is None else t.to(self.device) for t in tensors)

    def logits(
        self, taps: list[Encoded], labels: torch.Tensor, attention_mask: torch.Tensor | None = None,
        last_index: torch.Tensor | None = None, loss_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits, targets)`` of one batch on the trainer's device, for scoring (``Evaluator.add``)."""
        acts = self.activations(taps)
        labels, attention_mask, last_index, loss_mask = self.on_device(labels, attention_mask, last_index, loss_mask)
        return loss_logits(self.model, self.head, acts, labels, attention_mask, last_index, loss_mask)

    def train_batch(
        self,
        taps: list[Encoded],
        labels: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        last_index: torch.Tensor | None = None,
        loss_mask: torch.Tensor | None = None,
        replay: bool = False,
        sample_ids: torch.Tensor | None = None,
    ) -> float:
        """One optimizer step. A ``replay`` step (a batch trained on again while the server waits) leaves the
        learning-rate schedule and the step count where they are: those follow the device's batches. An ensemble
        with ``bagging`` needs the batch's ``sample_ids`` (they fix each member's weights)."""
        acts = self.activations(taps)
        labels, attention_mask, last_index, loss_mask = self.on_device(labels, attention_mask, last_index, loss_mask)
        self.side.train()
        if self.config.token_dropout and self.side.config.task == "classification" and attention_mask is not None \
                and last_index is not None:  # token-mixing blocks: every position was sent
            attention_mask = drop_positions(attention_mask, last_index, self.config.token_dropout)
        smoothing, weights = self.config.label_smoothing, None
        if self.config.bagging and self.side.members is not None:
            if sample_ids is None:
                raise ValueError("bagging: the batch's sample_ids are needed to weigh each member's samples")
            weights = bag_weights(sample_ids, len(self.side.members), self.config.seed).to(self.device)
        loss = train_step(
            lambda: side_loss(self.side, self.head, acts, labels, attention_mask, last_index, loss_mask,
                              label_smoothing=smoothing, weights=weights),
            self.groups,
            self.optimizer,
            None if replay else self.scheduler,
            self.config.max_grad_norm,
        ) / len(self.groups)  # an ensemble: its members' mean loss
        if not replay:
            self.step_count += 1
        if self.average is not None:
            self.average.update_parameters(self.side)
        return loss

    def snapshot(self) -> dict[str, torch.Tensor]:
        """A copy of :attr:`model`'s weights (for keeping the best validation checkpoint)."""
        return copy.deepcopy(self.model.state_dict())

    def restore(self, state: dict[str, torch.Tensor]) -> None:
        """Put a :meth:`snapshot` back into :attr:`model` (the network that is then scored and shipped)."""
        self.model.load_state_dict(state)


def power_ema(gamma: float):
    """``AveragedModel``'s ``multi_avg_fn`` of the power-function EMA (Karras et al. 2024, arXiv 2312.02696, eq. 2):
    after step t the average keeps (1 - 1/t)^(gamma + 1) of itself, so step s weighs about s^gamma and the window is a
    fixed fraction of the steps so far — however many there will be. gamma 0 is the uniform (Polyak) average.
    In place on all parameters at once (one read of the step count per update, as torch's own EMA)."""

    @torch.no_grad()
    def update(averages: list[torch.Tensor], currents: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        t = int(num_averaged) + 1  # this update's step; the first update (t = 1) is a plain copy
        torch._foreach_lerp_(averages, currents, 1 - (1 - 1 / t) ** (gamma + 1))

    return update


def _on(module: torch.nn.Module, device: torch.device) -> bool:
    """True when every tensor of ``module`` already lies on ``device``."""
    tensors = [*module.parameters(), *module.buffers()]
    return all(t.device.type == device.type and (device.index is None or t.device.index == device.index) for t in tensors)

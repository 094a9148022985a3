"""The one optimisation step every path uses (``mobillm train``, the server's session, the benchmarks)."""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mobillm.backbone import FrozenHead
from mobillm.scoring import loss_logits
from mobillm.sidenet.model import SideNetwork


def make_optimizer(
    params: list[nn.Parameter], lr: float, weight_decay: float, total_steps: int, warmup_ratio: float, schedule: str,
    warmup_steps: int | None = None,
):
    """AdamW with linear warm-up (``warmup_steps``, else ``warmup_ratio`` of ``total_steps``), then constant, linear
    or cosine decay to zero, or ``rsqrt``: ``sqrt(w / step)`` past the warm-up's w steps, the inverse-square-root
    decay of Vaswani et al. 2017 (also Zhai et al. 2022's "infinite" schedule before its cool-down), which needs no
    total. ``constant`` and ``rsqrt`` with ``warmup_steps`` never read ``total_steps``."""
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    warmup = int(total_steps * warmup_ratio) if warmup_steps is None else warmup_steps

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if schedule == "rsqrt":
            return math.sqrt((warmup + 1) / (step + 1))
        if schedule == "constant" or total_steps <= warmup:
            return 1.0
        progress = min(1.0, (step - warmup) / (total_steps - warmup))
        return 1.0 - progress if schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def train_step(
    loss_fn: Callable[[], torch.Tensor], groups: list[list[nn.Parameter]], optimizer, scheduler, max_grad_norm: float,
) -> float:
    """Forward via ``loss_fn``, backward, clip each of ``groups`` to ``max_grad_norm`` on its own (an ensemble's
    members, or all parameters as one group), step (the schedule too, unless ``scheduler`` is None). Returns the loss."""
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn()
    loss.backward()
    for params in groups:
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    return float(loss.detach())


def side_loss(
    side: SideNetwork, head: FrozenHead, acts: torch.Tensor, labels: torch.Tensor, *extra, label_smoothing: float = 0.0,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean cross-entropy of the side network at the positions the loss reads (see ``scoring.loss_logits``). An
    ensemble's is the sum of its members' own losses — not the loss of their mean — so that each member's gradient
    is the one it would get alone (independent members, as deep ensembles train them); ``weights`` (K, B), from
    :func:`bag_weights`, weigh member j's sample b (classification)."""
    members = [side] if side.members is None else side.members
    total = 0.0
    for j, member in enumerate(members):
        logits, targets = loss_logits(member, head, acts, labels, *extra)
        if weights is None:
            total = total + F.cross_entropy(logits, targets, label_smoothing=label_smoothing)
        else:
            losses = F.cross_entropy(logits, targets, label_smoothing=label_smoothing, reduction="none")  # (B,)
            total = total + (losses * weights[j]).mean()
    return total


#: P(Poisson(1) <= k), k = 0..9: the draws of :func:`bag_weights` by inverse transform (P(> 9) < 1.2e-7)
_POISSON_CDF = torch.tensor([sum(math.exp(-1) / math.factorial(i) for i in range(k + 1)) for k in range(10)],
                            dtype=torch.float64)


def bag_weights(sample_ids: torch.Tensor, members: int, seed: int) -> torch.Tensor:
    """(B,) sample ids -> (members, B) Poisson(1) weights, member j's for sample i a function of (seed, j, i) only —
    the same whenever the sample comes back (a cached epoch, a resent batch): a bootstrap replicate per member."""
    ids = [int(i) for i in sample_ids]
    u = torch.tensor([[np.random.default_rng((seed, j, i)).random() for i in ids] for j in range(members)],
                     dtype=torch.float64)  # (K, B) uniforms
    return (u[..., None] > _POISSON_CDF).sum(-1).to(torch.float32)


def drop_positions(attention_mask: torch.Tensor, last_index: torch.Tensor, p: float) -> torch.Tensor:
    """(B, T) mask -> a copy with each real position but ``last_index`` (B,) (the pivot, which the loss reads)
    set to 0 with probability ``p``, from torch's global generator (seeded with the run)."""
    drop = torch.rand(attention_mask.shape, device=attention_mask.device) < p
    drop[torch.arange(drop.shape[0], device=drop.device), last_index] = False
    return attention_mask.masked_fill(drop, 0)

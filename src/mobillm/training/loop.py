"""Epochs with validation, best-checkpoint keeping and early stopping — shared by every method."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterable

from tqdm.auto import tqdm

from mobillm.training.evaluation import selection_score


@dataclass
class FitResult:
    best_score: float
    best_epoch: float
    steps: int
    stopped_early: bool
    history: list[dict] = field(default_factory=list)


def fit(
    *,
    num_epochs: int,
    batches: Callable[[int], Iterable],
    steps_per_epoch: int,
    train_on: Callable[[object], float],
    validate: Callable[[], dict],
    snapshot: Callable[[], object],
    restore: Callable[[object], None],
    evals_per_epoch: int = 1,
    patience: int = 3,
    initial_score: float = -math.inf,
    desc: str = "train",
    on_step: Callable[[int, float], None] | None = None,
    progress: bool = True,
) -> FitResult:
    """Train for up to ``num_epochs``; validate ``evals_per_epoch`` times an epoch; keep the best weights.

    ``validate`` returns a split's scores (``training.evaluation``); the best is the highest
    :func:`selection_score`. ``initial_score`` is that score before training (zero-shot): training must beat
    it to be kept.
    """
    eval_at = {max(1, round(steps_per_epoch * (k + 1) / evals_per_epoch)) for k in range(evals_per_epoch)}
    # Snapshot the starting point only when it is a real contender (side tuning's zero-shot step 0).
    best, best_state, best_epoch = initial_score, snapshot() if initial_score > -math.inf else None, 0.0
    history, bad, step, stopped = [], 0, 0, False
    for epoch in range(num_epochs):
        bar = tqdm(  # disable=None: bars on terminals only
            batches(epoch), total=steps_per_epoch, desc=f"{desc} epoch {epoch + 1}/{num_epochs}", leave=False,
            disable=None if progress else True,
        )
        for i, batch in enumerate(bar, start=1):
            loss = train_on(batch)
            step += 1
            bar.set_postfix(loss=f"{loss:.4f}")
            if on_step:
                on_step(step, loss)
            if i in eval_at:
                scores = validate()
                score = selection_score(scores)
                history.append({
                    "epoch": round(epoch + i / steps_per_epoch, 3), "step": step, "loss": loss,
                    **{f"val_{k}": v for k, v in scores.items() if k != "n"},
                })
                if score > best:
                    best, best_state, best_epoch, bad = score, snapshot(), epoch + i / steps_per_epoch, 0
                else:
                    bad += 1
                stopped = bad >= patience
                if stopped:
                    break
        bar.close()
        if stopped:
            break
    if best_state is not None:
        restore(best_state)
    return FitResult(best, best_epoch, step, stopped, history)

"""Epochs with validation, best-checkpoint keeping and early stopping — shared by every method."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterable

from tqdm.auto import tqdm

from mobillm.scoring import selection_score


@dataclass
class FitResult:
    best_score: float
    best_epoch: float
    steps: int
    stopped_early: bool
    history: list[dict] = field(default_factory=list)


@dataclass
class FitState:
    """Where :func:`fit` stands between epochs — what a checkpoint must hold to resume it exactly."""

    epoch: int = 0  # the next epoch to run
    step: int = 0
    best: float = -math.inf
    best_state: object = None
    best_epoch: float = 0.0
    history: list[dict] = field(default_factory=list)
    bad: int = 0  # validations without gain
    stopped: bool = False


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
    progress: bool = True,
    start: FitState | None = None,
    on_epoch_end: Callable[[FitState], None] | None = None,
) -> FitResult:
    """Train for up to ``num_epochs``; validate ``evals_per_epoch`` times an epoch; keep the best weights.

    ``validate`` returns a split's scores (``training.evaluation``); the best is the highest
    :func:`selection_score`. ``initial_score`` is that score before training (zero-shot): training must beat
    it to be kept. ``start`` resumes from a :class:`FitState` that ``on_epoch_end`` was given (a checkpoint).
    Per step ``fit`` calls ``train_on`` only (which logs what it likes); ``validate`` at the evaluation points.
    """
    eval_at = {max(1, round(steps_per_epoch * (k + 1) / evals_per_epoch)) for k in range(evals_per_epoch)}
    # Snapshot the starting point only when it is a real contender (side tuning's zero-shot step 0).
    s = start or FitState(best=initial_score, best_state=snapshot() if initial_score > -math.inf else None)
    for epoch in range(s.epoch, num_epochs):
        if s.stopped:
            break
        bar = tqdm(  # disable=None: bars on terminals only
            batches(epoch), total=steps_per_epoch, desc=f"{desc} epoch {epoch + 1}/{num_epochs}", leave=False,
            disable=None if progress else True,
        )
        for i, batch in enumerate(bar, start=1):
            loss = train_on(batch)
            s.step += 1
            bar.set_postfix(loss=f"{loss:.4f}")
            if i in eval_at:
                scores = validate()
                score = selection_score(scores)
                s.history.append({
                    "epoch": round(epoch + i / steps_per_epoch, 3), "step": s.step, "loss": loss,
                    **{f"val_{k}": v for k, v in scores.items() if k != "n"},
                })
                if score > s.best:
                    s.best, s.best_state, s.best_epoch, s.bad = score, snapshot(), epoch + i / steps_per_epoch, 0
                else:
                    s.bad += 1
                s.stopped = s.bad >= patience
                if s.stopped:
                    break
        bar.close()
        s.epoch = epoch + 1
        if on_epoch_end:
            on_epoch_end(s)
    if s.best_state is not None:
        restore(s.best_state)
    return FitResult(s.best, s.best_epoch, s.step, s.stopped, s.history)

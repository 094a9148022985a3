"""Scoring one split: the same arithmetic on the device (local inference) and the server (eval batches).

The device imports this module but never the optimisation step (``training.step``): it only scores. The module
imports no torch itself: :class:`Evaluator` and :func:`score_batches` take torch tensors or numpy arrays alike (the
bundle runtime's device scores with them in numpy; causal-LM losses need torch).

Classification reports accuracy next to balanced accuracy and the majority-class baseline; causal LM reports
the mean cross-entropy over response tokens, its perplexity and next-token accuracy. Model selection reads
:func:`selection_score` (higher is better for both).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

from mobillm.metrics import classification_scores

if TYPE_CHECKING:
    import torch

    from mobillm.backbone import FrozenHead
    from mobillm.sidenet.model import SideNetwork

__all__ = ["Evaluator", "Scorer", "best_fields", "loss_logits", "score_batches", "selection_score"]


def loss_logits(
    side: SideNetwork,
    head: FrozenHead,
    acts: torch.Tensor,
    labels: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    last_index: torch.Tensor | None = None,
    loss_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits, targets)`` at the positions the loss reads — training and scoring share it.

    Classification: ``labels`` (B,) class ids, logits (B, C). Causal LM: ``labels`` (B, T) next-token ids
    already shifted by the device, read where ``loss_mask`` (B, T) is set; only those positions go through
    the vocabulary-sized LM head, logits (N, V).
    """
    if side.config.task == "classification":
        return side(acts, head, attention_mask=attention_mask, last_index=last_index), labels
    if loss_mask is None:
        raise ValueError("a causal-LM batch needs its loss_mask")
    mask = loss_mask.bool()
    return side.logits(side.hidden(acts, attention_mask)[mask], head), labels[mask]


class Evaluator:
    """Accumulates ``(logits, targets)`` of a split's batches (see :func:`loss_logits`): torch tensors, or numpy
    arrays for classification. It keeps per sample only the class ids (classification) or running sums (causal
    LM), so scoring a split batch by batch holds no batch beyond the current one."""

    def __init__(self, task: str, num_labels: int = 0):
        self.task, self.num_labels = task, num_labels
        self.sample_ids: list[int] = []
        self.predictions: list[int] = []
        self._labels: list[int] = []
        self.loss_sum, self.tokens, self.correct = 0.0, 0, 0

    def add(self, logits: Any, targets: Any, sample_ids: Any) -> None:
        """One batch: logits (B, C) or (N, V), targets (B,) or (N,), sample_ids (B,)."""
        preds = logits.argmax(-1)
        if self.task == "classification":
            self.sample_ids += sample_ids.tolist()
            self.predictions += preds.tolist()
            self._labels += targets.tolist()
            return
        import torch  # causal LM: the cross-entropy is torch's (the bundle runtime runs classification only)
        import torch.nn.functional as F

        with torch.no_grad():
            self.loss_sum += float(F.cross_entropy(logits.float(), targets, reduction="sum"))
        self.tokens += targets.numel()
        self.correct += int((preds == targets).sum())

    def scores(self) -> dict[str, float]:
        if self.task == "classification":
            return classification_scores(self.predictions, self._labels, self.num_labels)
        if not self.tokens:
            return {"loss": float("nan"), "perplexity": float("nan"), "token_accuracy": float("nan"), "n_tokens": 0}
        loss = self.loss_sum / self.tokens
        return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "token_accuracy": self.correct / self.tokens,
                "n_tokens": self.tokens}

    def agreement(self, sample_ids: Iterable[int], predictions: Iterable[int]) -> float:
        """The share of this split's predictions equal to another scorer's for the same sample (the server's
        eval predictions): 1.0 where the two sides predict alike."""
        theirs = dict(zip(sample_ids, predictions))
        return sum(int(theirs.get(i) == p) for i, p in zip(self.sample_ids, self.predictions)) / max(1, len(self.sample_ids))


Item = TypeVar("Item")
#: Turns one batch into ``(logits, targets, sample_ids)`` for :meth:`Evaluator.add`.
Scorer = Callable[[Item], tuple[Any, Any, Any]]


def score_batches(batches: Iterable[Item], task: str, num_labels: int, *scorers: Scorer) -> list[Evaluator]:
    """Score a split batch by batch: each batch goes through every scorer into that scorer's :class:`Evaluator`
    (one per scorer, in order), then is dropped. With ``batches`` a generator that forwards the split as it is
    read, one forward pass feeds several scores (the side network's and the zero-shot backbone's) and memory
    does not grow with the split."""
    evaluators = [Evaluator(task, num_labels) for _ in scorers]
    for batch in batches:
        for evaluator, scorer in zip(evaluators, scorers):
            evaluator.add(*scorer(batch))
    return evaluators


def selection_score(scores: dict[str, float]) -> float:
    """What model selection maximises: accuracy (classification) or minus the response loss (causal LM)."""
    return scores["accuracy"] if "accuracy" in scores else -scores["loss"]


def best_fields(task: str, best_score: float) -> dict[str, float]:
    """The best :func:`selection_score` under its own name, for summaries."""
    return {"best_val_accuracy": best_score} if task == "classification" else {"best_val_loss": -best_score}

"""Inversion attacks an honest-but-curious server can run with what it holds: the public backbone (the Hello's
fingerprint pins it), the decoded taps, the template.

* A0 — no training: the logit lens (final norm + LM head on a tapped layer; its argmax read as token t and as
  token t+1) and the nearest input embedding (cosine).
* A1 — a learned inverse: ridge regression (closed form) from decoded activations to the input embedding of the
  token at that position, trained on public text through the same codec; then the nearest embeddings.
* A2 — white-box sequential verification: position t depends only on tokens <= t, so recover the prompt left to
  right; for each position re-run the public backbone (KV cache of the recovered prefix) on every candidate next
  token — A1's top-k, widened to its top-``wide`` when the best distance is poor — pass the recomputed tap through
  the same codec and keep the candidate nearest to what was observed.
* Bag of words (pivot-only mode, one position per prompt): ridge from the pivot's activations to which tokens
  occur in the text, against the frequency prior that ignores the activations.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from mobillm.backbone import FrozenHead
from mobillm.privacy.observe import tapped
from mobillm.wire.codecs import Codec

__all__ = ["BagOfWords", "Ridge", "logit_lens", "nearest_embedding", "sequential_verification"]


def _top_cosine(queries: torch.Tensor, table: torch.Tensor, k: int, chunk: int = 1024) -> torch.Tensor:
    """(N, k) indices of the ``table`` rows (V, H) most cosine-similar to each query (N, H)."""
    table = nn.functional.normalize(table.float(), dim=-1)
    out = [(nn.functional.normalize(q.float(), dim=-1) @ table.T).topk(k, dim=-1).indices for q in queries.split(chunk)]
    return torch.cat(out) if out else torch.zeros(0, k, dtype=torch.long)


@torch.no_grad()
def logit_lens(head: FrozenHead, activations: torch.Tensor) -> torch.Tensor:
    """(T,) argmax token of the public LM head through the final norm, at each position of (T, H)."""
    return head(activations).argmax(dim=-1)


@torch.no_grad()
def nearest_embedding(embeddings: torch.Tensor, activations: torch.Tensor, k: int = 1) -> torch.Tensor:
    """(T, k) tokens whose input embedding is nearest (cosine) to each activation (T, H)."""
    return _top_cosine(activations, embeddings, k)


class Ridge:
    """Standardised ridge regression ``y ~ x W + b`` in closed form (``torch.linalg.solve``).

    ``lam`` is relative: the penalty is ``lam * N`` on standardised features, whose Gram diagonal is ``N``."""

    LAMBDAS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)

    def __init__(self, x: torch.Tensor, y: torch.Tensor, lam: float):
        x, y = x.double(), y.double()
        self.lam = lam
        self.mean, self.std = x.mean(0), x.std(0).clamp(min=1e-6)
        z = (x - self.mean) / self.std
        self.b = y.mean(0)
        gram = z.T @ z + lam * len(z) * torch.eye(z.shape[1], dtype=z.dtype)
        self.w = torch.linalg.solve(gram, z.T @ (y - self.b))

    @classmethod
    def selected(cls, x: torch.Tensor, y: torch.Tensor, score, seed: int = 0) -> "Ridge":
        """Refit on all rows with the lambda that maximises ``score(pred, held_out_rows)`` on a held-out tenth."""
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
        cut = max(1, len(x) // 10)
        held, fit = order[:cut], order[cut:]
        lam = max(cls.LAMBDAS, key=lambda lam: score(cls(x[fit], y[fit], lam).predict(x[held]), held))
        return cls(x, y, lam)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return (((x.double() - self.mean) / self.std) @ self.w + self.b).float()


class EmbeddingInverse:
    """A1: ridge from decoded activations (N, D) to the input embedding of each position's token."""

    def __init__(self, x: torch.Tensor, tokens: torch.Tensor, embeddings: torch.Tensor):
        self.embeddings = embeddings.float()
        self.ridge = Ridge.selected(
            x, self.embeddings[tokens], lambda pred, rows: (self.topk(None, 1, pred)[:, 0] == tokens[rows]).float().mean().item())

    def topk(self, x: torch.Tensor | None, k: int, predicted: torch.Tensor | None = None) -> torch.Tensor:
        """(N, k) candidate tokens, best first."""
        pred = self.ridge.predict(x) if predicted is None else predicted
        return _top_cosine(pred, self.embeddings, k)


@dataclass
class BagOfWords:
    """Pivot-only: which tokens occur in the text, from the pivot's activations (N, D) — or from nothing (prior).

    ``vocab`` holds the tokens the attacker's public data shows; the threshold on the ridge scores is the one
    that maximises F1 on held-out public prompts."""

    vocab: torch.Tensor  # (K,) token ids
    ridge: Ridge | None
    prior: torch.Tensor  # (K,) frequency of each token among the public prompts
    threshold: float = 0.5
    prior_count: int = 1

    @classmethod
    def fit(cls, x: torch.Tensor, bags: list[set[int]], max_vocab: int = 3000) -> "BagOfWords":
        from collections import Counter

        from mobillm.privacy.metrics import bag_f1

        counts = Counter(t for bag in bags for t in bag)
        vocab = torch.tensor([t for t, _ in counts.most_common(max_vocab)], dtype=torch.long)
        index = {int(t): i for i, t in enumerate(vocab)}
        y = torch.zeros(len(bags), len(vocab))
        for n, bag in enumerate(bags):
            y[n, [index[t] for t in bag if t in index]] = 1.0
        prior = y.mean(0)

        def f1_at(scores: torch.Tensor, rows, threshold: float) -> float:
            return sum(bag_f1(bags[int(r)], cls._pick(vocab, s, threshold)) for r, s in zip(rows, scores)) / len(rows)

        thresholds, best = [0.05 * i for i in range(1, 15)], {}

        def score(pred: torch.Tensor, rows) -> float:  # on held-out prompts: remember the best threshold per lambda
            f1, best[len(best)] = max((f1_at(pred, rows, t), t) for t in thresholds)
            return f1

        ridge = Ridge.selected(x, y, score)
        threshold = best[Ridge.LAMBDAS.index(ridge.lam)]
        prior_count = max(range(1, 40), key=lambda n: sum(bag_f1(b, set(vocab[:n].tolist())) for b in bags))
        return cls(vocab, ridge, prior, threshold, prior_count)

    @staticmethod
    def _pick(vocab: torch.Tensor, scores: torch.Tensor, threshold: float) -> set[int]:
        return set(vocab[scores > threshold].tolist())

    def predict(self, x: torch.Tensor) -> list[set[int]]:
        return [self._pick(self.vocab, s, self.threshold) for s in self.ridge.predict(x)]

    def predict_prior(self, n: int) -> list[set[int]]:
        """The frequency prior's guess (the most frequent public tokens), the same for every prompt."""
        return [set(self.vocab[: self.prior_count].tolist()) for _ in range(n)]


@torch.no_grad()
def sequential_verification(
    model: nn.Module, layers: list[int], codec: Codec, observed: torch.Tensor, candidates: torch.Tensor,
    known_prefix: list[int], *, k: int = 16, wide: int = 256, tolerance: float = 0.01, chunk: int = 128,
) -> tuple[list[int], int]:
    """A2 on one prompt: the recovered tokens (T,) and how many positions needed the wide candidate set.

    ``observed`` (T, m, H): the decoded taps of ``layers`` (1-based, increasing); ``candidates`` (T, >= wide): A1's
    ranking per position; ``known_prefix``: public template tokens the prompt is known to start with. A candidate's
    distance is ``sum_l |tap_l - observed_l|^2 / |observed_l|^2`` after the same codec round trip; the wide set is
    tried when the best of the top ``k`` is above ``tolerance`` (an exact match scores ~0: same model, same codec).
    """
    T = observed.shape[0]
    norms = observed.pow(2).sum(-1)  # (T, m)
    recovered, widened = list(known_prefix[:T]), 0
    with tapped(model, layers) as backbone:
        cache = None
        if recovered:
            _, cache = backbone.step(torch.tensor([recovered]), None)

        def distances(t: int, cands: torch.Tensor):
            """(len(cands),) distances and the caches of prefix + each candidate (chunks)."""
            out, caches = [], []
            for part in cands.split(chunk):
                trial = None
                if cache is not None:
                    trial = copy.deepcopy(cache)
                    trial.batch_repeat_interleave(len(part))
                taps, trial = backbone.step(part[:, None], trial)
                d = torch.zeros(len(part))
                for i, tap in enumerate(taps):  # (n, 1, H) per layer
                    seen = codec.decode(codec.encode(tap[:, 0]))
                    d += (seen - observed[t, i]).pow(2).sum(-1) / norms[t, i].clamp(min=1e-12)
                out.append(d)
                caches.append((part, trial))
            return torch.cat(out), caches

        for t in range(len(recovered), T):
            cands = candidates[t, :k]
            d, caches = distances(t, cands)
            if d.min() > tolerance and wide > k:
                widened += 1
                more, more_caches = distances(t, candidates[t, k:wide])
                d, cands, caches = torch.cat([d, more]), candidates[t, :wide], caches + more_caches
            best = int(d.argmin())
            recovered.append(int(cands[best]))
            for part, trial in caches:  # keep the chosen row's cache: the prefix grows by one token
                if best < len(part):
                    trial.batch_select_indices(torch.tensor([best]))
                    cache = trial
                    break
                best -= len(part)
    return recovered, widened

"""Inversion attacks an honest-but-curious server can run with what it holds: the public backbone (the Hello's
fingerprint pins it), the decoded taps, the template.

* A0 — no training: the logit lens (final norm + LM head on a tapped layer; its argmax read as token t and as
  token t+1) and the nearest input embedding (cosine).
* A1 — a learned inverse: ridge regression (closed form) from decoded activations to the input embedding of the
  token at that position, trained on public text through the same codec; then the nearest embeddings.
* A2 — white-box sequential verification: position t depends only on tokens <= t, so recover the prompt left to
  right; for each position re-run the public backbone (KV cache of the recovered prefix) on every candidate next
  token — A1's top-k, widened to its top-``wide`` when the best distance is poor (worse than what the true token
  scores at most positions of the attacker's own public prompts in the same setting: :func:`a2_tolerance`) —
  pass the recomputed tap through the same codec and keep the candidate nearest to what was observed.
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

__all__ = ["BagOfWords", "Ridge", "a2_tolerance", "logit_lens", "nearest_embedding", "sequential_verification"]


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
    """Standardised ridge regression ``y ~ x W + b`` in closed form.

    ``lam`` is relative: the penalty is ``lam * N`` on standardised features, whose Gram diagonal is ``N``.
    :meth:`selected` forms the Gram matrix once for all lambdas (see :func:`_ridge_solutions`)."""

    LAMBDAS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, w: torch.Tensor, b: torch.Tensor, lam: float):
        self.mean, self.std, self.w, self.b, self.lam = mean, std, w, b, lam
        self.held_out_score: float | None = None  # set by :meth:`selected`

    @classmethod
    def fit(cls, x: torch.Tensor, y: torch.Tensor, lam: float) -> "Ridge":
        """One ridge fit of ``y`` (N, K) on ``x`` (N, D)."""
        mean, std = x.double().mean(0), x.double().std(0).clamp(min=1e-6)
        return cls(mean, std, *_ridge_solutions((x.double() - mean) / std, y.double(), [lam])[0], lam)

    @classmethod
    def selected(cls, x: torch.Tensor, y: torch.Tensor, score, seed: int = 0) -> "Ridge":
        """Refit on all rows with the lambda that maximises ``score(pred, held_out_rows)`` on a held-out tenth."""
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
        cut = max(1, len(x) // 10)
        held, fit = order[:cut], order[cut:]
        mean, std = x.double().mean(0), x.double().std(0).clamp(min=1e-6)  # one standardisation for all fits
        z, y = (x.double() - mean) / std, y.double()
        fits = _ridge_solutions(z[fit], y[fit], cls.LAMBDAS)
        scores = [score(cls(mean, std, w, b, lam).predict(x[held]), held) for (w, b), lam in zip(fits, cls.LAMBDAS)]
        best = max(range(len(scores)), key=scores.__getitem__)
        ridge = cls(mean, std, *_ridge_solutions(z, y, [cls.LAMBDAS[best]])[0], cls.LAMBDAS[best])
        ridge.held_out_score = scores[best]
        return ridge

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return (((x.double() - self.mean) / self.std) @ self.w + self.b).float()


def _ridge_solutions(z: torch.Tensor, y: torch.Tensor, lams) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(W, b)`` of ridge on standardised ``z`` (N, D) for each relative lambda. One Gram matrix (D, D) for all
    lambdas, a Cholesky solve per lambda; with fewer rows than features, one eigendecomposition of the kernel
    matrix (N, N) instead (the dual form), which gives every lambda at once."""
    mu, b = z.mean(0), y.mean(0)
    zc, yc, n = z - mu, y - b, len(z)
    eye = torch.eye(min(zc.shape), dtype=torch.float64)
    if n >= z.shape[1]:
        gram = (zc.T.float() @ zc.float()).double()  # float32 product (the dominant cost), float64 solves
        rhs = zc.T @ yc  # (D, K)
        ws = [torch.cholesky_solve(rhs, torch.linalg.cholesky(gram + lam * n * eye)) for lam in lams]
    else:
        evals, q = torch.linalg.eigh(zc @ zc.T)
        proj = q.T @ yc  # (N, K)
        ws = [zc.T @ (q @ (proj / (evals.clamp(min=0) + lam * n)[:, None])) for lam in lams]
    return [(w, b - mu @ w) for w in ws]  # the intercept of the uncentred z


def _unit_rms(x: torch.Tensor, layers: int) -> torch.Tensor:
    """(N, layers * H) with each layer's block divided by its RMS: the noise defence's std is relative to each
    token's RMS, and the few tokens with massive activations (RMS ~1,000 against ~6 at SmolLM2's layer 12) would
    otherwise carry noise that swamps a least-squares fit."""
    blocks = x.unflatten(1, (layers, -1))
    return (blocks / blocks.pow(2).mean(-1, keepdim=True).sqrt().clamp(min=1e-6)).flatten(1)


class EmbeddingInverse:
    """A1: ridge from decoded activations (N, layers * H) to the input embedding of each position's token, on the
    features as decoded or with each layer's block scaled to unit RMS — whichever scores better on held-out public
    positions (measured, BENCHMARKS §16.3: under noise σ 0.3 the scaled features recover 27.7% of the text tokens
    where the raw ones recover 5.0%, and 1 point less without noise)."""

    def __init__(self, x: torch.Tensor, tokens: torch.Tensor, embeddings: torch.Tensor, layers: int = 1):
        self.embeddings = embeddings.float()
        accuracy = lambda pred, rows: (self.topk(None, 1, pred)[:, 0] == tokens[rows]).float().mean().item()  # noqa: E731
        fits = {scaled: Ridge.selected(_unit_rms(x, layers) if scaled else x, self.embeddings[tokens], accuracy)
                for scaled in (False, True)}
        self.scaled = max(fits, key=lambda scaled: fits[scaled].held_out_score)
        self.ridge, self.layers = fits[self.scaled], layers

    def topk(self, x: torch.Tensor | None, k: int, predicted: torch.Tensor | None = None) -> torch.Tensor:
        """(N, k) candidate tokens, best first."""
        if predicted is None:
            predicted = self.ridge.predict(_unit_rms(x, self.layers) if self.scaled else x)
        return _top_cosine(predicted, self.embeddings, k)


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
def a2_distances(candidate: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
    """A2's distance ``sum_l |candidate_l - observed_l|^2 / |observed_l|^2`` over the layers: (..., m, H) -> (...)."""
    return ((candidate - observed).pow(2).sum(-1) / observed.pow(2).sum(-1).clamp(min=1e-12)).sum(-1)


def a2_tolerance(clean: list[torch.Tensor], seen: list[torch.Tensor], quantile: float = 0.95, floor: float = 0.01) -> float:
    """A2's widening threshold, calibrated on the attacker's own public prompts: the ``quantile`` of the distance
    between each position's true tap (codec round trip, no noise: what the right candidate recomputes to) and what
    the server sees of it (the defence's noise simulated by the attacker, as the device adds it) — i.e. what the
    right token scores in this setting — and at least ``floor`` (no noise: an exact match scores ~0).

    ``clean[p]``, ``seen[p]``: (T_p, m, H), the cell's layers of public prompt ``p``."""
    d = torch.cat([a2_distances(c, s) for c, s in zip(clean, seen)])  # (positions,)
    return max(floor, float(torch.quantile(d, quantile))) if len(d) else floor


def sequential_verification(
    model: nn.Module, layers: list[int], codec: Codec, observed: list[torch.Tensor], candidates: list[torch.Tensor],
    known_prefix: list[int], *, k: int = 16, wide: int = 256, tolerance: float = 0.01, chunk: int = 256,
) -> list[tuple[list[int], int]]:
    """A2 on a set of prompts at once: per prompt, the recovered tokens (T,) and how many positions needed the wide
    candidate set.

    ``observed[p]`` (T_p, m, H): the decoded taps of ``layers`` (1-based, increasing); ``candidates[p]`` (T_p, >=
    wide): A1's ranking per position; ``known_prefix``: public template tokens every prompt is known to start with.
    A candidate's distance is :func:`a2_distances` after the same codec round trip; the wide set is tried when the
    best of the top ``k`` is above ``tolerance`` (an exact match scores ~0: same model, same codec, no noise; with
    noise, :func:`a2_tolerance`). All prompts advance one position per step, so their recovered prefixes have one length and share
    one batched KV cache: each step is one forward of every prompt's candidates (in row chunks of ``chunk``), then
    one forward of the chosen tokens to extend the cache.
    """
    lengths = [len(o) for o in observed]
    start = min([len(known_prefix), *lengths])
    recovered = [list(known_prefix[:start]) for _ in observed]
    widened = [0] * len(observed)
    with tapped(model, layers) as backbone:
        active = [p for p in range(len(observed)) if lengths[p] > start]  # prompts with positions left
        cache = None
        if start and active:
            _, cache = backbone.step(torch.tensor([known_prefix[:start]] * len(active)), None)

        def distances(t: int, rows: list[int], cands: torch.Tensor) -> torch.Tensor:
            """(len(rows), n) distances of candidates ``cands`` (len(rows), n) for the active prompts at ``rows``."""
            n = cands.shape[1]
            local = torch.arange(len(rows)).repeat_interleave(n)  # (R,) the index into ``rows`` of each candidate row
            owner = torch.tensor(rows)[local]  # (R,) its row of the batched cache
            flat, out = cands.reshape(-1), []
            seen = torch.stack([observed[active[r]][t] for r in rows])  # (len(rows), m, H)
            for lo in range(0, len(flat), chunk):
                part = slice(lo, lo + chunk)
                trial = None
                if cache is not None:
                    trial = copy.deepcopy(cache)
                    trial.batch_select_indices(owner[part])
                taps, _ = backbone.step(flat[part, None], trial)
                decoded = torch.stack([codec.decode(codec.encode(tap[:, 0])) for tap in taps], 1)  # (R, m, H)
                out.append(a2_distances(decoded, seen[local[part]]))
            return torch.cat(out).view(len(rows), n)

        for t in range(start, max(lengths, default=0)):
            if t > start:  # drop the prompts that ended
                keep = [r for r, p in enumerate(active) if lengths[p] > t]
                if len(keep) < len(active) and cache is not None:
                    cache.batch_select_indices(torch.tensor(keep))
                active = [active[r] for r in keep]
            rows = list(range(len(active)))
            d = distances(t, rows, torch.stack([candidates[p][t, :k] for p in active]))  # (P, k)
            best_d, best = d.min(dim=1)
            chosen = [int(candidates[p][t, int(j)]) for p, j in zip(active, best)]
            poor = [r for r in rows if best_d[r] > tolerance] if wide > k else []
            if poor:
                more = distances(t, poor, torch.stack([candidates[active[r]][t, k:wide] for r in poor]))
                more_d, more_best = more.min(dim=1)
                for r, dd, j in zip(poor, more_d, more_best):
                    widened[active[r]] += 1
                    if dd < best_d[r]:
                        chosen[r] = int(candidates[active[r]][t, k + int(j)])
            for p, token in zip(active, chosen):
                recovered[p].append(token)
            _, cache = backbone.step(torch.tensor(chosen)[:, None], cache)  # the prefixes grow by one token
    return list(zip(recovered, widened))

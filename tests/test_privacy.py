"""The privacy audit on tiny models: metrics on known inputs, the attacks run, and A2 inverts a tiny model."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import VOCAB, save_tiny_model, tiny_model, write_toy_sentiment
from helpers import make_tiny_tokenizer

from mobillm.data import Batcher, default_template
from mobillm.device.noise import ActivationNoise
from mobillm.privacy import AuditConfig, reconstruction_scores, run_audit
from mobillm.privacy.attacks import Ridge, a2_distances, a2_tolerance, sequential_verification
from mobillm.privacy.metrics import bag_f1, bootstrap_ci, canary_recovered, lcs_length, rouge_l, token_hits
from mobillm.privacy.observe import raw_taps, server_view
from mobillm.privacy.prompts import plant_canaries, tokenize_prompts
from mobillm.wire.codecs import get_codec


def test_metrics_on_known_inputs():
    assert lcs_length("ABCBDAB", "BDCABA") == 4 and lcs_length("", "abc") == 0 and lcs_length("abc", "abc") == 3
    assert rouge_l([1, 2, 3, 4], [1, 2, 3, 4]) == 1.0 and rouge_l([1, 2], [3, 4]) == 0.0
    assert math.isclose(rouge_l([1, 2, 3, 4], [1, 9, 3]), 2 * 2 / 7)  # LCS 2: precision 2/3, recall 2/4
    assert token_hits([5, 6, 7, 8], [5, 0, 7, 8], [False, True, True, True]) == (2, 3)
    assert canary_recovered([1, 2, 3, 4], [9, 2, 3, 9], (1, 3)) and not canary_recovered([1, 2, 3, 4], [9, 2, 0, 9], (1, 3))
    assert bag_f1({1, 2, 3, 4}, {3, 4, 5, 6}) == 0.5 and bag_f1(set(), set()) == 1.0 and bag_f1({1}, set()) == 0.0
    assert bootstrap_ci([0.5] * 20) == (0.5, 0.5, 0.5)
    est, lo, hi = bootstrap_ci([1, 0] * 50, [2, 2] * 50)  # 50 of 200 tokens
    assert est == 0.25 and lo < 0.25 < hi and hi - lo < 0.3


def test_prompts_split_text_from_template_and_locate_canaries():
    words = ["Review", "Sentiment", "positive", "negative", "or", "(", ")", ":", "the", "movie", "Zorvak", "Dexolu", "4719"]
    batcher = Batcher(make_tiny_tokenizer(words=words, bos=True), default_template())
    [p] = tokenize_prompts(batcher, ["the movie Zorvak Dexolu 4719 the"], [(10, 27)])
    # <s> Review : | the movie Zorvak Dexolu 4719 the | Sentiment ( positive or negative ) :
    assert p.text_mask == [False] * 3 + [True] * 6 + [False] * 7
    assert p.canaries == [(5, 8)]
    (planted, (start, end)), = plant_canaries(["a b c"], seed=1)
    canary = planted[start:end]
    assert planted.replace(canary, "").split() == ["a", "b", "c"] and canary.split()[-1].isdigit()


def test_ridge_recovers_a_linear_map():
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(400, 8, generator=g), torch.randn(8, 3, generator=g)
    ridge = Ridge.selected(x, x @ w + 1.5, lambda pred, rows: -(pred - (x[rows] @ w + 1.5)).pow(2).mean().item())
    assert torch.allclose(ridge.predict(x), x @ w + 1.5, atol=0.05)


def test_a1_scales_each_token_to_unit_rms_when_the_noise_is_relative_to_it():
    """The noise defence's std is relative to each token's RMS, and a few tokens (the first) carry massive
    activations: a least-squares inverse on the raw features fits their noise and fails everywhere else. A1 keeps
    whichever features score better on held-out public positions."""
    from mobillm.privacy.attacks import EmbeddingInverse

    g = torch.Generator().manual_seed(0)
    embeddings, mix = torch.randn(40, 16, generator=g), torch.randn(16, 32, generator=g)

    def taps(n: int, seed: int, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        tokens = torch.randint(1, 40, (n,), generator=g)
        tokens[::20] = 0  # one position in 20: a token with massive activations
        x = embeddings[tokens] @ mix
        x[tokens == 0] *= 150
        return x + sigma * x.pow(2).mean(-1, keepdim=True).sqrt() * torch.randn(x.shape, generator=g), tokens

    for sigma, scaled in ((0.0, False), (0.3, True)):
        (x, tokens), (victim, truth) = taps(4000, 1, sigma), taps(1000, 2, sigma)
        inverse = EmbeddingInverse(x, tokens, embeddings)
        assert inverse.scaled is scaled
        plain = truth != 0
        assert (inverse.topk(victim, 1)[:, 0] == truth)[plain].float().mean() > 0.95
    raw = Ridge.selected(x, embeddings[tokens], lambda pred, rows: 0.0)  # the raw features alone, under the noise
    assert (inverse.topk(None, 1, raw.predict(victim))[:, 0] == truth)[plain].float().mean() < 0.2


@pytest.mark.parametrize("codec", ["none", "nf4"])
def test_a2_inverts_a_tiny_random_model_from_its_top_layer(codec):
    model, tokenizer = tiny_model("llama", layers=4, hidden=64), make_tiny_tokenizer(bos=True)
    batcher = Batcher(tokenizer, default_template())
    prompts = tokenize_prompts(batcher, ["the movie was really good and fun", "i hate this boring plot , it was bad"])
    raw = raw_taps(model, [4], batcher, prompts)
    seen = [v for r in raw for v in server_view(r, get_codec(codec), pivot=False)]
    ranked = torch.randperm(VOCAB, generator=torch.Generator().manual_seed(1))  # no A1 help
    found = sequential_verification(model, [4], get_codec(codec), seen, [ranked.expand(len(v), VOCAB) for v in seen], [],
                                    k=8, wide=VOCAB)
    guesses = [g for g, _ in found]
    assert [len(g) for g in guesses] == [len(p.ids) for p in prompts]  # prompts of two lengths, batched together
    assert all(widened > 0 for _, widened in found)  # a random top-8 misses the token at most positions
    scores = reconstruction_scores(prompts, guesses)
    assert scores["token_recovery"] >= 0.9  # chance: 1 / 96
    assert scores["template_recovery"] >= 0.9


def test_a2_widens_where_the_true_token_would_score_under_the_noise():
    """The tolerance is calibrated on the attacker's public prompts and holds on the victim's: the right token's
    distance under the device's own noise (another secret) is within it at most positions; the fixed
    0.01 + 1.5 sigma^2 it replaces was far above it, so A2 never widened at sigma = 1 (BENCHMARKS §16.1)."""
    model, tokenizer = tiny_model("llama", layers=4, hidden=64), make_tiny_tokenizer(bos=True)
    batcher = Batcher(tokenizer, default_template())
    words = "the movie was really good and fun i hate this boring plot it bad".split()
    texts = [" ".join(words[(3 * i + j) % len(words)] for j in range(4 + i % 5)) for i in range(24)]
    public, victim = tokenize_prompts(batcher, texts[:16]), tokenize_prompts(batcher, texts[16:])
    codec, sigma = get_codec("nf4"), 1.0

    def views(prompts, noise):
        return [v for r in raw_taps(model, [4], batcher, prompts) for v in server_view(r, codec, False, noise)]

    tolerance = a2_tolerance(views(public, None), views(public, ActivationNoise(sigma, b"attacker-own-secret!")))
    assert a2_tolerance(views(public, None), views(public, None)) == 0.01  # no noise: the floor (exact matches score ~0)
    true_d = torch.cat([a2_distances(c, s) for c, s in zip(views(victim, None), views(victim, ActivationNoise(sigma, b"the-device-secret...")))])
    assert (true_d <= tolerance).float().mean() >= 0.85
    assert 0.3 < tolerance < 0.01 + 1.5 * sigma**2  # the right token scores ~ sigma^2 / (1 + sigma^2) = 0.5 per layer


def test_the_audit_runs_every_attack_on_a_tiny_model(tmp_path):
    model_dir = save_tiny_model(tmp_path / "model", hidden=64)
    attacker = write_toy_sentiment(tmp_path / "attacker", n_train=128, n_eval=16, seed=1)
    victim = write_toy_sentiment(tmp_path / "victim", n_train=16, n_eval=48, seed=2)
    config = AuditConfig(model=str(model_dir), shortcuts="2,4", attacker_data=str(attacker), victim_data=str(victim),
                         codecs=["none", "int8"], a2_cells=["4"], attacker_prompts=128, victim_prompts=6,
                         canary_prompts=2, k=8, wide=VOCAB, max_words=12)
    rows, examples, phases = run_audit(config, log=lambda *_: None)
    assert {"device_passes", "A0", "A1", "A2", "bag_of_words", "total"} <= set(phases)
    assert phases["A2"] > 0 and phases["total"] >= phases["device_passes"] + phases["A2"]
    attacks = {(r["codec"], r["mode"], r["layers"], r["attack"]) for r in rows}
    for codec in ("none", "int8"):
        for layer in ("2", "4"):
            assert {(codec, "all", layer, a) for a in ("A0-lens", "A0-lens-next", "A0-nearest", "A1-ridge")} <= attacks
        assert (codec, "all", "all", "A1-ridge") in attacks and (codec, "all", "4", "A2-sequential") in attacks
        assert (codec, "all", "2", "A2-sequential") not in attacks
        assert {(codec, "pivot", cell, a) for cell in ("2", "4", "all") for a in ("bag-of-words", "bag-prior")} <= attacks
    a2 = next(r for r in rows if r["attack"] == "A2-sequential" and r["codec"] == "none")
    assert a2["token_recovery"] >= 0.8 and a2["prompts"] == 8 and a2["canaries"] == 2
    assert a2["token_recovery_low"] <= a2["token_recovery"] <= a2["token_recovery_high"]
    assert all(0.0 <= r.get("token_recovery", r.get("bag_f1")) <= 1.0 for r in rows)
    assert examples and {"original", "reconstruction"} <= set(examples[0])


def test_privacy_audit_command_writes_its_results(tmp_path):
    import json

    from typer.testing import CliRunner

    from mobillm.cli import app

    model_dir = save_tiny_model(tmp_path / "model", hidden=64)
    attacker = write_toy_sentiment(tmp_path / "attacker", n_train=64, n_eval=8, seed=1)
    victim = write_toy_sentiment(tmp_path / "victim", n_train=8, n_eval=32, seed=2)
    out = tmp_path / "results"
    done = CliRunner().invoke(app, [
        "privacy-audit", "--model", str(model_dir), "--shortcuts", "2,4", "--attacker", str(attacker), "--victim", str(victim),
        "--codecs", "nf4", "--cells", "4", "--attacker-prompts", "64", "--victim-prompts", "3", "--canary-prompts", "1",
        "--k", "4", "--wide", str(VOCAB), "--noise", "0,0.5", "--out", str(out)])
    assert done.exit_code == 0, done.output
    rows = json.loads((out / "results.json").read_text())["rows"]
    a2 = {r["noise"]: r for r in rows if r["attack"] == "A2-sequential"}
    assert set(a2) == {0.0, 0.5} and a2[0.0]["token_recovery"] >= 0.8  # both strengths audited; no noise: inverted
    assert (out / "results.csv").is_file() and (out / "privacy.png").is_file()
    assert json.loads((out / "reconstructions.json").read_text())


def test_privacy_audit_measures_the_defences_privacy_and_utility(tmp_path):
    """--defence noise: the audit at every strength, and a side network trained on each defence's taps."""
    import json

    from mobillm.bench.privacy import main

    model_dir = save_tiny_model(tmp_path / "model", hidden=64)
    attacker = write_toy_sentiment(tmp_path / "attacker", n_train=64, n_eval=8, seed=1)
    victim = write_toy_sentiment(tmp_path / "victim", n_train=8, n_eval=32, seed=2)
    task = write_toy_sentiment(tmp_path / "task", n_train=96, n_eval=32, seed=3)
    out = tmp_path / "results"
    main(["--model", str(model_dir), "--shortcuts", "2,4", "--attacker", str(attacker), "--victim", str(victim),
          "--codecs", "nf4", "--cells", "2,4", "--a2-cells", "4", "--attacker-prompts", "64", "--victim-prompts", "3",
          "--canary-prompts", "1", "--k", "4", "--wide", str(VOCAB), "--defence", "noise", "--strengths", "0,30",
          "--utility-data", str(task), "--train-samples", "96", "--out", str(out)])
    results = json.loads((out / "results.json").read_text())
    assert {"load_model", "device_passes", "A2", "utility", "total"} <= set(results["phases"])
    utility = json.loads((out / "utility.json").read_text())["rows"]
    assert [(u["defence"], u["noise"]) for u in utility] == [("noise", 0.0), ("noise", 30.0), ("pivot-only", 0.0),
                                                             ("higher-layers", 0.0)]
    assert [u["shortcuts"] for u in utility] == [[2, 4], [2, 4], [2, 4], [4]] and utility[2]["block"] == "mlp"
    assert all(0.0 <= u["test_accuracy"] <= 1.0 and u["test_samples"] == 32 for u in utility)
    clean, noisy = utility[0]["privacy"], utility[1]["privacy"]
    assert clean["a2_token_recovery"] >= 0.8  # no noise: an exhaustive A2 inverts the tiny model
    assert noisy["a2_token_recovery"] < clean["a2_token_recovery"] and noisy["token_recovery"] < clean["token_recovery"]
    assert utility[2]["privacy"]["attack"] == "bag-of-words" and utility[3]["privacy"]["layers"] == "4"
    assert (out / "frontier.png").is_file()

"""An ensemble side network (``SideConfig.members`` K > 1): K ladders trained side by side on the same taps, each as
it would train alone, scored by the mean of their class probabilities — in torch and in numpy."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from mobillm.backbone import FrozenHead
from mobillm.bundle.sidenet import NpSideNetwork
from mobillm.exceptions import ConfigError
from mobillm.sidenet import SideConfig, SideNetwork
from mobillm.sidenet.config import MAX_MEMBERS
from mobillm.train_config import TrainConfig
from mobillm.training.side_trainer import SideTrainer
from mobillm.wire.codecs import get_codec

H, LABELS = 32, [5, 9]


def _config(**kw) -> SideConfig:
    base = dict(hidden_size=H, num_backbone_layers=4, shortcuts=[2, 4], width=8, block="attention", attention_heads=2,
                num_labels=2, label_token_ids=LABELS, bidirectional=kw.get("block", "attention") == "attention")
    return SideConfig(**{**base, **kw})


def _head() -> FrozenHead:
    torch.manual_seed(1)
    return FrozenHead(torch.nn.RMSNorm(H), torch.nn.Linear(H, 16, bias=False))


def _batch(seed: int, B: int = 4, T: int = 6):
    g = torch.Generator().manual_seed(seed)
    acts = torch.randn(B, T, 2, H, generator=g) * 3
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, 4:] = 0
    last = mask.sum(1) - 1
    labels = torch.randint(0, 2, (B,), generator=g)
    return acts, mask, last, labels


def _trained(side: SideNetwork) -> SideNetwork:
    """``side`` with random ``up`` weights, so that every member moves the backbone's prediction its own way."""
    with torch.no_grad():
        for p in side.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return side


def test_members_are_validated_with_the_reason():
    assert _config().members == 1 and _config().model_dump()["members"] == 1
    for bad, match in [(dict(members=0), "greater than or equal to 1"),
                       (dict(members=MAX_MEMBERS + 1), f"less than or equal to {MAX_MEMBERS}"),
                       (dict(members=2, init="backbone"), "would stay one network"),
                       (dict(members=2, task="causal-lm", head="lm", label_token_ids=None, num_labels=0,
                             bidirectional=False), "a causal LM generates from one ladder")]:
        with pytest.raises(ValidationError, match=match):
            _config(**bad)


def test_an_ensemble_predicts_the_mean_of_its_members_probabilities(tmp_path):
    torch.manual_seed(0)
    side, head = _trained(SideNetwork(_config(members=3))), _head()
    assert side.members is not None and len(side.members) == 3
    assert {k.split(".")[1] for k in side.state_dict()} == {"0", "1", "2"}  # members.j.*, nothing else
    one = SideNetwork(_config())
    assert sum(p.numel() for p in side.parameters()) == 3 * sum(p.numel() for p in one.parameters())
    acts, mask, last, _ = _batch(0)
    with torch.no_grad():
        probs = [m(acts, head, mask, last).softmax(-1) for m in side.members]
        got = side(acts, head, mask, last)
        assert torch.allclose(got.exp(), sum(probs) / 3, atol=1e-6)
        assert not torch.allclose(probs[0], probs[1], atol=1e-3)  # the members differ: random inits of their own
    with pytest.raises(ValueError, match="no single hidden state"):
        side.hidden(acts, mask)
    side.save_pretrained(tmp_path)
    again = SideNetwork.from_pretrained(tmp_path)
    assert again.config.members == 3
    with torch.no_grad():
        assert torch.equal(again(acts, head, mask, last), got)
    with pytest.raises(ConfigError, match="missing tensor members.2"):
        SideNetwork.from_state(_config(members=3), {k: v for k, v in side.state_dict().items() if ".2." not in k})


@pytest.mark.parametrize("block", ["attention", "mlp"])
def test_each_member_trains_exactly_as_it_would_alone(block):
    """One trainer, one optimizer, the members' losses summed: member j's weights (and their EMA) equal those of
    the same ladder trained alone from the same start on the same batches — gradient clipping, which engages at
    this max_grad_norm, is per member. The trainer reports the members' mean loss."""
    config = TrainConfig(method="side", lr=3e-3, schedule="cosine", max_grad_norm=0.05)
    torch.manual_seed(0)
    ensemble = _trained(SideNetwork(_config(block=block, members=2)))
    alone = [SideNetwork(_config(block=block)) for _ in range(2)]
    for solo, member in zip(alone, ensemble.members):
        solo.load_state_dict(member.state_dict())
    codec, head = get_codec("none"), _head()
    batches = [_batch(seed) for seed in range(5)]
    steps = len(batches)

    def run(side):
        trainer = SideTrainer(side, head, "none", config, total_steps=steps)
        losses = []
        for acts, mask, last, labels in batches:
            taps = [codec.encode(acts[..., i, :] if block == "attention" else acts[torch.arange(len(last)), last, i])
                    for i in range(2)]
            extra = (mask, last) if block == "attention" else ()
            losses.append(trainer.train_batch(taps, labels, *extra))
        return trainer, losses

    trainer, losses = run(ensemble)
    solo_runs = [run(s) for s in alone]
    assert trainer.groups == [list(m.parameters()) for m in ensemble.members]
    for j, (solo_trainer, solo_losses) in enumerate(solo_runs):
        for name, value in solo_trainer.side.state_dict().items():
            assert torch.allclose(trainer.side.members[j].state_dict()[name], value, atol=1e-6), (j, name)
        for name, value in solo_trainer.model.state_dict().items():  # the shipped weights: the EMA
            assert torch.allclose(trainer.model.members[j].state_dict()[name], value, atol=1e-6), (j, name)
    expected = [(a + b) / 2 for a, b in zip(solo_runs[0][1], solo_runs[1][1])]
    assert losses == pytest.approx(expected, abs=1e-6) and len(set(losses)) > 1


@pytest.mark.parametrize("block", ["attention", "mlp"])
def test_numpy_ensemble_equals_torch(block, tmp_path):
    torch.manual_seed(0)
    side, head = _trained(SideNetwork(_config(block=block, members=3))), _head()
    acts, mask, last, _ = _batch(3)
    if block == "mlp":  # token-wise: the device sends the pivot token only
        acts, mask, last = acts[torch.arange(len(last)), last], None, None
    with torch.no_grad():
        want = side(acts, head, mask, last).numpy()
    side.save_pretrained(tmp_path)
    np_side = NpSideNetwork.from_pretrained(tmp_path)
    assert np_side.members is not None and len(np_side.members) == 3
    rows = head.lm_head.weight.detach()[LABELS]

    def label_logits(hidden: np.ndarray) -> np.ndarray:  # the frozen head's label rows, in numpy
        normed = head.norm(torch.from_numpy(hidden)).detach()
        return (normed @ rows.T).numpy()

    got = np_side.classify(acts.numpy(), None if mask is None else mask.numpy(),
                           None if last is None else last.numpy(), label_logits)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.exp(got).sum(-1), 1.0, atol=1e-5)  # log-probabilities: the mean is one
    assert np.abs(got - got[:, :1]).max() > 0.01  # not uniform: the members acted
    with pytest.raises(ConfigError, match="no single hidden state"):
        np_side.hidden(acts.numpy())
    one = copy.deepcopy(side.members[0])
    single = NpSideNetwork(one.config.model_dump(), {k: v.numpy() for k, v in one.state_dict().items()})
    assert single.members is None
    with torch.no_grad():
        np.testing.assert_allclose(single.classify(acts.numpy(), None if mask is None else mask.numpy(),
                                                   None if last is None else last.numpy(), label_logits),
                                   one(acts, head, mask, last).numpy(), atol=1e-5, rtol=0)
    assert math.isclose(float(np.exp(got[0]).sum()), 1.0, abs_tol=1e-5)


def test_bag_weights_are_a_fixed_poisson_replicate_per_member():
    from mobillm.training.step import bag_weights

    ids = torch.arange(4000)
    w = bag_weights(ids, 3, seed=7)
    assert w.shape == (3, 4000) and w.dtype == torch.float32 and (w == w.round()).all() and (w >= 0).all()
    assert abs(float(w.mean()) - 1.0) < 0.03 and abs(float((w == 0).float().mean()) - math.exp(-1)) < 0.02
    assert float((w[0] == w[1]).float().mean()) < 0.5  # the members' replicates differ
    perm = torch.randperm(4000)
    assert torch.equal(bag_weights(ids[perm], 3, seed=7), w[:, perm])  # a sample's weight follows it, in any batch
    assert not torch.equal(bag_weights(ids, 3, seed=8), w)


def test_bagging_weighs_each_members_loss_and_needs_sample_ids():
    torch.manual_seed(0)
    start = _trained(SideNetwork(_config(members=2))).state_dict()
    acts, mask, last, labels = _batch(0)
    taps = [get_codec("none").encode(acts[..., i, :]) for i in range(2)]
    ids = torch.tensor([3, 10, 11, 40])

    def step(bagging: bool, members: int = 2, **kw) -> SideTrainer:
        side = SideNetwork(_config(members=members))
        side.load_state_dict(start if members == 2 else {k.removeprefix("members.0."): v for k, v in start.items()
                                                         if k.startswith("members.0.")})
        trainer = SideTrainer(side, _head(), "none", TrainConfig(method="side", bagging=bagging), total_steps=4)
        trainer.train_batch(taps, labels, mask, last, **kw)
        return trainer

    plain, bagged = step(False, sample_ids=ids), step(True, sample_ids=ids)
    assert not torch.equal(plain.side.state_dict()["members.0.up.weight"], bagged.side.state_dict()["members.0.up.weight"])
    with pytest.raises(ValueError, match="sample_ids"):
        step(True)
    one_plain, one_bagged = step(False, members=1), step(True, members=1)  # one ladder: bagging does nothing
    assert all(torch.equal(v, one_bagged.side.state_dict()[k]) for k, v in one_plain.side.state_dict().items())


def test_the_default_is_an_ensemble_for_classification_and_one_ladder_for_a_causal_lm():
    from mobillm.recipes.options import DEFAULT_MEMBERS, SideOptions

    assert DEFAULT_MEMBERS == 5
    assert SideOptions().side_members == DEFAULT_MEMBERS and SideOptions(task="causal-lm").side_members == 1
    assert SideOptions(side_init="backbone").side_members == 1  # every member would start from the same copy
    assert SideOptions(members=1).side_members == 1 and SideOptions(task="causal-lm", members=3).side_members == 3
    with pytest.raises(ValidationError):
        SideOptions(members=MAX_MEMBERS + 1)

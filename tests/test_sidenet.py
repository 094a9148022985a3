"""The side network: shapes, zero-initialised start, checkpoints, config validation."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import random_batch, tiny_model

from mobillm.backbone import FrozenHead
from mobillm.device.taps import TappedBackbone, stack_taps
from mobillm.exceptions import ConfigError
from mobillm.files import SIDE_CONFIG_NAME, SIDE_WEIGHTS_NAME
from mobillm.sidenet import SIDE_BLOCKS, SideConfig, SideNetwork


def make_config(block="mlp", head="verbalizer", task="classification", **kw) -> SideConfig:
    return SideConfig(
        hidden_size=32, num_backbone_layers=4, shortcuts=[2, 4], width=8, block=block, head=head, task=task,
        num_labels=2 if task == "classification" else 0, label_token_ids=[5, 9] if head == "verbalizer" else None, **kw,
    )


@pytest.mark.parametrize("block", sorted(SIDE_BLOCKS))
def test_step_zero_equals_backbone_zero_shot(family, block):
    """Zero-initialised ``up``: the side network's logits at step 0 are the backbone's own."""
    model = tiny_model(family)
    ids, mask, last = random_batch()
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=mask).logits  # (B, T, V)
    head = FrozenHead.from_model(model)
    backbone = TappedBackbone(model, [2, 4])
    side = SideNetwork(make_config(block))
    rows = torch.arange(3)
    if SIDE_BLOCKS[block].token_wise:
        logits = side(stack_taps(backbone(ids, mask, last)), head)
    else:
        logits = side(stack_taps(backbone(ids, mask)), head, attention_mask=mask, last_index=last)
    assert logits.shape == (3, 2)
    assert torch.allclose(logits, full[rows, last][:, [5, 9]], atol=1e-4)
    lm = SideNetwork(make_config(block, head="lm", task="causal-lm"))
    assert torch.allclose(lm(stack_taps(backbone(ids, mask)), head, attention_mask=mask), full, atol=1e-4)


def test_training_moves_away_from_zero_shot_and_only_side_params_learn():
    model = tiny_model("llama")
    head = FrozenHead.from_model(model)
    acts = torch.randn(8, 2, 32)
    labels = torch.tensor([0, 1] * 4)
    side = SideNetwork(make_config())
    before = {k: v.clone() for k, v in head.state_dict().items()}
    opt = torch.optim.AdamW(side.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = torch.nn.functional.cross_entropy(side(acts, head), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] * 0.5
    assert all(torch.equal(before[k], v) for k, v in head.state_dict().items())


@pytest.mark.parametrize("head", ["verbalizer", "linear"])
def test_save_and_load_round_trip(tmp_path, head):
    side = SideNetwork(make_config(head=head))
    with torch.no_grad():
        for p in side.parameters():
            p.normal_()
    side.save_pretrained(tmp_path)
    assert json.loads((tmp_path / SIDE_CONFIG_NAME).read_text())["head"] == head
    loaded = SideNetwork.from_pretrained(tmp_path)
    assert loaded.config == side.config
    for (k, a), (k2, b) in zip(side.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    assert (tmp_path / SIDE_WEIGHTS_NAME).stat().st_size < 100_000


def test_from_state_refuses_wrong_tensors():
    side = SideNetwork(make_config())
    state = side.state_dict()
    state["up.weight"] = torch.zeros(3, 3)
    del state["gate"]
    with pytest.raises(ConfigError, match="missing tensor gate.*up.weight: shape"):
        SideNetwork.from_state(side.config, state)


def test_config_reports_every_problem_at_once():
    with pytest.raises(ConfigError) as err:
        SideConfig.parse(dict(hidden_size=32, num_backbone_layers=4, shortcuts=[3, 9], block="lstm", num_labels=2, label_token_ids=[1]))
    text = str(err.value)
    assert "block: 'lstm' unknown" in text and "1..4" in text and "label_token_ids" in text
    assert SideConfig.parse(make_config().model_dump()) == make_config()
    with pytest.raises(ConfigError, match="width"):
        SideConfig.parse({**make_config().model_dump(), "width": -1})


def test_wrong_activation_shape_is_refused():
    side = SideNetwork(make_config())
    with pytest.raises(ValueError, match=r"expected \(\.\.\., 2, 32\)"):
        side.hidden(torch.randn(4, 3, 32))

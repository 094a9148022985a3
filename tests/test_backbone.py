"""Backbone loading, shortcut selection and the device's taps."""

from __future__ import annotations

import pytest
import torch
from conftest import random_batch, tiny_model

from mobillm.backbone import (
    FrozenHead,
    decoder_layers,
    default_shortcuts,
    fingerprint,
    parse_shortcuts,
    resolve_model,
    uniform_shortcuts,
)
from mobillm.device.taps import TappedBackbone, stack_taps
from mobillm.exceptions import ConfigError, ModelLoadError


def test_default_shortcuts_are_finer_towards_the_top():
    assert default_shortcuts(30, 6) == [12, 17, 21, 24, 27, 30]
    picks = default_shortcuts(24, 6)
    gaps = [b - a for a, b in zip(picks, picks[1:])]
    assert picks[-1] == 24 and gaps == sorted(gaps, reverse=True)
    assert uniform_shortcuts(30, 6) == [5, 10, 15, 20, 25, 30]


def test_parse_shortcuts_forms():
    assert parse_shortcuts(None, 30) == default_shortcuts(30)
    assert parse_shortcuts("auto:3", 30) == default_shortcuts(30, 3)
    assert parse_shortcuts("uniform:2", 30) == [15, 30]
    assert parse_shortcuts("30, 12,20", 30) == [12, 20, 30]


@pytest.mark.parametrize(
    "value, fragment",
    [("0,5", "valid layers are 1..30"), ("5,31", "valid layers are 1..30"), ("4,4,9", "duplicate layers [4]"), ("a,b", "comma-separated")],
)
def test_bad_shortcuts_are_refused_with_the_valid_range(value, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")):
        parse_shortcuts(value, 30)


def test_resolve_model_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="GGUF file not found"):
        resolve_model(str(tmp_path / "missing.gguf"))
    assert resolve_model(str(tmp_path)).path == str(tmp_path)
    assert resolve_model("HuggingFaceTB/SmolLM2-135M").path == "HuggingFaceTB/SmolLM2-135M"


def test_taps_equal_hidden_states_at_pivot_and_all_positions(family):
    model = tiny_model(family, layers=4)
    ids, mask, last = random_batch()
    with torch.no_grad():
        output = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    reference = output.hidden_states
    head = FrozenHead.from_model(model)
    backbone = TappedBackbone(model, [2, 4])
    pivot = stack_taps(backbone(ids, mask, last))  # (B, M, H)
    every = stack_taps(backbone(ids, mask))  # (B, T, M, H)
    rows = torch.arange(ids.shape[0])
    assert pivot.shape == (3, 2, 32) and every.shape == (3, 7, 2, 32)
    assert torch.allclose(pivot[:, 0], reference[2][rows, last], atol=1e-5)
    assert torch.allclose(every[:, :, 0], reference[2], atol=1e-5)
    # The frozen head on the top tap reproduces the full model's logits (the server's half of the model).
    assert torch.allclose(head(pivot[:, 1]), output.logits[rows, last], atol=1e-4)


def test_layers_above_top_shortcut_never_run(family):
    model = tiny_model(family, layers=4)
    ran = []
    for i, layer in enumerate(decoder_layers(model)):
        layer.register_forward_hook(lambda m, a, o, i=i: ran.append(i))
    backbone = TappedBackbone(model, [1, 2])
    ids, mask, last = random_batch()
    taps = backbone(ids, mask, last, encode=lambda x: {"x": x})
    assert ran == [0, 1] and len(taps) == 2 and set(taps[0]) == {"x"}
    assert len(decoder_layers(model)) == 2


def test_taps_keep_no_autograd_state(family):
    model = tiny_model(family)
    backbone = TappedBackbone(model, [2, 4])
    ids, mask, last = random_batch()
    taps = backbone(ids, mask, last)
    assert all(not t.requires_grad and t.grad_fn is None for t in taps)
    assert all(not p.requires_grad for p in model.parameters())


def test_fingerprint_depends_on_head_weights():
    a, b = tiny_model("llama", seed=0), tiny_model("llama", seed=1)
    assert fingerprint(a) == fingerprint(tiny_model("llama", seed=0))
    assert fingerprint(a) != fingerprint(b)


def test_models_loaded_in_threads_at_once_are_whole(toy_task):
    """Loads are serialised: two threads loading at once (a server's job and the caller) both get real weights,
    not meta tensors (without the lock this test failed 3 runs of 3)."""
    from concurrent.futures import ThreadPoolExecutor

    from mobillm.backbone import load_pretrained

    model_dir, _ = toy_task
    with ThreadPoolExecutor(4) as pool:
        models = [model for model, _ in pool.map(lambda _: load_pretrained(model_dir), range(8))]
    for model in models:
        assert not any(p.is_meta for p in model.parameters())
        assert fingerprint(model) == fingerprint(models[0])

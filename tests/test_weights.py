"""Device-side weight formats: quantized backbones stay close to fp32, and device checkpoints load exactly."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import random_batch, save_tiny_model, tiny_model

from mobillm.backbone import fingerprint, load_pretrained
from mobillm.backbone.weights import (
    META_NAME,
    Int8Embedding,
    Int8Linear,
    Nf4Linear,
    quantize_weights,
    save_device_model,
    weights_nbytes,
)
from mobillm.exceptions import ConfigError, ModelLoadError


def _hidden(model, ids, mask):
    return model.get_decoder()(input_ids=ids, attention_mask=mask).last_hidden_state


@pytest.mark.parametrize("fmt, tolerance, kind", [("int8", 0.02, Int8Linear), ("nf4", 0.25, Nf4Linear)])
def test_quantized_backbone_stays_close_and_shrinks(family, fmt, tolerance, kind):
    ids, mask, _ = random_batch()
    model = tiny_model(family, hidden=64)
    before, nbytes = _hidden(model, ids, mask), weights_nbytes(model)
    quantize_weights(model, fmt)
    after = _hidden(model, ids, mask)
    rel = ((after - before).norm() / before.norm()).item()
    assert 0 < rel < tolerance
    assert weights_nbytes(model) < nbytes / 2.5
    layers = list(model.get_decoder().modules())
    assert not any(type(m) is torch.nn.Linear for m in layers)
    assert any(isinstance(m, kind) for m in layers)
    assert isinstance(model.get_input_embeddings(), Int8Embedding)


def test_int8_linear_is_exactly_the_dequantized_matmul():
    torch.manual_seed(0)
    linear = torch.nn.Linear(16, 8)
    q = Int8Linear.from_linear(linear)
    x = torch.randn(3, 5, 16)
    torch.testing.assert_close(q(x), torch.nn.functional.linear(x, q.weight, linear.bias))
    assert (q.weight - linear.weight).abs().max() <= linear.weight.abs().amax(1).max() / 254 + 1e-6


@pytest.mark.parametrize("fmt", ["fp32", "int8", "nf4"])
def test_device_checkpoint_round_trip(tmp_path, fmt):
    """Loading a device checkpoint gives the quantized model's outputs exactly, and the source's fingerprint."""
    source = save_tiny_model(tmp_path / "source")
    original, tokenizer = load_pretrained(str(source))
    expected_fp = fingerprint(original)
    save_device_model(original, tokenizer, tmp_path / "device", fmt, source=str(source))  # quantizes in place
    ids, mask, _ = random_batch()
    loaded, loaded_tokenizer = load_pretrained(str(tmp_path / "device"))
    torch.testing.assert_close(_hidden(loaded, ids, mask), _hidden(original, ids, mask), rtol=0, atol=0)
    torch.testing.assert_close(loaded(ids, attention_mask=mask).logits, original(ids, attention_mask=mask).logits)
    assert fingerprint(loaded) == expected_fp
    assert loaded_tokenizer("good film").input_ids == tokenizer("good film").input_ids
    assert json.loads((tmp_path / "device" / META_NAME).read_text())["format"] == fmt


def test_bad_format_and_broken_checkpoint_are_reported(tmp_path):
    with pytest.raises(ConfigError, match="int4"):
        quantize_weights(tiny_model("llama"), "int4")
    source = save_tiny_model(tmp_path / "source")
    model, tokenizer = load_pretrained(str(source))
    save_device_model(model, tokenizer, tmp_path / "device", "int8", source=str(source))
    config = json.loads((tmp_path / "device" / "config.json").read_text())
    config["num_hidden_layers"] += 1  # the stored weights no longer match the config
    (tmp_path / "device" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="missing"):
        load_pretrained(str(tmp_path / "device"))

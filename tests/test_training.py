"""Single-process training (``mobillm train``) of side tuning and the on-device baselines, on tiny models."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import random_batch, tiny_model

from mobillm.recipes.local import RunOptions, train
from mobillm.sidenet import SideNetwork
from mobillm.train_config import TrainConfig
from mobillm.training.baselines import baseline_logits, prepare_baseline

PIVOT_NF4_BYTES = 2 * 64 * 2 * 0.3 + 8  # two layers' pivot rows at 0.3x of fp16 (H=64), plus the int64 label


@pytest.mark.parametrize("block", ["mlp", "attention"])
def test_side_tuning_learns_the_toy_task_and_saves_the_side_network(toy_task, tmp_path, block):
    model_dir, data_dir = toy_task
    options = RunOptions(model=model_dir, data=data_dir, codec="nf4", shortcuts="2,4", width=16, block=block, max_eval_samples=None, output_dir=tmp_path)
    summary = train(options, TrainConfig(method="side", lr=3e-3, epochs=8, patience=8))
    assert summary["test"]["accuracy"] >= summary["zero_shot_test"]["accuracy"] + 0.2
    assert summary["test"]["accuracy"] >= 0.8
    if block == "mlp":  # the pivot token only
        assert summary["bytes_per_sample"] < PIVOT_NF4_BYTES
    else:  # every position of the prompt (10+ tokens here)
        assert summary["bytes_per_sample"] > 5 * PIVOT_NF4_BYTES
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["method"] == "side" and saved["n_train"] == 256
    side = SideNetwork.from_pretrained(tmp_path / "side_network")
    assert side.config.codec == "nf4" and side.config.label_names == ["negative", "positive"]
    losses = [json.loads(line)["loss"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10


@pytest.mark.parametrize("method", ["lora", "bitfit", "full"])
def test_baselines_train_on_the_same_task(toy_task, tmp_path, method):
    model_dir, data_dir = toy_task
    options = RunOptions(model=model_dir, data=data_dir, max_eval_samples=None, output_dir=tmp_path)
    summary = train(options, TrainConfig(method=method, lr=2e-2 if method != "full" else 1e-3, epochs=3))
    losses = [json.loads(line)["loss"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == summary["steps"] and sum(losses[-8:]) / 8 < sum(losses[:8]) / 8
    if method != "bitfit":  # biases alone move a random tiny model slowly; the loss check above still applies
        assert summary["test"]["accuracy"] >= 0.7
    assert summary["trainable_parameters"] > 0 and summary["device_seconds_per_sample"] > 0
    written = json.loads((tmp_path / "summary.json").read_text())
    assert written["device_samples_per_second"] == pytest.approx(1 / summary["device_seconds_per_sample"])


def test_prepare_baseline_trains_only_the_method_parameters(family):
    ids, mask, last = random_batch()
    token_ids = torch.tensor([5, 9])
    model = tiny_model(family)
    before = baseline_logits(model, ids, mask, last, token_ids)
    bitfit, params = prepare_baseline(model, TrainConfig(method="bitfit"))
    names = [n for n, p in bitfit.named_parameters() if p.requires_grad]
    assert names and all(n.endswith(".bias") for n in names)
    # Llama has no biases: BitFit adds zero ones, so the outputs are unchanged at step 0.
    assert torch.allclose(baseline_logits(bitfit, ids, mask, last, token_ids), before, atol=1e-5)

    lora, params = prepare_baseline(tiny_model(family), TrainConfig(method="lora"))
    names = [n for n, p in lora.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n and ("q_proj" in n or "v_proj" in n) for n in names)
    full, params = prepare_baseline(tiny_model(family), TrainConfig(method="full"))
    assert len(params) == len(list(full.parameters()))

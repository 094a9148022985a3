"""Where the server trains (``--device``): the CPU path equals the reference arithmetic; CUDA matches it."""

from __future__ import annotations

import pytest
import torch
from conftest import random_batch, tiny_model

from mobillm.backbone import FrozenHead
from mobillm.device.taps import TappedBackbone
from mobillm.exceptions import ConfigError
from mobillm.scoring import Evaluator
from mobillm.sidenet import SideConfig, SideNetwork
from mobillm.train_config import TrainConfig
from mobillm.training.device import resolve_device
from mobillm.training.side_trainer import SideTrainer
from mobillm.training.step import make_optimizer, side_loss, train_step
from mobillm.wire.codecs import decode_layers, get_codec

CONFIG = TrainConfig(method="side", lr=3e-3, schedule="cosine")


def _setup(block: str):
    model = tiny_model("llama")
    side_config = SideConfig(hidden_size=32, num_backbone_layers=4, shortcuts=[2, 4], width=8, block=block,
                             num_labels=2, label_token_ids=[5, 9], codec="nf4")
    backbone, codec = TappedBackbone(model, side_config.shortcuts), get_codec("nf4")
    batches = []
    for seed in range(4):
        ids, mask, last = random_batch(batch=4, length=7, seed=seed)
        pivot = side_config.pivot_only
        taps = backbone(ids, mask, last if pivot else None, codec.encode)
        extra = (None, None, None) if pivot else (mask, last, None)
        batches.append((taps, torch.tensor([seed % 2, 1, 0, 1]), extra))
    return side_config, FrozenHead.from_model(model), batches


def _trainer_losses(side_config, head, batches, device) -> tuple[list[float], SideTrainer]:
    torch.manual_seed(0)
    trainer = SideTrainer(SideNetwork(side_config), head, "nf4", CONFIG, total_steps=8, device=device)
    return [trainer.train_batch(taps, labels, *extra) for _ in range(2) for taps, labels, extra in batches], trainer


@pytest.mark.parametrize("block", ["mlp", "attention"])
def test_cpu_trainer_gives_exactly_the_reference_losses(block):
    side_config, head, batches = _setup(block)
    losses, trainer = _trainer_losses(side_config, head, batches, "cpu")
    assert trainer.head is head  # on the CPU already: no copy
    # the arithmetic written out: decode on the CPU, one AdamW + cosine step per batch
    torch.manual_seed(0)
    side = SideNetwork(side_config)
    params = list(side.parameters())
    optimizer, scheduler = make_optimizer(params, 3e-3, 0.0, 8, CONFIG.warmup_ratio, "cosine")
    codec = get_codec("nf4")
    reference = []
    for _ in range(2):
        for taps, labels, extra in batches:
            side.train()
            acts = decode_layers(codec, taps)
            reference.append(train_step(lambda: side_loss(side, head, acts, labels, *extra), [params], optimizer, scheduler, 1.0))
    assert losses == reference and all(isinstance(x, float) for x in losses)
    assert len(set(losses)) > 1  # it trains


def test_trainer_logits_score_on_its_device():
    side_config, head, batches = _setup("attention")
    _, trainer = _trainer_losses(side_config, head, batches, "cpu")
    scores = Evaluator("classification", 2)
    for i, (taps, labels, extra) in enumerate(batches):
        logits, targets = trainer.logits(taps, labels, *extra)
        assert logits.shape == (4, 2) and logits.device == trainer.device
        scores.add(logits, targets, torch.arange(4) + 4 * i)
    assert len(scores.predictions) == 16 and 0 <= scores.scores()["accuracy"] <= 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("block", ["mlp", "attention"])
def test_cuda_trainer_matches_the_cpu_losses(block):
    side_config, head, batches = _setup(block)
    cpu, _ = _trainer_losses(side_config, head, batches, "cpu")
    cuda, trainer = _trainer_losses(side_config, head, batches, resolve_device("cuda"))
    assert next(trainer.side.parameters()).is_cuda and trainer.head.lm_head.weight.is_cuda
    assert not head.lm_head.weight.is_cuda  # the caller's head stays on the CPU
    assert cuda == pytest.approx(cpu, rel=1e-4, abs=1e-5)


def test_resolve_device(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    for spec in ("cuda", "cuda:0"):
        with pytest.raises(ConfigError, match="--device .*no CUDA device"):
            resolve_device(spec)
    with pytest.raises(ConfigError, match="--device 'tpu': choose auto, cpu, cuda or cuda:N"):
        resolve_device("tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == torch.device("cuda", 0)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ConfigError, match=r"--device cuda:2: this machine has 2 CUDA device\(s\), cuda:0..cuda:1"):
        resolve_device("cuda:2")


def test_the_server_trains_where_serve_device_says(tmp_path):
    """``SessionManager(device=...)`` resolves once and every job's trainer (side network, head copy) lives there."""
    from mobillm.server.manager import SessionManager

    assert SessionManager(tmp_path, device="cpu").device == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="--device cuda"):
            SessionManager(tmp_path, device="cuda")


def test_serve_refuses_a_cuda_device_it_does_not_have_before_listening(tmp_path):
    from typer.testing import CliRunner

    from mobillm.cli import app

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = CliRunner().invoke(app, ["serve", "--device", "cuda:0", "--jobs-dir", str(tmp_path), "--no-auth"])
    assert result.exit_code == 2 and "--device cuda:0" in result.output and "listening" not in result.output

"""Issue 16's levers as options: LST initialisation from the backbone, gate temperature, warm-up in steps, rsqrt.

Each default must leave today's behaviour exactly as it was."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import random_batch, tiny_model

from mobillm.backbone import FrozenHead, decoder_layers
from mobillm.device.taps import TappedBackbone, stack_taps
from mobillm.exceptions import ConfigError
from mobillm.sidenet import SideConfig, SideNetwork
from mobillm.sidenet.init import init_from_backbone
from mobillm.train_config import TrainConfig
from mobillm.training.step import make_optimizer


def _config(**kw) -> SideConfig:
    base = dict(hidden_size=32, num_backbone_layers=4, shortcuts=[2, 4], width=8, block="attention", attention_heads=2,
                num_labels=2, label_token_ids=[5, 9])
    return SideConfig(**{**base, **kw})


def _ladder(side: SideNetwork, acts: torch.Tensor, temperature: float) -> torch.Tensor:
    """Design §2's ladder written out, mu_i = sigmoid(alpha_i / T)."""
    h = torch.zeros(*acts.shape[:-2], side.config.width)
    for i, (down, block) in enumerate(zip(side.down, side.blocks)):
        mu = 1 / (1 + torch.exp(-side.gate[i] / temperature))
        h = block(mu * h + (1 - mu) * down(side.in_norm(acts[..., i, :])))
    return acts[..., -1, :] + side.up(h)


@pytest.mark.parametrize("temperature", [None, 0.1])
def test_gate_temperature(temperature):
    torch.manual_seed(0)
    side = SideNetwork(_config(block="mlp", **({} if temperature is None else {"gate_temperature": temperature})))
    with torch.no_grad():
        side.gate.copy_(torch.tensor([0.3, -0.2]))
        side.up.weight.normal_()
    acts = torch.randn(5, 2, 32)
    with torch.no_grad():
        expected = _ladder(side, acts, temperature or 1.0)
        assert torch.allclose(side.hidden(acts), expected, atol=1e-6)
        if temperature is None:  # the default: the same arithmetic as before the option, bit for bit
            torch.manual_seed(0)
            plain = SideNetwork(_config(block="mlp"))
            plain.load_state_dict(side.state_dict())
            mu = torch.sigmoid(plain.gate)
            h = torch.zeros(5, 8)
            for i, (down, block) in enumerate(zip(plain.down, plain.blocks)):
                h = block(mu[i] * h + (1 - mu[i]) * down(plain.in_norm(acts[..., i, :])))
            assert torch.equal(side.hidden(acts), acts[..., -1, :] + plain.up(h))


def _lrs(steps: int, **kw) -> list[float]:
    optimizer, scheduler = make_optimizer([torch.nn.Parameter(torch.zeros(1))], 1e-3, 0.0, **kw)
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_default_schedule_is_unchanged_and_warmup_steps_replace_the_ratio():
    default = _lrs(50, total_steps=50, warmup_ratio=0.06, schedule="cosine")
    warmup = int(50 * 0.06)
    expected = [1e-3 * ((s + 1) / (warmup + 1) if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / (50 - warmup))))
                for s in range(50)]
    assert default == pytest.approx(expected, rel=1e-12)
    assert _lrs(50, total_steps=50, warmup_ratio=0.06, schedule="cosine", warmup_steps=None) == default
    constant = _lrs(30, total_steps=10, warmup_ratio=0.5, schedule="constant", warmup_steps=4)
    assert constant[:4] == pytest.approx([2e-4, 4e-4, 6e-4, 8e-4]) and constant[4:] == [1e-3] * 26


def test_rsqrt_schedule_needs_no_total():
    a = _lrs(40, total_steps=10, warmup_ratio=0.0, schedule="rsqrt", warmup_steps=3)
    b = _lrs(40, total_steps=10_000, warmup_ratio=0.0, schedule="rsqrt", warmup_steps=3)
    assert a == b
    assert a[3] == pytest.approx(1e-3) and a[15] == pytest.approx(1e-3 * math.sqrt(4 / 16))
    assert all(x > y for x, y in zip(a[3:], a[4:]))  # decays, never reaches zero
    assert TrainConfig(schedule="rsqrt", warmup_steps=20, lr=3e-3).warmup_steps == 20
    with pytest.raises(ConfigError):
        TrainConfig.parse({"warmup_steps": -1})


def _boost(layer, family: str, dims: list[int]) -> None:
    """Make residual dimensions ``dims`` the heaviest of a layer: the init must pick them."""
    attn = layer.self_attn
    mlp_in = layer.mlp.gate_proj if family == "llama" else layer.fc1
    with torch.no_grad():
        for m in (attn.q_proj, attn.k_proj, attn.v_proj, mlp_in):
            m.weight[:, dims] *= 50


@pytest.mark.parametrize("block", ["attention", "mlp"])
def test_backbone_init_copies_the_heaviest_dimensions(family, block):
    model = tiny_model(family)
    layers = decoder_layers(model)
    heavy = {2: [1, 4, 7, 10, 13, 16, 19, 22], 4: [0, 3, 5, 8, 11, 25, 30, 31]}
    for s, dims in heavy.items():
        _boost(layers[s - 1], family, dims)
    side = SideNetwork(_config(block=block, init="backbone"))
    init_from_backbone(side, layers)
    for i, s in enumerate([2, 4]):
        dims = torch.tensor(heavy[s])
        down = side.down[i].weight
        assert torch.equal(down, torch.eye(32)[dims]) and not side.down[i].bias.any()  # picks out those dims
        layer, blk = layers[s - 1], side.blocks[i]
        mlp = blk.mlp if block == "attention" else blk
        src = layer.mlp.gate_proj if family == "llama" else layer.fc1
        rows = src.weight[:, dims]  # every side MLP input row is one backbone unit's row at those dims
        assert all(any(torch.equal(row, r) for r in rows) for row in mlp.mlp[0].weight)
        norm = layer.post_attention_layernorm if family == "llama" else layer.final_layer_norm
        assert torch.equal(mlp.norm.weight, norm.weight[dims])
        if block == "attention":
            q = blk.attn.in_proj_weight[:8]
            hd = layer.self_attn.head_dim
            scale = math.sqrt((8 / 2) / hd)
            backbone_q = layer.self_attn.q_proj.weight[:, dims] * scale
            assert all(any(torch.allclose(row, r) for r in backbone_q) for row in q)
    # up stays zero: step 0 is still the zero-shot prediction
    ids, mask, last = random_batch()
    head = FrozenHead.from_model(model)
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=mask).logits
    acts = stack_taps(TappedBackbone(model, [2, 4])(ids, mask, None if block == "attention" else last))
    logits = side(acts, head, attention_mask=mask, last_index=last) if block == "attention" else side(acts, head)
    assert torch.allclose(logits, full[torch.arange(3), last][:, [5, 9]], atol=1e-4)


def test_backbone_init_refuses_what_does_not_fit():
    layers = decoder_layers(tiny_model("llama"))
    with pytest.raises(ConfigError, match="side heads"):
        init_from_backbone(SideNetwork(_config(width=32, attention_heads=2)), layers)  # 16-dim heads > 8
    with pytest.raises(ConfigError, match="only 1 backbone layers"):
        init_from_backbone(SideNetwork(_config()), layers[:1])
    with pytest.raises(ConfigError, match="neither a Llama- nor an OPT-style"):
        init_from_backbone(SideNetwork(_config()), [torch.nn.Linear(2, 2)] * 4)


def test_a_server_job_starts_from_the_side_network_the_local_recipe_starts_from(toy_task, tmp_path):
    """init 'backbone' reaches the server: its job copies the public checkpoint's layers as fit_side does (it was
    silently random before), and a width the layers cannot give is refused in the handshake, naming the cause."""
    from helpers import make_hello

    from mobillm.backbone import fingerprint, load_pretrained
    from mobillm.exceptions import ProtocolError
    from mobillm.server.manager import SessionManager
    from mobillm.sidenet.init import new_side_network

    model_dir, _ = toy_task
    model, _ = load_pretrained(model_dir)
    cfg = model.config
    side = dict(hidden_size=cfg.hidden_size, num_backbone_layers=cfg.num_hidden_layers, shortcuts=[2, 4], width=16,
                block="attention", attention_heads=2, init="backbone")
    def hello_with(**updates):
        hello = make_hello(model=model_dir, fingerprint=fingerprint(model), job=updates.pop("job", "init"))
        return hello.model_copy(update={"side_config": SideConfig(**{**hello.side_config.model_dump(), **side, **updates})})

    hello = hello_with()
    manager = SessionManager(tmp_path / "jobs")
    job = manager.open(hello).job
    torch.manual_seed(hello.train_config.seed)
    expected = new_side_network(hello.side_config, decoder_layers(model)).state_dict()
    torch.manual_seed(hello.train_config.seed)
    random_init = SideNetwork(hello.side_config).state_dict()
    got = job.trainer.side.state_dict()
    assert all(torch.equal(got[k], v) for k, v in expected.items())
    assert not torch.equal(got["down.0.weight"], random_init["down.0.weight"])
    assert manager.layers(model_dir) is manager.layers(model_dir)  # loaded once
    with pytest.raises(ProtocolError, match="exceeds the backbone's width"):
        manager.open(hello_with(job="wide", width=4 * cfg.hidden_size))


def test_power_ema_weighs_each_step_as_karras_et_al_and_gamma_0_is_the_plain_mean():
    from mobillm.training.side_trainer import power_ema

    def weights(gamma: float, steps: int) -> torch.Tensor:
        """The weight of each step's iterate in the average after ``steps`` updates (iterate s = one-hot e_s)."""
        update, avg = power_ema(gamma), torch.eye(steps)[0]
        for n in range(1, steps):
            update([avg], [torch.eye(steps)[n]], torch.tensor(n))  # in place
        return avg

    assert torch.allclose(weights(0.0, 5), torch.full((5,), 0.2))
    w = weights(7.0, 5)
    assert torch.isclose(w.sum(), torch.tensor(1.0)) and bool((w[1:] > w[:-1]).all())
    assert w[-1] == pytest.approx(1 - (4 / 5) ** 8)  # the newest step keeps 1 - beta_t, beta_t = (1 - 1/t)^(gamma + 1)


def test_the_trainer_validates_ships_and_checkpoints_the_weights_average(tmp_path):
    from mobillm.server.checkpoint import load_checkpoint, save_checkpoint
    from mobillm.training.loop import FitState
    from mobillm.training.side_trainer import SideTrainer
    from mobillm.wire.codecs import get_codec

    head, codec = FrozenHead.from_model(tiny_model("llama")), get_codec("fp16")
    batches = [([codec.encode(torch.randn(4, 32)) for _ in range(2)], torch.randint(0, 2, (4,))) for _ in range(6)]

    def trainer(gamma: float | None) -> SideTrainer:
        torch.manual_seed(0)
        return SideTrainer(SideNetwork(_config(block="mlp", codec="fp16")), head, "fp16",
                           TrainConfig(method="side", lr=1e-2, ema_gamma=gamma), total_steps=12)

    plain, averaged = trainer(None), trainer(0.0)
    assert plain.model is plain.side and averaged.model is not averaged.side
    iterates = []
    for taps, labels in batches[:3]:
        plain.train_batch(taps, labels)
        averaged.train_batch(taps, labels)
        iterates.append(averaged.side.up.weight.detach().clone())
    assert torch.equal(plain.side.up.weight, averaged.side.up.weight)  # the average never feeds back into training
    assert torch.allclose(averaged.model.up.weight, torch.stack(iterates).mean(0), atol=1e-7)  # gamma 0: the mean
    assert torch.equal(averaged.snapshot()["up.weight"], averaged.model.up.weight)  # the best kept is the average's

    # an exact resume: the average's state travels in the checkpoint with the weights and the optimizer
    save_checkpoint(tmp_path / "ckpt.safetensors", averaged, FitState(epoch=1, step=3), samples_trained=12)
    resumed = trainer(0.0)
    load_checkpoint(tmp_path / "ckpt.safetensors", resumed)
    for taps, labels in batches[3:]:
        averaged.train_batch(taps, labels)
        resumed.train_batch(taps, labels)
    assert torch.equal(resumed.model.up.weight, averaged.model.up.weight)
    assert torch.equal(resumed.side.up.weight, averaged.side.up.weight)


def test_bidirectional_side_blocks_look_ahead_at_real_tokens_only_and_only_for_classification():
    torch.manual_seed(0)
    causal = SideNetwork(_config())
    both = SideNetwork(_config(bidirectional=True))
    both.load_state_dict(causal.state_dict())
    with torch.no_grad():
        causal.up.weight.normal_()
        both.up.weight.copy_(causal.up.weight)
    acts, mask = torch.randn(2, 5, 2, 32), torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    later = acts.clone()
    later[:, 3:] += 1.0  # change positions 3 and 4 only (row 1: its padding)
    with torch.no_grad():
        c, c2, b, b2 = (net.hidden(x, mask) for net in (causal, both) for x in (acts, later))
    assert torch.equal(c[:, :3], c2[:, :3])  # causal: a position never sees later ones
    assert not torch.allclose(b[0, :3], b2[0, :3])  # bidirectional: it does ...
    assert torch.equal(b[1, :3], b2[1, :3])  # ... but never the padding
    with pytest.raises(ValueError, match="bidirectional"):
        _config(bidirectional=True, block="mlp")


def test_ema_gamma_option_takes_a_number_or_off_and_names_itself_otherwise():
    import typer

    from mobillm.cli import _ema_gamma

    assert _ema_gamma("3.5") == 3.5 and _ema_gamma("off") is None and _ema_gamma(7.0) == 7.0
    for bad in ("-1", "fast", "inf"):
        with pytest.raises(typer.BadParameter, match="'off'"):
            _ema_gamma(bad)
    assert TrainConfig().ema_gamma == 7.0 and TrainConfig(ema_gamma=None).ema_gamma is None


def test_drop_positions_keeps_pivot_and_padding():
    from mobillm.training.step import drop_positions

    torch.manual_seed(0)
    mask = torch.ones(64, 40, dtype=torch.long)
    mask[:, 30:] = 0  # right padding
    last = torch.full((64,), 29)
    dropped = drop_positions(mask, last, 0.25)
    assert torch.equal(mask[:, 30:], dropped[:, 30:])  # padding stays padding
    assert dropped[:, 29].eq(1).all()  # the pivot is always seen
    share = 1 - dropped[:, :29].float().mean().item()
    assert 0.2 < share < 0.3  # about p of the other real positions hidden
    assert mask.eq(1)[:, :30].all()  # the caller's mask is not changed in place


@pytest.mark.parametrize("option", ["token_dropout", "label_smoothing"])
def test_regularisers_change_training_only_when_set(option):
    """Off (the default) the trainer's step is reproducible; on, the first step's loss differs (same seed, weights
    and batch)."""
    from mobillm.training.side_trainer import SideTrainer

    torch.manual_seed(0)
    config = _config(bidirectional=True)
    acts = torch.randn(4, 6, 2, 32)
    mask = torch.ones(4, 6, dtype=torch.long)
    last = torch.full((4,), 5)
    labels = torch.tensor([0, 1, 1, 0])
    head = FrozenHead(torch.nn.Identity(), torch.nn.Linear(32, 12, bias=False))

    def first_loss(value: float) -> float:
        torch.manual_seed(1)
        side = SideNetwork(config)
        with torch.no_grad():
            side.up.weight.normal_()  # a non-trivial side network: dropping positions changes its output
        trainer = SideTrainer(side, head, "none", TrainConfig(**{option: value}, ema_gamma=None), total_steps=4)
        trainer.activations = lambda taps: acts
        torch.manual_seed(2)
        return trainer.train_batch([], labels, mask, last)

    assert first_loss(0.0) == first_loss(0.0)
    assert first_loss(0.0) != first_loss(0.5)

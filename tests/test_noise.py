"""The noise defence: one draw per sample, identical across resends and epochs, unpredictable without the secret,
and no change at all with noise 0."""

from __future__ import annotations

import asyncio
import os
import stat

import pytest
import torch
from conftest import tiny_model
from servers import ThreadServer, device_setup
from test_reliability import CuttingProxy
from test_wire_capture import Capture

from mobillm.device.client import stream
from mobillm.device.inference import tap_batches
from mobillm.device.noise import (
    NOISE_SECRET_ENV,
    NOISE_SECRET_FILE,
    ActivationNoise,
    device_noise,
    load_secret,
)
from mobillm.device.taps import TappedBackbone
from mobillm.exceptions import ConfigError
from mobillm.server.manager import SessionManager
from mobillm.train_config import TrainConfig
from mobillm.wire.codecs import decode_layers, get_codec
from mobillm.wire.messages import Batch, decode_message

SECRET = b"0123456789abcdef-test-secret"


def test_the_same_sample_gets_the_same_noise_and_other_samples_other_noise():
    noise = ActivationNoise(0.5, SECRET)
    x = torch.randn(3, 9, 16)
    a = noise.apply(x, "train", torch.tensor([4, 5, 6]), layer=0)
    b = noise.apply(x, "train", torch.tensor([4, 5, 6]), layer=0)
    assert torch.equal(a, b)
    # row 0 again, as sample 4 in another batch of another padded width: the same draw at its positions
    again = noise.apply(x[:1, :5], "train", torch.tensor([4]), layer=0)
    assert torch.equal(again[0], a[0, :5])
    other = noise.apply(x, "train", torch.tensor([7, 5, 6]), layer=0)
    assert not torch.equal(other[0], a[0]) and torch.equal(other[1:], a[1:])
    assert not torch.equal(noise.apply(x, "eval", torch.tensor([4, 5, 6]), layer=0)[0], a[0])  # another split
    assert not torch.equal(noise.apply(x, "train", torch.tensor([4, 5, 6]), layer=1), a)  # another layer
    assert not torch.equal(ActivationNoise(0.5, b"another-secret-16b").apply(x, "train", torch.tensor([4, 5, 6]), 0), a)
    # the pivot row's noise is that of its position in the all-positions mode
    pivot = noise.apply(x[:, 6], "train", torch.tensor([4, 5, 6]), layer=0, last_index=torch.tensor([6, 6, 6]))
    assert torch.allclose(pivot, a[:, 6])


def test_numpy_arrays_get_the_same_noise_as_torch_tensors():
    """The bundle runtime (numpy) and the torch runtime draw the same noise for the same sample."""
    import numpy as np

    noise = ActivationNoise(0.5, SECRET)
    x = torch.randn(3, 9, 16)
    want = noise.apply(x, "train", torch.tensor([4, 5, 6]), layer=2)
    got = noise.apply(x.numpy(), "train", np.array([4, 5, 6]), layer=2)
    assert isinstance(got, np.ndarray) and got.dtype == np.float32
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-6, atol=1e-6)
    assert not np.allclose(got, x.numpy())
    pivot = noise.apply(x[:, 6].numpy(), "train", np.array([4, 5, 6]), layer=2, last_index=np.array([6, 6, 6]))
    np.testing.assert_allclose(pivot, want[:, 6].numpy(), rtol=1e-6, atol=1e-6)


def test_the_strength_is_relative_to_each_rows_rms():
    x = torch.randn(16, 2, 4096) * torch.tensor([1.0, 100.0])[None, :, None]
    added = ActivationNoise(0.25, SECRET).apply(x, "train", torch.arange(16), layer=0) - x
    ratio = added.pow(2).mean(dim=-1).sqrt() / x.pow(2).mean(dim=-1).sqrt()  # (16, 2)
    assert torch.allclose(ratio, torch.full_like(ratio, 0.25), rtol=0.1)


def test_noise_zero_is_the_unchanged_device_path(tmp_path):
    assert device_noise(0.0, tmp_path) is None
    assert not (tmp_path / NOISE_SECRET_FILE).exists()
    from mobillm.data.batching import EncodedBatch

    model = tiny_model("llama", hidden=32)
    backbone, codec = TappedBackbone(model, [2, 4]), get_codec("int8")
    ids = torch.randint(3, 90, (2, 6))
    batch = EncodedBatch(ids, torch.ones_like(ids), torch.tensor([0, 1]), torch.tensor([0, 1]), torch.tensor([5, 5]))
    tapped = next(tap_batches(backbone, codec, [batch], pivot=False))
    direct = backbone(ids, torch.ones_like(ids), None, codec.encode)
    assert all(t.keys() == d.keys() and all(torch.equal(t[k], d[k]) for k in t) for t, d in zip(tapped.taps, direct))
    noisy = next(tap_batches(backbone, codec, [batch], pivot=False, noise=ActivationNoise(0.1, SECRET)))
    assert not torch.equal(noisy.taps[0]["data"], tapped.taps[0]["data"])


def test_the_secret_comes_from_the_environment_or_a_private_file(tmp_path, monkeypatch):
    monkeypatch.delenv(NOISE_SECRET_ENV, raising=False)
    first = load_secret(tmp_path)
    assert len(first) == 32 and load_secret(tmp_path) == first
    assert stat.S_IMODE(os.stat(tmp_path / NOISE_SECRET_FILE).st_mode) == 0o600
    assert load_secret(tmp_path / "elsewhere") != first
    monkeypatch.setenv(NOISE_SECRET_ENV, "a device secret from the environment")
    assert load_secret(tmp_path) == b"a device secret from the environment"
    with pytest.raises(ConfigError, match="--noise 0"):
        ActivationNoise(0.0, SECRET)


def test_resends_and_device_epochs_carry_each_samples_same_noise(toy_task, tmp_path, monkeypatch):
    """A job cut twice mid-stream (resends) with two device epochs: every copy of a sample's taps that reached the
    wire is byte-identical; without the noise they differ from these."""
    model_dir, data_dir = toy_task
    capture = Capture(monkeypatch)
    server = ThreadServer(SessionManager(tmp_path / "jobs"), window=4)
    proxy = CuttingProxy([server.port], cuts=2, after=6_000)
    hello, backbone, codec, batcher, data = device_setup(model_dir, data_dir, codec="none", max_train=32)
    config = TrainConfig(method="side", epochs=2, batch_size=8)
    hello = hello.model_copy(update={"train_config": config.model_dump(), "device_epochs": 2, "codec": "none"})
    _, stats = asyncio.run(stream(f"ws://127.0.0.1:{proxy.port}", hello, backbone, codec, batcher, data.train[:32],
                                  data.validation[:8], batch_size=8, seed=0, pivot=True, device_epochs=2, backoff=0.05,
                                  noise=ActivationNoise(0.3, SECRET)))
    assert stats.reconnects == 2

    copies: dict[tuple[str, int], list[torch.Tensor]] = {}
    for data_bytes in capture.sent:
        frame = decode_message(data_bytes)
        if isinstance(frame.header, Batch):
            acts = decode_layers(codec, Batch.activation_groups(frame.tensors))  # (B, M, H)
            for sample, row in zip(frame.tensors["sample_ids"].tolist(), acts):
                copies.setdefault((frame.header.split, sample), []).append(row)
    train = [rows for (split, _), rows in copies.items() if split == "train"]
    assert len(train) == 32 and all(len(rows) >= 2 for rows in train)  # every sample sent in both device epochs
    assert sum(len(rows) for rows in train) > 64  # ... and some resent after a cut
    assert all(torch.equal(rows[0], r) for rows in copies.values() for r in rows)

    clean = {s: row for item in tap_batches(backbone, codec, batcher.batches(data.train[:32], 8, shuffle=False), pivot=True)
             for s, row in zip(item.batch.sample_ids.tolist(), decode_layers(codec, item.taps))}
    assert all(not torch.allclose(copies["train", s][0], clean[s]) for s in clean)

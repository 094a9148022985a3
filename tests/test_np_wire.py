"""Messages without torch: a device's numpy Batch is byte for byte the torch device's, the server decodes it as
before, and the device session decodes the server's SideNet into numpy arrays."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import make_hello

from mobillm.exceptions import ProtocolError
from mobillm.wire.codecs import get_codec
from mobillm.wire.messages import Ack, Batch, SideNet, Welcome, decode_message, encode_message
from mobillm.wire.np_codecs import NP_CODECS, get_np_codec
from mobillm.wire.session import Acked, DeviceSession, ServerSession, SideNetArrived


def _taps(pivot: bool) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    shape = (3, 16) if pivot else (3, 5, 16)
    return [rng.standard_normal(shape).astype(np.float32) for _ in range(3)]


def _batch_tensors(codec: str, pivot: bool, as_torch: bool) -> dict:
    labels, ids = [1, 0, 1], [4, 7, 9]
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]], np.int64)
    extras = {} if pivot else dict(attention_mask=mask, last_index=mask.sum(1) - 1)
    if as_torch:
        enc = get_codec(codec).encode
        taps = [enc(torch.from_numpy(t)) for t in _taps(pivot)]
        extras = {k: torch.from_numpy(v) for k, v in extras.items()}
        return Batch.tensors(taps, sample_ids=torch.tensor(ids), labels=torch.tensor(labels), **extras)
    enc = get_np_codec(codec).encode
    return Batch.tensors([enc(t) for t in _taps(pivot)], sample_ids=ids, labels=labels, **extras)


@pytest.mark.parametrize("pivot", [True, False], ids=["pivot", "every-position"])
@pytest.mark.parametrize("codec", sorted(NP_CODECS))
def test_numpy_batch_bytes_equal_torch_batch_bytes(codec, pivot):
    header = Batch(seq=3, split="train", epoch=0)
    np_tensors = _batch_tensors(codec, pivot, as_torch=False)
    assert all(isinstance(t, np.ndarray) for t in np_tensors.values())
    data = encode_message(header, np_tensors)
    assert data == encode_message(header, _batch_tensors(codec, pivot, as_torch=True))
    frame = decode_message(data)  # the server's side: torch tensors, checked as ever
    assert isinstance(frame.tensors["sample_ids"], torch.Tensor) and frame.tensors["sample_ids"].tolist() == [4, 7, 9]
    decoded = get_codec(codec).decode(Batch.activation_groups(frame.tensors)[0])
    want = get_np_codec(codec).decode(Batch.activation_groups(np_tensors)[0])
    np.testing.assert_array_equal(decoded.numpy(), want)


def test_numpy_batches_are_checked_like_torch_ones():
    tensors = _batch_tensors("int8", pivot=True, as_torch=False)
    with pytest.raises(ProtocolError, match="sample_ids must be int64"):
        encode_message(Batch(seq=0, split="train", epoch=0), {**tensors, "sample_ids": np.array([1.0, 2.0, 3.0])})
    with pytest.raises(ProtocolError, match="labels of shape"):
        encode_message(Batch(seq=0, split="train", epoch=0), {**tensors, "labels": np.array([1, 0], np.int64)})
    with pytest.raises(ProtocolError, match="must hold integers"):
        Batch.tensors([get_np_codec("int8").encode(_taps(True)[0])], sample_ids=[1.5, 2.0, 3.0], labels=[0, 1, 0])
    with pytest.raises(TypeError, match="mix torch tensors and numpy"):
        encode_message(Batch(seq=0, split="train", epoch=0), {**tensors, "labels": torch.tensor([1, 0, 1])})


def test_device_session_in_numpy_receives_the_side_network_as_numpy():
    hello = make_hello()
    device, server = DeviceSession(hello, framework="np"), ServerSession(window=2)
    server.receive(device.hello())
    device.receive(server.welcome("s1", last_seq=-1, step=0))
    batch = device.batch("train", 0, _batch_tensors("int8", pivot=True, as_torch=False))
    assert server.receive(batch).batch.seq == 0
    assert isinstance(device.receive(encode_message(Ack(seq=0, step=1))), Acked)
    state = {"up.weight": torch.randn(4, 3), "gate": torch.zeros(2)}
    event = device.receive(encode_message(SideNet(config={"width": 4}, step=1), state))
    assert isinstance(event, SideNetArrived)
    got = event.frame.tensors
    assert all(isinstance(t, np.ndarray) for t in got.values())
    np.testing.assert_array_equal(got["up.weight"], state["up.weight"].numpy())
    assert isinstance(decode_message(encode_message(Welcome(session="s", window=1, last_seq=-1, step=0))).header, Welcome)


def test_messages_and_the_session_never_import_torch():
    code = """
import sys
import numpy as np
from mobillm.wire.messages import Batch, Hello, decode_message, encode_message
from mobillm.wire.np_codecs import get_np_codec
from mobillm.wire.session import DeviceSession
from mobillm.sidenet.config import SideConfig
tensors = Batch.tensors([get_np_codec("nf4").encode(np.ones((2, 8), np.float32))], sample_ids=[0, 1], labels=[1, 0])
frame = decode_message(encode_message(Batch(seq=0, split="eval", epoch=0), tensors), framework="np")
assert frame.tensors["labels"].tolist() == [1, 0]
print(sorted(m for m in ("torch", "transformers") if m in sys.modules))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"

"""The wire message format: every message type round-trips; hostile bytes only ever raise WireError codes."""

from __future__ import annotations

import json
import random
import struct

import pytest
import safetensors.torch
import torch
from helpers import make_hello

from mobillm.exceptions import PayloadTooBig, ProtocolError, WireError
from mobillm.wire.errors import ErrorCode
from mobillm.wire.messages import (
    MAX_HEADER_BYTES,
    MESSAGE_TYPES,
    PROTOCOL_VERSION,
    Ack,
    Batch,
    Done,
    Error,
    Frame,
    GetSideNet,
    SideNet,
    Welcome,
    decode_message,
    encode_message,
)

hello = make_hello


def hello_json(**side_overrides) -> dict:
    """``hello()`` as the JSON header, with raw (unvalidated) values put into its side_config."""
    fields = hello().model_dump(mode="json")
    return {**fields, "side_config": {**fields["side_config"], **side_overrides}}


def fake_layer(i: int, batch: int = 3, hidden: int = 16) -> dict[str, torch.Tensor]:
    """What an int8-like codec hands out for one layer, built by hand (no dependency on codecs.py)."""
    g = torch.Generator().manual_seed(i)
    return {
        "shape": torch.tensor([batch, hidden], dtype=torch.int64),
        "data": torch.randint(-127, 128, (batch * hidden,), dtype=torch.int8, generator=g),
        "scale": torch.rand(batch, generator=g),
    }


def batch_tensors(batch: int = 3, layers: int = 2, **extra) -> dict[str, torch.Tensor]:
    return Batch.tensors(
        [fake_layer(i, batch) for i in range(layers)],
        sample_ids=torch.arange(10, 10 + batch), labels=torch.tensor([0, 1, 1][:batch] + [0] * max(0, batch - 3)),
        **extra,
    )


def raw_blob(header: dict, tensors: dict[str, torch.Tensor] | None = None, **metadata: str) -> bytes:
    """A blob with any header at all, bypassing encode_message's own checks (to play the hostile peer)."""
    return safetensors.torch.save(tensors or {}, metadata={"mobillm": json.dumps(header), **metadata})


def forge(index: dict, payload: bytes = b"") -> bytes:
    """A safetensors blob with an arbitrary JSON index."""
    text = json.dumps(index).encode()
    return struct.pack("<Q", len(text)) + text + payload


def code_of(data, **kwargs) -> str:
    with pytest.raises(ProtocolError) as info:
        decode_message(data, **kwargs)
    return info.value.code


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert torch.equal(a[k], b[k]), k


CASES = {
    "hello": (hello(), None),
    "hello_resume": (hello(token=None, task="causal-lm", num_labels=0, resume=True, device_epochs=3), None),
    "welcome": (Welcome(session="abc123", window=8, last_seq=-1, step=0), None),
    "error": (Error(code=ErrorCode.AUTH, message="wrong token for job 'x'"), None),
    "batch": (Batch(seq=7, split="train", epoch=1), batch_tensors()),
    "batch_causal": (
        Batch(seq=0, split="eval", epoch=0),
        Batch.tensors([fake_layer(0)], sample_ids=[1, 2, 3], labels=torch.zeros(3, 5, dtype=torch.int64),
                      loss_mask=torch.ones(3, 5, dtype=torch.bool), attention_mask=torch.ones(3, 5, dtype=torch.int64),
                      last_index=[4, 4, 4]),
    ),
    "ack": (Ack(seq=7, step=3, loss=0.6931), None),
    "ack_no_loss": (Ack(seq=9, step=3, loss=None), None),
    "done": (Done(epoch=2), None),
    "get_side_net": (GetSideNet(), None),
    "side_net": (
        SideNet(config={"hidden_size": 16, "shortcuts": [2, 5]}, step=120, val_accuracy=0.75,
                eval_sample_ids=[4, 5], eval_predictions=[1, 0]),
        {"blocks.0.weight": torch.randn(4, 16), "blocks.0.bias": torch.zeros(4, dtype=torch.bfloat16),
         "head.weight": torch.randn(2, 4, dtype=torch.float16)},
    ),
}


def test_cases_cover_every_message_type():
    assert {h.type for h, _ in CASES.values()} == set(MESSAGE_TYPES)


@pytest.mark.parametrize("name", list(CASES))
def test_every_message_round_trips(name):
    header, tensors = CASES[name]
    data = encode_message(header, tensors)
    assert isinstance(data, bytes)
    frame = decode_message(data, max_bytes=len(data))  # exactly at the limit is allowed
    assert isinstance(frame, Frame)
    assert type(frame.header) is type(header)
    assert frame.header == header
    assert frame.header.v == PROTOCOL_VERSION
    assert_same_tensors(frame.tensors, tensors or {})
    # bytearray / memoryview input decode the same
    assert decode_message(bytearray(data)).header == header
    assert decode_message(memoryview(data)).header == header


def test_headers_are_frozen():
    with pytest.raises(Exception):
        hello().job = "other"


def test_batch_activation_groups_in_order():
    layers = [fake_layer(i) for i in range(2)]
    data = encode_message(Batch(seq=1, split="train", epoch=0),
                          Batch.tensors(layers, sample_ids=[5, 6, 7], labels=[1, 0, 1]))
    frame = decode_message(data)
    groups = Batch.activation_groups(frame.tensors)
    assert len(groups) == 2
    for got, want in zip(groups, layers):
        assert_same_tensors(got, want)
    assert frame.tensors["sample_ids"].tolist() == [5, 6, 7]
    assert frame.tensors["labels"].dtype == torch.int64


def test_batch_with_real_codec_round_trips():
    codecs = pytest.importorskip("mobillm.wire.codecs")
    codec = codecs.get_codec("int8")
    acts = [torch.randn(3, 16, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    encoded = [codec.encode(a) for a in acts]
    frame = decode_message(encode_message(Batch(seq=0, split="train", epoch=0),
                                          Batch.tensors(encoded, sample_ids=[0, 1, 2], labels=[0, 1, 0])))
    groups = Batch.activation_groups(frame.tensors)
    for got, want, x in zip(groups, encoded, acts):
        assert_same_tensors(got, want)
        assert torch.allclose(codec.decode(got), x, atol=0.05)


def test_activation_groups_rejects_gaps_and_malformed_keys():
    layer = fake_layer(0)
    with pytest.raises(ProtocolError) as info:
        Batch.activation_groups({**{f"act.0.{k}": v for k, v in layer.items()}, "act.2.data": layer["data"]})
    assert info.value.code == ErrorCode.BAD_BATCH
    for key in ("act.x.data", "act.01.data", "act.0.", "act.0.da/ta"):
        with pytest.raises(ProtocolError) as info:
            Batch.activation_groups({key: layer["data"]})
        assert info.value.code == ErrorCode.BAD_BATCH
    assert Batch.activation_groups({"labels": torch.zeros(1)}) == []


def test_encode_makes_tensors_contiguous_and_unshared():
    w = torch.randn(4, 6)
    tensors = {"a.weight": w.t(), "b.weight": w}  # a non-contiguous view sharing storage with another entry
    frame = decode_message(encode_message(SideNet(config={}, step=0), {**tensors, "c.weight": w}))
    assert torch.equal(frame.tensors["a.weight"], w.t())
    assert torch.equal(frame.tensors["c.weight"], w)


def test_encode_refuses_what_the_peer_would_refuse():
    with pytest.raises(ProtocolError) as info:
        encode_message(hello(), {"x": torch.zeros(1)})
    assert info.value.code == ErrorCode.UNEXPECTED_TENSORS
    with pytest.raises(ProtocolError) as info:
        encode_message(Batch(seq=0, split="train", epoch=0), {"sample_ids": torch.arange(2)})
    assert info.value.code == ErrorCode.BAD_BATCH
    with pytest.raises(ProtocolError) as info:
        encode_message(SideNet(config={"x": float("nan")}, step=0))
    assert info.value.code == ErrorCode.BAD_HEADER
    with pytest.raises(ProtocolError) as info:
        encode_message(SideNet(config={"x": torch.zeros(1)}, step=0))
    assert info.value.code == ErrorCode.BAD_HEADER


@pytest.mark.parametrize("bad", [
    dict(job=""), dict(job="a/b"), dict(job="x" * 65), dict(shortcuts=[]), dict(shortcuts=[3, 3]),
    dict(shortcuts=[0, 2]), dict(hidden_size=0), dict(num_labels=-1), dict(task="regression"),
    dict(fingerprint="XYZ"),
])
def test_hello_validation(bad):
    with pytest.raises(ValueError):
        hello(**bad)


# -- hostile bytes --------------------------------------------------------------------------------------
def test_truncated_blob_is_bad_frame():
    data = encode_message(Batch(seq=3, split="train", epoch=0), batch_tensors())
    n = struct.unpack("<Q", data[:8])[0]
    for cut in (0, 1, 7, 8, 9, 8 + n // 2, 8 + n - 1, 8 + n, 8 + n + 1, len(data) - 1):
        assert code_of(data[:cut]) == ErrorCode.BAD_FRAME, cut


def test_random_bytes_are_bad_frame():
    rng = random.Random(0)
    for size in (0, 5, 64, 1000):
        assert code_of(rng.randbytes(size)) == ErrorCode.BAD_FRAME
    assert code_of("text frame") == ErrorCode.BAD_FRAME
    assert code_of(None) == ErrorCode.BAD_FRAME


def test_forged_header_length_is_bad_frame():
    data = encode_message(Done(epoch=0))
    for n in (2**64 - 1, 2**40, len(data) - 7, 0, 1):
        assert code_of(struct.pack("<Q", n) + data[8:]) == ErrorCode.BAD_FRAME, n
    # a header length within the buffer but above the 1 MiB cap
    big = struct.pack("<Q", MAX_HEADER_BYTES + 1) + b"{" + b" " * (MAX_HEADER_BYTES + 10)
    assert code_of(big) == ErrorCode.BAD_FRAME


@pytest.mark.parametrize("index,payload", [
    ({"__metadata__": {"mobillm": "{}"}, "t": {"dtype": "F32", "shape": [4], "data_offsets": [0, 1 << 40]}}, b"\0" * 16),
    ({"__metadata__": {"mobillm": "{}"}, "t": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}}, b"\0" * 16),
    ({"__metadata__": {"mobillm": "{}"}, "t": {"dtype": "F32", "shape": [5], "data_offsets": [0, 16]}}, b"\0" * 16),
    ({"__metadata__": {"mobillm": "{}"}, "t": {"dtype": "F32", "shape": [-4], "data_offsets": [0, 16]}}, b"\0" * 16),
    ({"__metadata__": {"mobillm": "{}"}, "t": {"dtype": "C64", "shape": [2], "data_offsets": [0, 16]}}, b"\0" * 16),
    ({"__metadata__": {"mobillm": "{}"}, "t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 16),
    ({"__metadata__": {"mobillm": "{}"}, "t": [1, 2]}, b""),
    ([1, 2, 3], b""),
])
def test_forged_tensor_index_is_bad_frame(index, payload):
    assert code_of(forge(index, payload)) == ErrorCode.BAD_FRAME


def test_duplicate_json_keys_are_bad_frame():
    text = b'{"__metadata__":{"mobillm":"{}"},"__metadata__":{"mobillm":"{}"}}'
    assert code_of(struct.pack("<Q", len(text)) + text) == ErrorCode.BAD_FRAME


def test_missing_or_non_json_metadata_is_bad_frame():
    assert code_of(safetensors.torch.save({})) == ErrorCode.BAD_FRAME
    assert code_of(safetensors.torch.save({}, metadata={"other": "{}"})) == ErrorCode.BAD_FRAME
    assert code_of(safetensors.torch.save({}, metadata={"mobillm": "not json"})) == ErrorCode.BAD_FRAME
    assert code_of(safetensors.torch.save({}, metadata={"mobillm": "[1, 2]"})) == ErrorCode.BAD_FRAME
    assert code_of(safetensors.torch.save({}, metadata={"mobillm": '{"type": "ack", "loss": NaN}'})) == ErrorCode.BAD_FRAME
    assert code_of(safetensors.torch.save({}, metadata={"mobillm": "[" * 100_000 + "]" * 100_000})) == ErrorCode.BAD_FRAME


def test_wrong_version():
    assert code_of(encode_message(Done(epoch=0, v=PROTOCOL_VERSION + 1))) == ErrorCode.BAD_VERSION
    assert code_of(raw_blob({"type": "done", "epoch": 0})) == ErrorCode.BAD_VERSION
    assert code_of(raw_blob({"type": "done", "v": "1", "epoch": 0})) == ErrorCode.BAD_VERSION
    assert code_of(raw_blob({"type": "done", "v": True, "epoch": 0})) == ErrorCode.BAD_VERSION
    # an unknown type from a newer protocol is reported as a version problem first
    assert code_of(raw_blob({"type": "from_the_future", "v": 2})) == ErrorCode.BAD_VERSION


def test_unknown_type():
    assert code_of(raw_blob({"type": "status", "v": 1})) == ErrorCode.UNKNOWN_TYPE
    assert code_of(raw_blob({"v": 1, "epoch": 0})) == ErrorCode.UNKNOWN_TYPE
    assert code_of(raw_blob({"type": ["done"], "v": 1})) == ErrorCode.UNKNOWN_TYPE


def test_extra_and_missing_fields_are_bad_header():
    fields = hello().model_dump(mode="json")
    with pytest.raises(ProtocolError) as info:
        decode_message(raw_blob({**fields, "admin": True}))
    assert info.value.code == ErrorCode.BAD_HEADER and "admin" in str(info.value)
    with pytest.raises(ProtocolError) as info:
        decode_message(raw_blob({k: v for k, v in fields.items() if k != "job"}))
    assert info.value.code == ErrorCode.BAD_HEADER and "job" in str(info.value)


@pytest.mark.parametrize("header", [
    hello_json(hidden_size="16"),  # strict: no str -> int coercion, in the typed side config too
    hello_json(shortcuts=[5, 2]),
    {**hello_json(), "train_config": {"lr": "0.001"}},
    {**hello().model_dump(mode="json"), "resume": 1},
    {"type": "welcome", "v": 1, "session": "s", "window": 0, "last_seq": -1, "step": 0},
    {"type": "welcome", "v": 1, "session": "s", "window": 2, "last_seq": -2, "step": 0},
    {"type": "ack", "v": 1, "seq": -1, "step": 0},
    {"type": "ack", "v": 1, "seq": 0, "step": 0, "loss": "0.5"},
    {"type": "batch", "v": 1, "seq": 0, "split": "test", "epoch": 0},
    {"type": "get_side_net", "v": 1, "anything": 1},
    {"type": "side_net", "v": 1, "config": {}, "step": 0, "eval_sample_ids": [1], "eval_predictions": []},
])
def test_invalid_fields_are_bad_header(header):
    assert code_of(raw_blob(header)) == ErrorCode.BAD_HEADER


def test_infinite_loss_is_bad_header():
    text = '{"type": "ack", "v": 1, "seq": 0, "step": 0, "loss": 1e999}'  # valid JSON that parses to inf
    assert code_of(safetensors.torch.save({}, metadata={"mobillm": text})) == ErrorCode.BAD_HEADER


def test_tensors_on_a_tensorless_message():
    for header in (hello().model_dump(mode="json"), {"type": "done", "v": 1, "epoch": 0},
                   {"type": "get_side_net", "v": 1}):
        assert code_of(raw_blob(header, {"x": torch.zeros(2)})) == ErrorCode.UNEXPECTED_TENSORS
    side = {"type": "side_net", "v": 1, "config": {}, "step": 0}
    assert code_of(raw_blob(side, {"w": torch.zeros(2, dtype=torch.int64)})) == ErrorCode.UNEXPECTED_TENSORS


BATCH = {"type": "batch", "v": 1, "seq": 0, "split": "train", "epoch": 0}


@pytest.mark.parametrize("tensors", [
    {**batch_tensors(), "labels": torch.zeros(4, dtype=torch.int64)},  # B mismatch
    {**batch_tensors(), "sample_ids": torch.arange(3, dtype=torch.float32)},  # float ids
    {**batch_tensors(), "sample_ids": torch.zeros(3, 1, dtype=torch.int64)},
    {**batch_tensors(), "labels": torch.zeros(3, dtype=torch.int32)},
    {**batch_tensors(), "sample_ids": torch.zeros(0, dtype=torch.int64), "labels": torch.zeros(0, dtype=torch.int64)},
    {k: v for k, v in batch_tensors().items() if k != "labels"},
    {k: v for k, v in batch_tensors().items() if k != "sample_ids"},
    {k: v for k, v in batch_tensors().items() if not k.startswith("act.")},  # no activations
    {k: v for k, v in batch_tensors(layers=3).items() if not k.startswith("act.1.")},  # layers 0, 2
    {**batch_tensors(), "act.00.data": torch.zeros(1)},
    {**batch_tensors(), "payload": torch.zeros(1)},
    {**batch_tensors(), "loss_mask": torch.ones(3, 4)},  # float mask
    {**batch_tensors(), "loss_mask": torch.ones(2, 4, dtype=torch.bool)},
    {**batch_tensors(), "labels": torch.zeros(3, 5, dtype=torch.int64), "loss_mask": torch.ones(3, 4, dtype=torch.bool)},
    {**batch_tensors(), "last_index": torch.zeros(2, dtype=torch.int64)},
    {**batch_tensors(), "attention_mask": torch.ones(3, dtype=torch.bool)},
])
def test_bad_batch(tensors):
    assert code_of(raw_blob(BATCH, tensors)) == ErrorCode.BAD_BATCH


def test_oversized_payload():
    data = encode_message(Batch(seq=0, split="train", epoch=0), batch_tensors())
    with pytest.raises(PayloadTooBig):
        decode_message(data, max_bytes=len(data) - 1)
    # the size is checked before anything is parsed
    with pytest.raises(PayloadTooBig):
        decode_message(b"\xff" * 1000, max_bytes=999)


def test_random_mutations_only_raise_wire_errors():
    rng = random.Random(1234)
    good = encode_message(Batch(seq=4, split="eval", epoch=0), batch_tensors())
    decoded = rejected = 0
    for i in range(500):
        data = bytearray(good)
        kind = i % 3
        if kind in (0, 2):
            for _ in range(rng.randint(1, 8)):
                data[rng.randrange(len(data))] = rng.randrange(256)
        if kind in (1, 2):
            del data[rng.randrange(len(data) + 1):]
        try:
            frame = decode_message(bytes(data), max_bytes=len(good))
        except WireError:
            rejected += 1
        else:
            assert isinstance(frame, Frame)
            decoded += 1
    assert rejected > 0 and decoded + rejected == 500


# -- error codes ------------------------------------------------------------------------------------------
def test_error_and_close_codes():
    for code in ("bad_frame", "bad_version", "unknown_type", "bad_header", "bad_batch", "unexpected_tensors",
                 "auth", "fingerprint_mismatch", "out_of_order", "too_big", "internal"):
        assert ErrorCode(code).description
    assert all(isinstance(c.close_code, int) and c.description for c in ErrorCode)
    for code in ("bad_frame", "bad_version", "unknown_type", "bad_header", "bad_batch"):
        assert ErrorCode(code).close_code == 1002
    assert ErrorCode("auth").close_code == ErrorCode("fingerprint_mismatch").close_code == 1008
    assert ErrorCode("too_big").close_code == 1009
    assert ErrorCode("internal").close_code == 1011

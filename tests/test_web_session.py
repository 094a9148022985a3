"""The web device's messages and session against the Python ones (``web/src/wire/messages.mjs``, ``session.mjs``):
every message the JS device sends is byte-equal to ``encode_message``'s and decodes in Python; every message the
server sends decodes in JS to the same fields; bad headers and bad Batch tensors are refused with the same code
on both sides; and the JS session runs the session table (``tests/session_rules.json``) as the Python one does."""

from __future__ import annotations

import base64
import json
import math
import random
import struct
from pathlib import Path

import numpy as np
import pytest
from helpers import make_hello
from webjs import run_node

from mobillm.exceptions import PayloadTooBig, ProtocolError
from mobillm.sidenet import SideConfig
from mobillm.train_config import TrainConfig
from mobillm.wire.errors import ErrorCode
from mobillm.wire.frame import write_frame
from mobillm.wire.messages import (
    Ack,
    Batch,
    Done,
    Error,
    GetSideNet,
    Hello,
    Message,
    SideNet,
    Welcome,
    decode_message,
    encode_message,
)

#: numpy dtype -> the wire's (safetensors) name, as the JS tensors carry it
WIRE = {"int64": "I64", "int32": "I32", "int8": "I8", "uint8": "U8", "bool": "BOOL", "float16": "F16",
        "float32": "F32", "float64": "F64"}


def to_js(array: np.ndarray) -> dict:
    """A numpy array as the driver's {dtype, shape, data} (16-bit floats as their bits)."""
    data = array.view(np.uint16) if array.dtype == np.float16 else array
    return {"dtype": WIRE[str(array.dtype)], "shape": list(array.shape), "data": data.ravel().tolist()}


def js_header(message: Message, minimal: bool = False) -> dict:
    """A header as the JS device's code would hold it: every field, or (``minimal``) only the message's own fields
    not at their default — a Hello's configs stay whole, as the device takes them from ``mobillm template``."""
    if not minimal:
        return message.model_dump()
    header = {"type": message.type, **message.model_dump(exclude_defaults=True)}
    if isinstance(message, Hello):
        header.update(side_config=message.side_config.model_dump(), train_config=message.train_config.model_dump())
    return header


def node_messages(mode: str, items: list) -> list[dict]:
    return json.loads(run_node("messages.mjs", mode, payload=items).stdout)


def node_decode(data: list[bytes]) -> list[dict]:
    return node_messages("decode", [base64.b64encode(d).decode() for d in data])


def python_code(call) -> str:
    try:
        call()
    except ProtocolError as err:
        return str(err.code)
    except PayloadTooBig:
        return "too_big"
    return "accepted"


# -- what the device sends ------------------------------------------------------------------------------------------
ODD_FLOATS = [1e-05, 1e-4, 0.000123, 0.1 + 0.2, 2 / 3, 1 / 3, 100.0, 1e15, 1e16, 1.5e16, 123456789012345.6, 1e22,
              5e-324, 1.7976931348623157e308, 9.999999999999999e-5, 2.5e-7, 0.5]


def random_floats(n: int, seed: int = 0) -> list[float]:
    """Positive finite doubles: half from random bit patterns (every exponent), half of 17 digits around the
    switch between Python's fixed and exponent notations (1e-6 .. 1e17)."""
    rng, out = random.Random(seed), []
    while len(out) < n // 2:
        (x,) = struct.unpack("<d", struct.pack("<Q", rng.getrandbits(63)))
        if math.isfinite(x) and x > 0:
            out.append(x)
    return out + [rng.random() * 10.0 ** rng.randint(-6, 17) for _ in range(n - len(out))]


def hellos() -> list:
    unusual = make_hello(
        token=None, resume=True, device_epochs=3,
        side_config=SideConfig(hidden_size=16, num_backbone_layers=12, shortcuts=[1, 12], width=8, dropout=0.1,
                               gate_temperature=0.1, codec="int8", num_labels=3, label_token_ids=[5, 9, 11],
                               label_names=["négatif", "😀 positive", "tab\there\x7f\x01", 'quote"\\/'],
                               prompt_template="Review: {text}\nSentiment:"),
        train_config=TrainConfig(lr=3e-4, epochs=2, warmup_ratio=0.1, warmup_steps=5, weight_decay=0.01, ema_gamma=None,
                                 label_smoothing=1 / 3, max_grad_norm=0.3, seed=7, lora_targets=["q_proj"]),
    )
    lrs = [make_hello(train_config=TrainConfig(lr=x)) for x in ODD_FLOATS + random_floats(300)]
    return [make_hello(), make_hello(task="causal-lm"), unusual, *lrs]


def batch_parts() -> tuple[dict, dict]:
    """A Batch's pieces: numpy for ``Batch.tensors``, JSON for the driver's batchTensors."""
    rng = np.random.default_rng(0)
    activations = [{"data": rng.integers(-128, 127, (2, 3, 4)).astype(np.int8),
                    "scale": rng.random((2, 3, 1)).astype(np.float16)} for _ in range(2)]
    py = dict(sample_ids=[7, 3], labels=np.array([[1, 2, -100], [4, -100, -100]], dtype=np.int32),
              loss_mask=np.array([[1, 1, 0], [1, 0, 0]], dtype=bool), attention_mask=np.ones((2, 3), dtype=np.uint8),
              last_index=np.array([2, 1], dtype=np.int32))
    js = dict(sampleIds=[7, 3], labels=to_js(py["labels"]), lossMask=to_js(py["loss_mask"]),
              attentionMask=to_js(py["attention_mask"]), lastIndex=to_js(py["last_index"]),
              activations=[{k: to_js(v) for k, v in layer.items()} for layer in activations])
    return Batch.tensors(activations, **py), js


def test_every_message_the_js_device_sends_is_byte_equal_to_pythons():
    cases = [(h, {}) for h in hellos()]
    tensors, _ = batch_parts()
    cases += [(Batch(seq=0, split="train", epoch=0), tensors), (Batch(seq=41, split="eval", epoch=3), tensors),
              (Batch(seq=1, split="train", epoch=0), {"sample_ids": np.array([1]), "labels": np.array([0]),
                                                      "act.0.data": np.zeros(2, dtype=np.float32)}),
              (Done(epoch=2), {}), (GetSideNet(), {})]
    items = [{"header": js_header(h, minimal), "tensors": {k: to_js(v) for k, v in t.items()}}
             for h, t in cases for minimal in (False, True)]
    results = node_messages("encode", items)
    for (header, tensors), pair in zip(cases, zip(results[::2], results[1::2])):
        want = encode_message(header, tensors)
        for got in pair:
            assert "bytes" in got, f"JS refused {header!r}: {got}"
            data = base64.b64decode(got["bytes"])
            assert data == want, f"{header.type}: JS {data[:600]!r}\n  Python {want[:600]!r}"
            assert decode_message(data, framework="np").header == header


def test_batch_tensors_match_pythons():
    tensors, parts = batch_parts()
    header = Batch(seq=5, split="train", epoch=1)
    (got,) = node_messages("encode", [{"header": js_header(header), "parts": parts}])
    assert base64.b64decode(got["bytes"]) == encode_message(header, tensors)


# -- what the server sends ------------------------------------------------------------------------------------------
def server_messages() -> list[tuple[Message, dict]]:
    side = make_hello().side_config.model_dump()
    state = {"w": np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3), "b": np.array([0.5, -2], dtype=np.float16),
             "g": np.array([1e-300], dtype=np.float64)}
    return [
        (Welcome(session="s1", window=4, last_seq=-1, step=0), {}),
        (Welcome(session="é" * 64, window=2**40, last_seq=2**52, step=9), {}),
        (Ack(seq=3, step=10), {}), (Ack(seq=0, step=1, loss=0.123456789), {}), (Ack(seq=1, step=2, loss=2.0), {}),
        *[(Error(code=code, message=f"why {code} é"), {}) for code in ErrorCode],
        (SideNet(config=side, step=7, val_accuracy=0.875, eval_sample_ids=[5, 2], eval_predictions=[1, 0]), state),
        (SideNet(config={}, step=0, val_loss=1.5), {}),
    ]


def test_every_message_the_server_sends_decodes_in_js_to_the_same_fields():
    messages = server_messages()
    results = node_decode([encode_message(h, t) for h, t in messages])
    for (header, tensors), got in zip(messages, results):
        assert got.get("header") == json.loads(json.dumps(header.model_dump())), got
        assert got["tensors"] == {k: to_js(v) for k, v in tensors.items()}


# -- what both sides refuse -----------------------------------------------------------------------------------------
WELCOME = {"type": "welcome", "v": 1, "session": "s", "window": 2, "last_seq": -1, "step": 0}
ACK = {"type": "ack", "v": 1, "seq": 0, "step": 0}
ERROR = {"type": "error", "v": 1, "code": "auth", "message": "x"}
SIDE_NET = {"type": "side_net", "v": 1, "config": {}, "step": 0}
BATCH = {"type": "batch", "v": 1, "seq": 0, "split": "train", "epoch": 0}
F32 = {"w": np.zeros(2, dtype=np.float32)}
BATCH_TENSORS = {"sample_ids": np.array([1, 2]), "labels": np.array([0, 1]), "act.0.data": np.zeros((2, 4), dtype=np.int8)}


def with_(header: dict, **fields) -> str:
    """``header`` with ``fields`` changed (a field given as ``...`` is left out), as JSON text."""
    return json.dumps({k: v for k, v in {**header, **fields}.items() if v is not ...})


HELLO = json.loads(json.dumps(make_hello().model_dump()))
SIDE = HELLO["side_config"]

#: (what, header text, tensors, the code both decoders refuse it with)
BAD_HEADERS = [
    ("not JSON", "{'type': 'ack'}", {}, "bad_frame"),
    ("a JSON list", "[1]", {}, "bad_frame"),
    ("a duplicate key", '{"type":"ack","v":1,"seq":0,"seq":1,"step":0}', {}, "bad_frame"),
    ("NaN", '{"type":"ack","v":1,"seq":0,"step":0,"loss":NaN}', {}, "bad_frame"),
    ("no version", with_(ACK, v=...), {}, "bad_version"),
    ("version 2", with_(WELCOME, v=2), {}, "bad_version"),
    ("version as a string", with_(WELCOME, v="1"), {}, "bad_version"),
    ("version true", with_(WELCOME, v=True), {}, "bad_version"),
    ("version 1.0", '{"type":"done","v":1.0,"epoch":0}', {}, "bad_version"),
    ("no type", json.dumps({"v": 1}), {}, "unknown_type"),
    ("an unknown type", with_(WELCOME, type="welcomed"), {}, "unknown_type"),
    ("a type that is no string", with_(WELCOME, type=5), {}, "unknown_type"),
    ("an inherited name as type", with_(WELCOME, type="constructor"), {}, "unknown_type"),
    ("a missing field", with_(WELCOME, step=...), {}, "bad_header"),
    ("an extra field", with_(WELCOME, extra=1), {}, "bad_header"),
    ("window 0", with_(WELCOME, window=0), {}, "bad_header"),
    ("window 2.0", with_(WELCOME, window=2.0), {}, "bad_header"),
    ("window as a string", with_(WELCOME, window="2"), {}, "bad_header"),
    ("window true", with_(WELCOME, window=True), {}, "bad_header"),
    ("last_seq -2", with_(WELCOME, last_seq=-2), {}, "bad_header"),
    ("an empty session", with_(WELCOME, session=""), {}, "bad_header"),
    ("a session of 65 characters", with_(WELCOME, session="é" * 65), {}, "bad_header"),
    ("a loss past the float range", '{"type":"ack","v":1,"seq":0,"step":0,"loss":1e999}', {}, "bad_header"),
    ("a loss as a string", with_(ACK, loss="0.5"), {}, "bad_header"),
    ("a loss true", with_(ACK, loss=True), {}, "bad_header"),
    ("an unknown error code", with_(ERROR, code="nope"), {}, "bad_header"),
    ("an error message that is no string", with_(ERROR, message=5), {}, "bad_header"),
    ("a side net config that is a list", with_(SIDE_NET, config=[]), {}, "bad_header"),
    ("eval lists of different lengths", with_(SIDE_NET, eval_sample_ids=[1, 2], eval_predictions=[0]), {}, "bad_header"),
    ("an eval id 1.5", with_(SIDE_NET, eval_sample_ids=[1.5], eval_predictions=[0]), {}, "bad_header"),
    ("a side net accuracy as a string", with_(SIDE_NET, val_accuracy="0.9"), {}, "bad_header"),
    ("done epoch -1", json.dumps({"type": "done", "v": 1, "epoch": -1}), {}, "bad_header"),
    ("get_side_net with a field", json.dumps({"type": "get_side_net", "v": 1, "epoch": 0}), {}, "bad_header"),
    ("a batch split 'test'", with_(BATCH, split="test"), BATCH_TENSORS, "bad_header"),
    ("a hello job with a slash", with_(HELLO, job="a/b"), {}, "bad_header"),
    ("a hello fingerprint in capitals", with_(HELLO, fingerprint="ABCD"), {}, "bad_header"),
    ("a hello without side_config", with_(HELLO, side_config=...), {}, "bad_header"),
    ("a side_config field of the wrong type", with_(HELLO, side_config={**SIDE, "width": "8"}), {}, "bad_header"),
    ("a side_config task unknown", with_(HELLO, side_config={**SIDE, "task": "qa"}), {}, "bad_header"),
    ("a train_config field unknown", with_(HELLO, train_config={"lr": 0.1, "momentum": 0.9}), {}, "bad_header"),
    ("a train_config schedule unknown", with_(HELLO, train_config={"schedule": "step"}), {}, "bad_header"),
    ("a welcome with tensors", json.dumps(WELCOME), F32, "unexpected_tensors"),
    ("an error with tensors", json.dumps(ERROR), F32, "unexpected_tensors"),
    ("a side net with an int tensor", json.dumps(SIDE_NET), {"w": np.zeros(2, dtype=np.int32)}, "unexpected_tensors"),
    ("a batch without sample_ids", json.dumps(BATCH), {"labels": np.array([0]), "act.0.data": F32["w"]}, "bad_batch"),
]


@pytest.fixture(scope="module")
def js_decoded() -> dict[str, dict]:
    frames = [write_frame(tensors, text) for _, text, tensors, _ in BAD_HEADERS]
    return dict(zip([what for what, *_ in BAD_HEADERS], node_decode(frames)))


@pytest.mark.parametrize(("what", "text", "tensors", "code"), BAD_HEADERS, ids=[c[0] for c in BAD_HEADERS])
def test_a_bad_header_is_refused_with_the_same_code_on_both_sides(what, text, tensors, code, js_decoded):
    assert python_code(lambda: decode_message(write_frame(tensors, text), framework="np")) == code
    assert js_decoded[what] == {"error": code}


def bad_batches() -> list[tuple[str, dict, str]]:
    """(what, tensors, the code both encoders refuse them with)."""
    ids, labels, act = np.array([1, 2]), np.array([0, 1]), np.zeros((2, 4), dtype=np.int8)
    base = {"sample_ids": ids, "labels": labels, "act.0.data": act}
    return [
        ("no labels", {"sample_ids": ids, "act.0.data": act}, "bad_batch"),
        ("an unknown tensor", {**base, "extra": ids}, "bad_batch"),
        ("int32 sample_ids", {**base, "sample_ids": ids.astype(np.int32)}, "bad_batch"),
        ("no samples", {**base, "sample_ids": ids[:0]}, "bad_batch"),
        ("2-D sample_ids", {**base, "sample_ids": ids[None]}, "bad_batch"),
        ("labels of another batch size", {**base, "labels": labels[:1]}, "bad_batch"),
        ("3-D labels", {**base, "labels": np.zeros((2, 1, 1), dtype=np.int64)}, "bad_batch"),
        ("a float32 loss_mask", {**base, "loss_mask": np.ones((2, 3), dtype=np.float32)}, "bad_batch"),
        ("a loss_mask unlike 2-D labels", {**base, "labels": np.zeros((2, 3), dtype=np.int64),
                                           "loss_mask": np.ones((2, 4), dtype=bool)}, "bad_batch"),
        ("a 1-D attention_mask", {**base, "attention_mask": np.ones(2, dtype=np.uint8)}, "bad_batch"),
        ("a float attention_mask", {**base, "attention_mask": np.ones((2, 3), dtype=np.float16)}, "bad_batch"),
        ("a 2-D last_index", {**base, "last_index": np.ones((2, 1), dtype=np.int64)}, "bad_batch"),
        ("no activations", {"sample_ids": ids, "labels": labels}, "bad_batch"),
        ("a malformed activation key", {**base, "act.01.data": act}, "bad_batch"),
        ("an activation name with a dot", {**base, "act.0.a.b": act}, "bad_batch"),
        ("a gap in the layers", {**base, "act.2.data": act}, "bad_batch"),
        ("a good batch with every optional tensor", {**base, "labels": np.zeros((2, 3), dtype=np.int64),
                                                     "loss_mask": np.ones((2, 3), dtype=np.uint8),
                                                     "attention_mask": np.ones((2, 3), dtype=np.int64),
                                                     "last_index": ids, "act.1.scale": act}, "accepted"),
    ]


def test_a_bad_batch_is_refused_with_the_same_code_by_both_encoders_and_decoders():
    cases = bad_batches()
    header = Batch(seq=0, split="train", epoch=0)
    items = [{"header": js_header(header), "tensors": {k: to_js(v) for k, v in t.items()}} for _, t, _ in cases]
    encoded = node_messages("encode", items)
    text = json.dumps(header.model_dump())
    decoded = node_decode([write_frame(t, text) for _, t, _ in cases])
    for (what, tensors, code), js_encoded, js_decoded in zip(cases, encoded, decoded):
        seen = {"python encode": python_code(lambda: encode_message(header, tensors)),
                "python decode": python_code(lambda: decode_message(write_frame(tensors, text), framework="np")),
                "js encode": js_encoded.get("error", "accepted"), "js decode": js_decoded.get("error", "accepted")}
        assert set(seen.values()) == {code}, f"{what}: {seen}"


def test_the_device_encodes_only_its_own_messages():
    items = [{"header": js_header(h)} for h, _ in server_messages()[:3]] + [{"header": {"type": "nope"}}]
    assert node_messages("encode", items) == [{"error": "TypeError"}] * 4


# -- the session table ---------------------------------------------------------------------------------------------
RULES = json.loads((Path(__file__).resolve().parent / "session_rules.json").read_text())
OBSERVED = ("error", "refused", "event", "resend", "seq", "loss", "step", "resume", "expect")  # as test_session.py's


def test_the_js_session_runs_the_session_table_as_the_python_one():
    seen = json.loads(run_node("session.mjs").stdout)
    assert list(seen) == [case["name"] for case in RULES["cases"]]
    for case in RULES["cases"]:
        expected = [{k: step[k] for k in OBSERVED if k in step} for step in case["steps"]]
        assert seen[case["name"]] == expected, case["name"]

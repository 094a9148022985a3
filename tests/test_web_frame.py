"""The web device's framing (``web/src/wire/frame.mjs``) against :mod:`mobillm.wire.frame`: JavaScript writes the
same bytes as ``write_frame`` for the same tensors, reads what Python writes, and refuses every hostile frame that
Python refuses (docs/protocol.md §2, checks 1-7), with the same error kind."""

from __future__ import annotations

import base64
import json
import struct

import ml_dtypes
import numpy as np
import pytest
import torch
from webjs import run_node

from mobillm.exceptions import PayloadTooBig, ProtocolError
from mobillm.wire.frame import MAX_HEADER_BYTES, read_frame, write_frame
from mobillm.wire.messages import Ack, SideNet, decode_message, encode_message

#: numpy dtype of each wire dtype
DTYPES = {
    "BOOL": np.bool_, "U8": np.uint8, "I8": np.int8, "F8_E4M3": ml_dtypes.float8_e4m3fn,
    "F8_E5M2": ml_dtypes.float8_e5m2, "U16": np.uint16, "I16": np.int16, "F16": np.float16,
    "BF16": ml_dtypes.bfloat16, "U32": np.uint32, "I32": np.int32, "F32": np.float32, "U64": np.uint64,
    "I64": np.int64, "F64": np.float64,
}
#: a header that JSON must escape every way: quotes, backslashes, control characters, DEL, non-ASCII, astral
HEADER = '{"type":"x","note":"a \\"quoted\\" \\\\ path\\n\\t\x01\x1f\x7f é 😀 </script>"}'


def _tensors() -> dict[str, np.ndarray]:
    """Every wire dtype, in an insertion order unlike safetensors' (dtype alignment, then name by UTF-8 bytes)."""
    rng = np.random.default_rng(0)
    out = {}
    for i, (dtype, np_dtype) in enumerate(reversed(DTYPES.items())):
        size = np.dtype(np_dtype).itemsize
        raw = rng.integers(0, 256, (3 + i) * size, dtype=np.uint8)
        out[f"t{i:02d}.{dtype}"] = raw.view(np_dtype).reshape(-1) if dtype != "BOOL" else (raw % 2).astype(np.bool_)
    # names whose UTF-16 order differs from their UTF-8 byte order, an empty name, zero-size tensors (no scalar:
    # write_frame makes a 0-d numpy array 1-d, as np.ascontiguousarray does; JS writes shape [] as torch does)
    out["\U0001f600"] = np.arange(3, dtype=np.float32)
    out["\uffff"] = np.arange(2, dtype=np.float32)
    out[""] = np.array([7.5], np.float32)
    out["empty"] = np.zeros((0, 4), np.float32)
    out["also empty"] = np.zeros((2, 0), np.int64)
    out["__proto__"] = np.array([1, 2], np.int8)
    out["0"] = np.array([[1, 2], [3, 4]], np.int32)
    return out


def _spec(tensors: dict[str, np.ndarray], header: str) -> dict:
    return {"header": header, "tensors": [
        [name, _wire_dtype(a), list(a.shape), base64.b64encode(a.tobytes()).decode()] for name, a in tensors.items()
    ]}


def _wire_dtype(array: np.ndarray) -> str:
    return next(name for name, dtype in DTYPES.items() if np.dtype(dtype) == array.dtype)


def _bytes(tensor: torch.Tensor) -> bytes:
    return tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b""


def test_js_writes_the_bytes_python_writes(tmp_path):
    tensors = _tensors()
    run_node("frame.mjs", "write", tmp_path / "js.bin", payload=_spec(tensors, HEADER))
    js = (tmp_path / "js.bin").read_bytes()
    assert js == write_frame(tensors, HEADER)
    got, header = read_frame(js)
    assert header == HEADER and set(got) == set(tensors)
    for name, array in tensors.items():
        assert tuple(got[name].shape) == array.shape and _bytes(got[name]) == array.tobytes(), name


def test_python_frames_read_in_js_equal_and_rewrite_identically(tmp_path):
    tensors = _tensors()
    blob = write_frame(tensors, HEADER)
    (tmp_path / "py.bin").write_bytes(blob)
    frame = json.loads(run_node("frame.mjs", "rewrite", tmp_path / "py.bin", tmp_path / "js.bin").stdout)
    assert frame["header"] == HEADER
    assert frame["tensors"] == {k: [_wire_dtype(a), list(a.shape), base64.b64encode(a.tobytes()).decode()]
                                for k, a in tensors.items()}
    assert (tmp_path / "js.bin").read_bytes() == blob


@pytest.mark.parametrize("message, tensors", [
    (Ack(seq=3, step=2, loss=0.6931471805599453), {}),
    (SideNet(config={"hidden": 8, "labels": ["négatif", "positif"], "eps": 1e-5}, step=40, val_accuracy=0.875,
             eval_sample_ids=[1, 2], eval_predictions=[0, 1]),
     {"blocks.0.weight": torch.randn(8, 4), "blocks.0.bias": torch.randn(8).to(torch.bfloat16),
      "norm.weight": torch.randn(4).half()}),
], ids=["ack", "side_net"])
def test_js_rewritten_messages_decode_in_python(tmp_path, message, tensors):
    blob = encode_message(message, tensors)
    (tmp_path / "py.bin").write_bytes(blob)
    run_node("frame.mjs", "rewrite", tmp_path / "py.bin", tmp_path / "js.bin")
    js = (tmp_path / "js.bin").read_bytes()
    assert js == blob
    frame = decode_message(js)
    assert frame.header == message
    for name, t in tensors.items():
        assert torch.equal(frame.tensors[name], t), name


# -- hostile frames ------------------------------------------------------------------------------------------
def _blob(index: str | bytes | dict, payload: bytes = b"", length: int | None = None) -> bytes:
    if isinstance(index, dict):
        index = json.dumps(index, separators=(",", ":"))
    raw = index.encode() if isinstance(index, str) else index
    return struct.pack("<Q", len(raw) if length is None else length) + raw + payload


META = {"__metadata__": {"mobillm": "{}"}}
U8 = {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]}
HEAD = '{"__metadata__":{"mobillm":"{}"}'  # an index's opening, for cases that json.dumps cannot write


def _entry(**changes) -> dict:
    return {**META, "t": {**U8, **changes}}


#: name -> blob that both sides must refuse as bad_frame (a 4-byte payload unless the case says otherwise)
BAD_FRAMES = {
    "short blob": b"\x02\x00\x00\x00\x00",
    "length below 2": _blob("{", length=1),
    "forged length": _blob(META, length=10_000),
    "length past MAX_HEADER_BYTES": _blob(json.dumps(META) + " " * MAX_HEADER_BYTES),
    "invalid UTF-8": _blob(b'{"__metadata__":{"mobillm":"\xff"}}'),
    "byte order mark": _blob("\ufeff" + json.dumps(META)),
    "not JSON": _blob('{"__metadata__":{"mobillm":"{}"}'),
    "extra data": _blob(json.dumps(META) + "x"),
    "control character": _blob('{"__metadata__":{"mobillm":"a\nb"}}'),
    "not an object": _blob("[1, 2]"),
    "deep nesting": _blob(f'{HEAD},"t":' + "[" * 5000 + "]" * 5000 + "}"),
    "duplicate tensor": _blob(f'{HEAD},"t":{json.dumps(U8)},"t":{json.dumps(U8)}}}', b"abcd"),
    "duplicate metadata key": _blob('{"__metadata__":{"mobillm":"{}","mobillm":"{}"}}'),
    "duplicate entry field": _blob(HEAD + ',"t":{"dtype":"U8","dtype":"U8","shape":[4],"data_offsets":[0,4]}}', b"abcd"),
    "NaN shape": _blob(json.dumps(_entry()).replace("[4]", "[NaN]"), b"abcd"),
    "Infinity offset": _blob(json.dumps(_entry()).replace("[0, 4]", "[0, Infinity]"), b"abcd"),
    "-Infinity offset": _blob(json.dumps(_entry()).replace("[0, 4]", "[-Infinity, 4]"), b"abcd"),
    "dtype not on the wire": _blob(_entry(dtype="F4"), b"abcd"),
    "dtype by numpy's name": _blob(_entry(dtype="uint8"), b"abcd"),
    "dtype of an inherited name": _blob(_entry(dtype="toString"), b"abcd"),
    "missing field": _blob({**META, "t": {"dtype": "U8", "shape": [4]}}, b"abcd"),
    "extra field": _blob(_entry(offsets=[0, 4]), b"abcd"),
    "entry not an object": _blob({**META, "t": [0, 4]}, b"abcd"),
    "negative dim": _blob(_entry(shape=[-4]), b"abcd"),
    "float dim": _blob(_entry(shape=[4.0]), b"abcd"),
    "bool dim": _blob(_entry(shape=[True, 4]), b"abcd"),
    "float offset": _blob(_entry(data_offsets=[0, 4.0]), b"abcd"),
    "three offsets": _blob(_entry(data_offsets=[0, 4, 4]), b"abcd"),
    "offsets past payload": _blob(_entry(data_offsets=[2, 6]), b"abcd"),
    "offsets reversed": _blob(_entry(shape=[0], data_offsets=[4, 0]), b"abcd"),
    "size not matching shape": _blob(_entry(shape=[2]), b"abcd"),
    "overlapping spans": _blob({**META, "a": U8, "b": {**U8, "shape": [2], "data_offsets": [2, 4]}}, b"abcd"),
    "hole between spans": _blob({**META, "a": {**U8, "shape": [1], "data_offsets": [0, 1]},
                                 "b": {**U8, "shape": [2], "data_offsets": [2, 4]}}, b"abcd"),
    "payload not covered": _blob(_entry(), b"abcdef"),
    "no metadata": _blob({"t": U8}, b"abcd"),
    "metadata without mobillm": _blob({"__metadata__": {"other": "x"}}),
    "metadata not an object": _blob({"__metadata__": ["mobillm", "{}"]}),
    "non-string mobillm": _blob({"__metadata__": {"mobillm": {"type": "ack"}}}),
    "non-string metadata value": _blob({"__metadata__": {"mobillm": "{}", "n": 1}}),
    # refused by safetensors itself, after frame.py's checks
    "lone surrogate in a name": _blob(f'{HEAD},"\\ud800":{json.dumps(U8)}}}', b"abcd"),
    "lone surrogate in metadata": _blob('{"__metadata__":{"mobillm":"\\udc00"}}'),
    "shape product past 64 bits": _blob(_entry(shape=[2**32, 2**32, 0], data_offsets=[0, 0]), b""),
}

#: name -> blob that both sides accept (the JS and the Python reading must agree on header and tensors)
GOOD_FRAMES = {
    "whitespace around the index": _blob(" \t\n" + json.dumps(_entry(), indent=1) + "\r\n ", b"abcd"),
    "escaped names": _blob(f'{HEAD},"\\u0041\\ud83d\\ude00\\u0000":{json.dumps(U8)}}}', b"abcd"),
    "other metadata": _blob({"__metadata__": {"mobillm": "{}", "format": "pt"}}),
    "spans listed out of order": _blob({**META, "b": {**U8, "shape": [1], "data_offsets": [3, 4]},
                                        "a": {**U8, "shape": [3], "data_offsets": [0, 3]}}, b"abcd"),
    "unaligned float32": _blob({**META, "a": {**U8, "shape": [1], "data_offsets": [0, 1]},
                                "f": {"dtype": "F32", "shape": [2], "data_offsets": [1, 9]}},
                               b"\x07" + np.array([1.5, -2.0], np.float32).tobytes()),
    "zero-size tensors at one offset": _blob({**META, "e": {**U8, "shape": [0, 3], "data_offsets": [0, 0]},
                                              "f": {**U8, "shape": [0], "data_offsets": [0, 0]}, "t": U8}, b"abcd"),
    "scalar": _blob({**META, "s": {"dtype": "I64", "shape": [], "data_offsets": [0, 8]}}, struct.pack("<q", -5)),
    "big integers": _blob({**META, "e": {**U8, "shape": [0, 2**40], "data_offsets": [0, 0]}}),
}


def _python_verdict(blob: bytes, max_bytes: int | None) -> str | None:
    try:
        read_frame(blob, max_bytes=max_bytes)
    except PayloadTooBig:
        return "PayloadTooBig"
    except ProtocolError as err:
        return f"ProtocolError {err.code}"
    return None


@pytest.fixture(scope="module")
def js_verdicts() -> dict[str, dict]:
    cases = {**BAD_FRAMES, **GOOD_FRAMES, "too big": _blob(_entry(), b"abcd")}
    payload = {"max_bytes": None, "cases": {name: base64.b64encode(blob).decode() for name, blob in cases.items()}}
    out = json.loads(run_node("frame.mjs", "read", payload=payload).stdout)
    payload = {"max_bytes": len(cases["too big"]) - 1, "cases": {"too big": payload["cases"]["too big"]}}
    out.update(json.loads(run_node("frame.mjs", "read", payload=payload).stdout))
    return out


@pytest.mark.parametrize("case", list(BAD_FRAMES))
def test_js_refuses_what_python_refuses(js_verdicts, case: str):
    blob = BAD_FRAMES[case]
    assert _python_verdict(blob, None) == "ProtocolError bad_frame"
    got = js_verdicts[case]
    assert (got["error"], got["code"]) == ("ProtocolError", "bad_frame"), got
    assert got["message"].startswith("bad_frame: ")


def test_js_refuses_a_frame_over_max_bytes(js_verdicts):
    blob = _blob(_entry(), b"abcd")
    assert _python_verdict(blob, len(blob) - 1) == "PayloadTooBig" and _python_verdict(blob, len(blob)) is None
    got = js_verdicts["too big"]
    assert got["error"] == "PayloadTooBig" and f"message of {len(blob)} bytes exceeds" in got["message"]


@pytest.mark.parametrize("case", list(GOOD_FRAMES))
def test_js_reads_what_python_reads(js_verdicts, case: str):
    tensors, header = read_frame(GOOD_FRAMES[case])
    got = js_verdicts[case]
    assert got["error"] is None, got
    assert got["header"] == header
    assert got["tensors"] == {name: [_dtype_name(t), list(t.shape), base64.b64encode(_bytes(t)).decode()]
                              for name, t in tensors.items()}


def _dtype_name(t: torch.Tensor) -> str:
    names = {torch.uint8: "U8", torch.float32: "F32", torch.int64: "I64"}
    return names[t.dtype]


def test_js_refuses_dimensions_it_cannot_hold(tmp_path):
    """The one frame Python reads and JavaScript refuses: a zero-element tensor with a dimension above 2^53 - 1,
    which a JS number cannot hold exactly (safetensors accepts up to 2^64 - 1)."""
    blob = _blob({**META, "e": {**U8, "shape": [0, 2**53 + 1], "data_offsets": [0, 0]}})
    assert _python_verdict(blob, None) is None
    payload = {"max_bytes": None, "cases": {"huge": base64.b64encode(blob).decode()}}
    got = json.loads(run_node("frame.mjs", "read", payload=payload).stdout)["huge"]
    assert got["code"] == "bad_frame" and "exceeds 2^53 - 1" in got["message"]

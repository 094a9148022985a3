"""Activation codecs: round trips with per-codec error bounds, exact byte counts, safetensors transport,
bitsandbytes as the NF4/FP4 oracle, and malformed input from the network."""

from __future__ import annotations

import math
import time

import pytest
import torch
from safetensors.torch import load, save

from mobillm.exceptions import CodecError
from mobillm.wire.codecs import (
    CODECS,
    FP4_CODE,
    NF4_CODE,
    Codec,
    decode_layers,
    encoded_nbytes,
    expected_nbytes,
    get_codec,
    register_codec,
)

# name -> (tensor fields besides "shape", payload bytes for a (16, 576) input, computed by hand).
CODEC_TABLE = {
    "none": ({"data": torch.float32}, 16 * 576 * 4),
    "fp16": ({"data": torch.float16}, 16 * 576 * 2),
    "bf16": ({"data": torch.bfloat16}, 16 * 576 * 2),
    "fp8": ({"data": torch.float8_e4m3fn, "scale": torch.float32}, 16 * 576 + 16 * 4),
    "int8": ({"data": torch.int8, "scale": torch.float32}, 16 * 576 + 16 * 4),
    "fp4": ({"data": torch.uint8, "absmax": torch.float32}, 16 * 576 // 2 + (16 * 576 // 64) * 4),
    "nf4": ({"data": torch.uint8, "absmax": torch.float32}, 16 * 576 // 2 + (16 * 576 // 64) * 4),
}
NAMES = list(CODEC_TABLE)


def _gen(seed: int, shape: tuple[int, ...], scale: float = 1.0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * scale


def _outliers() -> torch.Tensor:
    # Like real hidden states: a few huge channels, plus one all-zero row that must not give NaN.
    x = _gen(4, (8, 576))
    x[:, 7] *= 300.0
    x[2] = 0.0
    return x


DATA = {
    "normal_16x576": lambda: _gen(0, (16, 576)),
    "normal_3x7x64": lambda: _gen(1, (3, 7, 64), 5.0),
    "normal_5": lambda: _gen(2, (5,)),
    "normal_13x9": lambda: _gen(3, (13, 9), 0.01),  # 117 elements: short last block, odd count
    "zeros_4x64": lambda: torch.zeros(4, 64),
    "outliers_8x576": _outliers,
}


# --- error bounds, one per codec (x: input, y: decoded, both float32 of the same shape) ---------------


def _row_absmax(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, x.shape[-1]).abs().amax(dim=1, keepdim=True).reshape(*x.shape[:-1], 1)


def _block_absmax(x: torch.Tensor) -> torch.Tensor:
    """Per element, the absmax of its block of 64 in the flattened tensor."""
    flat = x.reshape(-1)
    padded = torch.nn.functional.pad(flat, (0, -flat.numel() % 64)).view(-1, 64)
    return padded.abs().amax(dim=1, keepdim=True).expand(-1, 64).reshape(-1)[: flat.numel()].reshape(x.shape)


def _half_max_gap(code: tuple[float, ...]) -> float:
    top = max(abs(c) for c in code)
    values = sorted(v / top for v in code)
    return max(b - a for a, b in zip(values, values[1:])) / 2


def _bound(name: str, x: torch.Tensor) -> torch.Tensor:
    """Largest |decoded - x| allowed per element."""
    if name == "none":
        return torch.zeros_like(x)
    if name == "fp16":  # 10 mantissa bits: relative 2**-11; below 2**-14 the subnormal step is 2**-24
        return x.abs() * 2**-11 + 2**-25
    if name == "bf16":  # 7 mantissa bits
        return x.abs() * 2**-8
    if name == "fp8":  # e4m3: relative 2**-4 on the per-row scaled value, subnormal step 2**-9 below 2**-6
        scale = _row_absmax(x) / 448
        return x.abs() * 2**-4 + scale * 2**-10 + 1e-6 * _row_absmax(x)
    if name == "int8":  # round to nearest multiple of the row's scale
        return _row_absmax(x) / 127 / 2 + 1e-6 * _row_absmax(x)
    if name in ("fp4", "nf4"):  # nearest table value, times the block's absmax
        code = FP4_CODE if name == "fp4" else NF4_CODE
        return _block_absmax(x) * (_half_max_gap(code) + 1e-6)
    raise AssertionError(name)


def test_registry_holds_exactly_the_documented_codecs():
    assert set(CODECS) == set(CODEC_TABLE)
    for name, cls in CODECS.items():
        assert cls.name == name
        assert isinstance(get_codec(name), Codec)


@pytest.mark.parametrize("data", DATA)
@pytest.mark.parametrize("name", NAMES)
def test_round_trip_within_bound(name, data):
    x = DATA[data]()
    codec = get_codec(name)
    enc = codec.encode(x)
    fields, _ = CODEC_TABLE[name]
    assert set(enc) == {"shape", *fields}
    assert enc["shape"].dtype == torch.int64 and enc["shape"].tolist() == list(x.shape)
    assert all(enc[k].dtype == dt for k, dt in fields.items())
    assert all(t.is_contiguous() for t in enc.values())

    y = codec.decode(enc)
    assert y.shape == x.shape and y.dtype == torch.float32
    assert torch.isfinite(y).all()
    err = (y - x).abs()
    bound = _bound(name, x)
    worst = (err - bound).max().item()
    assert worst <= 0, f"{name}: error exceeds its bound by {worst}"
    if data.startswith("zeros"):
        assert torch.equal(y, x)


def test_quantizing_codecs_are_lossy_but_not_too_lossy():
    # Guards the bounds above against being vacuous: 4-bit loses much more than 8-bit, and none is exact.
    x = _gen(0, (16, 576))
    rel = {n: ((get_codec(n).decode(get_codec(n).encode(x)) - x).norm() / x.norm()).item() for n in NAMES}
    assert rel["none"] == 0
    assert 0 < rel["fp16"] < rel["bf16"] < rel["fp8"] < 0.05
    assert 0 < rel["int8"] < 0.02
    assert 0.05 < rel["nf4"] < 0.15 and 0.05 < rel["fp4"] < 0.2


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_float_inputs_decode_as_float32(name, dtype):
    x = _gen(5, (4, 64)).to(dtype)
    y = get_codec(name).decode(get_codec(name).encode(x))
    assert y.dtype == torch.float32 and y.shape == x.shape
    assert ((y - x.float()).abs() <= _bound(name, x.float()) + 1e-7).all()


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", [(0, 576), (4, 0), (0,)])
def test_empty_tensors(name, shape):
    codec = get_codec(name)
    enc = codec.encode(torch.zeros(shape))
    assert codec.decode(enc).shape == shape
    assert encoded_nbytes(enc) == expected_nbytes(name, shape)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", [(16, 576), (3, 7, 64), (5,), (13, 9), (2, 3, 5, 7), (1, 1)])
def test_exact_byte_count(name, shape):
    enc = get_codec(name).encode(torch.randn(shape))
    assert encoded_nbytes(enc) == sum(t.numel() * t.element_size() for t in enc.values())
    assert encoded_nbytes(enc) == expected_nbytes(name, shape)


@pytest.mark.parametrize("name", NAMES)
def test_byte_count_pinned_for_16x576(name):
    # The wire format by hand: a change here changes what a deployed server accepts.
    assert expected_nbytes(name, (16, 576)) == 8 * 2 + CODEC_TABLE[name][1]


def test_nf4_is_under_30_percent_of_fp16():
    shape = (16, 576)
    assert expected_nbytes("nf4", shape) / expected_nbytes("fp16", shape) <= 0.30
    assert encoded_nbytes(get_codec("nf4").encode(torch.randn(shape))) / (16 * 576 * 2) <= 0.30


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", [(16, 576), (3, 7, 64), (5,)])
def test_safetensors_round_trip(name, shape):
    codec = get_codec(name)
    enc = codec.encode(_gen(6, shape))
    loaded = load(save(enc))
    assert set(loaded) == set(enc)
    assert all(torch.equal(loaded[k].view(torch.uint8), enc[k].view(torch.uint8)) for k in enc)
    assert torch.equal(codec.decode(loaded), codec.decode(enc))


# --- bitsandbytes as the oracle for NF4 / FP4 --------------------------------------------------------


def _ties() -> torch.Tensor:
    # absmax exactly 1, so x/absmax hits the midpoints between table values and both signed zeros.
    nf4 = torch.tensor(NF4_CODE)
    fp4 = torch.tensor(FP4_CODE) / 12
    mids = [(a + b) / 2 for t in (nf4, fp4) for a, b in zip(t.sort().values[:-1], t.sort().values[1:])]
    x = torch.tensor([1.0, 0.0, -0.0, 1e-4, -1e-4, 0.002, -0.002, *mids, *torch.tensor(NF4_CODE), *fp4])
    return torch.nn.functional.pad(x, (0, 128 - x.numel()))


ORACLE_DATA = {
    "normal_16x576": lambda: _gen(10, (16, 576)),
    "normal_3x7x64": lambda: _gen(11, (3, 7, 64), 5.0),
    "normal_5": lambda: _gen(12, (5,)),
    "normal_13x9": lambda: _gen(13, (13, 9), 0.01),
    "outliers_8x576": _outliers,
    "ties_128": _ties,
}


@pytest.mark.parametrize("data", ORACLE_DATA)
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_4bit_matches_bitsandbytes(quant_type, data):
    bnbf = pytest.importorskip("bitsandbytes.functional")
    x = ORACLE_DATA[data]()
    packed, state = bnbf.quantize_4bit(x, quant_type=quant_type, blocksize=64)
    ours = get_codec(quant_type).encode(x)
    # Same float operations (reciprocal multiply, then bucketize on float32 midpoints), so the codes
    # agree exactly, ties included.
    assert torch.equal(ours["data"], packed.reshape(-1))
    assert torch.equal(ours["absmax"], state.absmax)
    # Odd sizes take bitsandbytes' torch.compile fallback; eager keeps this test fast and changes no value.
    with torch.compiler.set_stance("force_eager"):
        # reshape: its CPU kernel returns a 1-d input as (1, n)
        reference = bnbf.dequantize_4bit(packed, state).reshape(x.shape)
    torch.testing.assert_close(get_codec(quant_type).decode(ours), reference, rtol=1e-6, atol=0)


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_4bit_tables_match_bitsandbytes(quant_type):
    bnbf = pytest.importorskip("bitsandbytes.functional")
    assert torch.equal(get_codec(quant_type).table, bnbf.get_4bit_type(quant_type, device="cpu"))


@pytest.mark.parametrize("name", NAMES)
def test_encode_is_fast(name):
    # CPU time of this thread on one intra-op thread (the device budget), so a busy or descheduled test
    # machine cannot fail it; the best of a few runs drops one-off warm-up costs.
    codec, x = get_codec(name), _gen(7, (16, 6, 576))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        codec.encode(x)
        best = math.inf
        for _ in range(5):
            start = time.thread_time()
            codec.encode(x)
            best = min(best, time.thread_time() - start)
    finally:
        torch.set_num_threads(threads)
    assert best < 0.010, f"{name} encode of (16, 6, 576) took {best * 1e3:.1f} ms of CPU"


# --- malformed input ---------------------------------------------------------------------------------


def test_unknown_codec_names_the_choices():
    with pytest.raises(CodecError, match="unknown codec 'nf5'.*none.*nf4"):
        get_codec("nf5")
    with pytest.raises(CodecError):
        expected_nbytes("zstd", (4,))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    "x",
    [torch.arange(6).reshape(2, 3), torch.ones(4, dtype=torch.bool), torch.tensor(1.5), [1.0, 2.0]],
    ids=["int64", "bool", "0-dim", "list"],
)
def test_encode_refuses_non_float_or_scalar(name, x):
    with pytest.raises(CodecError):
        get_codec(name).encode(x)


def _with(enc: dict, key: str, value) -> dict:
    out = dict(enc)
    if value is None:
        del out[key]
    else:
        out[key] = value
    return out


# (case id, how to break a valid encoding of a (4, 64) tensor, expected message fragment)
MALFORMED = [
    ("missing_shape", lambda e: _with(e, "shape", None), "missing"),
    ("missing_data", lambda e: _with(e, "data", None), "missing"),
    ("extra_key", lambda e: _with(e, "extra", torch.zeros(1)), "unexpected"),
    ("shape_1e12", lambda e: _with(e, "shape", torch.tensor([10**6, 10**6])), "invalid shape"),
    ("shape_overflows_int64", lambda e: _with(e, "shape", torch.tensor([2**62, 2**62, 0])), "invalid shape"),
    ("shape_product_off", lambda e: _with(e, "shape", torch.tensor([4, 65])), "must be"),
    ("shape_huge_but_allowed", lambda e: _with(e, "shape", torch.tensor([2, 10**9])), "must be"),
    ("shape_negative", lambda e: _with(e, "shape", torch.tensor([-4, -64])), "invalid shape"),
    ("shape_int32", lambda e: _with(e, "shape", torch.tensor([4, 64], dtype=torch.int32)), "int64"),
    ("shape_2d", lambda e: _with(e, "shape", torch.tensor([[4, 64]])), "1-d"),
    ("shape_empty", lambda e: _with(e, "shape", torch.zeros(0, dtype=torch.int64)), "dims"),
    ("shape_too_many_dims", lambda e: _with(e, "shape", torch.ones(1000, dtype=torch.int64)), "dims"),
    ("shape_not_tensor", lambda e: _with(e, "shape", [4, 64]), "int64"),
    ("data_wrong_dtype", lambda e: _with(e, "data", e["data"].to(torch.float64)), "must be"),
    ("data_truncated", lambda e: _with(e, "data", e["data"][:-1].clone()), "must be"),
    ("data_2d", lambda e: _with(e, "data", e["data"].reshape(2, -1)), "must be"),
    ("data_not_tensor", lambda e: _with(e, "data", b"\x00" * 64), "must be"),
]


@pytest.mark.parametrize("case,breaker,message", MALFORMED, ids=[m[0] for m in MALFORMED])
@pytest.mark.parametrize("name", NAMES)
def test_malformed_input_raises_codec_error(name, case, breaker, message):
    codec = get_codec(name)
    enc = codec.encode(_gen(8, (4, 64)))
    with pytest.raises(CodecError, match=message):
        codec.decode(breaker(enc))


@pytest.mark.parametrize("name", ["fp8", "int8", "fp4", "nf4"])
@pytest.mark.parametrize("change", ["drop_last", "wrong_dtype", "missing"])
def test_malformed_scales_raise_codec_error(name, change):
    codec = get_codec(name)
    enc = codec.encode(_gen(9, (4, 64)))
    key = next(k for k in enc if k not in ("shape", "data"))
    value = {"drop_last": enc[key][:-1].clone(), "wrong_dtype": enc[key].half(), "missing": None}[change]
    with pytest.raises(CodecError, match=key if change != "missing" else "missing"):
        codec.decode(_with(enc, key, value))


def test_decode_refuses_a_non_mapping():
    with pytest.raises(CodecError):
        get_codec("nf4").decode(torch.zeros(4))  # type: ignore[arg-type]


def test_nf4_and_fp4_payloads_are_not_confused_with_int8():
    # Codec mismatch between the two sides shows up as an error, not as garbage.
    with pytest.raises(CodecError):
        get_codec("int8").decode(get_codec("nf4").encode(torch.randn(4, 64)))
    with pytest.raises(CodecError):
        get_codec("fp16").decode(get_codec("bf16").encode(torch.randn(4, 64)))


# --- helpers around the codecs -----------------------------------------------------------------------


def test_decode_layers_stacks_on_the_second_last_dim():
    codec = get_codec("int8")
    layers = [_gen(i, (2, 3, 64)) for i in range(4)]
    acts = decode_layers(codec, [codec.encode(x) for x in layers])
    assert acts.shape == (2, 3, 4, 64)
    for i, x in enumerate(layers):
        assert ((acts[..., i, :] - x).abs() <= _bound("int8", x)).all()
    with pytest.raises(CodecError):
        decode_layers(codec, [])
    with pytest.raises(CodecError):
        decode_layers(codec, [codec.encode(torch.randn(2, 64)), codec.encode(torch.randn(3, 64))])


def test_register_codec_adds_one_class():
    @register_codec
    class Fp16Again(CODECS["fp16"]):
        name = "test-fp16-again"

    try:
        assert type(get_codec("test-fp16-again")) is Fp16Again
        assert expected_nbytes("test-fp16-again", (3, 4)) == expected_nbytes("fp16", (3, 4))
        with pytest.raises(ValueError, match="already registered"):

            @register_codec
            class Clash(CODECS["fp16"]):
                name = "test-fp16-again"
    finally:
        CODECS.pop("test-fp16-again", None)

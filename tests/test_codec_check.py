"""``Codec.check``: the shape ``decode`` would return, found without decoding — and refusing everything that
``decode`` would refuse or turn into NaN/Inf. Every code of every 8- and 4-bit codec and every 16-bit pattern of
fp16/bf16 is tried against a table of scales, so no value slips through."""

from __future__ import annotations

import math

import pytest
import torch

from mobillm.exceptions import CodecError
from mobillm.wire.codecs import CODECS, get_codec

F32_MAX = torch.finfo(torch.float32).max
SCALES = [0.0, 1.0, -1.0, 1e-38, 1e-45, 1e30, F32_MAX / 448, F32_MAX / 127, F32_MAX / 2, F32_MAX, -F32_MAX,
          math.inf, -math.inf, math.nan]


def verdict(codec, encoded) -> tuple[int, ...] | None:
    """The shape ``check`` reports, or None if it refuses; a refusal must be a CodecError."""
    try:
        return codec.check(encoded)
    except CodecError:
        return None


def assert_check_agrees_with_decode(codec, encoded) -> bool:
    """``check`` accepts only what decodes to finite values of the shape it reports; True if it accepted."""
    shape = verdict(codec, encoded)
    try:
        x = codec.decode(encoded)
    except CodecError:
        assert shape is None, f"check accepted what decode refuses: {encoded}"
        return False
    if shape is not None:
        assert tuple(x.shape) == shape
        assert bool(torch.isfinite(x).all()), f"check accepted an encoding that decodes to NaN/Inf: {encoded}"
    return shape is not None


def every_pattern(dtype: torch.dtype) -> torch.Tensor:
    bits = {1: torch.uint8, 2: torch.int16}[dtype.itemsize]
    if bits == torch.uint8:
        return torch.arange(256, dtype=torch.int32).to(torch.uint8).view(dtype)
    return torch.arange(-(1 << 15), 1 << 15, dtype=torch.int32).to(torch.int16).view(dtype)


@pytest.mark.parametrize("name", ["none", "fp16", "bf16"])
def test_cast_codecs_refuse_exactly_the_non_finite_values(name):
    codec = get_codec(name)
    values = (torch.tensor([0.0, -0.0, 1.0, F32_MAX, -F32_MAX, 1e-45, math.inf, -math.inf, math.nan])
              if name == "none" else every_pattern(codec.dtype))
    finite = torch.isfinite(values)
    # check's verdict is "every value finite": the finite values together pass, each other value alone fails.
    assert assert_check_agrees_with_decode(codec, {"shape": torch.tensor([int(finite.sum())]), "data": values[finite].clone()})
    for v in values[~finite]:
        assert not assert_check_agrees_with_decode(codec, {"shape": torch.tensor([1]), "data": v.reshape(1).clone()})


@pytest.mark.parametrize("name", ["fp8", "int8"])
def test_row_scaled_codecs_refuse_nan_codes_bad_scales_and_overflow(name):
    codec = get_codec(name)
    codes = every_pattern(codec.dtype)
    accepted = 0
    for scale in SCALES:
        for code in codes:
            encoded = {"shape": torch.tensor([1, 2]), "data": torch.stack([code, codes[0]]),
                       "scale": torch.tensor([scale])}
            accepted += assert_check_agrees_with_decode(codec, encoded)
    assert accepted > len(codes)  # many finite cases pass: the check is not refuse-everything


@pytest.mark.parametrize("name", ["fp4", "nf4"])
def test_4bit_codecs_refuse_exactly_the_non_finite_absmax(name):
    codec = get_codec(name)
    for scale in SCALES:
        for byte in range(256):
            encoded = {"shape": torch.tensor([2]), "data": torch.tensor([byte], dtype=torch.uint8),
                       "absmax": torch.tensor([scale])}
            assert (assert_check_agrees_with_decode(codec, encoded)) == math.isfinite(scale)


def _broken(encoded: dict) -> list[dict]:
    """Structural forgeries of one valid encoding: each must be refused by decode and check alike."""
    out = [{k: v for k, v in encoded.items() if k != key} for key in encoded]  # a field missing
    out.append({**encoded, "extra": torch.zeros(1)})
    for key, t in encoded.items():
        out += [{**encoded, key: t[:-1].clone()}, {**encoded, key: t.to(torch.float64)}, {**encoded, key: t.reshape(1, -1)}]
    out += [{**encoded, "shape": torch.tensor(s)} for s in ([3, 65], [-4, -64], [10**6, 10**6], [2**62, 2**62, 0])]
    return out


@pytest.mark.parametrize("name", sorted(CODECS))
def test_check_reports_the_shape_and_refuses_what_decode_refuses(name):
    codec = get_codec(name)
    for shape in [(3, 64), (2, 5, 16), (1, 7), (0, 8)]:
        encoded = codec.encode(torch.randn(shape, generator=torch.Generator().manual_seed(0)))
        assert codec.check(encoded) == shape == tuple(codec.decode(encoded).shape)
    for forged in _broken(codec.encode(torch.randn(3, 64))):
        with pytest.raises(CodecError):
            codec.decode(forged)
        with pytest.raises(CodecError):
            codec.check(forged)


def test_every_registered_codec_is_covered_here():
    assert set(CODECS) == {"none", "fp16", "bf16", "fp8", "int8", "fp4", "nf4"}

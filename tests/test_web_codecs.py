"""The web device's codecs (``web/src/wire/codecs.mjs``) against :mod:`mobillm.wire.np_codecs`: on vectors chosen to
hit every rounding rule (ties, overflow, subnormals, 4-bit bin midpoints, partial blocks), the JavaScript encoding
is byte-identical to numpy's for every codec, and the JavaScript decode of numpy's encoding equals numpy's decode."""

from __future__ import annotations

import json
import struct

import ml_dtypes
import numpy as np
import pytest
import torch
from safetensors.numpy import save_file
from safetensors.torch import load_file
from webjs import run_node

from mobillm.wire.messages import dtype_name
from mobillm.wire.np_codecs import NP_CODECS, get_np_codec

# the vectors overflow float16 and hold NaN and inf on purpose
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning",
                                        "ignore:invalid value encountered:RuntimeWarning")


def _neighbours(values: np.ndarray) -> np.ndarray:
    """``values`` (float32) and the float32 just below and above each: both sides of every rounding boundary."""
    v = values.astype(np.float32)
    return np.concatenate([v, np.nextafter(v, np.float32(-np.inf)), np.nextafter(v, np.float32(np.inf))])


def _rows(values: np.ndarray, cols: int, top: float) -> np.ndarray:
    """``values`` and their negatives in rows of ``cols``, each row led by ``top`` so that its absmax is ``top``
    (a per-row scale of exactly 1 when ``top`` is the codec's qmax: the values reach the cast unscaled)."""
    v = np.concatenate([values, -values]).astype(np.float32)
    v = v[np.abs(v) <= top]
    v = np.concatenate([v, np.zeros(-len(v) % (cols - 1), np.float32)]).reshape(-1, cols - 1)
    return np.concatenate([np.full((len(v), 1), top, np.float32), v], axis=1)


def _midpoints(grid: np.ndarray) -> np.ndarray:
    """Midpoints of consecutive values of an increasing float32 grid, exact in float32 for these grids."""
    g = grid.astype(np.float64)
    return ((g[:-1] + g[1:]) / 2).astype(np.float32)


def _inputs() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    fp16_grid = np.arange(0, 0x7C00, dtype=np.uint16).view(np.float16).astype(np.float32)  # every finite float16
    bf16_grid = np.arange(0, 0x7F80, dtype=np.uint16).view(ml_dtypes.bfloat16).astype(np.float32)
    e4m3_grid = np.arange(0, 0x7F, dtype=np.uint8).view(ml_dtypes.float8_e4m3fn).astype(np.float32)
    bits = rng.integers(0, 2**32, 20_000, dtype=np.uint64).astype(np.uint32)
    random_bits = bits.view(np.float32)
    random_bits = random_bits[np.isfinite(random_bits)]  # every exponent, subnormals included
    nf4, fp4 = get_np_codec("nf4"), get_np_codec("fp4")
    # 4-bit: blocks with absmax 1 (scaled by 1 exactly) holding every bin bound and its float32 neighbours
    bounds = np.concatenate([_neighbours(nf4.bounds), _neighbours(fp4.bounds), nf4.table, fp4.table])
    spiky = rng.standard_normal((2, 5, 64)).astype(np.float32)
    spiky[0, 1, 3], spiky[1, 4, 0] = 3e4, -7e5
    return {
        "normal": rng.standard_normal((4, 7, 32)).astype(np.float32),
        "partial block": rng.standard_normal((3, 100)).astype(np.float32),  # 300 = 4 blocks of 64 + 44
        "odd size": rng.standard_normal((5, 13)).astype(np.float32),  # 65: an odd count in a partial block
        "one element": np.array([2.5], np.float32),
        "zeros": np.zeros((3, 64), np.float32),
        "zero row": np.concatenate([np.zeros((1, 33), np.float32), rng.standard_normal((2, 33)).astype(np.float32)]),
        "empty rows": np.zeros((3, 0), np.float32),
        "no rows": np.zeros((0, 5), np.float32),
        "large": rng.standard_normal((2, 3, 50)).astype(np.float32) * 1e30,
        "spiky": spiky,
        "float32 subnormal": rng.standard_normal((3, 70)).astype(np.float32) * 1e-41,
        "int8 ties": _rows(np.arange(0, 255, dtype=np.float32) / 2, 64, 127.0),  # every k + 0.5 unscaled
        "fp16 ties": _neighbours(np.concatenate([fp16_grid, _midpoints(fp16_grid), [65504, 65519.996, 65520, 65536, 1e5]])),
        "bf16 ties": _neighbours(np.concatenate([_midpoints(bf16_grid[::97]), (1 + np.arange(512) / 2**8)])),
        "fp8 ties": _rows(_neighbours(np.concatenate([e4m3_grid, _midpoints(e4m3_grid)])), 50, 448.0),
        "4-bit bounds": _rows(bounds, 64, 1.0),
        "4-bit bounds partial": np.concatenate([[1], bounds[:62]]).astype(np.float32),  # one short block: divided
        "nan and inf": np.array([[1, np.nan, -2, 3], [np.inf, 1, -1, 0], [-np.nan, 0, 0, 0]] * 22, np.float32),
        "random bits": random_bits.reshape(-1)[: (len(random_bits) // 100) * 100].reshape(-1, 100),
    }


INPUTS = _inputs()


def _save(path, tensors: dict[str, np.ndarray]) -> None:
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path), metadata={"mobillm": "{}"})


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> tuple[dict[str, torch.Tensor], dict]:
    """What the JavaScript codecs made of INPUTS (and of np_codecs' encodings of them), and the header (read with
    safetensors.torch: safetensors.numpy cannot load F8_E4M3)."""
    directory = tmp_path_factory.mktemp("web-codecs")
    vectors = {f"x/{case}": x for case, x in INPUTS.items()}
    for name, codec in NP_CODECS.items():
        for case, x in INPUTS.items():
            vectors.update({f"enc/{name}/{case}/{k}": v for k, v in codec.encode(x).items()})
    _save(directory / "in.safetensors", vectors)
    run_node("codecs.mjs", directory / "in.safetensors", directory / "out.safetensors")
    raw = (directory / "out.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(json.loads(raw[8:8 + n])["__metadata__"]["mobillm"])
    return load_file(str(directory / "out.safetensors")), header


def test_the_web_device_has_every_codec(results):
    assert results[1]["codecs"] == list(NP_CODECS)


@pytest.mark.parametrize("case", list(INPUTS))
@pytest.mark.parametrize("name", list(NP_CODECS))
def test_js_encode_is_byte_identical_to_numpy(results, name: str, case: str):
    got = {k.rsplit("/", 1)[1]: v for k, v in results[0].items() if k.startswith(f"enc/{name}/{case}/")}
    want = get_np_codec(name).encode(INPUTS[case])
    assert sorted(got) == sorted(want)  # (the frame orders tensors its own way: the JS key order is a JS test)
    for field, w in want.items():
        g = got[field]
        assert (dtype_name(g), tuple(g.shape)) == (dtype_name(w), w.shape), field
        g = g.contiguous().view(torch.uint8).numpy().reshape(-1)
        bad = np.flatnonzero(g != w.view(np.uint8).reshape(-1))
        assert bad.size == 0, f"{field}: {bad.size} of {g.size} bytes differ, the first at byte {bad[0]}"


@pytest.mark.parametrize("case", list(INPUTS))
@pytest.mark.parametrize("name", list(NP_CODECS))
def test_js_decode_equals_numpy_decode(results, name: str, case: str):
    codec = get_np_codec(name)
    if case == "empty rows" and name in ("fp8", "int8"):  # numpy cannot: reshape(-1, 0) of an empty array
        want = np.zeros(INPUTS[case].shape, np.float32)
    else:
        want = codec.decode(codec.encode(INPUTS[case]))
    got = results[0][f"dec/{name}/{case}"].numpy()
    assert got.dtype == np.float32 and got.shape == want.shape
    # bit for bit (-0.0 included), except the sign and payload of a NaN that came out of arithmetic: JavaScript
    # engines do not keep them (a decoded NaN code times a NaN scale)
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(got), nan)
    assert got[~nan].tobytes() == want[~nan].tobytes()


def test_the_vectors_hit_the_cases_they_are_named_for():
    """Guards the inputs themselves: ties, overflow and subnormals really occur, so a pass means something."""
    ties = INPUTS["int8 ties"]
    assert np.all(ties[:, 0] == 127) and np.any(np.abs(ties - np.trunc(ties)) == 0.5)
    half = INPUTS["fp16 ties"].astype(np.float16)
    assert np.isinf(half).any() and (np.abs(half) < np.float16(2**-14)).any() and (half != 0).any()
    assert (get_np_codec("fp8").encode(INPUTS["fp8 ties"])["scale"] == 1).all()
    assert get_np_codec("nf4").encode(INPUTS["4-bit bounds"])["absmax"].tolist() == [1.0] * len(INPUTS["4-bit bounds"])
    assert INPUTS["partial block"].size % 64 and INPUTS["odd size"].size % 2

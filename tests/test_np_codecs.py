"""The numpy device side of every codec writes the same wire tensors, byte for byte, as the torch codecs."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.numpy import save as np_save
from safetensors.torch import save as torch_save

from mobillm.wire.codecs import CODECS, get_codec
from mobillm.wire.np_codecs import NP_CODECS, get_np_codec


def _inputs() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    tiny = rng.standard_normal((3, 70)).astype(np.float32) * 1e-41  # subnormal in float32
    spiky = rng.standard_normal((2, 5, 64)).astype(np.float32)
    spiky[0, 1, 3], spiky[1, 4, 0] = 3e4, -7e5  # outlier channels, as real backbones have
    ties = (np.arange(-300, 300, dtype=np.float32) / 8).reshape(6, 100)  # exact halves for round-to-even
    return {
        "normal": rng.standard_normal((4, 7, 32)).astype(np.float32),
        "zeros": np.zeros((3, 64), np.float32),
        "zero row": np.concatenate([np.zeros((1, 33), np.float32), rng.standard_normal((2, 33)).astype(np.float32)]),
        "large": rng.standard_normal((2, 3, 50)).astype(np.float32) * 1e30,
        "spiky": spiky,
        "odd size": rng.standard_normal((5, 13)).astype(np.float32),  # 65 elements: neither even nor x 64
        "one element": np.array([2.5], np.float32),
        "subnormal": tiny,
        "ties": ties,
        "bf16 ties": (1 + np.arange(0, 512, dtype=np.float32) / 2**8).reshape(8, 64),
        "float64 input": rng.standard_normal((2, 9)),
        "float16 input": rng.standard_normal((3, 65)).astype(np.float16),
    }


INPUTS = _inputs()


def test_every_torch_codec_has_a_numpy_twin():
    assert set(NP_CODECS) == set(CODECS)


@pytest.mark.parametrize("case", list(INPUTS))
@pytest.mark.parametrize("name", list(CODECS))
def test_numpy_encode_is_byte_identical_to_torch(name: str, case: str):
    x = INPUTS[case]
    want = get_codec(name).encode(torch.from_numpy(x))
    got = get_np_codec(name).encode(x)
    assert list(got) == list(want)
    for key in want:
        assert tuple(got[key].shape) == tuple(want[key].shape), key
        assert got[key].tobytes() == want[key].contiguous().view(torch.uint8).numpy().tobytes(), (key, case)
    # what goes on the wire: the same safetensors bytes, dtype tags included
    assert np_save(got) == torch_save(want)


@pytest.mark.parametrize("name", list(CODECS))
def test_numpy_decode_equals_torch_decode(name: str):
    x = INPUTS["spiky"]
    encoded = get_np_codec(name).encode(x)
    want = get_codec(name).decode(get_codec(name).encode(torch.from_numpy(x))).numpy()
    np.testing.assert_array_equal(get_np_codec(name).decode(encoded), want)


def test_unknown_codec_and_non_float_input_are_refused():
    from mobillm.exceptions import CodecError

    with pytest.raises(CodecError, match="valid codecs"):
        get_np_codec("int3")
    with pytest.raises(CodecError, match="floating-point"):
        get_np_codec("int8").encode(np.arange(4))


def test_np_codecs_import_no_torch():
    code = "import sys, mobillm.wire.np_codecs; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"

"""The device side of every activation codec in numpy: the same wire tensors as :mod:`mobillm.wire.codecs`.

A device that runs the backbone on ONNX Runtime carries no torch, so it encodes its taps here. Each codec
returns the same names, dtypes, shapes and bytes as the torch ``encode`` (a table test compares them byte for
byte), so the server cannot tell the two devices apart. bfloat16 and float8 e4m3fn arrays use ``ml_dtypes``
(its casts round to nearest even, like torch's), which ``safetensors.numpy`` writes as ``BF16`` / ``F8_E4M3``.

``decode`` is the local round trip a device needs to see what the server sees (local scoring, generation);
it trusts its input — the server decodes untrusted bytes with the torch codecs, which validate everything.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import ml_dtypes
import numpy as np

from mobillm.exceptions import CodecError
from mobillm.wire.codec_tables import BLOCK_4BIT, FP4_CODE, FP4_ORDER, MAX_ELEMENTS, MAX_NDIM, NF4_CODE

__all__ = ["NP_CODECS", "NpCodec", "get_np_codec"]

Encoded = dict[str, np.ndarray]


class NpCodec:
    """One codec's numpy encode/decode; subclasses implement ``_encode`` and ``_decode`` on float32 arrays."""

    name: str

    def encode(self, x: np.ndarray) -> Encoded:
        """``x`` (any float dtype, >= 1 dim) -> ``{"shape": int64, <fields>...}``, all contiguous."""
        x = np.asarray(x)
        if not np.issubdtype(x.dtype, np.floating) and x.dtype not in (ml_dtypes.bfloat16, ml_dtypes.float8_e4m3fn):
            raise CodecError(f"codec {self.name!r} encodes floating-point arrays, got {x.dtype}")
        if not 1 <= x.ndim <= MAX_NDIM:
            raise CodecError(f"codec {self.name!r} encodes arrays with 1..{MAX_NDIM} dims, got {x.ndim}")
        if x.size > MAX_ELEMENTS:
            raise CodecError(f"array of {x.size} elements exceeds the limit of {MAX_ELEMENTS}")
        x = x.astype(np.float32, copy=False)
        out = {"shape": np.array(x.shape, dtype=np.int64)}
        out.update(self._encode(x))
        return {k: np.ascontiguousarray(v) for k, v in out.items()}

    def decode(self, encoded: Mapping[str, np.ndarray]) -> np.ndarray:
        """The float32 array of the original shape (from this device's own ``encode``: not validated)."""
        shape = tuple(int(s) for s in encoded["shape"])
        return self._decode(encoded, shape).reshape(shape)

    def _encode(self, x: np.ndarray) -> Encoded:
        raise NotImplementedError

    def _decode(self, encoded: Mapping[str, np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
        raise NotImplementedError


class _Cast(NpCodec):
    def __init__(self, name: str, dtype):
        self.name, self.dtype = name, np.dtype(dtype)

    def _encode(self, x: np.ndarray) -> Encoded:
        with np.errstate(over="ignore"):  # fp16 overflows to inf, as torch casts it
            data = x.astype(self.dtype)  # a copy: the tap never aliases the backbone's activation
        return {"data": data.reshape(-1)}

    def _decode(self, encoded, shape):
        return encoded["data"].astype(np.float32)


class _RowScaled(NpCodec):
    """8-bit codes with one float32 scale per row (the last dimension): scale = absmax / qmax."""

    def __init__(self, name: str, dtype, qmax: float, rounding: bool):
        self.name, self.dtype, self.qmax, self.rounding = name, np.dtype(dtype), np.float32(qmax), rounding

    def _encode(self, x: np.ndarray) -> Encoded:
        cols = x.shape[-1]
        rows = math.prod(x.shape[:-1])
        x2 = x.reshape(rows, cols)
        absmax = np.abs(x2).max(axis=1) if cols else np.zeros(rows, np.float32)
        scale = absmax / self.qmax  # (rows,) float32
        safe = np.where(scale > 0, scale, np.float32(1))
        scaled = np.clip(x2 / safe[:, None], -self.qmax, self.qmax)
        if self.rounding:
            scaled = np.rint(scaled)  # half to even, as torch.round
        return {"data": scaled.astype(self.dtype).reshape(-1), "scale": scale.astype(np.float32)}

    def _decode(self, encoded, shape):
        cols = shape[-1]
        return encoded["data"].astype(np.float32).reshape(-1, cols) * encoded["scale"][:, None]


class _Block4bit(NpCodec):
    """bitsandbytes' 4-bit layout: flat blocks of 64, float32 absmax per block, two codes per byte (high first)."""

    def __init__(self, name: str, code, order):
        self.name = name
        table = np.array(code, dtype=np.float32)
        self.table = table / np.abs(table).max()
        ordered = self.table[list(order)]
        self.bounds = (ordered[:-1] + ordered[1:]) / np.float32(2)
        self.order = np.array(order, dtype=np.uint8)

    def _encode(self, x: np.ndarray) -> Encoded:
        flat = x.reshape(-1)
        n = flat.size
        nblocks = -(-n // BLOCK_4BIT)
        blocks = np.zeros(nblocks * BLOCK_4BIT, np.float32)
        blocks[:n] = flat
        blocks = blocks.reshape(nblocks, BLOCK_4BIT)
        absmax = np.abs(blocks).max(axis=1) if nblocks else np.zeros(0, np.float32)
        clamped = np.maximum(absmax, np.float32(1e-38))
        # The torch codec's float ops: full blocks times the reciprocal, the short last block divided.
        scaled = blocks * (np.float32(1) / clamped)[:, None]
        if n % BLOCK_4BIT:
            scaled[-1] = blocks[-1] / clamped[-1]
        scaled = np.clip(scaled, -1, 1).reshape(-1)
        # torch.bucketize(right=False): index of the first bound >= value
        codes = self.order[np.searchsorted(self.bounds, scaled, side="left")]
        if codes.size % 2:
            codes = np.append(codes, np.uint8(0))
        packed = (codes[0::2] << 4) | codes[1::2]
        return {"data": packed[: (n + 1) // 2].astype(np.uint8), "absmax": absmax.astype(np.float32)}

    def _decode(self, encoded, shape):
        n = math.prod(shape)
        data = encoded["data"]
        codes = np.stack((data >> 4, data & 0xF), axis=1).reshape(-1)[:n]
        nblocks = -(-n // BLOCK_4BIT)
        values = np.zeros(nblocks * BLOCK_4BIT, np.float32)
        values[:n] = self.table[codes]
        return (values.reshape(nblocks, BLOCK_4BIT) * encoded["absmax"][:, None]).reshape(-1)[:n]


NP_CODECS: dict[str, NpCodec] = {
    c.name: c
    for c in (
        _Cast("none", np.float32),
        _Cast("fp16", np.float16),
        _Cast("bf16", ml_dtypes.bfloat16),
        _RowScaled("fp8", ml_dtypes.float8_e4m3fn, 448.0, rounding=False),
        _RowScaled("int8", np.int8, 127.0, rounding=True),
        _Block4bit("fp4", FP4_CODE, FP4_ORDER),
        _Block4bit("nf4", NF4_CODE, range(16)),
    )
}


def get_np_codec(name: str) -> NpCodec:
    """The numpy codec registered as ``name``; an unknown name is a :class:`CodecError` listing the choices."""
    if name not in NP_CODECS:
        raise CodecError(f"unknown codec {name!r}; valid codecs: {', '.join(NP_CODECS)}")
    return NP_CODECS[name]

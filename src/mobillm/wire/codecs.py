"""Activation codecs: how one float tensor of hidden states becomes a few named tensors on the wire.

The device encodes each tapped layer with a codec, the message carries the resulting tensors as
safetensors, the server decodes them. Every encoded dict is self-describing: an int64 ``shape`` tensor
plus the codec's own tensors, so ``decode`` needs nothing but the dict and the codec name agreed in the
``Hello``. Byte counts are exact and predictable from the shape alone (:func:`expected_nbytes`).

Codecs (bytes per element, ignoring the small ``shape`` tensor):

=======  =============================================================  ===================
name     scheme                                                         bytes / element
=======  =============================================================  ===================
none     float32 as is                                                  4
fp16     float16 cast                                                   2
bf16     bfloat16 cast                                                  2
fp8      float8 e4m3fn, float32 scale per row (absmax / 448)            1 + 4 / H
int8     symmetric int8 in [-127, 127], float32 scale per row           1 + 4 / H
fp4      bitsandbytes FP4: block 64, float32 absmax per block, packed   0.5 + 4 / 64
nf4      bitsandbytes NF4: block 64, float32 absmax per block, packed   0.5 + 4 / 64
=======  =============================================================  ===================

A "row" is the last dimension (one token's hidden state). The device path is plain torch: the 4-bit
tables below are copied from bitsandbytes, which is only a test-time oracle.

``decode`` reads bytes from the network, so it validates everything (keys, dtypes, sizes against
``shape``) and raises :class:`~mobillm.exceptions.CodecError` before allocating anything sized by
``shape``; a forged header cannot make it crash or allocate more than the payload justifies.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Mapping, Sequence
from typing import ClassVar, TypeVar

import torch

from mobillm.exceptions import CodecError
from mobillm.wire.codec_tables import (  # noqa: F401 (the constants stay importable from here)
    BLOCK_4BIT,
    FP4_CODE,
    FP4_ORDER,
    MAX_ELEMENTS,
    MAX_NDIM,
    NF4_CODE,
)

__all__ = [
    "CODECS",
    "Codec",
    "FP4_CODE",
    "MAX_ELEMENTS",
    "MAX_NDIM",
    "NF4_CODE",
    "decode_layers",
    "encoded_nbytes",
    "expected_nbytes",
    "get_codec",
    "register_codec",
]

Encoded = dict[str, torch.Tensor]

# --- registry ----------------------------------------------------------------------------------------

CODECS: dict[str, type[Codec]] = {}

_C = TypeVar("_C", bound="type[Codec]")


def register_codec(cls: _C) -> _C:
    """Class decorator: make a codec selectable by its ``name`` (configs store only the name)."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"{cls.__name__} needs a non-empty class attribute `name`")
    if name in CODECS and CODECS[name] is not cls:
        raise ValueError(f"codec name {name!r} is already registered by {CODECS[name].__name__}")
    CODECS[name] = cls
    return cls


def get_codec(name: str) -> Codec:
    """The codec registered as ``name``; an unknown name is a :class:`CodecError` listing the choices."""
    if not isinstance(name, str) or name not in CODECS:
        raise CodecError(f"unknown codec {name!r}; valid codecs: {', '.join(CODECS)}")
    return CODECS[name]()


def encoded_nbytes(encoded: Mapping[str, torch.Tensor]) -> int:
    """Bytes the encoded tensors occupy on the wire (payload only, without the safetensors header)."""
    return sum(t.nbytes for t in encoded.values())


def expected_nbytes(codec: str, shape: Sequence[int]) -> int:
    """What :func:`encoded_nbytes` will be for a tensor of ``shape``, computed from the shape alone."""
    shape = tuple(int(s) for s in shape)
    return 8 * len(shape) + get_codec(codec).payload_nbytes(shape)


def decode_layers(codec: Codec, taps: Sequence[Mapping[str, torch.Tensor]]) -> torch.Tensor:
    """Decode one encoded dict per shortcut layer and stack them as ``(..., M, H)`` (like ``stack_taps``)."""
    if not taps:
        raise CodecError("no activation layers to decode")
    layers = [codec.decode(t) for t in taps]
    if any(x.shape != layers[0].shape for x in layers):
        raise CodecError(f"activation layers differ in shape: {[tuple(x.shape) for x in layers]}")
    return torch.stack(layers, dim=-2)


# --- base class and validation helpers ---------------------------------------------------------------


class Codec(abc.ABC):
    """Turns a float tensor into named tensors for the wire and back.

    Subclasses implement ``_encode`` (given a float32 tensor), ``_decode`` (given a validated dict and
    shape; returns the flat float32 values) and ``payload_nbytes``. The base class owns the ``shape``
    tensor and all checks that do not depend on the scheme.
    """

    name: ClassVar[str]
    fields: ClassVar[tuple[str, ...]]  # the codec's tensors besides "shape"

    def encode(self, x: torch.Tensor) -> Encoded:
        """``x`` (any float dtype, >= 1 dim) -> ``{"shape": int64, <fields>...}``, all contiguous."""
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            kind = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
            raise CodecError(f"codec {self.name!r} encodes floating-point tensors, got {kind}")
        if not 1 <= x.dim() <= MAX_NDIM:
            raise CodecError(f"codec {self.name!r} encodes tensors with 1..{MAX_NDIM} dims, got {x.dim()}")
        if x.numel() > MAX_ELEMENTS:
            raise CodecError(f"tensor of {x.numel()} elements exceeds the limit of {MAX_ELEMENTS}")
        x = x.detach().to(torch.float32)
        out = {"shape": torch.tensor(x.shape, dtype=torch.int64)}
        out.update(self._encode(x))
        return {k: v.contiguous() for k, v in out.items()}

    def decode(self, encoded: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The float32 tensor of the original shape; :class:`CodecError` on any malformed input."""
        shape = self._header(encoded)
        return self._decode(encoded, shape).reshape(shape)

    def check(self, encoded: Mapping[str, torch.Tensor]) -> tuple[int, ...]:
        """The shape :meth:`decode` would return, found without decoding: the same structural checks, and
        every decoded value finite — judged from the raw values and scales, never materialising the float32
        tensor. :class:`CodecError` for anything ``decode`` would refuse or turn into NaN/Inf (a non-finite
        value or scale is refused even where no element would read it)."""
        shape = self._header(encoded)
        self._check(encoded, shape)
        return shape

    def _header(self, encoded: Mapping[str, torch.Tensor]) -> tuple[int, ...]:
        """The validated ``shape`` of an encoded dict whose keys are exactly ``shape`` + ``fields``."""
        if not isinstance(encoded, Mapping):
            raise CodecError(f"codec {self.name!r}: expected a mapping of tensors, got {_describe(encoded)}")
        missing = [k for k in ("shape", *self.fields) if k not in encoded]
        extra = sorted(set(encoded) - {"shape", *self.fields})
        if missing or extra:
            raise CodecError(
                f"codec {self.name!r} expects tensors {['shape', *self.fields]}; "
                f"missing {missing}, unexpected {extra}"
            )
        return self._read_shape(encoded["shape"])

    def _read_shape(self, t: torch.Tensor) -> tuple[int, ...]:
        if not isinstance(t, torch.Tensor) or t.dtype != torch.int64 or t.dim() != 1:
            raise CodecError(f"codec {self.name!r}: `shape` must be a 1-d int64 tensor, got {_describe(t)}")
        if not 1 <= t.numel() <= MAX_NDIM:
            raise CodecError(f"codec {self.name!r}: `shape` must have 1..{MAX_NDIM} dims, got {t.numel()}")
        shape = tuple(t.tolist())
        # Python ints: a forged product cannot overflow.
        if any(not 0 <= s <= MAX_ELEMENTS for s in shape) or math.prod(shape) > MAX_ELEMENTS:
            raise CodecError(f"codec {self.name!r}: invalid shape {shape} (at most {MAX_ELEMENTS} elements)")
        return shape

    def _field(
        self, encoded: Mapping[str, torch.Tensor], key: str, dtype: torch.dtype, numel: int
    ) -> torch.Tensor:
        """``encoded[key]`` checked to be a 1-d tensor of ``dtype`` with ``numel`` elements."""
        t = encoded[key]
        if not isinstance(t, torch.Tensor) or t.dtype != dtype or t.dim() != 1 or t.numel() != numel:
            raise CodecError(
                f"codec {self.name!r}: `{key}` must be a 1-d {dtype} tensor of {numel} elements "
                f"(from `shape`), got {_describe(t)}"
            )
        return t

    @abc.abstractmethod
    def _encode(self, x: torch.Tensor) -> Encoded:
        """The codec's tensors for a float32 ``x`` (the base adds ``shape``)."""

    @abc.abstractmethod
    def _decode(self, encoded: Mapping[str, torch.Tensor], shape: tuple[int, ...]) -> torch.Tensor:
        """Float32 values (any shape with ``prod(shape)`` elements) from validated ``shape``."""

    @abc.abstractmethod
    def _check(self, encoded: Mapping[str, torch.Tensor], shape: tuple[int, ...]) -> None:
        """Raise :class:`CodecError` unless ``_decode`` would accept the fields and give finite values."""

    def _refuse(self, what: str) -> None:
        raise CodecError(f"codec {self.name!r}: {what}; decoding would give NaN or Inf")

    @abc.abstractmethod
    def payload_nbytes(self, shape: tuple[int, ...]) -> int:
        """Bytes of the codec's tensors (without ``shape``) for an input of ``shape``."""


def _describe(t: object) -> str:
    if isinstance(t, torch.Tensor):
        return f"{t.dtype} tensor of shape {tuple(t.shape)}"
    return type(t).__name__


def _rows(shape: Sequence[int]) -> tuple[int, int]:
    """(rows, row length): every dimension but the last is a row index."""
    return math.prod(shape[:-1]), shape[-1]


# --- casts -------------------------------------------------------------------------------------------


class _CastCodec(Codec):
    """A plain dtype cast: no scales, lossless for ``none``."""

    dtype: ClassVar[torch.dtype]
    fields = ("data",)

    def _encode(self, x: torch.Tensor) -> Encoded:
        # copy=True: the tap must not alias an activation the backbone may still update in place.
        return {"data": x.to(self.dtype, copy=True).reshape(-1)}

    def _decode(self, encoded: Mapping[str, torch.Tensor], shape: tuple[int, ...]) -> torch.Tensor:
        return self._field(encoded, "data", self.dtype, math.prod(shape)).to(torch.float32)

    def _check(self, encoded: Mapping[str, torch.Tensor], shape: tuple[int, ...]) -> None:
        # float16 and bfloat16 lie within float32's range: a finite value stays finite when widened.
        if not bool(torch.isfinite(self._field(encoded, "data", self.dtype, math.prod(shape))).all()):
            self._refuse("`data` holds NaN or Inf")

    def payload_nbytes(self, shape: tuple[int, ...]) -> int:
        return math.prod(shape) * self.dtype.itemsize


@register_codec
class NoneCodec(_CastCodec):
    name = "none"
    dtype = torch.float32


@register_codec
class Fp16Codec(_CastCodec):
    name = "fp16"
    dtype = torch.float16


@register_codec
class Bf16Codec(_CastCodec):
    name = "bf16"
    dtype = torch.bfloat16


# --- per-row scaled 8-bit ----------------------------------------------------------------------------


class _RowScaledCodec(Codec):
    """8-bit codes with one float32 scale per row: scale = absmax / qmax, code = x / scale."""

    dtype: ClassVar[torch.dtype]
    qmax: ClassVar[float]
    fields = ("data", "scale")

    def _quantize(self, scaled: torch.Tensor) -> torch.Tensor:
        """Values already in [-qmax, qmax] -> codes of ``dtype``."""
        return scaled.to(self.dtype)

    def _encode(self, x: torch.Tensor) -> Encoded:
        rows, cols = _rows(x.shape)
        x2 = x.reshape(rows, cols)
        absmax = x2.abs().amax(dim=1) if cols else x2.new_zeros(rows)
        scale = absmax / self.qmax
        # An all-zero row (or one so tiny that its scale underflows) keeps scale 0 and decodes to 0.
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))
        scaled = (x2 / safe[:, None]).clamp_(-self.qmax, self.qmax)
        return {"data": self._quantize(scaled).reshape(-1), "scale": scale}

    def _decode(self, encoded: Mapping[str, torch.Tensor], shape: tuple[int, ...]) -> torch.Tensor:
        rows, cols = _rows(shape)
        data = self._field(encoded, "data", self.dtype, rows * cols)
        scale = self._field(encoded, "scale", torch.float32, rows)
        return data.to(torch.float32).reshape(rows, cols) * scale[:, None]

    def _check(self, encoded: Mapping[str, torch.Tensor], shape: tuple[int, ...]) -> None:
        rows, cols = _rows(shape)
        data = self._field(encoded, "data", self.dtype, rows * cols)
        scale = self._field(encoded, "scale", torch.float32, rows)
        if not bool(torch.isfinite(scale).all()):
            self._refuse("`scale` holds NaN or Inf")
        if rows and cols:
            # float32 products are monotone in |code|: a row overflows iff its largest |code| times its scale does.
            if not bool(torch.isfinite(self._row_peak(data.reshape(rows, cols)) * scale).all()):
                self._refuse("a code times its row's `scale` overflows float32")

    def _row_peak(self, codes: torch.Tensor) -> torch.Tensor:
        """(rows,) float32: the largest |code| of each row of ``codes`` (rows, cols), as decoded."""
        return torch.maximum(codes.amax(dim=1).to(torch.float32), -codes.amin(dim=1).to(torch.float32))

    def payload_nbytes(self, shape: tuple[int, ...]) -> int:
        rows, cols = _rows(shape)
        return rows * cols * self.dtype.itemsize + rows * 4


@register_codec
class Fp8Codec(_RowScaledCodec):
    name = "fp8"
    dtype = torch.float8_e4m3fn
    qmax = 448.0  # largest finite e4m3fn value

    def _row_peak(self, codes: torch.Tensor) -> torch.Tensor:
        # e4m3fn has no Inf; its NaN is every bit set but the sign. Below it the magnitude bits order the values.
        magnitude = codes.view(torch.uint8) & 0x7F
        if bool((magnitude == 0x7F).any()):
            self._refuse("`data` holds float8 NaN codes")
        return magnitude.amax(dim=1).view(torch.float8_e4m3fn).to(torch.float32)


@register_codec
class Int8Codec(_RowScaledCodec):
    name = "int8"
    dtype = torch.int8
    qmax = 127.0  # symmetric: -128 is never used

    def _quantize(self, scaled: torch.Tensor) -> torch.Tensor:
        return scaled.round_().to(torch.int8)


# --- block-wise 4-bit (bitsandbytes layout) ----------------------------------------------------------


class _Block4bitCodec(Codec):
    """bitsandbytes' 4-bit scheme: flat blocks of 64, float32 absmax per block, nearest table value.

    ``data`` holds ``ceil(n / 2)`` bytes, the first element of each pair in the high nibble, exactly as
    ``bitsandbytes.functional.quantize_4bit(x, blocksize=64)`` packs them (the last block may be short;
    an odd count is padded with one zero code). ``absmax`` has ``ceil(n / 64)`` entries.
    """

    table: ClassVar[torch.Tensor]  # code -> value in [-1, 1]
    bounds: ClassVar[torch.Tensor]  # midpoints between consecutive sorted values
    order: ClassVar[torch.Tensor]  # sorted position -> code (uint8)
    fields = ("data", "absmax")

    def __init_subclass__(cls, code: Sequence[float] = (), order: Sequence[int] = (), **kwargs):
        super().__init_subclass__(**kwargs)
        if code:
            table = torch.tensor(code, dtype=torch.float32)
            cls.table = table / table.abs().max()
            ordered = cls.table[list(order)]
            cls.bounds = (ordered[:-1] + ordered[1:]) / 2  # float32, as bitsandbytes computes them
            cls.order = torch.tensor(order, dtype=torch.uint8)

    def _encode(self, x: torch.Tensor) -> Encoded:
        flat = x.reshape(-1)
        n = flat.numel()
        nblocks = -(-n // BLOCK_4BIT)
        if nblocks * BLOCK_4BIT != n:
            flat = torch.nn.functional.pad(flat, (0, nblocks * BLOCK_4BIT - n))
        blocks = flat.view(nblocks, BLOCK_4BIT)
        absmax = blocks.abs().amax(dim=1)
        # Same float ops as bitsandbytes, so ties round the same way: multiply full blocks by the
        # reciprocal, divide the short last block; the clamp only guards against division by zero.
        scaled = blocks * (1.0 / absmax.clamp(min=1e-38))[:, None]
        if n % BLOCK_4BIT:
            scaled[-1] = blocks[-1] / absmax[-1].clamp(min=1e-38)
        scaled = scaled.clamp_(-1.0, 1.0).reshape(-1)
        codes = self.order.to(x.device)[torch.bucketize(scaled, self.bounds.to(x.device), out_int32=True)]
        packed = (codes[0::2] << 4) | codes[1::2]
        return {"data": packed[: (n + 1) // 2], "absmax": absmax}

    def _decode(self, encoded: Mapping[str, torch.Tensor], shape: tuple[int, ...]) -> torch.Tensor:
        n = math.prod(shape)
        nblocks = -(-n // BLOCK_4BIT)
        data = self._field(encoded, "data", torch.uint8, (n + 1) // 2)
        absmax = self._field(encoded, "absmax", torch.float32, nblocks)
        codes = torch.stack((data >> 4, data & 0xF), dim=1).reshape(-1).long()
        values = self.table.to(data.device)[codes]
        values = torch.nn.functional.pad(values, (0, nblocks * BLOCK_4BIT - values.numel()))
        return (values.view(nblocks, BLOCK_4BIT) * absmax[:, None]).reshape(-1)[:n]

    def _check(self, encoded: Mapping[str, torch.Tensor], shape: tuple[int, ...]) -> None:
        n = math.prod(shape)
        self._field(encoded, "data", torch.uint8, (n + 1) // 2)  # every byte is two valid codes
        # The table lies in [-1, 1]: |value * absmax| <= |absmax|, finite wherever absmax is.
        if not bool(torch.isfinite(self._field(encoded, "absmax", torch.float32, -(-n // BLOCK_4BIT))).all()):
            self._refuse("`absmax` holds NaN or Inf")

    def payload_nbytes(self, shape: tuple[int, ...]) -> int:
        n = math.prod(shape)
        return (n + 1) // 2 + 4 * -(-n // BLOCK_4BIT)


@register_codec
class Fp4Codec(_Block4bitCodec, code=FP4_CODE, order=FP4_ORDER):
    name = "fp4"


@register_codec
class Nf4Codec(_Block4bitCodec, code=NF4_CODE, order=range(16)):
    name = "nf4"

"""Constants of the activation codecs, shared by the torch codecs (:mod:`mobillm.wire.codecs`) and the numpy
device side (:mod:`mobillm.wire.np_codecs`); importing this module imports neither torch nor numpy."""

from __future__ import annotations

# Bounds on what a decoder accepts. Activations are (B, H) or (B, T, H); the element cap keeps every
# index within int32 range and is checked before anything is allocated.
MAX_NDIM = 8
MAX_ELEMENTS = 2**31 - 1

BLOCK_4BIT = 64

# NF4 (QLoRA): quantiles of N(0, 1) normalised to [-1, 1], code i -> value NF4_CODE[i].
# Copied from bitsandbytes.functional.get_4bit_type("nf4") (bitsandbytes 0.50).
NF4_CODE: tuple[float, ...] = (
    -1.0,
    -0.6961928009986877,
    -0.5250730514526367,
    -0.39491748809814453,
    -0.28444138169288635,
    -0.18477343022823334,
    -0.09105003625154495,
    0.0,
    0.07958029955625534,
    0.16093020141124725,
    0.24611230194568634,
    0.33791524171829224,
    0.44070982933044434,
    0.5626170039176941,
    0.7229568362236023,
    1.0,
)
# FP4 (1 sign, 2 exponent, 1 mantissa bit) in bit-pattern order, before normalisation; bitsandbytes
# divides by the largest magnitude (12) in float32, and so do we. Code 8 is -0.
FP4_CODE: tuple[float, ...] = (
    0.0, 0.0625, 8.0, 12.0, 4.0, 6.0, 2.0, 3.0,
    -0.0, -0.0625, -8.0, -12.0, -4.0, -6.0, -2.0, -3.0,
)
# Codes in increasing value order, as bitsandbytes' argsort of the normalised table gives it (its
# default/CPU quantize_4bit). The tie between +0 (code 0) and -0 (code 8) is broken the same way:
# scaled values in (-0.0026, 0] get code 0 and values in (0, 0.0026] get code 8; both decode to 0.
FP4_ORDER = (11, 10, 13, 12, 15, 14, 9, 0, 8, 1, 6, 7, 4, 5, 2, 3)

"""The frame: one safetensors blob — ``u64 LE length N | N bytes of JSON index | tensor bytes`` — whose metadata
holds the message header as a JSON string under ``METADATA_KEY``.

:func:`read_frame` checks untrusted bytes cheaply (lengths, JSON without duplicate keys or constants, allowed
dtypes, exact and contiguous data spans) before safetensors reads them, so a forged length or an overlapping
tensor is refused without allocating anything; :func:`write_frame` is its inverse. What the header *says* is
the business of :mod:`mobillm.wire.messages`.

Tensors are torch tensors (the server, the torch device) or numpy arrays (a device without torch: the bundle
runtime); the same tensors give the same bytes either way (``safetensors`` serializes both alike), and torch is
imported only by a process that already holds torch tensors or asks for them (``framework="pt"``).
"""

from __future__ import annotations

import json
import math
import struct
import sys
from typing import Any, Literal

import numpy as np
import safetensors.numpy

from mobillm.exceptions import PayloadTooBig, ProtocolError
from mobillm.wire.errors import ErrorCode

__all__ = [
    "METADATA_KEY", "MAX_HEADER_BYTES", "DEFAULT_MAX_MESSAGE_BYTES", "Framework", "read_frame", "write_frame",
    "strict_json", "is_torch",
]

METADATA_KEY = "mobillm"
MAX_HEADER_BYTES = 1 << 20  # the safetensors JSON header (tensor index + our header); a forged length stops here
#: The largest message either side accepts unless told otherwise (``mobillm serve --max-message-mb``,
#: ``DeviceOptions.max_message_bytes``).
DEFAULT_MAX_MESSAGE_BYTES = 64 << 20

# safetensors dtype names accepted on the wire; anything else is refused as a bad frame.
DTYPE_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "I16": 2, "F16": 2, "BF16": 2,
    "U32": 4, "I32": 4, "F32": 4, "U64": 8, "I64": 8, "F64": 8,
}

_BAD_FRAME = ErrorCode.BAD_FRAME

#: What decoded tensors are: ``"pt"`` torch tensors, ``"np"`` numpy arrays (safetensors' names).
Framework = Literal["pt", "np"]


def is_torch(value: Any) -> bool:
    """True for a torch tensor, without importing torch (a process that never imported it holds none)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def write_frame(tensors: dict[str, Any], header: str) -> bytes:
    """One safetensors blob of ``tensors`` (all torch tensors, or all numpy arrays) with ``header`` as its
    metadata; torch tensors are detached, made contiguous and moved to the CPU first."""
    metadata = {METADATA_KEY: header}
    if any(is_torch(t) for t in tensors.values()):
        from safetensors.torch import save

        return save(_prepare(tensors), metadata=metadata)
    return safetensors.numpy.save({k: np.ascontiguousarray(v) for k, v in tensors.items()}, metadata=metadata)


def _prepare(tensors: dict[str, Any]) -> dict[str, Any]:
    """Detached, contiguous, CPU tensors; storage shared between two entries is copied (safetensors refuses it)."""
    out, seen = {}, set()
    for name, tensor in tensors.items():
        t = tensor.detach().to("cpu").contiguous()
        ptr = t.untyped_storage().data_ptr() if t.numel() else None
        if ptr is not None and ptr in seen:
            t = t.clone()
        elif ptr is not None:
            seen.add(ptr)
        out[name] = t
    return out


def read_frame(data: Any, *, max_bytes: int | None = None, framework: Framework = "pt") -> tuple[dict[str, Any], str]:
    """The tensors (torch, or numpy with ``framework="np"``) and the header text of untrusted bytes. Raises
    ``PayloadTooBig`` past ``max_bytes`` and ``ProtocolError(bad_frame)`` for anything that is not one
    well-formed blob with a header."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ProtocolError(_BAD_FRAME, f"expected bytes, got {type(data).__name__}")
    size = data.nbytes if isinstance(data, memoryview) else len(data)
    if max_bytes is not None and size > max_bytes:
        raise PayloadTooBig(f"message of {size:,} bytes exceeds the limit of {max_bytes:,} bytes")
    try:
        data = bytes(data)
    except (TypeError, ValueError, BufferError):
        raise ProtocolError(_BAD_FRAME, "unreadable buffer") from None
    header = _check_frame(data)
    if framework == "pt":
        from safetensors.torch import load
    else:
        load = safetensors.numpy.load
    try:
        tensors = load(data)
    except Exception as err:
        raise ProtocolError(_BAD_FRAME, f"safetensors refused the blob: {type(err).__name__}") from None
    return tensors, header


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise ValueError("duplicate key in JSON object")
    return out


def _no_constants(name: str):
    raise ValueError(f"{name} is not JSON")


def strict_json(text: str | bytes) -> Any:
    """``json.loads`` refusing duplicate keys and ``NaN``/``Infinity`` (raises ``ValueError``)."""
    return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)


def _check_frame(data: bytes) -> str:
    """Check the safetensors framing cheaply before safetensors reads it; return the ``mobillm`` metadata."""
    if len(data) < 8:
        raise ProtocolError(_BAD_FRAME, f"{len(data)} bytes is too short for a safetensors blob")
    (n,) = struct.unpack("<Q", data[:8])
    if n < 2 or n > len(data) - 8 or n > MAX_HEADER_BYTES:
        raise ProtocolError(_BAD_FRAME, f"safetensors header length {n} does not fit a {len(data)}-byte blob "
                                        f"(limit {MAX_HEADER_BYTES})")
    try:
        index = strict_json(data[8:8 + n].decode("utf-8"))
    except (ValueError, RecursionError):
        raise ProtocolError(_BAD_FRAME, "the safetensors header is not valid UTF-8 JSON without duplicate keys") from None
    if not isinstance(index, dict):
        raise ProtocolError(_BAD_FRAME, "the safetensors header is not a JSON object")
    payload = len(data) - 8 - n
    spans = []
    for name, info in index.items():
        if name == "__metadata__":
            continue
        ok = (
            isinstance(info, dict) and set(info) == {"dtype", "shape", "data_offsets"}
            and info["dtype"] in DTYPE_SIZES
            and isinstance(info["shape"], list) and all(type(d) is int and d >= 0 for d in info["shape"])
            and isinstance(info["data_offsets"], list) and len(info["data_offsets"]) == 2
            and all(type(o) is int for o in info["data_offsets"])
        )
        if not ok:
            raise ProtocolError(_BAD_FRAME, f"tensor {name[:80]!r}: malformed entry or dtype not allowed on the wire")
        start, end = info["data_offsets"]
        if not 0 <= start <= end <= payload or end - start != math.prod(info["shape"]) * DTYPE_SIZES[info["dtype"]]:
            raise ProtocolError(_BAD_FRAME, f"tensor {name[:80]!r}: data offsets out of range or not matching its shape")
        spans.append((start, end))
    spans.sort()
    position = 0
    for start, end in spans:
        if start != position:
            raise ProtocolError(_BAD_FRAME, "tensor data overlaps or leaves holes")
        position = end
    if position != payload:
        raise ProtocolError(_BAD_FRAME, f"tensor data covers {position} of {payload} payload bytes")
    metadata = index.get("__metadata__")
    if not isinstance(metadata, dict) or not isinstance(metadata.get(METADATA_KEY), str):
        raise ProtocolError(_BAD_FRAME, f"no {METADATA_KEY!r} header in the safetensors metadata")
    if not all(isinstance(v, str) for v in metadata.values()):
        raise ProtocolError(_BAD_FRAME, "safetensors metadata values must be strings")
    return metadata[METADATA_KEY]

"""The wire format: every message is ONE safetensors blob — its tensors plus a JSON header.

The header lives in the safetensors metadata under the single key ``"mobillm"`` and is validated by a frozen
pydantic model per message type (discriminated by ``type``, versioned by ``v``). Nothing is ever pickled.

    device                                   server
    Hello ─────────────────────────────────▶         (job, auth, fingerprint, codec, shortcuts, configs)
          ◀───────────────────── Welcome | Error     (window, last seq held, step)
    Batch(seq) ────────────────────────────▶         (sample_ids, labels, act.{i}.{name} ...)
          ◀───────────────────────── Ack(seq)        (step, loss)
    Done(epoch) ───────────────────────────▶
    GetSideNet ────────────────────────────▶
          ◀───────────────────────── SideNet         (config + state dict)

``decode_message`` is the one entry point for untrusted bytes: it raises only ``WireError`` subclasses
(``PayloadTooBig``, or ``ProtocolError`` with a code from ``ERROR_CODES``), whatever the bytes.
"""

from __future__ import annotations

import json
import math
import re
import struct
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Literal, Mapping, Sequence, Union

import safetensors.torch
import torch
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from mobillm.exceptions import PayloadTooBig, ProtocolError
from mobillm.sidenet.config import SideConfig
from mobillm.train_config import TrainConfig

__all__ = [
    "PROTOCOL_VERSION", "METADATA_KEY", "MAX_HEADER_BYTES", "ERROR_CODES", "CLOSE_CODES", "MESSAGE_TYPES",
    "Message", "Hello", "Welcome", "Error", "Batch", "Ack", "Done", "GetSideNet", "SideNet", "AnyMessage",
    "Frame", "encode_message", "decode_message",
]

PROTOCOL_VERSION = 1
METADATA_KEY = "mobillm"
MAX_HEADER_BYTES = 1 << 20  # the safetensors JSON header (tensor index + our header); a forged length stops here

ERROR_CODES: dict[str, str] = {
    "bad_frame": "the bytes are not one well-formed safetensors blob with a JSON 'mobillm' header",
    "bad_version": "the header's protocol version 'v' is missing or not the one this side speaks",
    "unknown_type": "the header's 'type' names no known message",
    "bad_header": "the header fields fail validation (missing, extra, wrong type or out of range)",
    "bad_batch": "a Batch's tensors are missing, of the wrong dtype, or of inconsistent shapes",
    "unexpected_tensors": "a message carries tensors it must not carry",
    "unexpected": "a message that this side does not accept at all, or not at this point of the session",
    "out_of_order": "a sequence number outside the expected order (gap, or ack of a batch not in flight)",
    "window_full": "more unacked batches than the window allows",
    "auth": "the token is missing or wrong for this job",
    "fingerprint_mismatch": "the device's backbone is not the server's backbone",
    "unknown_model": "the server cannot load the backbone the Hello names",
    "too_big": "a message exceeds the maximum message size",
    "busy": "the server already serves its maximum number of sessions; try again later",
    "cache_full": "the job's activation cache reached its byte limit; the batch was not stored",
    "idle_timeout": "no message arrived within the server's idle timeout",
    "internal": "the other side failed unexpectedly; the session is closed, nothing else is affected",
}

# WebSocket close codes (RFC 6455 §7.4.1) to close a session with after sending Error(code).
CLOSE_CODES: dict[str, int] = {
    **{c: 1002 for c in ("bad_frame", "bad_version", "unknown_type", "bad_header", "bad_batch",
                         "unexpected_tensors", "unexpected", "out_of_order", "window_full")},
    **{c: 1008 for c in ("auth", "fingerprint_mismatch", "unknown_model")},
    "too_big": 1009,
    "busy": 1013,  # try again later
    "cache_full": 1008,
    "idle_timeout": 1001,  # going away
    "internal": 1011,
}

# safetensors dtype names accepted on the wire; anything else is refused as a bad frame.
_DTYPE_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "I16": 2, "F16": 2, "BF16": 2,
    "U32": 4, "I32": 4, "F32": 4, "U64": 8, "I64": 8, "F64": 8,
}

_FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
_NonNegInt = Annotated[int, Field(ge=0)]


# -- headers ----------------------------------------------------------------------------------------------
class Message(BaseModel):
    """A message header. Subclasses fix ``type``; ``carries_tensors`` says whether tensors may come along."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    carries_tensors: ClassVar[bool] = False

    type: str
    v: int = PROTOCOL_VERSION

    @classmethod
    def check_tensors(cls, tensors: Mapping[str, torch.Tensor]) -> None:
        """Refuse tensors that do not belong to this message type (raises ``ProtocolError``)."""
        if tensors and not cls.carries_tensors:
            names = ", ".join(sorted(tensors)[:5])
            raise ProtocolError("unexpected_tensors", f"{cls.__name__} carries no tensors, got {len(tensors)} ({names})")


class Hello(Message):
    """Device → server, first message: which job, who, which backbone, and how the job is set up.

    ``side_config`` is the one statement of the job's shape — task, codec, shortcut layers, hidden size, labels —
    and ``train_config`` of its training; both are validated here, and against its backbone by the server."""

    type: Literal["hello"] = "hello"
    job: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$")  # a folder name: no '..'
    token: str | None = None
    model: str = Field(min_length=1, max_length=256)  # the public model id the backbone comes from; the server loads it
    fingerprint: str = Field(min_length=1, max_length=128, pattern=r"^[0-9a-f]+$")
    side_config: SideConfig
    train_config: TrainConfig
    train_samples: int = Field(ge=0)
    device_epochs: int = Field(default=1, ge=1)
    resume: bool = False


class Welcome(Message):
    """Server → device: the session is open. ``last_seq``: highest seq held contiguously (-1: none)."""

    type: Literal["welcome"] = "welcome"
    session: str = Field(min_length=1, max_length=64)
    window: int = Field(ge=1)
    last_seq: int = Field(ge=-1)
    step: int = Field(ge=0)


class Error(Message):
    """Either side: why the session is being closed (``code`` from ``ERROR_CODES``)."""

    type: Literal["error"] = "error"
    code: str = Field(min_length=1, max_length=64)
    message: str


class Batch(Message):
    """Device → server: one batch of tapped activations.

    Tensors: ``sample_ids`` int64 (B,); ``labels`` int64 (B,) or (B, T); optional ``loss_mask`` bool/uint8
    (B, T), ``attention_mask`` bool/uint8/int64 (B, T), ``last_index`` int64 (B,); and for each shortcut layer
    i = 0..M-1 the codec's encoded tensors under ``act.{i}.{name}``.
    """

    carries_tensors: ClassVar[bool] = True
    type: Literal["batch"] = "batch"
    seq: int = Field(ge=0)
    split: Literal["train", "eval"]
    epoch: int = Field(ge=0)

    @staticmethod
    def tensors(
        activations: Sequence[Mapping[str, torch.Tensor]], *, sample_ids, labels, loss_mask=None,
        attention_mask=None, last_index=None,
    ) -> dict[str, torch.Tensor]:
        """Build a Batch's tensors from the encoded activations of each shortcut layer, in layer order."""
        out = {"sample_ids": _as_int64(sample_ids, "sample_ids"), "labels": _as_int64(labels, "labels")}
        for name, value in (("loss_mask", loss_mask), ("attention_mask", attention_mask)):
            if value is not None:
                out[name] = torch.as_tensor(value)
        if last_index is not None:
            out["last_index"] = _as_int64(last_index, "last_index")
        for i, encoded in enumerate(activations):
            for name, tensor in encoded.items():
                out[f"act.{i}.{name}"] = tensor
        return out

    @staticmethod
    def activation_groups(tensors: Mapping[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """The encoded activations ``act.{i}.{name}`` grouped by layer i, in order; indices must be 0..M-1."""
        groups: dict[int, dict[str, torch.Tensor]] = {}
        for key, tensor in tensors.items():
            if not key.startswith("act."):
                continue
            match = _ACT_KEY.fullmatch(key)
            if match is None:
                raise ProtocolError("bad_batch", f"malformed activation key {key[:80]!r}; expected act.{{i}}.{{name}}")
            groups.setdefault(int(match[1]), {})[match[2]] = tensor
        if sorted(groups) != list(range(len(groups))):
            raise ProtocolError("bad_batch", f"activation layer indices {sorted(groups)[:10]} are not 0..M-1")
        return [groups[i] for i in range(len(groups))]

    @classmethod
    def check_tensors(cls, tensors: Mapping[str, torch.Tensor]) -> None:
        def need(name: str, dtypes: tuple[torch.dtype, ...], dims: tuple[int, ...]) -> torch.Tensor:
            t = tensors[name]
            if t.dtype not in dtypes:
                raise ProtocolError("bad_batch", f"{name} must be {'/'.join(map(str, dtypes))}, got {t.dtype}")
            if t.dim() not in dims or t.shape[0] != batch:
                raise ProtocolError("bad_batch", f"{name} of shape {tuple(t.shape)} does not fit batch size {batch}")
            return t

        for name in ("sample_ids", "labels"):
            if name not in tensors:
                raise ProtocolError("bad_batch", f"Batch without {name}")
        unknown = [k for k in tensors if k not in _BATCH_NAMES and not k.startswith("act.")]
        if unknown:
            raise ProtocolError("bad_batch", f"unknown Batch tensors {sorted(unknown)[:5]}")
        ids = tensors["sample_ids"]
        if ids.dtype != torch.int64 or ids.dim() != 1 or ids.shape[0] < 1:
            raise ProtocolError("bad_batch", f"sample_ids must be int64 (B,) with B >= 1, got {ids.dtype} {tuple(ids.shape)}")
        batch = ids.shape[0]
        labels = need("labels", (torch.int64,), (1, 2))
        if "loss_mask" in tensors:
            mask = need("loss_mask", (torch.bool, torch.uint8), (2,))
            if labels.dim() == 2 and mask.shape != labels.shape:
                raise ProtocolError("bad_batch", f"loss_mask {tuple(mask.shape)} differs from labels {tuple(labels.shape)}")
        if "attention_mask" in tensors:
            need("attention_mask", (torch.bool, torch.uint8, torch.int64), (2,))
        if "last_index" in tensors:
            need("last_index", (torch.int64,), (1,))
        if not cls.activation_groups(tensors):
            raise ProtocolError("bad_batch", "Batch without activations (act.0.*)")


class Ack(Message):
    """Server → device: batch ``seq`` is validated and cached; ``step``/``loss`` say where training is."""

    type: Literal["ack"] = "ack"
    seq: int = Field(ge=0)
    step: int = Field(ge=0)
    loss: _FiniteFloat | None = None


class Done(Message):
    """Device → server: every batch of this epoch has been sent."""

    type: Literal["done"] = "done"
    epoch: int = Field(ge=0)


class GetSideNet(Message):
    """Device → server: send the trained side network (once training is finished)."""

    type: Literal["get_side_net"] = "get_side_net"


class SideNet(Message):
    """Server → device: the side network's config and state dict (floating-point tensors)."""

    carries_tensors: ClassVar[bool] = True
    type: Literal["side_net"] = "side_net"
    config: dict[str, Any]
    step: int = Field(ge=0)
    val_accuracy: _FiniteFloat | None = None  # classification: the returned network's validation accuracy
    val_loss: _FiniteFloat | None = None  # causal LM: its mean validation loss over response tokens
    eval_sample_ids: list[int] = Field(default_factory=list)
    eval_predictions: list[int] = Field(default_factory=list)

    @model_validator(mode="after")
    def _same_length(self) -> "SideNet":
        if len(self.eval_sample_ids) != len(self.eval_predictions):
            raise ValueError("eval_sample_ids and eval_predictions differ in length")
        return self

    @classmethod
    def check_tensors(cls, tensors: Mapping[str, torch.Tensor]) -> None:
        bad = [k for k, t in tensors.items() if not t.dtype.is_floating_point]
        if bad:
            raise ProtocolError("unexpected_tensors", f"SideNet tensors must be floating point: {sorted(bad)[:5]}")


MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.model_fields["type"].default: cls for cls in (Hello, Welcome, Error, Batch, Ack, Done, GetSideNet, SideNet)
}
AnyMessage = Annotated[
    Union[Hello, Welcome, Error, Batch, Ack, Done, GetSideNet, SideNet], Field(discriminator="type")
]
ANY_MESSAGE: TypeAdapter = TypeAdapter(AnyMessage)

_ACT_KEY = re.compile(r"act\.(0|[1-9][0-9]{0,5})\.([A-Za-z0-9_]+)")
_BATCH_NAMES = frozenset({"sample_ids", "labels", "loss_mask", "attention_mask", "last_index"})


def _as_int64(value, name: str) -> torch.Tensor:
    t = torch.as_tensor(value)
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise ProtocolError("bad_batch", f"{name} must hold integers, got {t.dtype}")
    return t.to(torch.int64)


# -- frames -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Frame:
    """A decoded message: its validated header and its tensors (on CPU)."""

    header: Message
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)


def encode_message(header: Message, tensors: Mapping[str, torch.Tensor] | None = None) -> bytes:
    """One safetensors blob: ``tensors`` (made contiguous, on CPU) plus ``header`` as JSON metadata.

    Raises ``ProtocolError`` for what the other side would refuse (tensors on a tensor-less message, a bad
    Batch, a header that is not finite JSON), so nothing invalid is ever sent."""
    if not isinstance(header, Message) or type(header) not in MESSAGE_TYPES.values():
        raise TypeError(f"encode_message needs one of {sorted(MESSAGE_TYPES)} headers, got {type(header).__name__}")
    tensors = dict(tensors or {})
    for name, tensor in tensors.items():
        if not isinstance(name, str) or not isinstance(tensor, torch.Tensor):
            raise TypeError(f"tensors must map str to torch.Tensor, got {type(name).__name__} -> {type(tensor).__name__}")
    type(header).check_tensors(tensors)
    try:
        text = json.dumps(header.model_dump(), allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as err:  # NaN/inf or a non-JSON value inside an opaque dict
        raise ProtocolError("bad_header", f"{header.type} header is not finite JSON: {err}") from None
    return safetensors.torch.save(_prepare(tensors), metadata={METADATA_KEY: text})


def _prepare(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
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


def decode_message(data: bytes, *, max_bytes: int | None = None) -> Frame:
    """Parse and validate untrusted bytes. Raises only ``PayloadTooBig`` or ``ProtocolError`` (both
    ``WireError``): bad_frame, bad_version, unknown_type, bad_header, unexpected_tensors, bad_batch."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ProtocolError("bad_frame", f"expected bytes, got {type(data).__name__}")
    size = data.nbytes if isinstance(data, memoryview) else len(data)
    if max_bytes is not None and size > max_bytes:
        raise PayloadTooBig(f"message of {size:,} bytes exceeds the limit of {max_bytes:,} bytes")
    try:
        data = bytes(data)
    except (TypeError, ValueError, BufferError):
        raise ProtocolError("bad_frame", "unreadable buffer") from None

    header_text = _check_frame(data)
    try:
        tensors = safetensors.torch.load(data)
    except Exception as err:  # noqa: BLE001 - safetensors raises its own SafetensorError and others
        raise ProtocolError("bad_frame", f"safetensors refused the blob: {type(err).__name__}") from None

    header = _parse_header(header_text)
    type(header).check_tensors(tensors)
    return Frame(header, tensors)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise ValueError("duplicate key in JSON object")
    return out


def _no_constants(name: str):
    raise ValueError(f"{name} is not JSON")


def _json(text: str | bytes) -> Any:
    return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)


def _check_frame(data: bytes) -> str:
    """Check the safetensors framing cheaply before safetensors reads it; return the ``mobillm`` metadata."""
    if len(data) < 8:
        raise ProtocolError("bad_frame", f"{len(data)} bytes is too short for a safetensors blob")
    (n,) = struct.unpack("<Q", data[:8])
    if n < 2 or n > len(data) - 8 or n > MAX_HEADER_BYTES:
        raise ProtocolError("bad_frame", f"safetensors header length {n} does not fit a {len(data)}-byte blob "
                                         f"(limit {MAX_HEADER_BYTES})")
    try:
        index = _json(data[8:8 + n].decode("utf-8"))
    except (ValueError, RecursionError):
        raise ProtocolError("bad_frame", "the safetensors header is not valid UTF-8 JSON without duplicate keys") from None
    if not isinstance(index, dict):
        raise ProtocolError("bad_frame", "the safetensors header is not a JSON object")
    payload = len(data) - 8 - n
    spans = []
    for name, info in index.items():
        if name == "__metadata__":
            continue
        ok = (
            isinstance(info, dict) and set(info) == {"dtype", "shape", "data_offsets"}
            and info["dtype"] in _DTYPE_SIZES
            and isinstance(info["shape"], list) and all(type(d) is int and d >= 0 for d in info["shape"])
            and isinstance(info["data_offsets"], list) and len(info["data_offsets"]) == 2
            and all(type(o) is int for o in info["data_offsets"])
        )
        if not ok:
            raise ProtocolError("bad_frame", f"tensor {name[:80]!r}: malformed entry or dtype not allowed on the wire")
        start, end = info["data_offsets"]
        if not 0 <= start <= end <= payload or end - start != math.prod(info["shape"]) * _DTYPE_SIZES[info["dtype"]]:
            raise ProtocolError("bad_frame", f"tensor {name[:80]!r}: data offsets out of range or not matching its shape")
        spans.append((start, end))
    spans.sort()
    position = 0
    for start, end in spans:
        if start != position:
            raise ProtocolError("bad_frame", "tensor data overlaps or leaves holes")
        position = end
    if position != payload:
        raise ProtocolError("bad_frame", f"tensor data covers {position} of {payload} payload bytes")
    metadata = index.get("__metadata__")
    if not isinstance(metadata, dict) or not isinstance(metadata.get(METADATA_KEY), str):
        raise ProtocolError("bad_frame", f"no {METADATA_KEY!r} header in the safetensors metadata")
    if not all(isinstance(v, str) for v in metadata.values()):
        raise ProtocolError("bad_frame", "safetensors metadata values must be strings")
    return metadata[METADATA_KEY]


def _parse_header(text: str) -> Message:
    try:
        raw = _json(text)
    except (ValueError, RecursionError):
        raise ProtocolError("bad_frame", f"the {METADATA_KEY!r} header is not JSON") from None
    if not isinstance(raw, dict):
        raise ProtocolError("bad_frame", f"the {METADATA_KEY!r} header is not a JSON object")
    v = raw.get("v")
    if type(v) is not int or v != PROTOCOL_VERSION:
        raise ProtocolError("bad_version", f"protocol version {str(v)[:20]!r}; this side speaks v{PROTOCOL_VERSION}")
    kind = raw.get("type")
    cls = MESSAGE_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ProtocolError("unknown_type", f"message type {str(kind)[:40]!r} is not one of {sorted(MESSAGE_TYPES)}")
    try:
        return cls.model_validate(raw, strict=True)
    except ValidationError as err:
        raise ProtocolError("bad_header", f"{cls.__name__}: {_summary(err)}") from None
    except Exception as err:  # noqa: BLE001 - e.g. recursion in an opaque dict; never escapes as non-WireError
        raise ProtocolError("bad_header", f"{cls.__name__}: {type(err).__name__}") from None


def _summary(err: ValidationError, limit: int = 5) -> str:
    errors = err.errors(include_url=False, include_input=False, include_context=False)
    parts = [f"{'.'.join(map(str, e['loc'])) or '<header>'}: {e['msg']}" for e in errors[:limit]]
    if len(errors) > limit:
        parts.append(f"and {len(errors) - limit} more")
    return "; ".join(parts)[:600]

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
(``PayloadTooBig``, or ``ProtocolError`` with an ``ErrorCode``), whatever the bytes.

Tensors are torch tensors or numpy arrays (a device without torch); the checks read only dtype names and
shapes, so one implementation serves both and this module never imports torch itself.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Literal, Mapping, Sequence

import numpy as np
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from mobillm.exceptions import ProtocolError
from mobillm.files import JOB_NAME_PATTERN
from mobillm.sidenet.config import SideConfig
from mobillm.train_config import TrainConfig
from mobillm.wire.errors import ErrorCode
from mobillm.wire.frame import (
    MAX_HEADER_BYTES,
    METADATA_KEY,
    Framework,
    is_torch,
    read_frame,
    strict_json,
    write_frame,
)

__all__ = [
    "PROTOCOL_VERSION", "METADATA_KEY", "MAX_HEADER_BYTES", "MESSAGE_TYPES",
    "Message", "Hello", "Welcome", "Error", "Batch", "Ack", "Done", "GetSideNet", "SideNet",
    "Frame", "encode_message", "decode_message",
]

PROTOCOL_VERSION = 1

Tensor = Any  # a torch.Tensor or a numpy array; the two are never mixed in one message

_FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]


def _error_code(value: Any) -> Any:
    """The wire carries a code's string; strict validation would want the member itself."""
    return ErrorCode(value) if isinstance(value, str) else value


# -- headers ----------------------------------------------------------------------------------------------
class Message(BaseModel):
    """A message header. Subclasses fix ``type``; ``carries_tensors`` says whether tensors may come along."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    carries_tensors: ClassVar[bool] = False

    type: str
    v: int = PROTOCOL_VERSION

    @classmethod
    def check_tensors(cls, tensors: Mapping[str, Tensor]) -> None:
        """Refuse tensors that do not belong to this message type (raises ``ProtocolError``)."""
        if tensors and not cls.carries_tensors:
            names = ", ".join(sorted(tensors)[:5])
            raise ProtocolError(ErrorCode.UNEXPECTED_TENSORS, f"{cls.__name__} carries no tensors, got {len(tensors)} ({names})")


class Hello(Message):
    """Device → server, first message: which job, who, which backbone, and how the job is set up.

    ``side_config`` is the one statement of the job's shape — task, codec, shortcut layers, hidden size, labels —
    and ``train_config`` of its training; both are validated here, and against its backbone by the server."""

    type: Literal["hello"] = "hello"
    job: str = Field(pattern=JOB_NAME_PATTERN)
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
    """Either side: why the session is being closed; an unknown ``code`` is a ``bad_header``."""

    type: Literal["error"] = "error"
    code: Annotated[ErrorCode, BeforeValidator(_error_code)]
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
        activations: Sequence[Mapping[str, Tensor]], *, sample_ids, labels, loss_mask=None,
        attention_mask=None, last_index=None,
    ) -> dict[str, Tensor]:
        """Build a Batch's tensors from the encoded activations of each shortcut layer, in layer order: torch
        tensors when the activations are torch tensors, numpy arrays otherwise."""
        torch_tensors = any(is_torch(t) for encoded in activations for t in encoded.values())
        out = {"sample_ids": _as_int64(sample_ids, "sample_ids", torch_tensors),
               "labels": _as_int64(labels, "labels", torch_tensors)}
        for name, value in (("loss_mask", loss_mask), ("attention_mask", attention_mask)):
            if value is not None:
                out[name] = _as_array(value, torch_tensors)
        if last_index is not None:
            out["last_index"] = _as_int64(last_index, "last_index", torch_tensors)
        for i, encoded in enumerate(activations):
            for name, tensor in encoded.items():
                out[f"act.{i}.{name}"] = tensor
        return out

    @staticmethod
    def activation_groups(tensors: Mapping[str, Tensor]) -> list[dict[str, Tensor]]:
        """The encoded activations ``act.{i}.{name}`` grouped by layer i, in order; indices must be 0..M-1."""
        groups: dict[int, dict[str, Tensor]] = {}
        for key, tensor in tensors.items():
            if not key.startswith("act."):
                continue
            match = _ACT_KEY.fullmatch(key)
            if match is None:
                raise ProtocolError(ErrorCode.BAD_BATCH, f"malformed activation key {key[:80]!r}; expected act.{{i}}.{{name}}")
            groups.setdefault(int(match[1]), {})[match[2]] = tensor
        if sorted(groups) != list(range(len(groups))):
            raise ProtocolError(ErrorCode.BAD_BATCH, f"activation layer indices {sorted(groups)[:10]} are not 0..M-1")
        return [groups[i] for i in range(len(groups))]

    @classmethod
    def check_tensors(cls, tensors: Mapping[str, Tensor]) -> None:
        def need(name: str, dtypes: tuple[str, ...], dims: tuple[int, ...]) -> Tensor:
            t = tensors[name]
            if dtype_name(t) not in dtypes:
                raise ProtocolError(ErrorCode.BAD_BATCH, f"{name} must be {'/'.join(dtypes)}, got {dtype_name(t)}")
            if t.ndim not in dims or t.shape[0] != batch:
                raise ProtocolError(ErrorCode.BAD_BATCH, f"{name} of shape {tuple(t.shape)} does not fit batch size {batch}")
            return t

        for name in ("sample_ids", "labels"):
            if name not in tensors:
                raise ProtocolError(ErrorCode.BAD_BATCH, f"Batch without {name}")
        unknown = [k for k in tensors if k not in _BATCH_NAMES and not k.startswith("act.")]
        if unknown:
            raise ProtocolError(ErrorCode.BAD_BATCH, f"unknown Batch tensors {sorted(unknown)[:5]}")
        ids = tensors["sample_ids"]
        if dtype_name(ids) != "int64" or ids.ndim != 1 or ids.shape[0] < 1:
            raise ProtocolError(ErrorCode.BAD_BATCH, f"sample_ids must be int64 (B,) with B >= 1, got {dtype_name(ids)} {tuple(ids.shape)}")
        batch = ids.shape[0]
        labels = need("labels", ("int64",), (1, 2))
        if "loss_mask" in tensors:
            mask = need("loss_mask", ("bool", "uint8"), (2,))
            if labels.ndim == 2 and tuple(mask.shape) != tuple(labels.shape):
                raise ProtocolError(ErrorCode.BAD_BATCH, f"loss_mask {tuple(mask.shape)} differs from labels {tuple(labels.shape)}")
        if "attention_mask" in tensors:
            need("attention_mask", ("bool", "uint8", "int64"), (2,))
        if "last_index" in tensors:
            need("last_index", ("int64",), (1,))
        if not cls.activation_groups(tensors):
            raise ProtocolError(ErrorCode.BAD_BATCH, "Batch without activations (act.0.*)")


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
    def check_tensors(cls, tensors: Mapping[str, Tensor]) -> None:
        bad = [k for k, t in tensors.items() if dtype_name(t) not in _FLOAT_DTYPES]
        if bad:
            raise ProtocolError(ErrorCode.UNEXPECTED_TENSORS, f"SideNet tensors must be floating point: {sorted(bad)[:5]}")


MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.model_fields["type"].default: cls for cls in (Hello, Welcome, Error, Batch, Ack, Done, GetSideNet, SideNet)
}

_ACT_KEY = re.compile(r"act\.(0|[1-9][0-9]{0,5})\.([A-Za-z0-9_]+)")
_BATCH_NAMES = frozenset({"sample_ids", "labels", "loss_mask", "attention_mask", "last_index"})


_FLOAT_DTYPES = frozenset({"float16", "bfloat16", "float32", "float64", "float8_e4m3fn", "float8_e5m2"})
_INT_DTYPES = frozenset({"int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64"})


def dtype_name(tensor: Tensor) -> str:
    """A torch tensor's or a numpy array's dtype by the same name: ``"int64"``, ``"bfloat16"``, ``"bool"``..."""
    return str(tensor.dtype).removeprefix("torch.")


def _as_array(value, torch_tensors: bool) -> Tensor:
    if torch_tensors:
        import torch

        return torch.as_tensor(value)
    return value.numpy() if is_torch(value) else np.asarray(value)


def _as_int64(value, name: str, torch_tensors: bool) -> Tensor:
    t = _as_array(value, torch_tensors)
    if dtype_name(t) not in _INT_DTYPES:
        raise ProtocolError(ErrorCode.BAD_BATCH, f"{name} must hold integers, got {dtype_name(t)}")
    if not torch_tensors:
        return t.astype(np.int64, copy=False)
    import torch

    return t.to(torch.int64)


# -- frames -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Frame:
    """A decoded message: its validated header and its tensors (on CPU; torch or numpy, as decoded)."""

    header: Message
    tensors: dict[str, Tensor] = field(default_factory=dict)


def encode_message(header: Message, tensors: Mapping[str, Tensor] | None = None) -> bytes:
    """One safetensors blob: ``tensors`` (made contiguous, on CPU) plus ``header`` as JSON metadata.

    Raises ``ProtocolError`` for what the other side would refuse (tensors on a tensor-less message, a bad
    Batch, a header that is not finite JSON), so nothing invalid is ever sent."""
    if not isinstance(header, Message) or type(header) not in MESSAGE_TYPES.values():
        raise TypeError(f"encode_message needs one of {sorted(MESSAGE_TYPES)} headers, got {type(header).__name__}")
    tensors = dict(tensors or {})
    kinds = set()
    for name, tensor in tensors.items():
        kinds.add("torch" if is_torch(tensor) else "numpy" if isinstance(tensor, np.ndarray) else None)
        if not isinstance(name, str) or None in kinds:
            raise TypeError(f"tensors must map str to torch.Tensor or numpy array, got {type(name).__name__} -> {type(tensor).__name__}")
    if len(kinds) > 1:
        raise TypeError("tensors mix torch tensors and numpy arrays; give one kind")
    type(header).check_tensors(tensors)
    try:
        text = json.dumps(header.model_dump(), allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as err:  # NaN/inf or a non-JSON value inside an opaque dict
        raise ProtocolError(ErrorCode.BAD_HEADER, f"{header.type} header is not finite JSON: {err}") from None
    return write_frame(tensors, text)


def decode_message(data: bytes, *, max_bytes: int | None = None, framework: Framework = "pt") -> Frame:
    """Parse and validate untrusted bytes into torch tensors (numpy arrays with ``framework="np"``). Raises only
    ``PayloadTooBig`` or ``ProtocolError`` (both ``WireError``): bad_frame, bad_version, unknown_type,
    bad_header, unexpected_tensors, bad_batch."""
    tensors, header_text = read_frame(data, max_bytes=max_bytes, framework=framework)
    header = _parse_header(header_text)
    type(header).check_tensors(tensors)
    return Frame(header, tensors)


def _parse_header(text: str) -> Message:
    try:
        raw = strict_json(text)
    except (ValueError, RecursionError):
        raise ProtocolError(ErrorCode.BAD_FRAME, f"the {METADATA_KEY!r} header is not JSON") from None
    if not isinstance(raw, dict):
        raise ProtocolError(ErrorCode.BAD_FRAME, f"the {METADATA_KEY!r} header is not a JSON object")
    v = raw.get("v")
    if type(v) is not int or v != PROTOCOL_VERSION:
        raise ProtocolError(ErrorCode.BAD_VERSION, f"protocol version {str(v)[:20]!r}; this side speaks v{PROTOCOL_VERSION}")
    kind = raw.get("type")
    cls = MESSAGE_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"message type {str(kind)[:40]!r} is not one of {sorted(MESSAGE_TYPES)}")
    try:
        return cls.model_validate(raw, strict=True)
    except ValidationError as err:
        raise ProtocolError(ErrorCode.BAD_HEADER, f"{cls.__name__}: {_summary(err)}") from None
    except Exception as err:  # noqa: BLE001 - e.g. recursion in an opaque dict; never escapes as non-WireError
        raise ProtocolError(ErrorCode.BAD_HEADER, f"{cls.__name__}: {type(err).__name__}") from None


def _summary(err: ValidationError, limit: int = 5) -> str:
    errors = err.errors(include_url=False, include_input=False, include_context=False)
    parts = [f"{'.'.join(map(str, e['loc'])) or '<header>'}: {e['msg']}" for e in errors[:limit]]
    if len(errors) > limit:
        parts.append(f"and {len(errors) - limit} more")
    return "; ".join(parts)[:600]

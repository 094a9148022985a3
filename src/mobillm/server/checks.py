"""What the server checks before it trusts a device: the Hello against its own backbone, then every Batch
against the job the Hello set up. Pure functions — no job state, no I/O — each naming every problem it finds
in one ``ProtocolError`` (``bad_header`` for a Hello, ``bad_batch`` for a Batch)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from mobillm.backbone import FrozenHead
from mobillm.exceptions import CodecError, ProtocolError
from mobillm.sidenet import SideConfig
from mobillm.train_config import TrainConfig
from mobillm.wire.codecs import CODECS, Codec, get_codec
from mobillm.wire.errors import ErrorCode
from mobillm.wire.messages import Batch, Frame, Hello


@dataclass(frozen=True)
class JobSpec:
    """A Hello checked against the server's backbone: what its job trains and what each Batch must fit."""

    side: SideConfig
    train: TrainConfig
    codec: Codec
    num_targets: int  # labels lie in 0..num_targets-1: class ids, or (causal LM) next-token ids of the vocabulary
    steps_per_epoch: int
    device_epochs: int

    @property
    def causal_lm(self) -> bool:
        return self.side.task == "causal-lm"


def check_hello(hello: Hello, head: FrozenHead) -> JobSpec:
    """The job ``hello`` describes, if it fits the backbone ``head`` was taken from; ``bad_header`` otherwise."""
    side, train = hello.side_config, hello.train_config
    problems = []
    if side.hidden_size != head.hidden_size:
        problems.append(f"side_config.hidden_size is {side.hidden_size}, the server's backbone is {head.hidden_size} wide")
    if head.num_layers is not None and side.num_backbone_layers != head.num_layers:
        problems.append(f"side_config.num_backbone_layers is {side.num_backbone_layers}, the server's backbone has "
                        f"{head.num_layers} layers (shortcuts must lie within them)")
    if side.codec not in CODECS:
        problems.append(f"codec {side.codec!r} unknown — this server knows {sorted(CODECS)}")
    outside = [i for i in side.label_token_ids or [] if not 0 <= i < head.vocab_size]
    if outside:
        problems.append(f"label_token_ids {outside} lie outside the vocabulary 0..{head.vocab_size - 1}")
    if side.task == "classification" and side.num_labels < 2:
        problems.append(f"classification needs num_labels >= 2, got {side.num_labels}")
    if train.method != "side":
        problems.append(f"train_config.method is {train.method!r}; the server trains side networks only ('side')")
    if not 1 <= hello.device_epochs <= train.num_epochs:
        problems.append(f"device_epochs must be within 1..{train.num_epochs} (the training epochs)")
    if problems:
        raise ProtocolError(ErrorCode.BAD_HEADER, "; ".join(problems))
    return JobSpec(
        side=side, train=train, codec=get_codec(side.codec),
        num_targets=head.vocab_size if side.task == "causal-lm" else side.num_labels,
        steps_per_epoch=math.ceil(hello.train_samples / train.batch_size), device_epochs=hello.device_epochs,
    )


def check_batch(spec: JobSpec, frame: Frame) -> None:
    """Check a decoded Batch against its job: epoch, layer count, each layer's encoded shape and finiteness
    (:meth:`Codec.check`: nothing is dequantized), label range and masks. ``bad_batch`` names every problem."""
    batch: Batch = frame.header
    tensors = frame.tensors
    groups = Batch.activation_groups(tensors)
    B, H, M, lm = tensors["sample_ids"].shape[0], spec.side.hidden_size, len(spec.side.shortcuts), spec.causal_lm
    problems = []
    if batch.split == "train" and batch.epoch >= spec.device_epochs:
        problems.append(f"epoch {batch.epoch} beyond device_epochs={spec.device_epochs}")
    if len(groups) != M:
        problems.append(f"{len(groups)} activation layers, the Hello announced {M}")
    labels = tensors["labels"]
    if labels.dim() != (2 if lm else 1) or bool(((labels < 0) | (labels >= spec.num_targets)).any()):
        what = "(B, T) next-token ids" if lm else "(B,) class ids"
        problems.append(f"labels must be {what} in 0..{spec.num_targets - 1}")
    if lm and "loss_mask" not in tensors:
        problems.append("a causal-LM batch needs its loss_mask")
    shapes = []
    for i, group in enumerate(groups):
        try:
            shapes.append((i, spec.codec.check(group)))
        except CodecError as err:
            problems.append(f"layer {i}: {err}")
    pivot = spec.side.pivot_only
    if lm:
        T = labels.shape[1] if labels.dim() == 2 else 0
    else:
        T = shapes[0][1][1] if shapes and len(shapes[0][1]) == 3 else 0
    expected = (B, H) if pivot else (B, T, H)
    problems += [f"layer {i}: activations of shape {shape}, expected {expected}" for i, shape in shapes if shape != expected]
    if not pivot:
        if "attention_mask" not in tensors or "last_index" not in tensors:
            problems.append("batches of every position need attention_mask and last_index")
        else:
            if tuple(tensors["attention_mask"].shape) != (B, T):
                problems.append(f"attention_mask {tuple(tensors['attention_mask'].shape)} does not fit ({B}, {T})")
            last = tensors["last_index"]
            if bool(((last < 0) | (last >= T)).any()):
                problems.append(f"last_index must lie in 0..{T - 1}")
    if problems:
        raise ProtocolError(ErrorCode.BAD_BATCH, "; ".join(problems))

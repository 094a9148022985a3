"""Hostile input to the server's decoder and validator: every case gets a WireError, never a crash, and the job's
state does not change. Property-based (hypothesis); ``benchmarks/fuzz_decoder.py`` fuzzes the same target with
atheris for a bounded time."""

from __future__ import annotations

import json
import math
import struct

import pytest
import safetensors.torch
import torch
from conftest import tiny_model
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mobillm.backbone import FrozenHead, decoder_layers
from mobillm.exceptions import ProtocolError, WireError
from mobillm.server.job import Job
from mobillm.sidenet import SideConfig
from mobillm.train_config import TrainConfig
from mobillm.wire.codecs import get_codec
from mobillm.wire.errors import ErrorCode
from mobillm.wire.messages import Batch, Hello, decode_message, encode_message

H, M, B, LABELS = 32, 2, 4, 2
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    model = tiny_model("llama", hidden=H)
    side = SideConfig(hidden_size=H, num_backbone_layers=4, shortcuts=[2, 4], width=8, block="mlp", num_labels=LABELS,
                      label_token_ids=[5, 6], codec="int8")
    hello = Hello(job="hostile", model="tiny", fingerprint="ab", side_config=side,
                  train_config=TrainConfig(method="side", epochs=1, batch_size=B), train_samples=64)
    return Job(hello, FrozenHead.from_model(model), tmp_path_factory.mktemp("job"), 1 << 20, layers=decoder_layers(model))


def batch_message(seq: int = 0, acts=None, labels=None, split: str = "train") -> bytes:
    acts = torch.randn(B, H) if acts is None else acts
    taps = [get_codec("int8").encode(acts) for _ in range(M)]
    labels = torch.arange(B) % LABELS if labels is None else labels
    return encode_message(Batch(seq=seq, split=split, epoch=0), Batch.tensors(taps, sample_ids=torch.arange(B), labels=labels))


def state(job: Job) -> tuple:
    return len(job.cache), job.cache.total_bytes, job.order.last_seq, len(job.feed.eval_seqs), job.bytes_received


def offer(job: Job, data: bytes) -> None:
    """What the server does with one frame: decode, then validate, cache and queue (``Job.receive``)."""
    frame = decode_message(data, max_bytes=1 << 20)
    if isinstance(frame.header, Batch):
        job.receive(data, frame)


def assert_refused_without_change(job: Job, data: bytes) -> None:
    before = state(job)
    try:
        offer(job, data)
    except WireError:
        assert state(job) == before
        return
    # Some mutations leave a valid message (e.g. a flipped bit inside an activation): it may be accepted.


@SETTINGS
@given(st.binary(max_size=4096))
def test_random_bytes_never_crash_the_decoder(job, data):
    assert_refused_without_change(job, data)


@SETTINGS
@given(st.data())
def test_truncated_and_corrupted_batches_are_refused_cleanly(job, data):
    message = bytearray(batch_message(seq=10_000))  # a seq far ahead: even an intact one is out of order
    cut = data.draw(st.integers(0, len(message)))
    flips = data.draw(st.lists(st.tuples(st.integers(0, len(message) - 1), st.integers(1, 255)), max_size=8))
    for position, xor in flips:
        message[position] ^= xor
    assert_refused_without_change(job, bytes(message[:cut]))
    assert_refused_without_change(job, bytes(message))


@SETTINGS
@given(st.integers(0, 0xFFFFFFFFFFFFFFFF), st.binary(max_size=64))
def test_forged_header_lengths_are_refused(job, length, rest):
    assert_refused_without_change(job, struct.pack("<Q", length) + rest)


def _code(job: Job, data: bytes) -> str:
    before = state(job)
    with pytest.raises(ProtocolError) as err:
        offer(job, data)
    assert state(job) == before
    return err.value.code


def raw_message(header: dict, tensors: dict[str, torch.Tensor]) -> bytes:
    """A frame built without ``encode_message``'s checks, as a hostile peer would."""
    return safetensors.torch.save(tensors, metadata={"mobillm": json.dumps(header)})


def test_each_kind_of_bad_batch_gets_its_error_code_and_changes_nothing(job):
    assert _code(job, batch_message(acts=torch.full((B, H), math.nan))) == ErrorCode.BAD_BATCH  # NaN activations
    assert _code(job, batch_message(acts=torch.full((B, H), math.inf))) == ErrorCode.BAD_BATCH  # Inf activations
    assert _code(job, batch_message(labels=torch.tensor([0, 1, 2, 0]))) == ErrorCode.BAD_BATCH  # label out of range
    assert _code(job, batch_message(labels=torch.tensor([0, -1, 1, 0]))) == ErrorCode.BAD_BATCH
    assert _code(job, batch_message(acts=torch.randn(B, H + 1))) == ErrorCode.BAD_BATCH  # wrong hidden size
    assert _code(job, batch_message(acts=torch.randn(B, 3, H))) == ErrorCode.BAD_BATCH  # all positions to a pivot job
    assert _code(job, batch_message(seq=5)) == ErrorCode.OUT_OF_ORDER  # a gap: seq 0 has not arrived

    header = {"type": "batch", "v": 1, "seq": 0, "split": "train", "epoch": 0}
    tensors = decode_message(batch_message(seq=0)).tensors
    assert _code(job, raw_message(header, {**tensors, "labels": tensors["labels"].int()})) == ErrorCode.BAD_BATCH  # dtype
    assert _code(job, raw_message(header, {**tensors, "secret": torch.zeros(1)})) == ErrorCode.BAD_BATCH  # unknown tensor
    assert _code(job, raw_message({**header, "v": 9}, tensors)) == ErrorCode.BAD_VERSION
    assert _code(job, raw_message({**header, "type": "bogus"}, tensors)) == ErrorCode.UNKNOWN_TYPE
    assert _code(job, raw_message({**header, "seq": -1}, tensors)) == ErrorCode.BAD_HEADER
    assert _code(job, raw_message({**header, "extra": 1}, tensors)) == ErrorCode.BAD_HEADER
    assert _code(job, raw_message({"type": "welcome", "v": 1, "session": "x", "window": 1, "last_seq": -1, "step": 0},
                                  tensors)) == ErrorCode.UNEXPECTED_TENSORS


def test_repeated_sequence_numbers_are_reacked_not_stored_twice(job):
    first = batch_message(seq=job.order.last_seq + 1, split="eval")
    job.receive(first, decode_message(first))
    before = state(job)
    ack = job.receive(first, decode_message(first))
    assert ack.seq == job.order.last_seq and state(job) == before


def test_an_oversized_frame_is_refused_before_it_is_parsed():
    from mobillm.exceptions import PayloadTooBig

    with pytest.raises(PayloadTooBig):
        decode_message(batch_message() + bytes(1 << 20), max_bytes=1 << 20)

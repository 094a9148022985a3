"""Raw text and token ids never leave the device: every WebSocket message of a whole split job, both directions,
is captured and searched for the texts (UTF-8) and the prompts' token-id runs (little-endian int32 / int64).

Messages are captured at the websockets protocol layer of this process (server on a thread, device on the main
thread), before masking on send and after unmasking on receipt: what a server, or anyone holding the TLS keys,
reads. A second test feeds the detector a message that does carry the ids, so a detector that finds nothing
cannot pass unnoticed.
"""

from __future__ import annotations

import asyncio
import random

import numpy as np
import pytest
import torch
from conftest import tiny_model
from helpers import make_tiny_tokenizer
from servers import ThreadServer

from mobillm.backbone import fingerprint, label_token_ids, load_pretrained
from mobillm.data import Batcher, default_template, load_dataset
from mobillm.device.client import stream
from mobillm.device.taps import TappedBackbone
from mobillm.server.manager import SessionManager
from mobillm.sidenet import SideConfig
from mobillm.train_config import TrainConfig
from mobillm.wire.codecs import get_codec
from mobillm.wire.messages import Batch, Hello, encode_message

# Made-up words no header, codec or tensor could produce by accident; each long enough that a UTF-8 match is proof.
SECRET_WORDS = ["zorvathquimbly", "plexandrium", "quaxelbright", "mirthwaggle", "snorgleplat", "vintrobasque",
                "glimmerfrax", "obrundelite", "craxtonwhirl", "fennimorquat", "jubbletrance", "xylofriscan"]
TEMPLATE_WORDS = "Review Sentiment positive negative or ( ) : , . !".split()
MIN_RUN = 4  # consecutive token ids that count as a leaked sequence


def _write_secret_task(root) -> tuple[str, str, list[str]]:
    """A tiny Llama whose tokenizer knows the secret words, and a sentiment task written in them."""
    model_dir, data_dir = root / "model", root / "data"
    tiny_model("llama", layers=4, hidden=64).save_pretrained(model_dir)
    make_tiny_tokenizer(words=TEMPLATE_WORDS + SECRET_WORDS, bos=True).save_pretrained(model_dir)
    rng = random.Random(0)
    data_dir.mkdir()
    texts = []
    for split, n in (("train", 48), ("dev", 16), ("test", 16)):
        rows = ["sentence\tlabel"]
        for i in range(n):
            text = " ".join(rng.sample(SECRET_WORDS, 6))
            texts.append(text)
            rows.append(f"{text}\t{i % 2}")
        (data_dir / f"{split}.tsv").write_text("\n".join(rows) + "\n")
    return str(model_dir), str(data_dir), texts


class Capture:
    """Every complete WebSocket message sent or received by any websockets protocol object of this process."""

    def __init__(self, monkeypatch):
        from websockets.frames import Opcode
        from websockets.protocol import Protocol

        self.sent: list[bytes] = []
        self.received: list[bytes] = []
        partial: dict[tuple[int, str], bytearray] = {}
        data_codes = (Opcode.TEXT, Opcode.BINARY, Opcode.CONT)

        def record(protocol, frame, into: list[bytes], side: str) -> None:
            if frame.opcode not in data_codes:
                return
            buffer = partial.setdefault((id(protocol), side), bytearray())
            buffer += frame.data
            if frame.fin:
                into.append(bytes(buffer))
                buffer.clear()

        send_frame, events_received = Protocol.send_frame, Protocol.events_received

        def capture_send(protocol, frame):
            record(protocol, frame, self.sent, "send")
            return send_frame(protocol, frame)

        def capture_events(protocol):
            events = events_received(protocol)
            for event in events:
                if hasattr(event, "opcode"):
                    record(protocol, event, self.received, "recv")
            return events

        monkeypatch.setattr(Protocol, "send_frame", capture_send)
        monkeypatch.setattr(Protocol, "events_received", capture_events)


def id_runs(ids: list[int]) -> list[bytes]:
    """Every run of ``MIN_RUN`` consecutive ids as little-endian int32 and int64 bytes."""
    runs = []
    for start in range(len(ids) - MIN_RUN + 1):
        window = ids[start : start + MIN_RUN]
        runs += [np.asarray(window, dtype="<i4").tobytes(), np.asarray(window, dtype="<i8").tobytes()]
    return runs


def leaks(messages: list[bytes], texts: list[str], prompt_ids: list[list[int]]) -> list[str]:
    """What of ``texts`` (UTF-8, also each secret word alone) or the prompts' id runs occurs in any message."""
    needles = {f"text {t!r}": t.encode() for t in texts}
    needles.update({f"word {w!r}": w.encode() for t in texts for w in t.split()})
    for n, ids in enumerate(prompt_ids):
        needles.update({f"ids of prompt {n} run {i}": run for i, run in enumerate(id_runs(ids))})
    return sorted({name for name, needle in needles.items() for m in messages if needle in m})


@pytest.fixture(scope="module")
def secret_task(tmp_path_factory):
    return _write_secret_task(tmp_path_factory.mktemp("secret"))


@pytest.mark.parametrize("block, codec", [("mlp", "none"), ("attention", "int8"), ("attention", "nf4")])
def test_no_text_and_no_token_ids_in_any_message_of_a_whole_job(secret_task, tmp_path, monkeypatch, block, codec):
    model_dir, data_dir, texts = secret_task
    model, tokenizer = load_pretrained(model_dir)
    data = load_dataset(data_dir, max_eval_samples=16)
    template = default_template(data.label_names)
    side = SideConfig(hidden_size=64, num_backbone_layers=4, shortcuts=[2, 4], width=16, block=block, num_labels=2,
                      label_token_ids=label_token_ids(tokenizer, template.label_words), prompt_template=template.template,
                      label_names=data.label_names, codec=codec)
    config = TrainConfig(method="side", epochs=2, batch_size=8)
    hello = Hello(job=f"capture-{block}-{codec}", model=model_dir, fingerprint=fingerprint(model), side_config=side,
                  train_config=config, train_samples=len(data.train))
    batcher = Batcher(tokenizer, template)
    prompt_ids = batcher.token_ids([e.text for e in data.train + data.validation])
    assert all(len(ids) >= 6 + MIN_RUN for ids in prompt_ids)
    # the secret words are real tokens (not [UNK]): a leak of ids would be a leak of the words
    assert tokenizer.unk_token_id not in {i for ids in prompt_ids for i in ids}

    capture = Capture(monkeypatch)
    server = ThreadServer(SessionManager(tmp_path / "jobs"), window=4)
    frame, stats = asyncio.run(stream(f"ws://127.0.0.1:{server.port}", hello, TappedBackbone(model, [2, 4]),
                                      get_codec(codec), batcher, data.train, data.validation, batch_size=8, seed=0,
                                      pivot=side.pivot_only))

    assert frame.header.step == config.num_epochs * len(data.train) // 8  # the whole job ran, side network received
    batches = stats.batches_sent
    # device -> server: hello, every batch, done, get-side-net; server -> device: welcome, acks, side net
    assert len(capture.sent) >= 2 * batches + 4 and len(capture.received) >= 2 * batches + 4
    assert sum(map(len, capture.sent)) >= stats.bytes_sent + stats.bytes_received
    assert leaks(capture.sent + capture.received, texts, prompt_ids) == []


def test_the_detector_finds_ids_and_text_when_a_message_carries_them(secret_task):
    model_dir, data_dir, texts = secret_task
    _, tokenizer = load_pretrained(model_dir)
    data = load_dataset(data_dir)
    batcher = Batcher(tokenizer, default_template(data.label_names))
    batch = batcher.encode(data.train[:8], list(range(8)))
    prompt_ids = batcher.token_ids([e.text for e in data.train[:8]])
    codec = get_codec("none")
    acts = [codec.encode(torch.zeros(8, 64))]

    def message(**tensors) -> bytes:
        return encode_message(Batch(seq=0, split="train", epoch=0), Batch.tensors(acts, **tensors))

    clean = message(sample_ids=batch.sample_ids, labels=batch.labels)
    as_int64 = message(sample_ids=batch.sample_ids, labels=batch.input_ids)  # (B, T) labels: the ids themselves
    as_int32 = clean + batch.input_ids.to(torch.int32).numpy().tobytes()
    assert leaks([clean], texts, prompt_ids) == []
    assert any(name.startswith("ids of prompt") for name in leaks([as_int64], texts, prompt_ids))
    assert any(name.startswith("ids of prompt") for name in leaks([as_int32], texts, prompt_ids))
    assert leaks([clean + texts[3].encode()], texts, prompt_ids)

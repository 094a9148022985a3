"""The Hello names the public model a device checkpoint was made from — not the device's local path — and a
server holding that model accepts the device by fingerprint (and still refuses another backbone)."""

from __future__ import annotations

import asyncio
import json

import pytest
from servers import ThreadServer, device_setup

from mobillm.backbone import DEFAULT_MODEL, load_pretrained, public_model_id
from mobillm.backbone.weights import META_NAME, save_device_model
from mobillm.device.client import stream
from mobillm.exceptions import ServerRefused
from mobillm.server.manager import SessionManager
from mobillm.wire.errors import ErrorCode


def test_public_model_id_follows_device_checkpoints_to_their_source(tmp_path):
    first, second, plain = tmp_path / "first", tmp_path / "second", tmp_path / "plain"
    for folder, source in ((first, "HuggingFaceTB/SmolLM2-135M-Instruct"), (second, str(first))):
        folder.mkdir()
        (folder / META_NAME).write_text(json.dumps({"format": "int8", "source": source, "fingerprint": "ab"}))
    plain.mkdir()
    assert public_model_id(str(first)) == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert public_model_id(str(second)) == "HuggingFaceTB/SmolLM2-135M-Instruct"  # a checkpoint of a checkpoint
    assert public_model_id(DEFAULT_MODEL) == DEFAULT_MODEL
    assert public_model_id("org/model") == "org/model"
    assert public_model_id(str(plain)) == str(plain)  # no record of its origin: its path is all there is
    (first / META_NAME).write_text(json.dumps({"source": str(second)}))  # a loop ends
    assert public_model_id(str(second)) in (str(first), str(second))


def test_a_device_on_a_converted_checkpoint_trains_with_a_server_holding_its_source(toy_task, tmp_path):
    model_dir, data_dir = toy_task
    model, tokenizer = load_pretrained(model_dir)
    checkpoint = save_device_model(model, tokenizer, tmp_path / "device-int8", "int8", source=model_dir)
    hello, backbone, codec, batcher, data = device_setup(str(checkpoint), data_dir, max_train=32)
    hello = hello.model_copy(update={"model": public_model_id(str(checkpoint))})
    assert hello.model == model_dir  # what the server can load, not the device's folder
    server = ThreadServer(SessionManager(tmp_path / "jobs"), window=4)
    url = f"ws://127.0.0.1:{server.port}"
    frame, _ = asyncio.run(stream(url, hello, backbone, codec, batcher, data.train, data.validation,
                                  batch_size=8, seed=0, pivot=True))
    assert frame.header.step == 32 // 8
    forged = hello.model_copy(update={"job": "forged", "fingerprint": "0" * 32})
    with pytest.raises(ServerRefused, match=ErrorCode.FINGERPRINT_MISMATCH):
        asyncio.run(stream(url, forged, backbone, codec, batcher, data.train, data.validation,
                           batch_size=8, seed=0, pivot=True))

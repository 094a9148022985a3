"""Per-job tokens checked in the WebSocket handshake, and TLS (issue: reliability and security)."""

from __future__ import annotations

import asyncio
import json
import shutil
import ssl
import stat
import subprocess

import pytest
from pydantic import ValidationError
from servers import ThreadServer, device_setup, hello_then
from typer.testing import CliRunner
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from mobillm.cli import app
from mobillm.device.client import stream
from mobillm.exceptions import ConfigError, ServerRefused
from mobillm.server.auth import TOKEN_FILE, TokenStore
from mobillm.server.manager import SessionManager
from mobillm.sidenet import SideConfig
from mobillm.train_config import TrainConfig
from mobillm.wire.errors import ErrorCode
from mobillm.wire.messages import Error, Hello, decode_message, encode_message


def test_a_token_is_shown_once_and_only_its_salted_hash_is_stored(tmp_path):
    store = TokenStore(tmp_path)
    token = store.create("alice")
    path = tmp_path / "alice" / TOKEN_FILE
    text = path.read_text()
    assert token not in text and set(json.loads(text)) >= {"salt", "hash"}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert store.verify("alice", token)
    assert not store.verify("alice", token[:-1] + ("A" if token[-1] != "A" else "B"))
    assert not store.verify("alice", None) and not store.verify("bob", token) and not store.verify("../alice", token)
    for name in ("..", ".", ".hidden", "a/b", ""):  # job names are folder names under --jobs-dir, never a way out
        with pytest.raises(ConfigError):
            store.create(name)
        with pytest.raises(ValidationError):
            Hello(job=name, model="m", fingerprint="ab", train_config=TrainConfig(), train_samples=1,
                  side_config=SideConfig(hidden_size=8, num_backbone_layers=1, shortcuts=[1], block="mlp",
                                         label_token_ids=[1, 2], codec="int8"))
    with pytest.raises(ConfigError, match="already has a token"):
        store.create("alice")
    second = store.create("alice", replace=True)  # revokes the first
    assert store.verify("alice", second) and not store.verify("alice", token)
    assert TokenStore(tmp_path).create("bob") != second  # random, per job


def test_token_create_command_prints_the_token(tmp_path):
    result = CliRunner().invoke(app, ["token", "create", "--job", "carol", "--jobs-dir", str(tmp_path)])
    assert result.exit_code == 0
    assert TokenStore(tmp_path).verify("carol", result.output.strip())


async def _handshake(url: str, token: str | None):
    headers = {"Authorization": f"Bearer {token}"} if token else None
    async with connect(url, additional_headers=headers, compression=None) as ws:
        return ws


def test_the_handshake_refuses_a_missing_wrong_or_other_jobs_token_before_parsing_anything(toy_task, tmp_path, monkeypatch):
    import mobillm.wire.session as server_session  # where the server's adapter decodes what it receives

    parsed = []
    monkeypatch.setattr(server_session, "decode_message", lambda *a, **k: parsed.append(1) or decode_message(*a, **k))
    tokens = TokenStore(tmp_path / "jobs")
    alice, bob = tokens.create("alice"), tokens.create("bob")
    server = ThreadServer(SessionManager(tmp_path / "jobs"), window=2, tokens=tokens)
    base = f"ws://127.0.0.1:{server.port}"
    for url, token in ((f"{base}/jobs/alice", None), (f"{base}/jobs/alice", "forged"), (f"{base}/jobs/alice", bob),
                       (f"{base}/", alice), (f"{base}/jobs/../alice", alice)):
        with pytest.raises(InvalidStatus) as refused:
            asyncio.run(_handshake(url, token))
        assert refused.value.response.status_code == 401
    assert parsed == []  # no message of an unauthenticated peer reached the decoder

    # Alice's token opens /jobs/alice, but a Hello for bob's job on that connection is refused.
    model_dir, data_dir = toy_task
    hello, backbone, codec, batcher, data = device_setup(model_dir, data_dir)

    async def hello_for(job: str):
        async with connect(f"{base}/jobs/alice", additional_headers={"Authorization": f"Bearer {alice}"}, compression=None) as ws:
            await ws.send(encode_message(hello.model_copy(update={"job": job})))
            return decode_message(await ws.recv()).header

    answer = asyncio.run(hello_for("bob"))
    assert isinstance(answer, Error) and answer.code == ErrorCode.AUTH
    # With the right token the device runs its job; with bob's it cannot even connect to alice's.
    run = dict(batch_size=8, seed=0, pivot=True)
    frame, _ = asyncio.run(stream(base, hello.model_copy(update={"job": "alice"}), backbone, codec, batcher, data.train[:16],
                                  data.validation[:8], token=alice, **run))
    assert frame.header.step == 2
    with pytest.raises(ServerRefused, match="auth.*401"):
        asyncio.run(stream(base, hello.model_copy(update={"job": "alice"}), backbone, codec, batcher, data.train[:16],
                           data.validation[:8], token=bob, **run))


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a test certificate")
def test_a_job_runs_over_tls_with_a_self_signed_certificate(toy_task, tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True,
    )
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    tokens = TokenStore(tmp_path / "jobs")
    token = tokens.create("tls")
    server = ThreadServer(SessionManager(tmp_path / "jobs"), window=2, tokens=tokens, tls=tls)
    model_dir, data_dir = toy_task
    hello, backbone, codec, batcher, data = device_setup(model_dir, data_dir)
    hello = hello.model_copy(update={"job": "tls"})
    url = f"wss://127.0.0.1:{server.port}"
    run = dict(batch_size=8, seed=0, pivot=True, token=token)
    frame, stats = asyncio.run(stream(url, hello, backbone, codec, batcher, data.train[:16], data.validation[:8],
                                      cafile=str(cert), **run))
    assert frame.header.step == 2 and stats.bytes_sent > 0
    with pytest.raises(ssl.SSLCertVerificationError):  # without the CA file the self-signed server is not trusted
        asyncio.run(stream(url, hello, backbone, codec, batcher, data.train[:16], data.validation[:8], **run))


# --- limits: each answered with its own Error code and close code --------------------------------------
def test_limits_answer_with_their_own_error_and_close_code(toy_task, tmp_path):
    from mobillm.server.app import Limits
    from mobillm.wire.codecs import get_codec
    from mobillm.wire.messages import Batch

    model_dir, data_dir = toy_task
    hello, backbone, codec, batcher, data = device_setup(model_dir, data_dir)

    # idle timeout: a Hello, then silence
    server = ThreadServer(SessionManager(tmp_path / "idle"), limits=Limits(idle_timeout=0.5))
    errors, close = asyncio.run(hello_then(f"ws://127.0.0.1:{server.port}", hello))
    assert [e.code for e in errors] == [ErrorCode.IDLE_TIMEOUT] and close == 1001

    # sessions: with one allowed, a second concurrent session is refused as busy
    server = ThreadServer(SessionManager(tmp_path / "busy"), limits=Limits(max_sessions=1, idle_timeout=5))

    async def two_sessions():
        async with connect(f"ws://127.0.0.1:{server.port}", compression=None) as first:
            await first.send(encode_message(hello))
            await first.recv()  # welcome: the first session is open
            return await hello_then(f"ws://127.0.0.1:{server.port}", hello)

    errors, close = asyncio.run(two_sessions())
    assert [e.code for e in errors] == [ErrorCode.BUSY] and close == 1013

    # per-job cache bytes: the batch past the limit is refused, and nothing of it is kept
    batch = batcher.encode(data.train[:8], list(range(8)))
    taps = backbone(batch.input_ids, batch.attention_mask, batch.last_index, get_codec("int8").encode)
    tensors = Batch.tensors(taps, sample_ids=batch.sample_ids, labels=batch.labels)
    messages = [encode_message(Batch(seq=i, split="eval", epoch=0), tensors) for i in range(4)]
    size = len(messages[0])
    manager = SessionManager(tmp_path / "cache", cache_limit_bytes=int(2.5 * size))
    server = ThreadServer(manager, limits=Limits(idle_timeout=5))
    errors, close = asyncio.run(hello_then(f"ws://127.0.0.1:{server.port}", hello, messages))
    assert [e.code for e in errors] == [ErrorCode.CACHE_FULL] and close == 1008
    job = manager.jobs[hello.job]
    assert len(job.cache) == 2 and job.cache.total_bytes == 2 * size and job.order.last_seq == 1

    # message size: the transport refuses an oversized frame with 1009
    server = ThreadServer(SessionManager(tmp_path / "big"), limits=Limits(max_message_bytes=size - 1))
    errors, close = asyncio.run(hello_then(f"ws://127.0.0.1:{server.port}", hello, messages[:1]))
    assert close == 1009

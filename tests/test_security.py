"""Per-job tokens checked in the WebSocket handshake, and TLS (issue: reliability and security)."""

from __future__ import annotations

import asyncio
import json
import shutil
import ssl
import stat
import subprocess

import pytest
from typer.testing import CliRunner
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from mobillm.cli import app
from mobillm.device.client import ServerRefused, stream
from mobillm.exceptions import ConfigError
from mobillm.server.auth import TOKEN_FILE, TokenStore
from mobillm.server.manager import SessionManager
from mobillm.wire.messages import Error, decode_message, encode_message
from test_server import ThreadServer, device_setup


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
    import mobillm.server.app as server_app

    parsed = []
    monkeypatch.setattr(server_app, "decode_message", lambda *a, **k: parsed.append(1) or decode_message(*a, **k))
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
    assert isinstance(answer, Error) and answer.code == "auth"
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

"""Per-job tokens checked in the WebSocket handshake (as ``Authorization: Bearer`` or, for browsers, as a
``Sec-WebSocket-Protocol`` value) and over HTTP for a page, and TLS (issues: reliability and security; a
browser can authenticate)."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import shutil
import ssl
import stat
import urllib.error
import urllib.request

import pytest
from pydantic import ValidationError
from servers import ThreadServer, device_setup, hello_then, self_signed, tls_context
from typer.testing import CliRunner
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from mobillm.cli import app
from mobillm.device.client import stream
from mobillm.exceptions import ConfigError, ServerRefused
from mobillm.server.auth import SUBPROTOCOL, TOKEN_FILE, TOKEN_SUBPROTOCOL, TokenStore
from mobillm.server.manager import SessionManager
from mobillm.sidenet import SideConfig
from mobillm.train_config import TrainConfig
from mobillm.wire.errors import ErrorCode
from mobillm.wire.messages import Error, Hello, Welcome, decode_message, encode_message


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


TRANSPORTS = ("header", "subprotocol")  # the two places a device may put its job token in the handshake


def credentials(transport: str, token: str | None) -> dict:
    """``connect`` arguments presenting ``token`` the ``transport`` way (a browser offers ``mobillm.v1`` always)."""
    if transport == "header":
        return {"additional_headers": {"Authorization": f"Bearer {token}"}} if token is not None else {}
    return {"subprotocols": [SUBPROTOCOL] + ([TOKEN_SUBPROTOCOL + token] if token is not None else [])}


async def _handshake(url: str, token: str | None = None, transport: str = "header", **extra):
    """Open and close a connection; its response headers (raises InvalidStatus when refused)."""
    async with connect(url, compression=None, **credentials(transport, token), **extra) as ws:
        return ws.response.headers


def refused(url: str, token: str | None = None, transport: str = "header", **extra) -> str:
    """The body of the 401 that refuses this handshake."""
    with pytest.raises(InvalidStatus) as refusal:
        asyncio.run(_handshake(url, token, transport, **extra))
    assert refusal.value.response.status_code == 401
    return refusal.value.response.body.decode()


@pytest.fixture
def decoded(monkeypatch) -> list:
    """Grows by one for each message the server's session decodes."""
    import mobillm.wire.session as server_session  # where the server's adapter decodes what it receives

    parsed = []
    monkeypatch.setattr(server_session, "decode_message", lambda *a, **k: parsed.append(1) or decode_message(*a, **k))
    return parsed


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_the_handshake_refuses_a_missing_wrong_or_other_jobs_token_before_parsing_anything(
        toy_task, tmp_path, decoded, transport):
    tokens = TokenStore(tmp_path / "jobs")
    alice, bob = tokens.create("alice"), tokens.create("bob")
    server = ThreadServer(SessionManager(tmp_path / "jobs"), window=2, tokens=tokens)
    base = f"ws://127.0.0.1:{server.port}"
    for url, token in ((f"{base}/jobs/alice", None), (f"{base}/jobs/alice", "forged"), (f"{base}/jobs/alice", bob),
                       (f"{base}/jobs/alice", ""), (f"{base}/jobs/nobody", alice), (f"{base}/", alice),
                       (f"{base}/jobs/../alice", alice),
                       (f"{base}/jobs/alice?token={alice}", None),  # never read from the URL...
                       (f"{base}/jobs/alice?access_token={alice}", alice)):  # ...and refused there even beside it
        body = refused(url, token, transport)
        assert alice not in body and bob not in body  # a refusal never repeats a token
    assert "URL" in refused(f"{base}/jobs/alice?token={alice}", alice, transport)
    assert decoded == []  # no message of an unauthenticated peer reached the decoder

    # The right token opens the job's WebSocket; the server answers mobillm.v1 (when offered), never the token.
    headers = asyncio.run(_handshake(f"{base}/jobs/alice", alice, transport))
    assert headers.get_all("Sec-WebSocket-Protocol") == ([SUBPROTOCOL] if transport == "subprotocol" else [])

    # Alice's token opens /jobs/alice, but a Hello for bob's job on that connection is refused.
    model_dir, data_dir = toy_task
    hello, *_ = device_setup(model_dir, data_dir)

    async def hello_for(job: str):
        async with connect(f"{base}/jobs/alice", compression=None, **credentials(transport, alice)) as ws:
            await ws.send(encode_message(hello.model_copy(update={"job": job})))
            return decode_message(await ws.recv()).header

    answer = asyncio.run(hello_for("bob"))
    assert isinstance(answer, Error) and answer.code == ErrorCode.AUTH
    assert isinstance(asyncio.run(hello_for("alice")), Welcome)


def test_header_and_subprotocol_tokens_must_agree_and_the_token_is_never_echoed(tmp_path, decoded):
    tokens = TokenStore(tmp_path / "jobs")
    alice, bob = tokens.create("alice"), tokens.create("bob")
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", alice)  # base64url: RFC 7230 token characters, a subprotocol as it is
    url = f"ws://127.0.0.1:{ThreadServer(SessionManager(tmp_path / 'jobs'), tokens=tokens).port}/jobs/alice"
    bearer = {"Authorization": f"Bearer {alice}"}

    assert "different tokens" in refused(url, bob, "subprotocol", additional_headers=bearer)
    assert "different tokens" in refused(url, alice, "subprotocol",
                                         additional_headers={"Authorization": f"Bearer {bob}"})
    assert "mobillm.v1" in refused(url, subprotocols=[TOKEN_SUBPROTOCOL + alice])  # a token alone is no protocol
    assert "one" in refused(url, subprotocols=[SUBPROTOCOL, TOKEN_SUBPROTOCOL + alice, TOKEN_SUBPROTOCOL + bob])
    assert "empty" in refused(url, subprotocols=[SUBPROTOCOL, TOKEN_SUBPROTOCOL])
    assert "no token" in refused(url, subprotocols=[SUBPROTOCOL, "mobillm.tokenx"])
    assert decoded == []

    # The same token twice is one token; a Basic header (the status page's cached login) is no job token.
    basic = {"Authorization": "Basic " + base64.b64encode(f"x:{bob}".encode()).decode()}
    for header in (bearer, basic):
        headers = asyncio.run(_handshake(url, alice, "subprotocol", additional_headers=header))
        assert headers.get_all("Sec-WebSocket-Protocol") == [SUBPROTOCOL]
    # Other subprotocols offered beside ours do not change the answer; a header-only device gets none.
    headers = asyncio.run(_handshake(url, additional_headers=bearer, subprotocols=["chat", SUBPROTOCOL]))
    assert headers.get_all("Sec-WebSocket-Protocol") == [SUBPROTOCOL]
    assert "Sec-WebSocket-Protocol" not in asyncio.run(_handshake(url, alice, "header"))


def test_without_auth_the_subprotocol_is_still_answered_and_the_token_ignored(tmp_path):
    url = f"ws://127.0.0.1:{ThreadServer(SessionManager(tmp_path / 'jobs')).port}/jobs/alice"
    assert asyncio.run(_handshake(url, "anything", "subprotocol"))["Sec-WebSocket-Protocol"] == SUBPROTOCOL
    assert "Sec-WebSocket-Protocol" not in asyncio.run(_handshake(url))


def check(port: int, path: str, authorization: str | None = None) -> tuple[int, dict, dict[str, str]]:
    """(status, JSON body, headers) of ``GET path`` with this ``Authorization`` header, as a page's fetch sends it."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if authorization is not None:
        request.add_header("Authorization", authorization)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read()), dict(response.headers)
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read()), dict(err.headers)


def test_a_page_checks_its_token_over_http_and_reads_what_is_wrong(tmp_path):
    tokens = TokenStore(tmp_path / "jobs")
    alice, bob = tokens.create("alice"), tokens.create("bob")
    server = ThreadServer(SessionManager(tmp_path / "jobs"), tokens=tokens)  # no --status: the check is always there
    status, body, headers = check(server.port, "/jobs/alice/auth", f"Bearer {alice}")
    assert (status, body) == (200, {"ok": True, "job": "alice"})
    assert headers["Content-Type"] == "application/json" and headers["Cache-Control"] == "no-store"
    assert "Access-Control-Allow-Origin" not in headers  # same origin only: another site's page cannot read it

    basic = "Basic " + base64.b64encode(f"x:{alice}".encode()).decode()
    for path, authorization, reason in (
        ("/jobs/alice/auth", None, "no_token"),
        ("/jobs/alice/auth", f"Bearer {bob}", "invalid_token"),  # another job's token...
        ("/jobs/nobody/auth", f"Bearer {alice}", "invalid_token"),  # ...reads the same as a job that is not there
        ("/jobs/alice/auth", "Bearer forged", "invalid_token"),
        ("/jobs/alice/auth", basic, "malformed"),
        ("/jobs/alice/auth", "Bearer ", "malformed"),
        (f"/jobs/alice/auth?token={alice}", None, "token_in_url"),
        (f"/jobs/alice/auth?token={alice}", f"Bearer {alice}", "token_in_url"),
    ):
        status, body, headers = check(server.port, path, authorization)
        assert status == 401 and body["ok"] is False and body["error"] == reason, (path, authorization, body)
        assert body["job"] == path.split("/")[2] and alice not in body["message"] and bob not in body["message"]
        assert headers["WWW-Authenticate"].startswith("Bearer")  # not Basic: no login dialog in the browser
    status, body, _ = check(server.port, "/jobs/.hidden/auth", f"Bearer {alice}")
    assert status == 400 and body["error"] == "bad_job"
    # Another site's page: its preflight gets no CORS approval, so its fetch never sends the token.
    preflight = urllib.request.Request(f"http://127.0.0.1:{server.port}/jobs/alice/auth", method="OPTIONS", headers={
        "Origin": "https://elsewhere.example", "Access-Control-Request-Headers": "authorization"})
    with pytest.raises(urllib.error.HTTPError) as answer:
        urllib.request.urlopen(preflight, timeout=30)
    assert answer.value.code == 401 and "Access-Control-Allow-Origin" not in answer.value.headers
    # A WebSocket upgrade on the check's path is no check and opens nothing.
    assert "connect to /jobs/NAME" in refused(f"ws://127.0.0.1:{server.port}/jobs/alice/auth", alice)
    # Without authentication every token, or none, is fine.
    open_port = ThreadServer(SessionManager(tmp_path / "open")).port
    assert check(open_port, "/jobs/alice/auth")[:2] == (200, {"ok": True, "job": "alice"})


def test_the_python_device_runs_its_job_with_its_token_and_not_with_another(toy_task, tmp_path):
    tokens = TokenStore(tmp_path / "jobs")
    alice, bob = tokens.create("alice"), tokens.create("bob")
    base = f"ws://127.0.0.1:{ThreadServer(SessionManager(tmp_path / 'jobs'), window=2, tokens=tokens).port}"
    model_dir, data_dir = toy_task
    hello, backbone, codec, batcher, data = device_setup(model_dir, data_dir)
    run = dict(batch_size=8, seed=0, pivot=True)
    frame, _ = asyncio.run(stream(base, hello.model_copy(update={"job": "alice"}), backbone, codec, batcher, data.train[:16],
                                  data.validation[:8], token=alice, **run))
    assert frame.header.step == 2
    with pytest.raises(ServerRefused, match="auth.*401"):
        asyncio.run(stream(base, hello.model_copy(update={"job": "alice"}), backbone, codec, batcher, data.train[:16],
                           data.validation[:8], token=bob, **run))


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a test certificate")
def test_a_job_runs_over_tls_with_a_self_signed_certificate(toy_task, tmp_path):
    cert, key = self_signed(tmp_path)
    tls = tls_context(cert, key)
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

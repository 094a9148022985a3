"""The server's status page, /status.json and Prometheus /metrics (issue 7: observable server)."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch
from helpers import slow_side_training
from prometheus_client.parser import text_string_to_metric_families
from servers import ThreadServer, device_setup, hello_then
from typer.testing import CliRunner
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from mobillm.cli import app
from mobillm.device.client import stream
from mobillm.metrics import Curve
from mobillm.server.auth import TokenStore
from mobillm.server.endpoints import STATUS_PATHS
from mobillm.server.manager import SessionManager
from mobillm.train_config import TrainConfig
from mobillm.wire.messages import Batch, Done, GetSideNet, encode_message

CHROMIUM = "/usr/bin/chromium"
SCREENSHOTS = Path(__file__).resolve().parents[1] / "results" / "status"


def get(port: int, path: str, authorization: str | None = None) -> tuple[int, dict[str, str], bytes]:
    """(status code, headers, body) of a plain HTTP GET on the server's port."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if authorization:
        request.add_header("Authorization", authorization)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def status_json(port: int, authorization: str | None = None) -> dict:
    code, _, body = get(port, "/status.json", authorization)
    assert code == 200, body
    return json.loads(body)


def metrics(port: int, authorization: str | None = None) -> dict[tuple[str, tuple], float]:
    """Every sample of /metrics as {(name, sorted labels): value}."""
    code, headers, body = get(port, "/metrics", authorization)
    assert code == 200 and headers["Content-Type"].startswith("text/plain; version=")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body.decode()) for s in family.samples}


def run_device(port: int, hello, backbone, codec, batcher, data, **kwargs):
    return asyncio.run(stream(f"ws://127.0.0.1:{port}", hello, backbone, codec, batcher, data.train, data.validation,
                              batch_size=8, seed=0, pivot=True, **kwargs))


def test_status_json_and_metrics_count_what_the_device_sent(toy_task, tmp_path):
    model_dir, data_dir = toy_task
    manager = SessionManager(tmp_path / "jobs")
    server = ThreadServer(manager, window=4, status=True)
    hello, backbone, codec, batcher, data = device_setup(model_dir, data_dir, max_train=64)
    hello = hello.model_copy(update={"train_config": TrainConfig(method="side", epochs=2, batch_size=8, patience=5)})
    eval_batches, train_batches = len(data.validation) // 8, 64 // 8

    during = []

    def on_sent(stats, samples):  # the first training batch: the session is open, every eval batch is in
        if stats.batches_sent == eval_batches + 1:
            during.append((status_json(server.port), metrics(server.port)))

    frame, stats = run_device(server.port, hello, backbone, codec, batcher, data, on_sent=on_sent)
    (live, live_metrics), = during
    assert live["sessions"] == 1 and live_metrics[("mobillm_sessions", ())] == 1
    (job,) = live["jobs"]
    assert job["job"] == hello.job and job["sessions"] == 1 and job["state"] in ("waiting", "training")
    assert job["samples_received"]["eval"] == len(data.validation)

    status = status_json(server.port)
    (job,) = status["jobs"]
    assert status["sessions"] == 0 and job["sessions"] == 0 and job["state"] == "finished"
    assert job["batches_received"] == stats.batches_sent == eval_batches + train_batches
    assert job["samples_received"] == {"train": 64, "eval": len(data.validation)}
    assert job["samples_trained"] == 2 * 64 and job["step"] == frame.header.step == 2 * train_batches
    assert job["epoch"] == 2.0 and job["epochs"] == 2
    assert job["bytes_received"] == job["cache_disk_bytes"] == stats.bytes_sent
    assert sum(job["train_step_seconds"]["counts"]) == 2 * train_batches
    # The curves are the job's metrics.jsonl, followed in memory: every step's loss, a validation per epoch.
    records = [json.loads(line) for line in (tmp_path / "jobs" / hello.job / "metrics.jsonl").read_text().splitlines()]
    assert job["curves"]["loss"] == [[r["step"], r["loss"]] for r in records if "loss" in r]
    assert [step for step, _ in job["curves"]["loss"]] == list(range(1, 2 * train_batches + 1))
    assert job["last_loss"] == job["curves"]["loss"][-1][1]
    assert [step for step, _ in job["curves"]["val_accuracy"]] == [0, train_batches, 2 * train_batches]
    # ... and the side network the device got back is the best of them (fit keeps the best weights).
    assert max(v for _, v in job["curves"]["val_accuracy"]) == pytest.approx(frame.header.val_accuracy)

    m = metrics(server.port)
    assert m[("mobillm_batches_received_total", (("split", "train"),))] == train_batches
    assert m[("mobillm_batches_received_total", (("split", "eval"),))] == eval_batches
    # Every byte the device sent: its batches plus the Hello, the Done and the GetSideNet.
    others = [hello.model_copy(update={"resume": False}), Done(epoch=0), GetSideNet()]
    assert m[("mobillm_received_bytes_total", ())] == stats.bytes_sent + sum(len(encode_message(x)) for x in others)
    assert m[("mobillm_ack_seconds_count", ())] == stats.batches_sent
    assert m[("mobillm_train_step_seconds_count", ())] == 2 * train_batches
    assert m[("mobillm_train_step_seconds_bucket", (("le", "+Inf"),))] == 2 * train_batches
    assert m[("mobillm_train_step_seconds_sum", ())] == pytest.approx(job["train_step_seconds"]["total_seconds"])
    assert m[("mobillm_cache_bytes", (("tier", "disk"),))] == stats.bytes_sent
    assert m[("mobillm_jobs", (("state", "finished"),))] == 1 and m[("mobillm_sessions", ())] == 0
    assert not any(v for (name, _), v in m.items() if name == "mobillm_errors_total")

    # A text frame before any Hello: counted, and the server's last error (no job yet).
    async def text_frame():
        async with connect(f"ws://127.0.0.1:{server.port}", compression=None) as ws:
            await ws.send("hello?")
            return await ws.recv()

    asyncio.run(text_frame())
    assert metrics(server.port)[("mobillm_errors_total", (("code", "bad_frame"),))] == 1
    status = status_json(server.port)
    assert status["last_error"]["code"] == "bad_frame" and status["last_error"]["job"] is None
    assert status["jobs"][0]["last_error"] is None

    # A batch with labels out of range on a session attached to the job: the job's last error, and still a
    # batch received.
    batch = batcher.encode(data.train[:8], list(range(8)))
    taps = backbone(batch.input_ids, batch.attention_mask, batch.last_index, codec.encode)
    bad = Batch.tensors(taps, sample_ids=batch.sample_ids, labels=torch.full((8,), 5))
    errors, close = asyncio.run(hello_then(f"ws://127.0.0.1:{server.port}", hello.model_copy(update={"resume": True}),
                                            [encode_message(Batch(seq=stats.batches_sent, split="train", epoch=0), bad)]))
    assert [e.code for e in errors] == ["bad_batch"] and close == 1002
    m = metrics(server.port)
    assert m[("mobillm_errors_total", (("code", "bad_batch"),))] == 1
    assert m[("mobillm_batches_received_total", (("split", "train"),))] == train_batches + 1
    (job,) = status_json(server.port)["jobs"]
    assert job["last_error"]["code"] == "bad_batch" and job["last_error"]["job"] == hello.job
    assert "labels must be" in job["last_error"]["message"]
    assert job["batches_received"] == stats.batches_sent  # the refused batch was not stored


def test_the_status_page_needs_the_status_token_and_a_job_token_does_not_open_it(tmp_path):
    tokens = TokenStore(tmp_path / "jobs")
    job_token, status_token = tokens.create("alice"), tokens.create_status()
    assert tokens.verify_status(status_token) and not tokens.verify_status(job_token)
    assert not tokens.verify("alice", status_token)
    server = ThreadServer(SessionManager(tmp_path / "jobs"), tokens=tokens, status=True)
    basic = "Basic " + base64.b64encode(f"anyone:{status_token}".encode()).decode()
    for path in sorted(STATUS_PATHS):
        for refused in (None, f"Bearer {job_token}", f"Bearer {status_token}x", "Basic !!"):
            code, headers, body = get(server.port, path, refused)
            assert code == 401 and headers["WWW-Authenticate"].startswith("Basic ") and b"jobs" not in body
        for accepted in (f"Bearer {status_token}", basic):
            code, headers, _ = get(server.port, path, accepted)
            assert code == 200 and "default-src 'none'" in headers["Content-Security-Policy"]
    assert status_json(server.port, basic)["jobs"] == []

    # The status token opens no job; a refused WebSocket handshake is counted as an auth error.
    async def handshake(token: str) -> None:
        async with connect(f"ws://127.0.0.1:{server.port}/jobs/alice", compression=None,
                           additional_headers={"Authorization": f"Bearer {token}"}):
            pass

    with pytest.raises(InvalidStatus, match="401"):
        asyncio.run(handshake(status_token))
    asyncio.run(handshake(job_token))
    assert metrics(server.port, basic)[("mobillm_errors_total", (("code", "auth"),))] == 1
    assert status_json(server.port, basic)["last_error"]["message"] == "invalid token for job alice"

    # Without --status nothing is served, whatever the token.
    quiet = ThreadServer(SessionManager(tmp_path / "jobs"), tokens=tokens)
    for path in ("/status", "/status.json", "/metrics"):
        assert get(quiet.port, path, basic)[0] == 401
    assert get(ThreadServer(SessionManager(tmp_path / "open")).port, "/status.json")[0] == 426  # upgrade required


def test_a_websocket_upgrade_on_a_status_path_still_opens_a_session(tmp_path):
    server = ThreadServer(SessionManager(tmp_path / "jobs"), status=True)  # no authentication: any path is a session

    async def opened() -> int:
        async with connect(f"ws://127.0.0.1:{server.port}/status.json", compression=None) as ws:
            return ws.response.status_code

    assert asyncio.run(opened()) == 101
    assert get(server.port, "/status.json")[0] == 200


def test_serve_with_status_and_auth_needs_the_status_token(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["serve", "--status", "--port", "0", "--jobs-dir", str(tmp_path)])
    assert result.exit_code == 2 and "mobillm token create --status" in " ".join(result.output.split())  # rich wraps
    result = runner.invoke(app, ["token", "create", "--status", "--jobs-dir", str(tmp_path)])
    assert result.exit_code == 0 and TokenStore(tmp_path).verify_status(result.output.strip())
    for both_or_neither in (["--status", "--job", "a"], []):
        result = runner.invoke(app, ["token", "create", "--jobs-dir", str(tmp_path), *both_or_neither])
        assert result.exit_code == 2 and "either --job NAME (a job's token) or --status" in " ".join(result.output.split())


def test_a_curve_keeps_an_even_sample_in_fixed_memory():
    curve = Curve(max_points=10)
    for step in range(1, 101):
        curve.add(step, float(step))
    assert curve.stride == 16 and [s for s, _ in curve.points] == [16, 32, 48, 64, 80, 96]
    for step in range(50, 101):  # a resumed job does steps 50.. again: they replace the old ones
        curve.add(step, -1.0)
    assert curve.points == [(16, 16.0), (32, 32.0), (48, 48.0), (64, -1.0), (80, -1.0), (96, -1.0)]


def test_the_status_page_renders_a_live_job_in_chromium(toy_task, tmp_path, monkeypatch):
    """The real page in Debian's chromium: it starts empty, shows the job while it trains (polling
    status.json, no reload), and ends with the job's counts and both curves drawn, under its
    Content-Security-Policy."""
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")

    slow_side_training(monkeypatch, 0.1)  # 36 steps of 0.1 s: the page's 2-second polls see the job training
    model_dir, data_dir = toy_task
    tokens = TokenStore(tmp_path / "jobs")
    status_token, job_token = tokens.create_status(), tokens.create("browser-demo")
    server = ThreadServer(SessionManager(tmp_path / "jobs"), window=4, tokens=tokens, status=True)
    hello, backbone, codec, batcher, data = device_setup(model_dir, data_dir, max_train=96)
    config = TrainConfig(method="side", epochs=3, batch_size=8, patience=5)
    hello = hello.model_copy(update={"job": "browser-demo", "train_config": config})
    steps = 3 * 96 // 8

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
        ])
        try:
            context = browser.new_context(http_credentials={"username": "operator", "password": status_token},
                                          viewport={"width": 1100, "height": 800})
            page = context.new_page()
            problems: list[str] = []
            page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
            page.on("pageerror", lambda err: problems.append(str(err)))
            page.goto(f"http://127.0.0.1:{server.port}/status")
            sync_api.expect(page.locator("#server")).to_contain_text("sessions 0 / 64")  # the first poll answered
            assert page.text_content("#jobs") == "no jobs yet"

            result: list = []
            device = threading.Thread(target=lambda: result.append(
                run_device(server.port, hello, backbone, codec, batcher, data, token=job_token)))
            device.start()
            card = 'section.job[data-job="browser-demo"]'

            def field(name: str) -> str:
                return page.text_content(f'{card} dd[data-field="{name}"]')

            page.wait_for_selector(f"{card} .state-training", timeout=60_000)
            assert field("sessions") == "1"
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOTS / "status_page_training.png"), full_page=True)
            device.join(timeout=120)
            assert result, "the device run failed"
            page.wait_for_selector(f"{card} .state-finished", timeout=30_000)
            assert field("samples received") == f"train 96 · eval {len(data.validation)}"
            assert field("samples trained") == f"{3 * 96}"
            assert field("step") == f"{steps} / {steps}"
            assert field("last error") == "—"
            loss = page.locator(f'{card} svg.chart polyline[data-series="train"]')
            assert loss.get_attribute("data-points") == str(steps)
            assert len(loss.get_attribute("points").split()) == steps
            accuracy = page.locator(f'{card} figure:has-text("accuracy") polyline')
            assert accuracy.get_attribute("data-points") == "4"  # zero-shot + one validation per epoch
            assert page.locator(f"{card} figure:has-text('accuracy') circle").count() == 4
            assert problems == []  # no script error, nothing blocked by the Content-Security-Policy
            shot = SCREENSHOTS / "status_page.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
        finally:
            browser.close()


def test_bearer_token_reads_bearer_and_only_optionally_basic():
    from mobillm.server.auth import bearer_token

    basic = "Basic " + base64.b64encode(b"anyone:s3cret").decode()
    assert bearer_token("Bearer  abc ") == "abc" and bearer_token("bearer abc") == "abc"
    assert bearer_token(None) is None and bearer_token("") is None and bearer_token("Token abc") is None
    assert bearer_token(basic) is None  # a job's handshake takes Bearer only
    assert bearer_token(basic, basic=True) == "s3cret"
    assert bearer_token("Basic !!", basic=True) is None

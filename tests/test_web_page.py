"""The device page (``web/page/``) in Debian's Chromium: a whole job from the page on a tiny-model bundle
against a real server — the token checked first (a wrong one is refused with what to do, before any
socket), the files picked in the page, the job run by the web device's modules — its test predictions equal
to the Python bundle runtime's on the side network it downloaded, no text and no token id on the wire, then a
second visit that downloads nothing and classifies offline with the model the browser kept; a tab closed mid-job
and opened again that resumes the job with nothing lost (a changed file refused); and a job over TLS from a
non-local host name, where the page is cross-origin isolated. The screenshot of the page after the job goes to the
test's tmp dir (to docs/web-device.png with MOBILLM_SCREENSHOT=1: the tiny model's page; the README's picture is a
SmolLM2 job's, BENCHMARKS §20).

The server runs on a thread of this process with the site that `mobillm serve --web` serves (so the capture
sees every message at its protocol layer).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import ssl
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file
from servers import ThreadServer
from test_web_device import BATCH, MARGIN, _secret_task, _template
from test_wire_capture import Capture, leaks

from mobillm.bench.web import BROWSER_ARGS, CHROMIUM
from mobillm.data import load_dataset
from mobillm.data.templates import default_template
from mobillm.recipes.bundle_infer import BundleInference
from mobillm.recipes.job_bundle import bundle_files
from mobillm.server.auth import TokenStore
from mobillm.server.manager import SessionManager
from mobillm.server.web import DeviceSite, ServedBundle, WebFiles

SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "web-device.png"
HOST = "phone.test"  # a name that is not localhost: over plain HTTP, no secure context
ARGS = [*BROWSER_ARGS, f"--host-resolver-rules=MAP {HOST} 127.0.0.1"]
#: a phone's four cores, whatever this machine has: the page runs two WASM threads, as on a phone (and every job
#: whose side networks are compared taps on the same number of threads)
PHONE_CORES = "Object.defineProperty(Navigator.prototype, 'hardwareConcurrency', {get: () => 4})"


@pytest.fixture(scope="module")
def page_server(tmp_path_factory):
    """A thread server with the device site (`mobillm serve --web`'s) on the tiny bundle, every WebSocket
    message captured."""
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"{CHROMIUM} is not installed (make browser)")
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")
    root = tmp_path_factory.mktemp("web-page")
    _, bundle_dir, data_dir, texts = _secret_task(root, "llama")
    template = json.loads(_template(bundle_dir, root / "template.json", "nf4").read_text())
    site = DeviceSite(WebFiles.checkout(), ServedBundle(bundle_dir, bundle_files(bundle_dir), template))
    monkeypatch = pytest.MonkeyPatch()
    capture = Capture(monkeypatch)
    tokens = TokenStore(root / "jobs")
    manager = SessionManager(root / "jobs")
    server = ThreadServer(manager, window=4, tokens=tokens, web=site)
    yield dict(root=root, bundle_base=site.bundle_base, bundle_dir=bundle_dir, data_dir=data_dir, texts=texts,
               template=template, tokens=tokens, manager=manager, server=server, capture=capture)
    monkeypatch.undo()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    """A self-signed certificate for HOST (openssl's), its key, and the base64 SHA-256 of its public key, which
    Chromium is told to trust; None without openssl."""
    if shutil.which("openssl") is None:
        return None
    root = tmp_path_factory.mktemp("tls")
    cert, key = root / "cert.pem", root / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", f"/CN={HOST}",
                    "-addext", f"subjectAltName=DNS:{HOST}"], check=True, capture_output=True)
    public = subprocess.run(["openssl", "x509", "-in", str(cert), "-noout", "-pubkey"], check=True,
                            capture_output=True, text=True).stdout
    spki = base64.b64decode("".join(line for line in public.splitlines() if not line.startswith("-----")))
    return dict(cert=cert, key=key, spki=base64.b64encode(hashlib.sha256(spki).digest()).decode())


@pytest.fixture(scope="module")
def browser(page_server, certificate):
    from playwright.sync_api import sync_playwright

    trust = [f"--ignore-certificate-errors-spki-list={certificate['spki']}"] if certificate else []
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS + trust)
        yield chromium
        chromium.close()


def _open(context, port: int, fragment: str, host: str = "127.0.0.1", scheme: str = "http"):
    """The device page opened from a link; every script error and blocked resource is collected."""
    page = context.new_page()
    problems: list[str] = []
    page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda err: problems.append(str(err)))
    page.goto(f"{scheme}://{host}:{port}/device#{fragment}")
    page.wait_for_selector('#app[data-state="ready"]', timeout=30_000)
    return page, problems


def _pick(page, data_dir: Path) -> None:
    page.check("#mode-split")
    for role in ("train", "dev", "test"):
        page.set_input_files(f"#{role}-file", str(data_dir / f"{role}.tsv"))
    page.wait_for_function("document.querySelector('#text-column').value === 'sentence'")
    assert page.input_value("#label-column") == "label"


def _side_tensors(page) -> tuple[dict, dict[str, np.ndarray]]:
    """The config and tensors of the side network the page downloaded (`window.mobillmResult`)."""
    side = page.evaluate("""() => {
        const { config, tensors } = window.mobillmResult.sideNet;
        return { config, tensors: Object.fromEntries(Object.entries(tensors).map(
            ([name, t]) => [name, { shape: t.shape, data: Array.from(t.data) }])) };
    }""")
    return side["config"], {k: np.array(t["data"], np.float32).reshape(t["shape"]) for k, t in side["tensors"].items()}


def _side_network(page, out: Path) -> Path:
    """The side network the page downloaded, saved as the Python device saves one."""
    config, tensors = _side_tensors(page)
    out.mkdir()
    (out / "side_config.json").write_text(json.dumps(config))
    save_file(tensors, str(out / "side_network.safetensors"))
    return out


def _kept_job(page, job: str) -> dict | None:
    """What the page's IndexedDB keeps of the unfinished job `job` (browser/job_store.mjs), or None."""
    return page.evaluate("""async (job) => {
        const { keptJob } = await import('/device/src/browser/job_store.mjs');
        return keptJob(job);
    }""", job)


def test_a_wrong_token_is_refused_before_any_socket(page_server, browser):
    port, tokens = page_server["server"].port, page_server["tokens"]
    tokens.create("refused")
    context = browser.new_context()
    try:
        page, _ = _open(context, port, "job=refused&token=not-the-token")
        assert page.evaluate("location.hash") == ""  # the token is out of the address bar
        assert page.input_value("#token") == "not-the-token"
        sockets: list[str] = []
        page.on("websocket", lambda ws: sockets.append(ws.url))
        _pick(page, page_server["data_dir"])
        page.click("#start")
        page.wait_for_selector('#app[data-state="failed"]')
        assert 'refused this token for job "refused"' in page.text_content("#error")
        assert "mobillm token create --job refused --link URL" in page.text_content("#error")
        assert sockets == []
    finally:
        context.close()


def test_plain_http_from_a_lan_address_says_what_to_do(page_server, browser):
    """A phone reaching the server by a name over plain HTTP: no secure context, so one thread and no kept
    model, and the page says to serve over TLS."""
    context = browser.new_context()
    try:
        page, problems = _open(context, page_server["server"].port, "job=a&token=b", host="phone.test")
        assert page.evaluate("isSecureContext") is False
        assert page.text_content("#backend") == "WASM, single thread"
        warning = page.text_content("#warning")
        assert page.is_visible("#warning") and warning.startswith(f"http://phone.test:{page_server['server'].port} ")
        assert "--certfile CERT.pem --keyfile KEY.pem" in warning and "https://" in warning
        # Chromium's own note that COOP needs a secure context; nothing else
        assert [p for p in problems if "Cross-Origin-Opener-Policy header has been ignored" not in p] == []
    finally:
        context.close()


@pytest.fixture(scope="module")
def job_page(page_server, browser):
    """One whole job from the page at a phone's size, from its link to the classify box."""
    token = page_server["tokens"].create("phone")
    context = browser.new_context(viewport={"width": 412, "height": 915}, device_scale_factor=1)
    context.add_init_script(PHONE_CORES)
    page, problems = _open(context, page_server["server"].port, f"job=phone&token={token}")
    isolated, backend = page.evaluate("crossOriginIsolated"), page.text_content("#backend")
    _pick(page, page_server["data_dir"])
    page.click("#start")
    page.wait_for_selector('#app[data-state="done"]', timeout=60_000)
    yield dict(page=page, context=context, problems=problems, isolated=isolated, backend=backend,
               summary=page.evaluate("window.mobillmResult.summary"),
               predictions=page.evaluate("window.mobillmResult.predictions"),
               side=_side_tensors(page)[1],
               data=load_dataset(str(page_server["data_dir"]), seed=0, max_eval_samples=16))
    context.close()


def _field(page, section: str, name: str) -> str:
    return page.text_content(f'#{section} dd[data-field="{name}"]')


def test_a_whole_job_runs_from_the_page_on_wasm_threads(page_server, job_page):
    page, summary = job_page["page"], job_page["summary"]
    assert job_page["problems"] == []  # no script error, nothing blocked by the site's CSP
    assert job_page["isolated"] is True  # localhost is a secure context; COOP/COEP isolate it
    assert job_page["backend"] == "WASM, 2 threads"
    assert page.workers, "ONNX Runtime started no WASM thread"
    assert summary["n_train"] == 64 and summary["n_validation"] == 16 and summary["n_test"] == 24
    assert summary["server_steps"] == 2 * 64 // BATCH
    assert summary["eval_agreement"] >= 0.9  # the server's torch scoring of the same bytes
    assert [len(seqs) for seqs in page_server["manager"].jobs["phone"].feed.train_seqs] == [64 // BATCH]
    assert _field(page, "progress", "samples") == f"{16 + 64} / {16 + 64}"
    assert _field(page, "progress", "step") == str(summary["server_steps"])
    # the last loss an ack carried (a short job's acks may all come before the server's first step)
    assert re.fullmatch(r"—|\d+\.\d{4}", _field(page, "progress", "loss"))
    assert _field(page, "progress", "download").endswith("downloaded, kept on this device")
    assert _field(page, "result", "tuned") == f"{100 * summary['test']['accuracy']:.1f}%"
    assert summary["batches_skipped"] == 0 and page.is_hidden("#resumed")
    assert _kept_job(page, "phone") is None  # the job's record was kept while it ran, and removed at its end


def _python_test_logits(page_server, job_page, tmp_path) -> tuple[BundleInference, np.ndarray]:
    """The Python bundle runtime's test logits with the side network the page downloaded."""
    side = _side_network(job_page["page"], tmp_path / "side")
    inference = BundleInference.load(page_server["bundle_dir"], side, "classification")
    classifier = inference.classifier(max_length=128)
    test = job_page["data"].test
    want = []
    for start in range(0, len(test), BATCH):
        tokens, _, encoded = classifier.tap([e.text for e in test[start:start + BATCH]])
        want.append(classifier.side_logits(inference.side, encoded, tokens))
    return inference, np.concatenate(want)


def test_predictions_equal_the_python_bundle_runtime(page_server, job_page, tmp_path):
    got, test = job_page["predictions"], job_page["data"].test
    _, want = _python_test_logits(page_server, job_page, tmp_path)
    assert got["sample_ids"] == list(range(len(test))) and got["labels"] == [e.label for e in test]
    np.testing.assert_allclose(np.array(got["logits"], np.float32), want, atol=1e-4, rtol=0)
    clear = np.abs(want[:, 1] - want[:, 0]) > MARGIN
    assert clear.sum() >= len(want) - 2
    assert (np.array(got["predictions"])[clear] == want.argmax(-1)[clear]).all()


def test_no_text_and_no_token_ids_leave_the_page(page_server, job_page, tmp_path):
    inference, _ = _python_test_logits(page_server, job_page, tmp_path)
    prompt = default_template(job_page["data"].label_names)
    texts = page_server["texts"]
    prompt_ids = inference.bundle.tokenizer.prompt_ids(prompt.prefix, texts, prompt.suffix, 128)
    capture = page_server["capture"]
    assert capture.received and capture.sent
    assert leaks(capture.received + capture.sent, texts, prompt_ids) == []


def _classify(page, sentence: str) -> str:
    """The label the page's classify box gives `sentence`; fails with the page's message when it cannot."""
    page.fill("#sentence", sentence)
    page.click("#classify-form button")
    page.wait_for_function("(s) => document.querySelector('#prediction').dataset.sentence === s"
                           " || !document.querySelector('#error').hidden", arg=sentence)
    assert page.is_hidden("#error"), page.text_content("#error")
    return page.get_attribute("#prediction", "data-label")


def _clearest(job_page) -> tuple[str, str]:
    """The test sentence the page's side network is surest of, and its predicted label."""
    logits = np.array(job_page["predictions"]["logits"])
    i = int(np.argmax(np.abs(logits[:, 1] - logits[:, 0])))
    data, predictions = job_page["data"], job_page["predictions"]["predictions"]
    return data.test[i].text, data.label_names[predictions[i]]


def test_the_page_classifies_a_typed_sentence_as_the_job_scored_it(job_page, tmp_path):
    page = job_page["page"]
    sentence, label = _clearest(job_page)
    assert _classify(page, sentence) == label
    assert page.text_content("#prediction").startswith(f"{label}: ")
    top, bottom = page.evaluate("""() => [
        document.querySelector('#progress').getBoundingClientRect().top + scrollY - 16,
        document.querySelector('#classify').getBoundingClientRect().bottom + scrollY + 16]""")
    # the README's picture only when asked for (MOBILLM_SCREENSHOT=1): a test run does not rewrite a tracked file
    shot = SCREENSHOT if os.environ.get("MOBILLM_SCREENSHOT") == "1" else tmp_path / SCREENSHOT.name
    clip = {"x": 0, "y": top, "width": 412, "height": bottom - top}
    page.screenshot(path=str(shot), full_page=True, clip=clip)
    assert shot.stat().st_size > 20_000


def test_a_second_visit_downloads_nothing_and_classifies_offline(page_server, job_page):
    page, context = job_page["page"], job_page["context"]
    sentence, label = _clearest(job_page)
    bundle_requests: list[str] = []
    base = page_server["bundle_base"]
    page.on("request", lambda r: bundle_requests.append(r.url) if base in r.url else None)
    page.reload()
    page.wait_for_selector("#classify:not([hidden])", timeout=30_000)
    assert 'job "phone"' in page.text_content("#model-info")
    context.set_offline(True)  # the kept bundle's label rows and norm graph are read from Cache Storage now
    assert _classify(page, sentence) == label
    assert bundle_requests == []
    assert job_page["problems"] == []


#: the page's WebSocket passes its first `sends` messages on and swallows the rest, as a network that stalls: the
#: page then waits for acks that never come (a moment to close the tab in)
STALL = """(sends) => {
    const send = WebSocket.prototype.send;
    let sent = 0;
    WebSocket.prototype.send = function (data) {
        sent += 1;
        if (sent <= sends) send.call(this, data);
    };
}"""


def _wait_for(condition, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_a_tab_closed_mid_job_resumes_when_reopened(page_server, browser, job_page, tmp_path):
    """The tab closed while the server holds 4 of the job's 10 batches, then the link opened again in the same
    browser: the page says it holds the unfinished job (its Hello and digests, none of the text), refuses a changed
    file naming the change, and with the same file resumes — the 6 batches left sent, every batch trained once, and
    the side network equal, to the bit, to the uninterrupted job's (job_page's, on the same data and threads)."""
    name, held = "reopened", 4  # the 2 eval batches and 2 of the 8 training batches
    manager, port, texts = page_server["manager"], page_server["server"].port, page_server["texts"]
    token = page_server["tokens"].create(name)
    context = browser.new_context()
    context.add_init_script(PHONE_CORES)
    try:
        first, problems = _open(context, port, f"job={name}&token={token}")
        first.evaluate(STALL, 1 + held)  # the Hello, then `held` batches
        _pick(first, page_server["data_dir"])
        first.click("#start")
        _wait_for(lambda: name in manager.jobs and manager.jobs[name].samples_received == {"eval": 16, "train": 16},
                  "the server to hold the first batches")
        first.close()  # the tab closed mid-job
        assert problems == []

        second, problems = _open(context, port, f"job={name}&token={token}")
        assert second.is_visible("#saved-job") and f'unfinished job "{name}"' in second.text_content("#saved-job")
        kept = _kept_job(second, name)
        assert kept["record"]["hello"]["job"] == name and kept["record"]["hello"]["token"] is None
        assert not [text for text in texts if text in json.dumps(kept)]  # the data file is never stored
        sockets: list[str] = []
        second.on("websocket", lambda ws: sockets.append(ws.url))

        changed = tmp_path / "changed"
        shutil.copytree(page_server["data_dir"], changed)
        rows = (changed / "train.tsv").read_text().splitlines()
        flipped = [rows[0]] + [f"{text}\t{1 - int(label)}" for text, label in (row.split("\t") for row in rows[1:])]
        (changed / "train.tsv").write_text("\n".join(flipped) + "\n")
        _pick(second, changed)
        second.click("#start")
        second.wait_for_selector('#app[data-state="failed"]')
        error = second.text_content("#error")
        assert "its train examples changed" in error
        assert f"remove this browser's saved job '{name}' to start it afresh" in error
        assert second.is_visible("#forget-job") and sockets == []

        _pick(second, page_server["data_dir"])
        second.click("#start")
        second.wait_for_selector('#app[data-state="done"]', timeout=60_000)
        assert second.text_content("#resumed") == f'Resuming job "{name}": {held} batches already on the server.'
        summary = second.evaluate("window.mobillmResult.summary")
        assert summary["batches_skipped"] == held and summary["batches_sent"] == (16 + 64) // BATCH - held
        assert summary["server_steps"] == 2 * 64 // BATCH
        assert _field(second, "progress", "samples") == f"{16 + 64} / {16 + 64} (32 before)"
        job = manager.jobs[name]
        assert job.feed.eval_seqs == [0, 1] and job.feed.train_seqs == [list(range(2, 10))]
        assert job.samples_trained == 2 * 64  # each training batch once per server epoch
        want, (_, got) = job_page["side"], _side_tensors(second)
        assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in want)
        assert _kept_job(second, name) is None and second.is_hidden("#saved-job")
        assert problems == []
    finally:
        context.close()


def test_over_tls_by_name_the_page_is_isolated_and_runs_a_job(page_server, browser, certificate):
    """`https://phone.test:PORT/device` (a test certificate, the name mapped to 127.0.0.1), as a phone on a LAN
    opens a server run with --certfile/--keyfile: a secure context, cross-origin isolated, WASM threads, no warning,
    and a short job over wss://."""
    if certificate is None:
        pytest.skip("openssl is not installed")
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(certificate["cert"], certificate["key"])
    bundle_dir = page_server["bundle_dir"]
    site = DeviceSite(WebFiles.checkout(), ServedBundle(bundle_dir, bundle_files(bundle_dir), page_server["template"]),
                      tls=True)
    server = ThreadServer(page_server["manager"], window=4, tokens=page_server["tokens"], tls=tls, web=site)
    token = page_server["tokens"].create("tls")
    context = browser.new_context()
    context.add_init_script(PHONE_CORES)
    try:
        page, problems = _open(context, server.port, f"job=tls&token={token}", host=HOST, scheme="https")
        assert page.evaluate("[location.origin, isSecureContext, crossOriginIsolated]") == [
            f"https://{HOST}:{server.port}", True, True]
        assert page.text_content("#backend") == "WASM, 2 threads" and page.is_hidden("#warning")
        sockets: list[str] = []
        page.on("websocket", lambda ws: sockets.append(ws.url))
        _pick(page, page_server["data_dir"])
        page.fill("#max-train", "16")
        page.click("#start")
        page.wait_for_selector('#app[data-state="done"]', timeout=60_000)
        summary = page.evaluate("window.mobillmResult.summary")
        assert summary["n_train"] == 16 and summary["server_steps"] == 2 * 16 // BATCH
        assert sockets == [f"wss://{HOST}:{server.port}/jobs/tls"]
        assert page.workers, "ONNX Runtime started no WASM thread"
        assert problems == []
    finally:
        context.close()

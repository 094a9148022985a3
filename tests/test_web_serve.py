"""`mobillm serve --web`: the device page, its modules, the vendored libraries, config.json and the bundle under
/device, each with its headers; bundle files streamed (HEAD, ranges, ETags) to a client slower than the handshake's
open timeout allows; the bundle exported at start-up only, once per cache; `mobillm token create --link`."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import http.client
import json
import os
import shutil
import socket
import ssl
import subprocess
import time
import tracemalloc
from pathlib import Path

import pytest
from conftest import save_tiny_model
from servers import ThreadServer, self_signed, tls_context
from typer.testing import CliRunner
from websockets.asyncio.client import connect
from websockets.asyncio.server import serve

import mobillm.recipes.job_bundle as job_bundle_module
from mobillm.bundle.config import BundleConfig
from mobillm.cli import app, web_site
from mobillm.recipes.job_bundle import CACHE_ENV, WEB_BUNDLE_WEIGHTS, bundle_files
from mobillm.server.auth import TokenStore
from mobillm.server.download import Download, StaticFile, StreamingConnection, file_download
from mobillm.server.manager import SessionManager
from mobillm.server.web import BUNDLE_CACHE_CONTROL, DeviceSite, ServedBundle, WebFiles

WEB = Path(__file__).resolve().parents[1] / "web"
IMPORT_MAP = '\n{"imports": {"onnxruntime-web": "/device/vendor/onnxruntime-web/ort.wasm.bundle.min.mjs"}}\n'
INDEX = f'<!doctype html><title>t</title><script type="importmap">{IMPORT_MAP}</script>' \
        '<script type="module" src="/device/page.mjs"></script>'
ISOLATION = {"Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp",
             "Cross-Origin-Resource-Policy": "same-origin", "X-Content-Type-Options": "nosniff"}
BIG = 20 << 20  # the throttled download's file: 20 s at 1 MB/s, twice the handshake's open timeout
RATE = 1 << 20  # bytes per second the slow client reads


def fetch(port: int, path: str, method: str = "GET", tls: ssl.SSLContext | None = None,
          **headers: str) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of one request, the path sent exactly as given."""
    conn = (http.client.HTTPSConnection("127.0.0.1", port, context=tls, timeout=60) if tls else
            http.client.HTTPConnection("127.0.0.1", port, timeout=60))
    conn.request(method, path, headers={k.replace("_", "-"): v for k, v in headers.items()})
    response = conn.getresponse()
    body = response.read()
    conn.close()
    return response.status, dict(response.getheaders()), body


def bundle_dir(site: DeviceSite) -> Path:
    """The folder of the bundle ``site`` serves."""
    return site.files[site.bundle_base + "bundle.json"][0].path.parent


def page_files(root: Path) -> WebFiles:
    """The page as the page's own files would be (a fixture: web/page is written elsewhere), with the real modules and
    libraries."""
    page = root / "page"
    (page / "icons").mkdir(parents=True)
    (page / "index.html").write_text(INDEX)
    (page / "page.mjs").write_text("export const page = 1;\n")
    (page / "page.css").write_text("body { margin: 0 }\n")
    (page / "icons" / "icon.svg").write_text("<svg xmlns='http://www.w3.org/2000/svg'/>\n")
    (page / ".hidden").write_text("not served\n")
    return WebFiles(page, WEB / "src", WEB / "node_modules")


@pytest.fixture(scope="module")
def web(tmp_path_factory):
    """A server with --web on a tiny model, its bundle exported into a cache of the test's own; every export counted."""
    root = tmp_path_factory.mktemp("web")
    model = save_tiny_model(root / "tiny")
    files = page_files(root)
    exports = []
    run = subprocess.run

    def counted(command, *args, **kwargs):
        if "export" in command:
            exports.append(command)
        return run(command, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_ENV, str(root / "cache"))
        patch.setattr(job_bundle_module.subprocess, "run", counted)
        patch.setattr(WebFiles, "checkout", classmethod(lambda cls: files))
        site = web_site(str(model), tls=False)
        server = ThreadServer(SessionManager(root / "jobs"), status=True, web=site)
        yield dict(root=root, model=model, files=files, site=site, port=server.port, exports=exports)


def test_every_route_answers_its_file_with_its_headers(web):
    port, site, files = web["port"], web["site"], web["files"]
    bundle = site.bundle_base
    routes = {  # path -> (file, Content-Type, Cache-Control)
        "/device": (files.page / "index.html", "text/html; charset=utf-8", "no-store"),
        "/device/": (files.page / "index.html", "text/html; charset=utf-8", "no-store"),
        "/device/page.mjs": (files.page / "page.mjs", "text/javascript; charset=utf-8", "no-store"),
        "/device/page.css": (files.page / "page.css", "text/css; charset=utf-8", "no-store"),
        "/device/icons/icon.svg": (files.page / "icons" / "icon.svg", "image/svg+xml", "no-store"),
        "/device/src/wire/frame.mjs": (WEB / "src" / "wire" / "frame.mjs", "text/javascript; charset=utf-8", "no-store"),
        "/device/vendor/onnxruntime-web/ort.wasm.bundle.min.mjs": (
            WEB / "node_modules/onnxruntime-web/dist/ort.wasm.bundle.min.mjs", "text/javascript; charset=utf-8",
            "no-cache"),
        "/device/vendor/onnxruntime-web/ort-wasm-simd-threaded.wasm": (
            WEB / "node_modules/onnxruntime-web/dist/ort-wasm-simd-threaded.wasm", "application/wasm", "no-cache"),
        "/device/vendor/tokenizers/tokenizers.mjs": (
            WEB / "node_modules/@huggingface/tokenizers/dist/tokenizers.mjs", "text/javascript; charset=utf-8",
            "no-cache"),
        bundle + "bundle.json": (bundle_dir(site) / "bundle.json", "application/json", BUNDLE_CACHE_CONTROL),
        bundle + "taps.onnx": (bundle_dir(site) / "taps.onnx", "application/octet-stream", BUNDLE_CACHE_CONTROL),
    }
    import_map = base64.b64encode(hashlib.sha256(IMPORT_MAP.encode()).digest()).decode()
    for path, (file, kind, cache) in routes.items():
        status, headers, body = fetch(port, path, Host=f"127.0.0.1:{port}")
        assert status == 200 and body == file.read_bytes(), path
        assert headers["Content-Type"] == kind and headers["Cache-Control"] == cache, path
        assert headers["Content-Length"] == str(file.stat().st_size) and headers["Accept-Ranges"] == "bytes"
        assert headers["ETag"] == f'"{hashlib.sha256(body).hexdigest()[:32]}"'
        assert {k: headers[k] for k in ISOLATION} == ISOLATION, path
        policy = headers["Content-Security-Policy"]
        assert f"script-src 'self' 'sha256-{import_map}' 'wasm-unsafe-eval';" in policy
        assert "worker-src 'self';" in policy and f"connect-src 'self' ws://127.0.0.1:{port};" in policy
        assert "default-src 'none'" in policy and "frame-ancestors 'none'" in policy and "unsafe-inline" not in policy


def test_the_pages_import_map_points_at_served_files_and_is_allowed_by_its_hash(web):
    """web/page/index.html as written: each bare specifier it maps is a file this server serves, and the CSP allows
    its import map by the hash of the map's text."""
    directory = bundle_dir(web["site"])
    checkout = WebFiles.checkout()
    site = DeviceSite(checkout, ServedBundle(directory, bundle_files(directory), {}))
    html = (checkout.page / "index.html").read_text()
    text = html.split('<script type="importmap">', 1)[1].split("</script>", 1)[0]
    targets = json.loads(text)["imports"]
    assert "onnxruntime-web" in targets and all(url in site.files for url in targets.values()), targets
    assert site.script_hashes == [f"'sha256-{base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()}'"]


def test_config_json_is_the_template_mobillm_template_prints_and_the_bundle_files(web):
    status, headers, body = fetch(web["port"], "/device/config.json")
    assert status == 200 and headers["Cache-Control"] == "no-store" and headers["Content-Type"] == "application/json"
    assert {k: headers[k] for k in ISOLATION} == ISOLATION
    config = json.loads(body)
    bundle = web["site"].bundle_base
    printed = CliRunner().invoke(app, ["template", "--bundle", str(bundle_dir(web["site"]))])
    assert printed.exit_code == 0 and config["template"] == json.loads(printed.stdout)  # every default from Python
    assert config["bundle"]["base"] == bundle and bundle.startswith("/device/bundle/")
    files = config["bundle"]["files"]
    assert {"bundle.json", "taps.onnx", "norm.onnx", "lm_head.safetensors", "tokenizer.json"} <= set(files)
    # `--web MODEL` with no format serves the web format: what a phone downloads
    assert BundleConfig.load(bundle_dir(web["site"])).weights == WEB_BUNDLE_WEIGHTS == "web"
    assert "export_request.json" not in files  # the cache's marker is no bundle file
    for name, entry in files.items():
        got = fetch(web["port"], bundle + name, "HEAD")
        assert got[0] == 200 and got[2] == b"" and got[1]["Content-Length"] == str(entry["size"])
        assert got[1]["ETag"] == entry["etag"]


def test_paths_outside_the_served_files_are_refused(web):
    port, bundle = web["port"], web["site"].bundle_base
    for path in ("/device/../pyproject.toml", "/device/%2e%2e/pyproject.toml", "/device/src/../../pyproject.toml",
                 "/device/src/wire/../../../pyproject.toml", "/device/.hidden", "/device/src/wire",
                 "/device/vendor/onnxruntime-web/ort.all.min.mjs",  # a file of the package, not on the list
                 "/device/vendor/onnxruntime-web/../package.json", "/device/vendor/tokenizers/tokenizers.cjs",
                 bundle + "export_request.json", bundle + "../bundle.json", "/device/page.mjs/",
                 "/device/bundle/0123456789abcdef/bundle.json", "/devicex"):
        status, headers, body = fetch(port, path)
        assert status in (401, 404, 426), path  # 404 under /device; elsewhere the handshake's refusal
        if path.startswith("/device/"):
            assert status == 404 and headers["Cache-Control"] == "no-store" and b"[project]" not in body, path
    assert b"reload the page" in fetch(port, "/device/bundle/0123456789abcdef/bundle.json")[2]
    status, headers, _ = fetch(port, "/device/config.json", "POST")
    assert status == 405 and headers["Allow"] == "GET, HEAD"


def test_bundle_files_answer_head_ranges_and_etags(web):
    port, site = web["port"], web["site"]
    path = site.bundle_base + "taps.onnx"
    data = site.files[path][0].path.read_bytes()
    size = len(data)
    status, headers, body = fetch(port, path, "HEAD")
    assert (status, body, headers["Content-Length"], headers["Accept-Ranges"]) == (200, b"", str(size), "bytes")
    etag = headers["ETag"]
    for spec, start, stop in (("bytes=0-99", 0, 100), ("bytes=1000-1999", 1000, 2000), ("bytes=-50", size - 50, size),
                              (f"bytes={size - 10}-", size - 10, size), (f"bytes=5-{size + 100}", 5, size)):
        status, headers, body = fetch(port, path, Range=spec)
        assert status == 206 and body == data[start:stop], spec
        assert headers["Content-Range"] == f"bytes {start}-{stop - 1}/{size}" and headers["Content-Length"] == str(stop - start)
        assert headers["Cache-Control"] == BUNDLE_CACHE_CONTROL and headers["ETag"] == etag
    for spec in (f"bytes={size}-", f"bytes={size + 5}-{size + 9}", "bytes=-0"):
        status, headers, body = fetch(port, path, Range=spec)
        assert (status, headers["Content-Range"], body) == (416, f"bytes */{size}", b""), spec
    for spec in ("bytes=0-1,5-6", "items=0-5", "bytes=9-3"):  # what HTTP lets a server ignore: the whole file
        assert fetch(port, path, Range=spec)[:3:2] == (200, data), spec
    assert fetch(port, path, Range="bytes=0-9", If_Range='"another"')[:3:2] == (200, data)  # changed since: all of it
    assert fetch(port, path, Range="bytes=0-9", If_Range=etag)[:3:2] == (206, data[:10])
    for match in (etag, f'W/{etag}', f'"x", {etag}', "*"):
        status, headers, body = fetch(port, path, If_None_Match=match)
        assert (status, body, headers["ETag"]) == (304, b"", etag), match
        assert headers["Cache-Control"] == BUNDLE_CACHE_CONTROL
    assert fetch(port, path, If_None_Match='"stale"')[0] == 200


def _slow_download(port: int, path: str, rate: int) -> tuple[int, str, float]:
    """Read ``path`` from a raw socket at ``rate`` bytes per second: (body bytes, its sha256, seconds)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)  # before connect: a small window, as a slow phone
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
    started = time.monotonic()
    received, head, digest = 0, b"", hashlib.sha256()
    while b"\r\n\r\n" not in head:
        head += sock.recv(4096)
    head, first = head.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200 "), head
    digest.update(first)
    received = len(first)
    while chunk := sock.recv(16 << 10):
        digest.update(chunk)
        received += len(chunk)
        ahead = received / rate - (time.monotonic() - started)
        if ahead > 0:
            time.sleep(ahead)
    sock.close()
    return received, digest.hexdigest(), time.monotonic() - started


def test_a_client_slower_than_the_open_timeout_downloads_a_big_file_intact_and_the_server_never_holds_it(web, tmp_path):
    """20 MiB at 1 MiB/s: twice websockets' 10 s open timeout, under which a handshake answer is cut off; the server
    streams it from disk (Python's allocations during the download stay far below the file's size)."""
    directory = tmp_path / "bundle"
    shutil.copytree(bundle_dir(web["site"]), directory)
    (directory / "taps.onnx.data").write_bytes(big := os.urandom(BIG))
    template = json.loads(fetch(web["port"], "/device/config.json")[2])["template"]
    site = DeviceSite(web["files"], ServedBundle(directory, ["bundle.json", "taps.onnx.data"], template))
    server = ThreadServer(SessionManager(tmp_path / "jobs"), web=site)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        received, digest, seconds = _slow_download(server.port, site.bundle_base + "taps.onnx.data", RATE)
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert received == BIG and digest == hashlib.sha256(big).hexdigest()
    assert seconds > 2 * StreamingConnection.open_timeout - 2
    assert peak < BIG // 4, f"{peak / 2**20:.1f} MiB allocated while streaming a {BIG >> 20} MiB file"


def test_an_ordinary_handshake_still_has_its_open_timeout_and_a_download_does_not(tmp_path):
    """The connection class alone, with a 0.5 s open timeout: a silent peer is dropped, a slow download is not."""
    blob = bytes(range(256)) * 8192  # 2 MiB

    path = tmp_path / "blob"
    path.write_bytes(blob)
    file = StaticFile.hashed(path, "application/octet-stream")

    def answer(request) -> Download | None:
        return file_download(request, file, []) if request.path == "/blob" else None

    async def main() -> tuple[bytes, float, bytes, str]:
        connection = StreamingConnection.serving(answer, open_timeout=0.5, stall_timeout=5)
        async with serve(lambda ws: ws.wait_closed(), "127.0.0.1", 0, create_connection=connection,
                         open_timeout=None) as server:
            port = server.sockets[0].getsockname()[1]
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            started = time.monotonic()
            silent = await reader.read()  # the server closes a peer that never sends its request
            dropped = time.monotonic() - started
            reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 16)
            writer.write(b"GET /blob HTTP/1.1\r\nHost: x\r\n\r\n")
            data = b""
            while chunk := await reader.read(1 << 16):  # 2 MiB in ~2 s: four times the open timeout
                data += chunk
                await asyncio.sleep(0.06)
            async with connect(f"ws://127.0.0.1:{port}/any") as ws:  # a WebSocket still opens
                opened = ws.protocol.state.name
        return silent, dropped, data, opened

    silent, dropped, data, opened = asyncio.run(main())
    assert silent == b"" and 0.4 < dropped < 3
    assert data.split(b"\r\n\r\n", 1)[1] == blob and opened == "OPEN"


def test_tls_serves_the_page_with_wss_in_its_policy_and_streams_the_bundle(web, tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a test certificate")
    cert, key = self_signed(tmp_path)
    tls = tls_context(cert, key)
    directory = bundle_dir(web["site"])
    template = json.loads(web["site"].config)["template"]
    secure = DeviceSite(web["files"], ServedBundle(directory, bundle_files(directory), template), tls=True)
    server = ThreadServer(SessionManager(tmp_path / "jobs"), tls=tls, web=secure)
    client = ssl.create_default_context(cafile=str(cert))
    status, headers, _ = fetch(server.port, "/device", tls=client, Host=f"phone.example:{server.port}")
    assert status == 200 and f"connect-src 'self' wss://phone.example:{server.port};" in headers["Content-Security-Policy"]
    wasm = WEB / "node_modules/onnxruntime-web/dist/ort-wasm-simd-threaded.wasm"
    status, _, body = fetch(server.port, "/device/vendor/onnxruntime-web/ort-wasm-simd-threaded.wasm", tls=client)
    assert status == 200 and body == wasm.read_bytes()  # 14 MiB over TLS: the close flushes before it closes


def test_the_bundle_is_exported_at_start_up_once_and_never_for_a_request(web, caplog):
    port = web["port"]
    for path in ("/device", "/device/config.json", web["site"].bundle_base + "taps.onnx", "/device/bundle/x/taps.onnx"):
        fetch(port, path)
    assert len(web["exports"]) == 1  # the fixture's start-up, nothing since
    with pytest.MonkeyPatch.context() as patch, caplog.at_level("INFO"):
        patch.setenv(CACHE_ENV, str(web["root"] / "cache"))
        patch.setattr(WebFiles, "checkout", classmethod(lambda cls: web["files"]))
        again = web_site(str(web["model"]), tls=False)  # a second server on the same cache
    assert len(web["exports"]) == 1 and again.bundle_base == web["site"].bundle_base
    assert "device bundle: reusing" in caplog.text


def test_the_status_page_token_check_and_sessions_keep_working_beside_the_site(web):
    port = web["port"]
    assert fetch(port, "/status.json")[0] == 200
    status, _, body = fetch(port, "/jobs/alice/auth")
    assert status == 200 and json.loads(body) == {"ok": True, "job": "alice"}

    async def session() -> str:
        async with connect(f"ws://127.0.0.1:{port}/device") as ws:  # an upgrade on /device is no page request
            return ws.protocol.state.name

    assert asyncio.run(session()) == "OPEN"


def test_serve_web_refuses_a_format_that_is_not_a_bundle_format(tmp_path):
    result = CliRunner().invoke(app, ["serve", "--jobs-dir", str(tmp_path / "jobs"), "--web", "smollm2-135m:nf4"])
    assert result.exit_code == 2 and "--web" in result.output and "int8-smooth" in result.output


def test_token_create_link_prints_the_token_then_a_device_link_with_the_token_in_the_fragment(tmp_path):
    runner = CliRunner()
    jobs = str(tmp_path / "jobs")
    result = runner.invoke(app, ["token", "create", "--job", "alice", "--jobs-dir", jobs,
                                 "--link", "https://192.168.1.20:8765/"])
    assert result.exit_code == 0
    token, link = result.stdout.splitlines()
    assert TokenStore(Path(jobs)).verify("alice", token)
    assert link == f"https://192.168.1.20:8765/device#job=alice&token={token}"
    for bad in ("192.168.1.20:8765", "ftp://host", "https://host/?token=x", "https://host/#x"):
        refused = runner.invoke(app, ["token", "create", "--job", "bob", "--jobs-dir", jobs, "--link", bad])
        assert refused.exit_code == 2 and "--link" in refused.output and refused.stdout.count("\n") <= 1
        assert not (Path(jobs) / "bob" / "token.json").exists()  # refused before a token was made
    status = runner.invoke(app, ["token", "create", "--status", "--jobs-dir", jobs, "--link", "https://h:1"])
    assert status.exit_code == 2 and "--link" in status.output

"""The web device's site on the server's port (``mobillm serve --web MODEL``): the page, its modules, the two
libraries they import, the job's template and the device bundle, all plain ``GET``/``HEAD`` under ``/device``:

    /device, /device/                          web/page/index.html
    /device/<path>                             the other files of web/page/
    /device/src/<path>.mjs                     web/src/<path>.mjs: the device's modules
    /device/vendor/onnxruntime-web/<file>      onnxruntime-web's WASM build (:data:`VENDOR`)
    /device/vendor/tokenizers/tokenizers.mjs   @huggingface/tokenizers
    /device/config.json                        {"template": the Hello template built by Python,
                                                "bundle": {"base": "/device/bundle/<digest>/",
                                                           "files": {name: {"size", "etag"}}}}
    /device/bundle/<digest>/<file>             the bundle's files; <digest> hashes their content

Nothing is looked up on disk by a request's path: every file is listed, stat'ed and hashed at start-up (its strong
ETag; the bundle's digest) and a request only picks from that table, so no path escapes. Files are streamed from
disk (:mod:`mobillm.server.download`: ``HEAD``, single ranges, ``If-None-Match``), whatever their size; one that
changed on disk since start-up is refused (503) rather than sent under a stale ETag. A WebSocket upgrade on these
paths is no page request: it goes on to the handshake's check.

Headers, one set for every answer here: cross-origin isolation (``Cross-Origin-Opener-Policy: same-origin``,
``Cross-Origin-Embedder-Policy: require-corp``, ``Cross-Origin-Resource-Policy: same-origin``: what grants the page
WASM threads), ``X-Content-Type-Options: nosniff`` and :func:`content_security_policy` (also on the scripts, since a
worker runs under its own script's policy); ``Cache-Control``: the bundle's files ``public, max-age=31536000,
immutable`` (their URL changes with their content), the vendored libraries ``no-cache`` (kept, revalidated by ETag:
a 304, not 14 MiB of WASM, on each visit), everything else ``no-store``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from html.parser import HTMLParser
from http import HTTPStatus
from pathlib import Path
from typing import Any

from websockets.http11 import Request

from mobillm.exceptions import MobillmError
from mobillm.server.download import Download, StaticFile, file_download, http_answer

__all__ = ["BUNDLE_CACHE_CONTROL", "PREFIX", "VENDOR", "DeviceSite", "ServedBundle", "WebFiles",
           "content_security_policy", "import_map_hashes"]

log = logging.getLogger("mobillm.server")

PREFIX = "/device"
#: URL folder under /device/vendor/ -> (folder under node_modules, the files served from it). onnxruntime-web's WASM
#: build: its entry (bundled, or the plain one and the glue it imports) and the WASM binary it fetches; same-origin,
#: its threads are module workers of the entry's own URL (no blob: URL).
VENDOR: dict[str, tuple[str, tuple[str, ...]]] = {
    "onnxruntime-web": ("onnxruntime-web/dist", ("ort.wasm.bundle.min.mjs", "ort.wasm.min.mjs",
                                                 "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")),
    "tokenizers": ("@huggingface/tokenizers/dist", ("tokenizers.mjs",)),
}
BUNDLE_CACHE_CONTROL = "public, max-age=31536000, immutable"
_CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8", ".mjs": "text/javascript; charset=utf-8",
    ".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8", ".json": "application/json",
    ".wasm": "application/wasm", ".svg": "image/svg+xml", ".png": "image/png", ".ico": "image/x-icon",
    ".webmanifest": "application/manifest+json", ".txt": "text/plain; charset=utf-8",
}
_ISOLATION = (
    ("Cross-Origin-Opener-Policy", "same-origin"),
    ("Cross-Origin-Embedder-Policy", "require-corp"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
    ("X-Content-Type-Options", "nosniff"),
)
_HOST = re.compile(r"(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?")
_RESERVED = ("src", "vendor", "bundle", "config.json")  # /device/<first segment> taken by the routes above


def _content_type(path: Path) -> str:
    return _CONTENT_TYPES.get(path.suffix, "application/octet-stream")


class _InlineScripts(HTMLParser):
    """The ``type`` and text of each inline ``<script>`` of a page, as the browser hashes it."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=False)
        self.scripts: list[tuple[str, str]] = []
        self._open: tuple[str, list[str]] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "script" and "src" not in dict(attrs):
            self._open = ((dict(attrs).get("type") or "").lower(), [])

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            self._open[1].append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "script" and self._open is not None:
            self.scripts.append((self._open[0], "".join(self._open[1])))
            self._open = None


def import_map_hashes(html: str) -> list[str]:
    """The CSP source (``'sha256-…'``) of each inline ``<script type="importmap">`` of ``html``: the hash of its text
    after HTML's newline normalisation, as the browser computes it. Other inline scripts get none: they do not run."""
    parser = _InlineScripts()
    parser.feed(html)
    parser.close()
    hashes = []
    for kind, text in parser.scripts:
        if kind != "importmap":
            log.warning("web page: an inline <script type=%r> does not run under the page's CSP; move it into a "
                        "module under web/page/", kind)
            continue
        digest = hashlib.sha256(text.replace("\r\n", "\n").replace("\r", "\n").encode()).digest()
        hashes.append(f"'sha256-{base64.b64encode(digest).decode()}'")
    return hashes


def content_security_policy(script_hashes: Sequence[str], host: str | None, tls: bool) -> str:
    """The policy of everything under /device: scripts and workers from this origin (ONNX Runtime Web's threads are
    module workers of its own script), the import map by hash, WASM compiled (``'wasm-unsafe-eval'``), fetches and the
    job's WebSocket to this server only (``ws:``/``wss:`` of the ``Host`` the page was loaded from, spelled out for
    browsers whose ``'self'`` does not cover WebSockets), no framing, no plugins, no forms."""
    scripts = " ".join(["'self'", *script_hashes, "'wasm-unsafe-eval'"])
    sockets = f" {'wss' if tls else 'ws'}://{host}" if host and _HOST.fullmatch(host) else ""
    return (f"default-src 'none'; script-src {scripts}; worker-src 'self'; connect-src 'self'{sockets}; "
            "style-src 'self'; img-src 'self'; manifest-src 'self'; "
            "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


@dataclass(frozen=True)
class WebFiles:
    """Where the site's files are: the page (``web/page``), the device's modules (``web/src``) and the installed
    libraries (``web/node_modules``)."""

    page: Path
    src: Path
    node_modules: Path

    @classmethod
    def checkout(cls) -> "WebFiles":
        """The ``web/`` folder of this source checkout."""
        web = Path(__file__).resolve().parents[3] / "web"
        return cls(web / "page", web / "src", web / "node_modules")


@dataclass(frozen=True)
class ServedBundle:
    """The device bundle the site serves: its folder, the files a device reads, and the Hello template of a job on
    it (``mobillm template``'s, JSON-ready)."""

    directory: Path
    files: Sequence[str]
    template: dict[str, Any]


class DeviceSite:
    """The ``/device`` routes of one server: :meth:`answer` claims each plain request under /device. Built once at
    start-up (it hashes every file); raises ``MobillmError`` naming what to install or write when a file is missing.
    ``tls``: the server serves ``wss://`` (the CSP names it)."""

    def __init__(self, web: WebFiles, bundle: ServedBundle, tls: bool = False):
        self.tls = tls
        index = web.page / "index.html"
        if not index.is_file():
            raise MobillmError(f"mobillm serve --web serves the device page from a source checkout: {index} is "
                               "missing (run it from the repository, or serve without --web)")
        self.script_hashes = import_map_hashes(index.read_text(encoding="utf-8"))
        files: dict[str, tuple[Path, str]] = {}  # URL path -> (file, Cache-Control)
        for path in sorted(p for p in web.page.rglob("*") if p.is_file()):
            name = path.relative_to(web.page).as_posix()
            if name.startswith(".") or "/." in name:
                continue
            if name.split("/", 1)[0] in _RESERVED:
                log.warning("web page: %s is not served: /device/%s is a route of its own", path, name)
                continue
            files[f"{PREFIX}/{name}"] = (path, "no-store")
        files[PREFIX] = files[f"{PREFIX}/"] = (index, "no-store")
        for path in sorted(web.src.rglob("*.mjs")):
            files[f"{PREFIX}/src/{path.relative_to(web.src).as_posix()}"] = (path, "no-store")
        for folder, (dist, names) in VENDOR.items():
            for name in names:
                path = web.node_modules / dist / name
                if not path.is_file():
                    raise MobillmError(f"mobillm serve --web serves {path}, which is missing: install the web "
                                       "device's libraries (`npm ci` in web/, or `make setup`)")
                files[f"{PREFIX}/vendor/{folder}/{name}"] = (path, "no-cache")
        everything = {*(path for path, _ in files.values()), *(bundle.directory / name for name in bundle.files)}
        log.info("web device: hashing %d files (%.0f MiB), once", len(everything),
                 sum(p.stat().st_size for p in everything) / 2**20)
        self.files = {url: (StaticFile.hashed(path, _content_type(path)), cache) for url, (path, cache) in files.items()}
        served = {name: StaticFile.hashed(bundle.directory / name, _content_type(bundle.directory / name))
                  for name in bundle.files}
        self.digest = hashlib.sha256(json.dumps({n: f.etag for n, f in served.items()}, sort_keys=True).encode()
                                     ).hexdigest()[:32]
        self.bundle_base = f"{PREFIX}/bundle/{self.digest}/"
        for name, file in served.items():
            self.files[self.bundle_base + name] = (file, BUNDLE_CACHE_CONTROL)
        self.config = json.dumps({
            "template": bundle.template,
            "bundle": {"base": self.bundle_base,
                       "files": {name: {"size": f.size, "etag": f.etag} for name, f in served.items()}},
        }, indent=2).encode()
        log.info("web device: /device serves the bundle %s as %s", bundle.directory, self.bundle_base)

    @staticmethod
    def claims(request: Request) -> bool:
        """A plain HTTP request for a path under /device (a WebSocket upgrade goes on to the handshake)."""
        path = request.path.split("?", 1)[0]
        return ((path == PREFIX or path.startswith(PREFIX + "/"))
                and request.headers.get("Upgrade", "").lower() != "websocket")

    def headers(self, request: Request, cache_control: str) -> list[tuple[str, str]]:
        """The headers of every answer under /device (the CSP names the ``Host`` the request was sent to)."""
        policy = content_security_policy(self.script_hashes, request.headers.get("Host"), self.tls)
        return [*_ISOLATION, ("Content-Security-Policy", policy), ("Cache-Control", cache_control)]

    def answer(self, request: Request) -> Download | None:
        """The answer to a request under /device; None for any other request (the handshake goes on)."""
        if not self.claims(request):
            return None
        path = request.path.split("?", 1)[0]
        if request.method not in ("GET", "HEAD"):
            return self._text(request, HTTPStatus.METHOD_NOT_ALLOWED, f"{path} answers GET and HEAD only\n",
                              ("Allow", "GET, HEAD"))
        if path == f"{PREFIX}/config.json":
            return self._bytes(request, HTTPStatus.OK, self.config, "application/json")
        if path not in self.files:
            hint = (f"this server serves the bundle under {self.bundle_base}: reload the page"
                    if path.startswith(f"{PREFIX}/bundle/") else "no such file under /device")
            return self._text(request, HTTPStatus.NOT_FOUND, f"{path}: {hint}\n")
        file, cache = self.files[path]
        if not file.unchanged():
            return self._text(request, HTTPStatus.SERVICE_UNAVAILABLE, f"{file.path} changed since the server started: "
                              "restart mobillm serve to serve it\n")
        return file_download(request, file, self.headers(request, cache))

    def _bytes(self, request: Request, status: HTTPStatus, body: bytes, content_type: str,
               *extra: tuple[str, str]) -> Download:
        headers = [("Content-Length", str(len(body))), ("Content-Type", content_type), *extra,
                   *self.headers(request, "no-store")]
        return Download(http_answer(status, headers, b"" if request.method == "HEAD" else body))

    def _text(self, request: Request, status: HTTPStatus, text: str, *extra: tuple[str, str]) -> Download:
        return self._bytes(request, status, text.encode(), "text/plain; charset=utf-8", *extra)

"""The HTTP side of the server's port: the status page, its JSON and Prometheus' ``/metrics``; and a job's token
check for web pages.

- ``/status``: an HTML page (with ``/status.css`` and ``/status.js``; no external resource, works offline)
  that polls ``/status.json`` every two seconds and draws each job's figures and curves;
- ``/status.json``: :class:`~mobillm.server.status.ServerStatus` as JSON;
- ``/metrics``: the Prometheus text format (:mod:`mobillm.server.prometheus`).

They answer plain HTTP ``GET`` requests on the WebSocket port (a WebSocket upgrade is never answered with a
page), only when the server runs with ``--status``; with authentication on they need the status token
(``mobillm token create --status``) as ``Authorization: Bearer TOKEN`` or as the password of HTTP Basic
authentication (which browsers ask for). Job tokens do not open them.

``GET /jobs/NAME/auth`` (:class:`TokenCheckEndpoint`, always served) checks ``Authorization: Bearer TOKEN``
against job NAME exactly as the WebSocket handshake does and answers JSON a page can read (it cannot read a
WebSocket's 401): 200 ``{"ok": true, "job": NAME}``, or 401 ``{"ok": false, "job", "error", "message"}``.
The page is served by this same server, so there are no CORS headers: another origin cannot read the answer.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from mobillm.server.auth import JOB_NAME, TokenStore, authenticate, bearer_token
from mobillm.server.status import ServerStatus

__all__ = ["STATUS_PATHS", "StatusEndpoints", "TokenCheckEndpoint", "http_response"]

log = logging.getLogger("mobillm.server")

_STATIC = Path(__file__).with_name("static")
_ASSETS = {  # path -> (file under static/, content type)
    "/status": ("status.html", "text/html; charset=utf-8"),
    "/status.css": ("status.css", "text/css; charset=utf-8"),
    "/status.js": ("status.js", "text/javascript; charset=utf-8"),
}
STATUS_PATHS = frozenset({*_ASSETS, "/status.json", "/metrics"})
# The page loads its own script, style and JSON, nothing else; no framing.
_SECURITY_HEADERS = (
    ("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                                "frame-ancestors 'none'"),
    ("X-Content-Type-Options", "nosniff"),
    ("Cache-Control", "no-store"),
)


def http_response(status: HTTPStatus, body: bytes, content_type: str, *headers: tuple[str, str]) -> Response:
    """A complete HTTP response for websockets' ``process_request`` (the connection closes after it)."""
    return Response(status.value, status.phrase, Headers([
        ("Date", email.utils.formatdate(usegmt=True)), ("Connection", "close"), ("Content-Length", str(len(body))),
        ("Content-Type", content_type), *_SECURITY_HEADERS, *headers,
    ]), body)


class StatusEndpoints:
    """The status paths of the server's port. ``snapshot`` gives the :class:`ServerStatus`, ``metrics`` the
    Prometheus exposition (it may block: it runs on a worker thread); ``tokens`` None serves them to anyone."""

    def __init__(
        self, snapshot: Callable[[], Awaitable[ServerStatus]], metrics: Callable[[], bytes], tokens: TokenStore | None,
    ):
        self.snapshot, self.metrics, self.tokens = snapshot, metrics, tokens
        self.assets = {path: ((_STATIC / name).read_bytes(), kind) for path, (name, kind) in _ASSETS.items()}

    @staticmethod
    def serves(request: Request) -> bool:
        """A plain HTTP request for a status path (a WebSocket upgrade goes on to the protocol, whatever its path)."""
        path = request.path.split("?", 1)[0]
        return path in STATUS_PATHS and request.headers.get("Upgrade", "").lower() != "websocket"

    async def respond(self, request: Request) -> Response:
        if not await self._authorized(request):
            return http_response(HTTPStatus.UNAUTHORIZED, b"the status page needs the status token "
                                 b"(mobillm token create --status)\n", "text/plain; charset=utf-8",
                                 ("WWW-Authenticate", 'Basic realm="mobillm status", charset="UTF-8"'))
        path = request.path.split("?", 1)[0]
        if path == "/status.json":
            status = await self.snapshot()
            return http_response(HTTPStatus.OK, status.model_dump_json().encode(), "application/json")
        if path == "/metrics":
            return http_response(HTTPStatus.OK, await asyncio.to_thread(self.metrics), CONTENT_TYPE_LATEST)
        body, kind = self.assets[path]
        return http_response(HTTPStatus.OK, body, kind)

    async def _authorized(self, request: Request) -> bool:
        if self.tokens is None:
            return True
        header = request.headers.get("Authorization")
        if header is None:
            return False  # a browser's first request: it asks its user, then sends Basic credentials
        token = bearer_token(header, basic=True)
        if token is not None and await asyncio.to_thread(self.tokens.verify_status, token):
            return True
        log.warning("refused a status request for %s: invalid status token", request.path)
        return False


class TokenCheckEndpoint:
    """``GET /jobs/NAME/auth``: does the ``Authorization: Bearer TOKEN`` of this request open job NAME's WebSocket?

    The same check as the handshake's (:func:`~mobillm.server.auth.authenticate`, the header as its one source),
    answered as JSON: 200 ``{"ok": true, "job": NAME}``; 401 ``{"ok": false, "job": NAME, "error": REASON,
    "message": …}`` with REASON ``no_token``, ``malformed`` (not ``Bearer TOKEN``), ``token_in_url`` or
    ``invalid_token`` (wrong, revoked, another job's token, or no such job: it says no more about which jobs exist
    than the handshake does); 400 ``bad_job`` for a NAME that is no job name. ``tokens`` None (``--no-auth``):
    always 200. ``refused`` is told each refusal's message (the server counts it as an ``auth`` error)."""

    PREFIX, SUFFIX = "/jobs/", "/auth"

    def __init__(self, tokens: TokenStore | None, refused: Callable[[str], None] = lambda message: None):
        self.tokens, self.refused = tokens, refused

    @classmethod
    def job(cls, request: Request) -> str | None:
        """The NAME of a ``/jobs/NAME/auth`` path (unchecked), else None."""
        path = request.path.split("?", 1)[0]
        if not (path.startswith(cls.PREFIX) and path.endswith(cls.SUFFIX)):
            return None
        name = path[len(cls.PREFIX):-len(cls.SUFFIX)]
        return name if name and "/" not in name else None

    @classmethod
    def serves(cls, request: Request) -> bool:
        """A plain HTTP ``GET`` of ``/jobs/NAME/auth``; anything else there (a WebSocket upgrade, another site's
        ``OPTIONS`` preflight) goes on to the handshake's check, which refuses it."""
        return (cls.job(request) is not None and getattr(request, "method", "GET") == "GET"  # older websockets: GET only
                and request.headers.get("Upgrade", "").lower() != "websocket")

    async def respond(self, request: Request) -> Response:
        job = self.job(request)
        if not JOB_NAME.fullmatch(job):
            return _json(HTTPStatus.BAD_REQUEST, {"ok": False, "job": job, "error": "bad_job", "message":
                         "a job name is 1-64 letters, digits, '_', '.' or '-', not starting with '.'"})
        if self.tokens is None:
            return _json(HTTPStatus.OK, {"ok": True, "job": job})
        refusal = await authenticate(self.tokens, job, request.headers, request.path, subprotocol=False)
        if refusal is None:
            return _json(HTTPStatus.OK, {"ok": True, "job": job})
        if refusal.reason == "invalid_token":
            log.warning("refused a token check for job %s: invalid token", job)
        self.refused(refusal.message)
        return _json(HTTPStatus.UNAUTHORIZED, {"ok": False, "job": job, "error": refusal.reason,
                                               "message": refusal.message},
                     ("WWW-Authenticate", 'Bearer realm="mobillm"'))  # Bearer: no browser login dialog


def _json(status: HTTPStatus, body: dict, *headers: tuple[str, str]) -> Response:
    return http_response(status, json.dumps(body).encode(), "application/json", *headers)

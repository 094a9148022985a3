"""What the server tells its operator: a typed snapshot of every job, and the HTTP side of the server's port.

:class:`JobStatus` is the contract between the front end and a :class:`~mobillm.server.manager.SessionManager`
back end: ``SessionManager.status()`` returns one per job (in-process here; a cluster back end builds the same
models where its jobs live). The front end adds what only it sees (open sessions, refused sessions) and serves:

- ``/status``: an HTML page (with ``/status.css`` and ``/status.js``; no external resource, works offline)
  that polls ``/status.json`` every two seconds and draws each job's figures and curves;
- ``/status.json``: :class:`ServerStatus` as JSON;
- ``/metrics``: the Prometheus text format (:mod:`mobillm.server.prometheus`).

They answer plain HTTP ``GET`` requests on the WebSocket port (a WebSocket upgrade is never answered with a
page), only when the server runs with ``--status``; with authentication on they need the status token
(``mobillm token create --status``) as ``Authorization: Bearer TOKEN`` or as the password of HTTP Basic
authentication (which browsers ask for). Job tokens do not open them.
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import email.utils
import logging
from http import HTTPStatus
from pathlib import Path
from typing import Awaitable, Callable, Literal

from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict, Field, computed_field
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from mobillm.server.auth import TokenStore

log = logging.getLogger("mobillm.server")

# Upper bounds (seconds) of the latency histograms: training steps and acks, from a toy model's 1 ms upwards.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
CURVES = ("loss", "val_accuracy", "val_loss")  # metrics.jsonl fields a job follows in memory for the page's charts

JobState = Literal["waiting", "training", "finished", "failed"]


class Durations(BaseModel):
    """A histogram of durations: ``counts[i]`` took at most ``bounds[i]`` seconds (and more than the bound
    before it); the last count is those above every bound. Prometheus' buckets are its running sums."""

    bounds: tuple[float, ...] = LATENCY_BUCKETS
    counts: list[int] = Field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    total_seconds: float = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.total_seconds += seconds


class SessionError(BaseModel):
    """An ``Error`` the server answered a session with, or a handshake it refused (code ``auth``)."""

    model_config = ConfigDict(frozen=True)

    code: str
    message: str
    job: str | None = None  # the job the session was for, when known
    time: float  # Unix seconds


class JobStatus(BaseModel):
    """One job as the operator sees it. ``sessions`` and ``last_error`` are the front end's: a back end leaves
    them at their defaults."""

    model_config = ConfigDict(frozen=True)

    job: str
    state: JobState
    task: str
    model: str
    codec: str
    batches_received: int  # distinct batches held (a resent one counts once)
    samples_received: dict[str, int]  # by split: train (every device epoch), eval
    train_samples: int  # the training set's size, as the Hello announced it
    samples_trained: int
    step: int
    steps_per_epoch: int
    epochs: int
    bytes_received: int  # of the batches held
    cache_memory_bytes: int
    cache_disk_bytes: int
    elapsed_s: float  # since the job started, until it ended
    last_loss: float | None
    curves: dict[str, list[tuple[int, float]]]  # (step, value) of the fields in CURVES, thinned (metrics.Curve)
    train_step_seconds: Durations
    failure: str | None = None  # why training failed
    sessions: int = 0  # open device sessions
    last_error: SessionError | None = None

    @computed_field
    @property
    def epoch(self) -> float:
        """Epochs trained so far (fractional)."""
        return self.step / self.steps_per_epoch if self.steps_per_epoch else 0.0

    @computed_field
    @property
    def samples_per_s(self) -> float:
        """Training throughput over the job's life."""
        return self.samples_trained / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @computed_field
    @property
    def bytes_per_s(self) -> float:
        """Batch bytes received per second over the job's life."""
        return self.bytes_received / self.elapsed_s if self.elapsed_s > 0 else 0.0


class ServerStatus(BaseModel):
    """``/status.json``: the server and every job it holds."""

    model_config = ConfigDict(frozen=True)

    version: str
    uptime_s: float
    sessions: int
    max_sessions: int
    jobs: list[JobStatus]
    last_error: SessionError | None = None


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


def presented_token(authorization: str) -> str | None:
    """The token of an ``Authorization`` header: ``Bearer TOKEN``, or HTTP Basic with TOKEN as the password."""
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() == "bearer":
        return value.strip()
    if scheme.lower() == "basic":
        try:
            return base64.b64decode(value.strip(), validate=True).decode().partition(":")[2]
        except (ValueError, UnicodeDecodeError):  # binascii.Error is a ValueError
            return None
    return None


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
        token = presented_token(header)
        if token is not None and await asyncio.to_thread(self.tokens.verify_status, token):
            return True
        log.warning("refused a status request for %s: invalid status token", request.path)
        return False

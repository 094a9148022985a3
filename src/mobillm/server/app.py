"""The WebSocket front end: a thin adapter that moves bytes between connections, their
:class:`~mobillm.wire.session.ServerSession` (the session's rules and the failure → Error + close code map) and
the jobs.

Every inbound failure becomes an ``Error`` message and a close code for that one connection; nothing a
device sends can stop the server or touch another job. With ``status`` the same port also answers the status
page, its JSON and Prometheus' ``/metrics`` (:mod:`mobillm.server.status`); with ``web`` the web device's page and
bundle under ``/device`` (:mod:`mobillm.server.web`, streamed by :mod:`mobillm.server.download`).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from http import HTTPStatus

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from mobillm import __version__
from mobillm.exceptions import ProtocolError
from mobillm.server.auth import JOB_NAME, SUBPROTOCOL, TokenStore, authenticate, select_subprotocol
from mobillm.server.download import StreamingConnection
from mobillm.server.endpoints import StatusEndpoints, TokenCheckEndpoint
from mobillm.server.prometheus import ServerMetrics
from mobillm.server.sessions import JobSession, Sessions
from mobillm.server.status import ServerStatus, SessionError
from mobillm.server.web import DeviceSite
from mobillm.wire.errors import ErrorCode
from mobillm.wire.frame import DEFAULT_MAX_MESSAGE_BYTES
from mobillm.wire.messages import encode_message
from mobillm.wire.session import (
    BatchReceived,
    DoneReceived,
    Failure,
    HelloReceived,
    ServerSession,
    SideNetRequested,
    failure,
)

log = logging.getLogger("mobillm.server")

JOBS_PATH = "/jobs/"


def path_job(path: str) -> str | None:
    """The job a connection's URL names (``/jobs/NAME``), or None for any other path."""
    job = path.split("?", 1)[0].removeprefix(JOBS_PATH) if path.startswith(JOBS_PATH) else None
    return job if job and JOB_NAME.fullmatch(job) else None


@dataclass(frozen=True)
class Limits:
    """What one server accepts. Past each limit a session gets its own ``Error`` code and close code:
    ``too_big`` (1009), ``busy`` (1013), ``idle_timeout`` (1001); the per-job cache limit (``cache_full``) lives
    in the session manager."""

    window: int = 8  # unacked batches a device may have in flight
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_sessions: int = 64  # concurrent WebSocket sessions
    idle_timeout: float = 300.0  # seconds without a message from the device


class Server:
    """``tokens``: check each connection's token for the job in its URL (None: no authentication); the port also
    answers ``GET /jobs/NAME/auth``, a token check a web page can read (:class:`TokenCheckEndpoint`).
    ``status``: also serve the status page, ``/status.json`` and ``/metrics`` (with ``tokens``: to the holder of
    the status token only)."""

    def __init__(self, manager: Sessions, limits: Limits = Limits(), tokens: TokenStore | None = None,
                 status: bool = False):
        self.manager = manager
        self.limits = limits
        self.tokens = tokens
        self.sessions = 0
        self.job_sessions: Counter[str] = Counter()  # open sessions attached to each job
        self.job_errors: dict[str, SessionError] = {}  # the last error of a session attached to each job
        self.last_error: SessionError | None = None
        self.started = time.monotonic()
        self.metrics = ServerMetrics(lambda: self.sessions, manager.status)
        self.endpoints = StatusEndpoints(self.status, self.metrics.exposition, tokens) if status else None
        self.token_check = TokenCheckEndpoint(tokens, lambda message: self._record(ErrorCode.AUTH, message, None))

    async def status(self) -> ServerStatus:
        """The back end's jobs with what only the front end sees: open sessions and errors."""
        jobs = await asyncio.to_thread(self.manager.status)
        return ServerStatus(
            version=__version__, uptime_s=time.monotonic() - self.started, sessions=self.sessions,
            max_sessions=self.limits.max_sessions, last_error=self.last_error,
            jobs=[j.model_copy(update={"sessions": self.job_sessions[j.job], "last_error": self.job_errors.get(j.job)})
                  for j in jobs],
        )

    async def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        """The handshake hook: a plain request for a status path gets its page, one for ``/jobs/NAME/auth`` its
        token check; anything else :meth:`authorize`."""
        if self.endpoints is not None and self.endpoints.serves(request):
            return await self.endpoints.respond(request)
        if self.token_check.serves(request):
            return await self.token_check.respond(request)
        return await self.authorize(connection, request)

    async def authorize(self, connection: ServerConnection, request: Request) -> Response | None:
        """The handshake check: 401 unless the URL is ``/jobs/NAME`` and the request presents that job's token,
        as ``Authorization: Bearer`` or as a ``mobillm.token.`` subprotocol
        (:func:`~mobillm.server.auth.authenticate`)."""
        if self.tokens is None:
            return None
        job = path_job(request.path)
        if job is None:
            return self._unauthorized(connection, "connect to /jobs/NAME with 'Authorization: Bearer TOKEN' or the "
                                                  f"subprotocols {SUBPROTOCOL!r} and 'mobillm.token.TOKEN'")
        refusal = await authenticate(self.tokens, job, request.headers, request.path, subprotocol=True)
        if refusal is not None:
            if refusal.reason == "invalid_token":
                log.warning("refused a connection to job %s: invalid token", job)
            return self._unauthorized(connection, refusal.message)
        return None

    def _unauthorized(self, connection: ServerConnection, message: str) -> Response:
        self._record(ErrorCode.AUTH, message, None)  # not the job's error: the peer is not known to be its device
        return connection.respond(HTTPStatus.UNAUTHORIZED, message + "\n")

    async def handle(self, ws: ServerConnection) -> None:
        """One connection: bytes from ``ws`` into a :class:`ServerSession`, its events to the job, the answers
        back; whatever ends the session badly is the session's :meth:`~ServerSession.fail`."""
        if self.sessions >= self.limits.max_sessions:
            busy = f"busy: {self.sessions} sessions open (limit {self.limits.max_sessions})"
            await self._end(ws, failure(ErrorCode.BUSY, busy), None)
            return
        self.sessions += 1
        session = ServerSession(window=self.limits.window, url_job=path_job(ws.request.path),
                                authenticated=self.tokens is not None, max_bytes=self.limits.max_message_bytes)
        job: str | None = None  # once the session is attached to it
        try:
            hello: HelloReceived = session.receive(await self._recv(ws))  # the session refuses anything else first
            attached = await asyncio.to_thread(self.manager.open, hello.hello)
            job = hello.hello.job
            self.job_sessions[job] += 1
            name = uuid.uuid4().hex[:12]
            log.info("session %s joined job %s", name, job)
            await ws.send(session.welcome(name, attached.last_seq, attached.step))
            while True:
                data = await self._recv(ws)  # ConnectionClosed ends the session
                received = time.perf_counter()  # the Ack latency includes decoding
                await self._answer(ws, session.receive(data), attached, received)
        except ConnectionClosed:
            pass
        except Exception as err:  # noqa: BLE001 - one broken session must not take the server down
            end = session.fail(err)
            if end.code is ErrorCode.INTERNAL:
                log.exception("session failed")
            elif end.code is ErrorCode.JOB_LOST:
                log.warning("closing a session so that its device resumes: %s", err)
            await self._end(ws, end, job)
        finally:
            self.sessions -= 1
            if job is not None:
                self.job_sessions[job] -= 1
                if not self.job_sessions[job]:
                    del self.job_sessions[job]

    async def _answer(self, ws: ServerConnection, event, job: JobSession, received: float) -> None:
        """Hand one event of an open session to its job and send the job's answer."""
        if isinstance(event, BatchReceived):
            self.metrics.batches_received.labels(event.batch.split).inc()
            await ws.send(encode_message(await job.receive(event.data, event.frame)))
            self.metrics.ack_seconds.observe(time.perf_counter() - received)
        elif isinstance(event, DoneReceived):
            await job.device_done(event.epoch)
        elif isinstance(event, SideNetRequested):
            await ws.send(await job.side_net())

    def _record(self, code: str, message: str, job: str | None) -> None:
        """Count an error and keep it as the last one (the job's too, for a session attached to a job)."""
        self.metrics.errors.labels(code).inc()
        self.last_error = SessionError(code=str(code), message=message, job=job, time=time.time())
        if job is not None:
            self.job_errors[job] = self.last_error

    async def _end(self, ws: ServerConnection, end: Failure, job: str | None) -> None:
        self._record(end.code, end.message, job)
        try:
            if end.data is not None:
                await ws.send(end.data)
            await ws.close(end.close_code, end.reason)
        except ConnectionClosed:
            pass

    async def _recv(self, ws: ServerConnection):
        try:
            data = await asyncio.wait_for(ws.recv(), self.limits.idle_timeout)
        except TimeoutError:
            raise ProtocolError(ErrorCode.IDLE_TIMEOUT, f"no message for {self.limits.idle_timeout:g} s") from None
        if not isinstance(data, str):
            self.metrics.received_bytes.inc(len(data))
        return data


async def run_server(
    manager: Sessions, host: str, port: int, limits: Limits = Limits(), ready=None,
    tokens: TokenStore | None = None, tls: ssl.SSLContext | None = None, status: bool = False,
    web: DeviceSite | None = None,
) -> None:
    """Serve until cancelled. ``ready`` (optional callable) receives the bound port (useful with port 0). ``web``:
    also answer ``/device`` (its connections stream files and apply the open timeout themselves)."""
    server = Server(manager, limits, tokens, status)
    streaming = {}
    if web is not None:
        streaming = dict(create_connection=StreamingConnection.serving(web.answer), open_timeout=None)
        if tls is not None:
            streaming["ssl_handshake_timeout"] = StreamingConnection.open_timeout
    async with serve(
        server.handle, host, port, max_size=limits.max_message_bytes, compression=None, ping_timeout=None,
        process_request=server.process_request, select_subprotocol=select_subprotocol, ssl=tls, **streaming,
    ) as ws_server:
        bound = ws_server.sockets[0].getsockname()[1]
        if ready:
            ready(bound)
        await ws_server.serve_forever()

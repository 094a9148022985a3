"""The WebSocket front end: a thin adapter that moves bytes between connections and jobs.

Every inbound failure becomes an ``Error`` message and a close code for that one connection; nothing a
device sends can stop the server or touch another job.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import uuid
from dataclasses import dataclass
from http import HTTPStatus

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from mobillm.exceptions import JobLost, PayloadTooBig, ProtocolError, WireError
from mobillm.server.auth import JOB_NAME, TokenStore
from mobillm.server.sessions import Sessions
from mobillm.wire.messages import CLOSE_CODES, Batch, Done, Error, GetSideNet, Hello, Welcome, decode_message, encode_message

log = logging.getLogger("mobillm.server")

DEFAULT_MAX_MESSAGE_BYTES = 64 << 20
JOBS_PATH = "/jobs/"
JOB_LOST_CLOSE = 1012  # "service restart", and no Error: the device reconnects and resumes the job


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
    """``tokens``: check each connection's bearer token for the job in its URL (None: no authentication)."""

    def __init__(self, manager: Sessions, limits: Limits = Limits(), tokens: TokenStore | None = None):
        self.manager = manager
        self.limits = limits
        self.tokens = tokens
        self.sessions = 0

    async def authorize(self, connection: ServerConnection, request: Request) -> Response | None:
        """The handshake check: 401 unless the URL is ``/jobs/NAME`` and the bearer token is that job's."""
        if self.tokens is None:
            return None
        job = path_job(request.path)
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if job is None or scheme.lower() != "bearer":
            return connection.respond(HTTPStatus.UNAUTHORIZED, "connect to /jobs/NAME with 'Authorization: Bearer TOKEN'\n")
        if not await asyncio.to_thread(self.tokens.verify, job, token.strip()):
            log.warning("refused a connection to job %s: invalid token", job)
            return connection.respond(HTTPStatus.UNAUTHORIZED, f"invalid token for job {job}\n")
        return None

    async def handle(self, ws: ServerConnection) -> None:
        if self.sessions >= self.limits.max_sessions:
            await self._refuse(ws, "busy", f"busy: {self.sessions} sessions open (limit {self.limits.max_sessions})")
            return
        self.sessions += 1
        try:
            await self._session(ws)
        except ConnectionClosed:
            pass
        except JobLost as err:
            log.warning("closing a session so that its device resumes: %s", err)
            await ws.close(JOB_LOST_CLOSE, "job_lost")
        except (ProtocolError, PayloadTooBig, WireError) as err:
            code = getattr(err, "code", "too_big" if isinstance(err, PayloadTooBig) else "bad_frame")
            await self._refuse(ws, code, str(err))
        except Exception as err:  # noqa: BLE001 - one broken session must not take the server down
            log.exception("session failed")
            await self._refuse(ws, "internal", f"internal error: {type(err).__name__}")
        finally:
            self.sessions -= 1

    async def _refuse(self, ws: ServerConnection, code: str, message: str) -> None:
        try:
            await ws.send(encode_message(Error(code=code, message=message)))
            await ws.close(CLOSE_CODES.get(code, 1008), code)
        except ConnectionClosed:
            pass

    def _decode(self, data):
        if isinstance(data, str):
            raise ProtocolError("bad_frame", "text frames are not part of the protocol; send binary safetensors")
        return decode_message(data, max_bytes=self.limits.max_message_bytes)

    async def _recv(self, ws: ServerConnection):
        try:
            return await asyncio.wait_for(ws.recv(), self.limits.idle_timeout)
        except TimeoutError:
            raise ProtocolError("idle_timeout", f"no message for {self.limits.idle_timeout:g} s") from None

    async def _session(self, ws: ServerConnection) -> None:
        hello = self._decode(await self._recv(ws)).header
        if not isinstance(hello, Hello):
            raise ProtocolError("bad_header", f"the first message must be hello, got {hello.type}")
        allowed = path_job(ws.request.path)
        if (self.tokens is not None or allowed is not None) and hello.job != allowed:
            raise ProtocolError("auth", f"this connection is for job {allowed!r}, not {hello.job!r}")
        job = await asyncio.to_thread(self.manager.open, hello)
        session = uuid.uuid4().hex[:12]
        log.info("session %s joined job %s", session, hello.job)
        await ws.send(encode_message(Welcome(session=session, window=self.limits.window, last_seq=job.last_seq, step=job.step)))
        while True:
            data = await self._recv(ws)  # ConnectionClosed ends the session
            frame = self._decode(data)
            message = frame.header
            if isinstance(message, Batch):
                await ws.send(encode_message(await job.receive(data, frame)))
            elif isinstance(message, Done):
                await job.device_done(message.epoch)
            elif isinstance(message, GetSideNet):
                await ws.send(await job.side_net())
            else:
                raise ProtocolError("unexpected", f"a device does not send {message.type}")


async def run_server(
    manager: Sessions, host: str, port: int, limits: Limits = Limits(), ready=None,
    tokens: TokenStore | None = None, tls: ssl.SSLContext | None = None,
) -> None:
    """Serve until cancelled. ``ready`` (optional callable) receives the bound port (useful with port 0)."""
    server = Server(manager, limits, tokens)
    async with serve(
        server.handle, host, port, max_size=limits.max_message_bytes, compression=None, ping_timeout=None,
        process_request=server.authorize, ssl=tls,
    ) as ws_server:
        bound = ws_server.sockets[0].getsockname()[1]
        if ready:
            ready(bound)
        await ws_server.serve_forever()

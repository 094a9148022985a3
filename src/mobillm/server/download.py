"""Files on the WebSocket port, streamed from disk: the answer to a plain ``GET`` or ``HEAD`` of a file (HTTP/1.1 with
single byte ranges and strong ETags, :func:`file_download`) and the connection that sends it
(:class:`StreamingConnection`), for files of any size.

Why not a ``process_request`` response: websockets sends one inside the handshake's ``open_timeout`` (10 s) and
aborts the transport when that ends (a 40 MiB body read at ~3 MB/s stopped at 36.7 MB), and holds the body in
memory twice. :class:`StreamingConnection` (given to websockets' ``serve`` as ``create_connection``) answers the
requests its ``answer`` callable claims itself, once the request has arrived and before websockets would run
``process_request``:

- the head goes out through the sans-I/O protocol's ``send_response`` (so the protocol discards whatever else the
  peer sends, as after any HTTP answer), the end-of-stream it queues is held back until the body is out;
- the body is read from disk in :data:`CHUNK` pieces (on a worker thread) and written to the transport under its
  flow control: after each write, ``drain()`` waits while the transport is paused, so at most a chunk and the
  transport's write buffer are in memory, whatever the file's size;
- no total time limit, but an inactivity one: a peer that reads nothing for ``stall_timeout`` seconds is cut off,
  and so is every download when the server closes;
- then the write side is closed (``write_eof``; with TLS, ``close``, which flushes first) and the connection waits
  for the peer to close before websockets tears the transport down, so no byte is lost.

The server then runs with websockets' ``open_timeout=None``: this class applies the same open timeout to every
other handshake (from the connection's start to the response), as websockets would.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import SERVER, Request, Response

__all__ = ["CHUNK", "Download", "RangeNotSatisfiable", "StaticFile", "StreamingConnection", "byte_range",
           "file_download", "http_answer"]

log = logging.getLogger("mobillm.server")

#: bytes read from disk and written to the transport at a time
CHUNK = 256 << 10
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


@dataclass(frozen=True)
class StaticFile:
    """A file the server sends, as it was when the server started: its strong ETag is a hash of its content."""

    path: Path
    content_type: str
    size: int
    mtime_ns: int
    etag: str  # quoted, e.g. '"3f2a…"'

    @classmethod
    def hashed(cls, path: Path, content_type: str) -> "StaticFile":
        """Stat and hash ``path`` now (start-up: never in answer to a request)."""
        stat = path.stat()
        digest = hashlib.sha256()
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        return cls(path, content_type, stat.st_size, stat.st_mtime_ns, f'"{digest.hexdigest()[:32]}"')

    def unchanged(self) -> bool:
        """Is the file on disk still the one hashed (same size and mtime)?"""
        try:
            stat = self.path.stat()
        except OSError:
            return False
        return (stat.st_size, stat.st_mtime_ns) == (self.size, self.mtime_ns)


@dataclass(frozen=True)
class Download:
    """One answer: the response head (with a small body of its own, if any) and the span of ``file`` that follows
    it (``length`` 0: none)."""

    head: Response
    file: StaticFile | None = None
    start: int = 0
    length: int = 0


class RangeNotSatisfiable(ValueError):
    """A ``Range`` no byte of the file is in (HTTP 416)."""


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The ``[start, stop)`` span of a single ``Range: bytes=…`` (first-last, first-, or -suffix) of a ``size``-byte
    file; None to send the whole file (no header, several ranges, another unit, or a malformed one, which HTTP lets a
    server ignore). Raises :class:`RangeNotSatisfiable` when the range starts past the end (or is an empty suffix)."""
    match = _RANGE.fullmatch(header.replace(" ", "")) if header else None
    if match is None or match.groups() == ("", ""):
        return None
    first, last = match.groups()
    if first == "":  # the last N bytes
        if int(last) == 0 or size == 0:
            raise RangeNotSatisfiable(header)
        return max(0, size - int(last)), size
    start = int(first)
    if last and int(last) < start:
        return None
    if start >= size:
        raise RangeNotSatisfiable(header)
    return start, size if not last else min(int(last) + 1, size)


def _etags(header: str) -> set[str]:
    """The entity tags of an ``If-None-Match`` list, weak ones as strong (weak comparison)."""
    return {tag.strip().removeprefix("W/") for tag in header.split(",")}


def http_answer(status: HTTPStatus, headers: list[tuple[str, str]], body: bytes = b"") -> Response:
    """A response head for a connection that closes after it: ``Date``, ``Connection: close`` and ``headers``;
    ``Content-Length`` is the caller's."""
    return Response(status.value, status.phrase, Headers([
        ("Date", email.utils.formatdate(usegmt=True)), ("Connection", "close"), *headers,
    ]), body)


def file_download(request: Request, file: StaticFile, headers: list[tuple[str, str]]) -> Download:
    """The answer to a ``GET`` or ``HEAD`` of ``file``, with ``headers`` (caching, security) on every status: 304 when
    ``If-None-Match`` names its ETag; 206 with ``Content-Range`` for a satisfiable single ``Range`` of a ``GET``
    (unless an ``If-Range`` names another ETag); 416 with ``Content-Range: bytes */SIZE`` for an unsatisfiable one;
    else 200 and the whole file (``HEAD``: the same head, no body)."""
    common = [("ETag", file.etag), ("Accept-Ranges", "bytes"), *headers]
    if_none_match = request.headers.get("If-None-Match")
    if if_none_match is not None and (if_none_match.strip() == "*" or file.etag in _etags(if_none_match)):
        return Download(http_answer(HTTPStatus.NOT_MODIFIED, common))
    typed = [("Content-Type", file.content_type), *common]
    span = None
    if request.method == "GET" and request.headers.get("If-Range", file.etag) == file.etag:
        try:
            span = byte_range(request.headers.get("Range"), file.size)
        except RangeNotSatisfiable:
            return Download(http_answer(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE, [
                ("Content-Range", f"bytes */{file.size}"), ("Content-Length", "0"), *common]))
    if span is None:
        head = http_answer(HTTPStatus.OK, [("Content-Length", str(file.size)), *typed])
        return Download(head, file, 0, file.size if request.method == "GET" else 0)
    start, stop = span
    head = http_answer(HTTPStatus.PARTIAL_CONTENT, [
        ("Content-Length", str(stop - start)), ("Content-Range", f"bytes {start}-{stop - 1}/{file.size}"), *typed])
    return Download(head, file, start, stop - start)


class StreamingConnection(ServerConnection):
    """A websockets server connection that answers the plain HTTP requests ``answer`` claims (a
    :class:`Download`; None: not one of them) by streaming, and runs every other handshake under ``open_timeout``.
    Make the class websockets is given with :meth:`serving`."""

    answer: Callable[[Request], Download | None] = staticmethod(lambda request: None)
    open_timeout: float = 10.0  # seconds from the connection's start to the end of an ordinary handshake
    stall_timeout: float = 60.0  # seconds a download may wait for the peer to read

    @classmethod
    def serving(cls, answer: Callable[[Request], Download | None], open_timeout: float = 10.0,
                stall_timeout: float = 60.0) -> type["StreamingConnection"]:
        """The connection class for ``serve(create_connection=…)``: it answers what ``answer`` claims."""
        return type(cls.__name__, (cls,), {"answer": staticmethod(answer), "open_timeout": open_timeout,
                                           "stall_timeout": stall_timeout})

    async def handshake(self, process_request=None, process_response=None, server_header: str | None = SERVER) -> None:
        async with asyncio.timeout(self.open_timeout):
            await asyncio.wait([self.request_rcvd, self.connection_lost_waiter], return_when=asyncio.FIRST_COMPLETED)
            download = None
            if self.request is not None:
                try:
                    download = self.answer(self.request)
                except Exception:  # noqa: BLE001 - one broken answer must not take the server down
                    log.exception("answering %s %s failed", self.request.method, self.request.path)
                    download = Download(http_answer(HTTPStatus.INTERNAL_SERVER_ERROR, [("Content-Length", "0")]))
            if download is None:  # a WebSocket handshake, the status page, a token check: as websockets does them
                await super().handshake(process_request, process_response, server_header)
                return
        await self._send(download, server_header)

    async def _send(self, download: Download, server_header: str | None) -> None:
        if server_header is not None:
            download.head.headers["Server"] = server_header
        self.protocol.send_response(download.head)  # queues the head, then the end of the stream
        self.transport.write(b"".join(self.protocol.data_to_send()))  # the head; the end waits for the body
        try:
            if download.length:
                await self._copy(download.file.path, download.start, download.length)
        except (OSError, TimeoutError) as err:
            log.info("download of %s cut off: %s", download.file.path.name, err or "the peer stopped reading")
            self.transport.abort()
            return
        if self.transport.can_write_eof():
            self.transport.write_eof()  # once the buffer is flushed
        else:
            self.transport.close()  # TLS: flushes, then closes
        try:  # the peer closes once it has read everything; the transport is torn down after that
            async with asyncio.timeout(self.stall_timeout):
                await asyncio.shield(self.connection_lost_waiter)
        except TimeoutError:
            self.transport.abort()

    async def _copy(self, path: Path, start: int, length: int) -> None:
        """Write ``length`` bytes of ``path`` from ``start`` to the transport, a chunk at a time, each write waiting
        (at most ``stall_timeout``) until the transport takes more."""
        fd = os.open(path, os.O_RDONLY)
        try:
            offset, stop = start, start + length
            while offset < stop:
                chunk = await asyncio.to_thread(os.pread, fd, min(CHUNK, stop - offset), offset)
                if not chunk:
                    raise OSError(f"{path} is shorter than it was when the server started")
                if self.transport.is_closing():
                    raise OSError("the peer closed the connection")
                if not self.server.is_serving():
                    raise OSError("the server is closing")
                self.transport.write(chunk)
                offset += len(chunk)
                async with asyncio.timeout(self.stall_timeout):
                    await self.drain()
        finally:
            os.close(fd)

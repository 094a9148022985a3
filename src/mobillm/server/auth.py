"""Per-job tokens: the server keeps a salted hash only, and checks a token in constant time.

``mobillm token create --job NAME`` makes a random token, prints it once and stores
``<jobs-dir>/NAME/token.json`` = {salt, scrypt hash}. A device presents the token in the WebSocket handshake
on ``/jobs/NAME``, in one of two places, read by one function (:func:`authenticate`):

- ``Authorization: Bearer TOKEN`` (the Python device);
- ``Sec-WebSocket-Protocol: mobillm.v1, mobillm.token.TOKEN`` (a browser, which cannot set ``Authorization``
  on a WebSocket); the server answers ``mobillm.v1`` (:func:`select_subprotocol`), never the token.

The server refuses a connection without a valid one with HTTP 401 before the WebSocket opens, so no message of
an unauthenticated peer is ever parsed. A token in the URL's query string is never read: it is refused.

``mobillm token create --status`` makes the one token of the server's status page and ``/metrics``
(``<jobs-dir>/.status-token.json``, the same kind of record; no job name starts with a dot, so no job's
folder can take its place). A job's token does not open the status page, nor the status token a job.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import re
import secrets
from pathlib import Path
from typing import NamedTuple
from urllib.parse import parse_qsl, urlsplit

from websockets.datastructures import Headers
from websockets.exceptions import InvalidHeader
from websockets.headers import parse_subprotocol

from mobillm.exceptions import ConfigError
from mobillm.files import JOB_NAME_PATTERN, write_atomic

TOKEN_FILE = "token.json"
STATUS_TOKEN_FILE = ".status-token.json"
JOB_NAME = re.compile(JOB_NAME_PATTERN)  # the Hello's rule: the name of a folder under --jobs-dir
# scrypt with 16 MiB of memory: ~50 ms per check, so guessing is slow even for a weak token (ours are 256-bit).
_SCRYPT = {"n": 2**14, "r": 8, "p": 1, "dklen": 32}
SUBPROTOCOL = "mobillm.v1"  # the WebSocket subprotocol a device may offer; the server answers with it
TOKEN_SUBPROTOCOL = "mobillm.token."  # + TOKEN: a job token offered as a subprotocol (never answered)
URL_TOKEN_PARAMS = frozenset({"token", "access_token"})  # query parameters refused outright (URLs get logged)


def _hash(token: str, salt: bytes) -> bytes:
    return hashlib.scrypt(token.encode(), salt=salt, **_SCRYPT)


class TokenStore:
    """Tokens of the jobs under one ``--jobs-dir``, and of its server's status page."""

    def __init__(self, jobs_dir: str | Path):
        self.jobs_dir = Path(jobs_dir)
        self.status_path = self.jobs_dir / STATUS_TOKEN_FILE

    def _path(self, job: str) -> Path:
        if not JOB_NAME.fullmatch(job):
            raise ConfigError(f"job name {job!r}: use 1-64 letters, digits, '_', '.' or '-', not starting with '.'")
        return self.jobs_dir / job / TOKEN_FILE

    def create(self, job: str, replace: bool = False) -> str:
        """A new token for ``job`` (returned once; only its salted hash is written, atomically)."""
        return _create(self._path(job), f"job {job!r}", replace)

    def create_status(self, replace: bool = False) -> str:
        """A new token for the status page and ``/metrics``, like :meth:`create`."""
        return _create(self.status_path, "the status page", replace)

    def has_status_token(self) -> bool:
        return self.status_path.is_file()

    def verify(self, job: str, token: str | None) -> bool:
        """True only for the job's current token; unknown jobs and malformed files are refused."""
        try:
            path = self._path(job)
        except ConfigError:
            path = None
        return _verify(path, token)

    def verify_status(self, token: str | None) -> bool:
        """True only for the status page's current token."""
        return _verify(self.status_path, token)


def bearer_token(authorization: str | None, *, basic: bool = False) -> str | None:
    """The token an ``Authorization`` header presents: ``Bearer TOKEN`` (stripped); with ``basic``, also HTTP Basic
    with TOKEN as the password (what browsers send). None for no header, another scheme or malformed Basic."""
    scheme, _, value = (authorization or "").partition(" ")
    if scheme.lower() == "bearer":
        return value.strip()
    if basic and scheme.lower() == "basic":
        try:
            return base64.b64decode(value.strip(), validate=True).decode().partition(":")[2]
        except (ValueError, UnicodeDecodeError):  # binascii.Error is a ValueError
            return None
    return None


class Refusal(NamedTuple):
    """Why a request's credentials are refused: a short ``reason`` for programs, a ``message`` for people
    (never containing the token)."""

    reason: str  # no_token | malformed | token_in_url | two_tokens | no_subprotocol | invalid_token
    message: str


def presented_token(headers: Headers, path: str, *, subprotocol: bool) -> str | Refusal:
    """The job token a request presents, or why none is usable.

    Sources: ``Authorization: Bearer TOKEN``, and with ``subprotocol`` (a WebSocket handshake) also one
    ``mobillm.token.TOKEN`` among the ``Sec-WebSocket-Protocol`` values, which must then include
    :data:`SUBPROTOCOL`. Both given: they must be the same token, or the request is refused. Another
    ``Authorization`` scheme (a browser's cached Basic credentials of the status page, say) is not a job token
    and is ignored. A ``token`` or ``access_token`` query parameter refuses the request, whatever else it carries.
    """
    if any(name.lower() in URL_TOKEN_PARAMS for name, _ in parse_qsl(urlsplit(path).query, keep_blank_values=True)):
        return Refusal("token_in_url", "a token in the URL is never accepted (URLs are logged): send it as "
                                       "'Authorization: Bearer TOKEN' or the 'mobillm.token.TOKEN' subprotocol")
    authorization = headers.get("Authorization")
    header = bearer_token(authorization)
    if not subprotocol and authorization is not None and not header:
        return Refusal("malformed", "the Authorization header must be 'Bearer TOKEN'")
    offered = _subprotocols(headers) if subprotocol else []
    if offered is None:
        return Refusal("malformed", "the Sec-WebSocket-Protocol header is not a comma-separated list of tokens")
    offers = [value.removeprefix(TOKEN_SUBPROTOCOL) for value in offered if value.startswith(TOKEN_SUBPROTOCOL)]
    if len(offers) > 1:
        return Refusal("two_tokens", "offer one 'mobillm.token.TOKEN' subprotocol, not several")
    offer = offers[0] if offers else None
    if offer is not None and SUBPROTOCOL not in offered:
        return Refusal("no_subprotocol", f"offer the {SUBPROTOCOL!r} subprotocol along with the token")
    if offer == "" or header == "":
        return Refusal("malformed", "the token is empty")
    if offer is not None and header is not None and not hmac.compare_digest(offer.encode(), header.encode()):
        return Refusal("two_tokens", "the Authorization header and the subprotocol carry different tokens")
    token = header if header is not None else offer
    if token is None:
        how = "'Authorization: Bearer TOKEN'" + (f" or the subprotocols {SUBPROTOCOL!r} and 'mobillm.token.TOKEN'"
                                                 if subprotocol else "")
        return Refusal("no_token", f"no token: send {how}")
    return token


async def authenticate(
    tokens: TokenStore, job: str, headers: Headers, path: str, *, subprotocol: bool,
) -> Refusal | None:
    """None when the request presents ``job``'s current token (:func:`presented_token`, checked off the event
    loop: scrypt takes ~50 ms); else why not. An unknown job reads as a wrong token."""
    token = presented_token(headers, path, subprotocol=subprotocol)
    if isinstance(token, Refusal):
        return token
    if not await asyncio.to_thread(tokens.verify, job, token):
        return Refusal("invalid_token", f"invalid token for job {job}")  # wrong, revoked, another job's, no job
    return None


def select_subprotocol(connection, offered) -> str | None:
    """websockets' ``select_subprotocol`` hook: :data:`SUBPROTOCOL` when the device offers it, else no
    subprotocol (every Python device offers none); never a token."""
    return SUBPROTOCOL if SUBPROTOCOL in offered else None


def _subprotocols(headers: Headers) -> list[str] | None:
    """The ``Sec-WebSocket-Protocol`` values, from every such header; None if one is malformed."""
    try:
        return [value for header in headers.get_all("Sec-WebSocket-Protocol") for value in parse_subprotocol(header)]
    except InvalidHeader:
        return None


def _create(path: Path, owner: str, replace: bool) -> str:
    if path.exists() and not replace:
        raise ConfigError(f"{owner} already has a token ({path}); pass replace=True (--replace) to revoke it")
    token = secrets.token_urlsafe(32)
    salt = secrets.token_bytes(16)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"kdf": "scrypt", **_SCRYPT, "salt": salt.hex(), "hash": _hash(token, salt).hex()}
    write_atomic(path, json.dumps(record), mode=0o600)
    return token


def _record(path: Path | None) -> tuple[bytes, bytes]:
    """(salt, hash) of a token file; for a missing or malformed one, or no path (a bad job name), one no token matches."""
    if path is not None:
        try:
            record = json.loads(path.read_text())
            return bytes.fromhex(record["salt"]), bytes.fromhex(record["hash"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
    return bytes(16), b""


def _verify(path: Path | None, token: str | None) -> bool:
    salt, expected = _record(path)
    # The same scrypt work whether or not the record exists: the time does not tell which jobs exist.
    ok = hmac.compare_digest(_hash(token or "", salt), expected)
    return ok and token is not None

"""Per-job tokens: the server keeps a salted hash only, and checks a token in constant time.

``mobillm token create --job NAME`` makes a random token, prints it once and stores
``<jobs-dir>/NAME/token.json`` = {salt, scrypt hash}. A device presents the token in the WebSocket handshake
(``Authorization: Bearer …`` on ``/jobs/NAME``); the server refuses a connection without a valid one with
HTTP 401 before the WebSocket opens, so no message of an unauthenticated peer is ever parsed.

``mobillm token create --status`` makes the one token of the server's status page and ``/metrics``
(``<jobs-dir>/.status-token.json``, the same kind of record; no job name starts with a dot, so no job's
folder can take its place). A job's token does not open the status page, nor the status token a job.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
from pathlib import Path

from mobillm.exceptions import ConfigError
from mobillm.files import JOB_NAME_PATTERN, write_atomic

TOKEN_FILE = "token.json"
STATUS_TOKEN_FILE = ".status-token.json"
JOB_NAME = re.compile(JOB_NAME_PATTERN)  # the Hello's rule: the name of a folder under --jobs-dir
# scrypt with 16 MiB of memory: ~50 ms per check, so guessing is slow even for a weak token (ours are 256-bit).
_SCRYPT = {"n": 2**14, "r": 8, "p": 1, "dklen": 32}


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

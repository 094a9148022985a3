"""Per-job tokens: the server keeps a salted hash only, and checks a token in constant time.

``mobillm token create --job NAME`` makes a random token, prints it once and stores
``<jobs-dir>/NAME/token.json`` = {salt, scrypt hash}. A device presents the token in the WebSocket handshake
(``Authorization: Bearer …`` on ``/jobs/NAME``); the server refuses a connection without a valid one with
HTTP 401 before the WebSocket opens, so no message of an unauthenticated peer is ever parsed.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from pathlib import Path

from mobillm.exceptions import ConfigError
from mobillm.files import write_atomic

TOKEN_FILE = "token.json"
JOB_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}$")  # the Hello's job pattern: a folder name, never '..'
# scrypt with 16 MiB of memory: ~50 ms per check, so guessing is slow even for a weak token (ours are 256-bit).
_SCRYPT = {"n": 2**14, "r": 8, "p": 1, "dklen": 32}


def _hash(token: str, salt: bytes) -> bytes:
    return hashlib.scrypt(token.encode(), salt=salt, **_SCRYPT)


class TokenStore:
    """Tokens of the jobs under one ``--jobs-dir``."""

    def __init__(self, jobs_dir: str | Path):
        self.jobs_dir = Path(jobs_dir)

    def _path(self, job: str) -> Path:
        if not JOB_NAME.fullmatch(job):
            raise ConfigError(f"job name {job!r}: use 1-64 letters, digits, '_', '.' or '-', not starting with '.'")
        return self.jobs_dir / job / TOKEN_FILE

    def create(self, job: str, replace: bool = False) -> str:
        """A new token for ``job`` (returned once; only its salted hash is written, atomically)."""
        path = self._path(job)
        if path.exists() and not replace:
            raise ConfigError(f"job {job!r} already has a token ({path}); pass replace=True (--replace) to revoke it")
        token = secrets.token_urlsafe(32)
        salt = secrets.token_bytes(16)
        path.parent.mkdir(parents=True, exist_ok=True)
        record = {"kdf": "scrypt", **_SCRYPT, "salt": salt.hex(), "hash": _hash(token, salt).hex()}
        write_atomic(path, json.dumps(record), mode=0o600)
        return token

    def verify(self, job: str, token: str | None) -> bool:
        """True only for the job's current token; unknown jobs and malformed files are refused."""
        try:
            record = json.loads(self._path(job).read_text())
            salt, expected = bytes.fromhex(record["salt"]), bytes.fromhex(record["hash"])
        except (ConfigError, OSError, ValueError, KeyError, TypeError):
            salt, expected = bytes(16), b""  # same work as a real check: the time does not tell which jobs exist
        ok = hmac.compare_digest(_hash(token or "", salt), expected)
        return ok and token is not None

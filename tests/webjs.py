"""Run the web device's JavaScript (``web/``) from the Python tests: the cross-language checks write inputs the
Python side computed, run a small Node driver from ``web/tools/py/`` on them and compare what it writes back.
(Import as ``from webjs import run_node``.)

The set-up (``make setup``) installs Node's packages with ``npm ci`` in ``web/``; without them these tests fail
with that instruction rather than skip, since the README's test command always has them.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

WEB = Path(__file__).resolve().parents[1] / "web"
DRIVERS = WEB / "tools" / "py"


def node() -> str:
    """The ``node`` executable; fails the test with the set-up step when it or ``web/node_modules`` is missing."""
    exe = shutil.which("node")
    if exe is None:
        pytest.fail("node is not on PATH: install Node.js 20+ (the web device's tests need it), then `make setup`")
    if not (WEB / "node_modules").is_dir():
        pytest.fail("web/node_modules is missing: run `make setup` (it runs `npm ci` in web/)")
    return exe


def run_node(driver: str, *args: str, payload=None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``web/tools/py/<driver>`` with ``args`` (and ``payload`` as JSON on stdin); fail the test with the
    driver's stderr when it exits non-zero."""
    proc = subprocess.run(
        [node(), str(DRIVERS / driver), *map(str, args)], input=None if payload is None else json.dumps(payload),
        capture_output=True, text=True, timeout=timeout,
    )
    if proc.returncode != 0:
        pytest.fail(f"node {driver} exited {proc.returncode}:\n{proc.stderr[-4000:]}")
    return proc

"""Servers, devices and links for the socket-level tests: ``mobillm serve`` in a process of its own, the server's
loop on a thread of this process, a device's set-up on a tiny model, a proxy that cuts connections, and a raw
Hello-then-messages client. (Import as ``from servers import ...``.)"""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from mobillm.backbone import fingerprint, label_token_ids, load_pretrained
from mobillm.data import Batcher, default_template, load_dataset
from mobillm.device.taps import TappedBackbone
from mobillm.server.app import Limits, run_server
from mobillm.server.manager import SessionManager
from mobillm.sidenet import SideConfig
from mobillm.train_config import TrainConfig
from mobillm.wire.codecs import get_codec
from mobillm.wire.messages import Error, Hello, decode_message, encode_message


def start_server(jobs_dir, *options: str) -> tuple[subprocess.Popen, int]:
    """``mobillm serve`` in a process of its own (``options`` appended); the process and its port."""
    server = subprocess.Popen(
        [sys.executable, "-m", "mobillm", "serve", "--port", "0", "--jobs-dir", str(jobs_dir), "--window", "4", *options],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = server.stdout.readline()
        if "listening on" in line:
            return server, int(line.rsplit(":", 1)[1])
        if server.poll() is not None:
            break
    server.kill()
    pytest.fail("the server did not start")


class ThreadServer:
    """The server's asyncio loop on a background thread of this process (for tests that instrument it)."""

    def __init__(self, manager: SessionManager, window: int = 8, tokens=None, tls=None, limits=None, status=False,
                 web=None):
        self.port: int | None = None
        ready = threading.Event()

        def on_ready(port):
            self.port = port
            ready.set()

        self.thread = threading.Thread(
            target=asyncio.run,
            args=(run_server(manager, "127.0.0.1", 0, limits or Limits(window=window), on_ready, tokens, tls, status,
                             web),),
            daemon=True,
        )
        self.thread.start()
        assert ready.wait(30)


def device_setup(model_dir, data_dir, codec="int8", max_train=None):
    model, tokenizer = load_pretrained(model_dir)
    data = load_dataset(data_dir, max_train_samples=max_train, max_eval_samples=32)
    template = default_template(data.label_names)
    side = SideConfig(hidden_size=model.config.hidden_size, num_backbone_layers=4, shortcuts=[2, 4], width=16, block="mlp",
                      num_labels=2, label_token_ids=label_token_ids(tokenizer, template.label_words), codec=codec)
    config = TrainConfig(method="side", epochs=1, batch_size=8)
    hello = Hello(job="overlap", model=model_dir, fingerprint=fingerprint(model), side_config=side, train_config=config,
                  train_samples=len(data.train))
    return hello, TappedBackbone(model, [2, 4]), get_codec(codec), Batcher(tokenizer, template), data


class LoopbackProxy:
    """A loopback TCP proxy on a thread of its own, listening on ``port``; a subclass sets its attributes, then
    calls this ``__init__``, and says in ``_handle`` what happens to each connection (``connections`` so far)."""

    def __init__(self):
        self.connections = 0
        self.port: int | None = None
        ready = threading.Event()
        threading.Thread(target=asyncio.run, args=(self._serve(ready),), daemon=True).start()
        assert ready.wait(10)

    async def _serve(self, ready: threading.Event) -> None:
        server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        ready.set()
        await server.serve_forever()

    async def _handle(self, device_r, device_w) -> None:
        raise NotImplementedError

    @staticmethod
    async def _until_one_ends(pipes, writers) -> None:
        """Run the two directions' ``pipes`` until one ends, then close both sides at once."""
        tasks = [asyncio.create_task(pipe) for pipe in pipes]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            task.cancel()
        for writer in writers:
            writer.transport.abort()


class CuttingProxy(LoopbackProxy):
    """A loopback TCP proxy that cuts each of its first ``cuts`` connections after ``after`` bytes from the device.
    Connections go to the ``targets`` ports in turn (a round-robin load balancer)."""

    def __init__(self, targets: list[int], cuts: int, after: int):
        self.targets, self.cuts, self.after = targets, cuts, after
        super().__init__()

    async def _handle(self, device_r, device_w) -> None:
        index, self.connections = self.connections, self.connections + 1
        server_r, server_w = await asyncio.open_connection("127.0.0.1", self.targets[index % len(self.targets)])
        budget = self.after if index < self.cuts else None

        async def pipe(reader, writer, budget):
            while data := await reader.read(1 << 16):
                if budget is not None:
                    budget -= len(data)
                    if budget <= 0:
                        return  # cut: both sides are closed below, mid-message
                writer.write(data)
                await writer.drain()

        await self._until_one_ends([pipe(device_r, server_w, budget), pipe(server_r, device_w, None)],
                                   (device_w, server_w))


class StallingProxy(LoopbackProxy):
    """A loopback TCP proxy whose first connection stops passing the device's bytes on after ``after`` bytes:
    the device, mid-job, then waits for acks that never come (a moment to kill it in). The rest of what it sends
    is swallowed until it goes away, then the server's side is closed. Later connections pass everything."""

    def __init__(self, target: int, after: int):
        self.target, self.after = target, after
        self.stalled = threading.Event()
        super().__init__()

    async def _handle(self, device_r, device_w) -> None:
        first, self.connections = self.connections == 0, self.connections + 1
        server_r, server_w = await asyncio.open_connection("127.0.0.1", self.target)

        async def pipe(reader, writer, budget: int | None) -> None:
            while data := await reader.read(1 << 16):
                if budget is not None and len(data) >= budget:
                    writer.write(data[:budget])
                    self.stalled.set()
                    while await reader.read(1 << 16):  # swallowed, until the device goes away
                        pass
                    return
                if budget is not None:
                    budget -= len(data)
                writer.write(data)
                await writer.drain()

        await self._until_one_ends([pipe(device_r, server_w, self.after if first else None), pipe(server_r, device_w, None)],
                                   (device_w, server_w))


def kill_when_stalled(process: subprocess.Popen, proxy: StallingProxy, timeout: float = 120) -> None:
    """Kill the device ``process`` once ``proxy`` has stalled its stream (mid-job); fail if it never does."""
    try:
        assert proxy.stalled.wait(timeout), process.stderr.read() if process.poll() is not None else "no batch sent"
    finally:
        process.kill()
        process.wait()


def self_signed(directory: Path, name: str = "localhost") -> tuple[Path, Path]:
    """A self-signed certificate (and its key) for ``name`` and 127.0.0.1, made by the openssl command."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1",
         "-subj", f"/CN={name}", "-addext", f"subjectAltName=IP:127.0.0.1,DNS:{name}"],
        check=True, capture_output=True,
    )
    return cert, key


def tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    """The server side's TLS context of ``cert`` and ``key``."""
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    return tls


async def hello_then(url: str, hello, then=None):
    """Send a Hello (and ``then``'s messages); return the Error and the close code the server answered with."""
    async with connect(url, compression=None, max_size=None) as ws:
        frames = []
        try:  # the server may close before everything is sent (a refused session)
            for message in [encode_message(hello), *(then or [])]:
                await ws.send(message)
        except ConnectionClosed:
            pass
        try:  # what it answered is still readable after the close
            async for data in ws:
                frames.append(decode_message(data).header)
        except ConnectionClosed:
            pass
        return [f for f in frames if isinstance(f, Error)], ws.close_code

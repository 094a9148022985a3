"""A shaped uplink for the benchmarks: a TCP proxy that forwards the device's bytes at a set rate.

The token bucket is plain logic (no I/O, testable alone); the proxy reads one chunk, waits for its tokens,
writes it on, and only then reads the next, so TCP's own back-pressure reaches the device as on a real slow
link (its socket buffers fill, ``send`` blocks, the window fills). The downlink (acks, the side network) is
not shaped: it carries a few hundred bytes per batch.

    python -m mobillm.bench.link LISTEN_PORT TARGET_PORT MBPS      # prints "ready" once listening
"""

from __future__ import annotations

import asyncio
import sys
import time

CHUNK = 64 << 10


class TokenBucket:
    """``rate`` bytes per second, at most ``burst`` bytes ahead; ``delay`` says how long to wait before sending."""

    def __init__(self, rate: float, burst: int = CHUNK):
        if rate <= 0:
            raise ValueError(f"rate must be positive, got {rate}")
        self.rate, self.burst = rate, burst
        self.tokens, self.last = float(burst), None

    def delay(self, nbytes: int, now: float) -> float:
        """Take ``nbytes`` of tokens at time ``now``; the seconds until they exist (0 if they already do)."""
        if self.last is not None:
            self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        self.tokens -= nbytes
        return max(0.0, -self.tokens / self.rate)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, bucket: TokenBucket | None) -> None:
    try:
        while data := await reader.read(CHUNK):
            if bucket is not None:
                await asyncio.sleep(bucket.delay(len(data), time.monotonic()))
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def serve_link(listen_port: int, target_port: int, mbps: float, ready=None) -> None:
    """Forward ``127.0.0.1:listen_port`` to ``127.0.0.1:target_port``, the uplink at ``mbps`` megabits/s."""

    async def handle(device_reader, device_writer):
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", target_port)
        bucket = TokenBucket(mbps * 1e6 / 8)  # one bucket per connection: a reconnect gets the same link
        await asyncio.gather(_pipe(device_reader, server_writer, bucket), _pipe(server_reader, device_writer, None))

    server = await asyncio.start_server(handle, "127.0.0.1", listen_port)
    if ready:
        ready()
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    listen, target, rate = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    asyncio.run(serve_link(listen, target, rate, ready=lambda: print("ready", flush=True)))

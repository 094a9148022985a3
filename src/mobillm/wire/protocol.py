"""Session rules without I/O: sequence numbers, the window of unacked batches, resend and duplicates.

Both sides drive these plain objects with the messages they send and receive; the WebSocket adapters
(``device/client.py``, ``server/app.py``) only move bytes. Tests drive them directly.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable

from mobillm.exceptions import ProtocolError
from mobillm.wire.errors import ErrorCode


class SendWindow:
    """Device side. Every batch gets the next sequence number and is kept until its ``Ack`` arrives, so a
    dropped connection loses nothing: after ``Welcome(last_seq)`` the batches the server lacks are resent.
    At most ``size`` batches are in flight; the device waits only when the window is full."""

    def __init__(self, size: int):
        if size < 1:
            raise ValueError("window size must be >= 1")
        self.size = size
        self.next_seq = 0
        self.pending: OrderedDict[int, bytes] = OrderedDict()

    @property
    def full(self) -> bool:
        return len(self.pending) >= self.size

    def add(self, encode: Callable[[int], bytes]) -> bytes:
        """Assign the next sequence number, encode the message with it, keep it until acked."""
        if self.full:
            raise ProtocolError(ErrorCode.WINDOW_FULL, f"{self.size} batches are already unacked")
        seq = self.next_seq
        data = encode(seq)
        self.pending[seq] = data
        self.next_seq += 1
        return data

    def ack(self, seq: int) -> None:
        if seq not in self.pending:
            raise ProtocolError(ErrorCode.OUT_OF_ORDER, f"ack for seq {seq}, which is not in flight")
        del self.pending[seq]

    def welcome(self, last_seq: int) -> list[bytes]:
        """The server holds every batch up to ``last_seq``: forget those, return the rest to resend in order."""
        for seq in [s for s in self.pending if s <= last_seq]:
            del self.pending[seq]
        return list(self.pending.values())


class ReceiveOrder:
    """Server side. Accept batches in sequence order; recognise resent duplicates; refuse gaps."""

    def __init__(self, last_seq: int = -1):
        self.last_seq = last_seq

    def accept(self, seq: int) -> bool:
        """True for the next new batch, False for a duplicate to re-ack without storing."""
        if seq <= self.last_seq:
            return False
        if seq != self.last_seq + 1:
            raise ProtocolError(ErrorCode.OUT_OF_ORDER, f"batch seq {seq} arrived, expected {self.last_seq + 1}")
        self.last_seq = seq
        return True

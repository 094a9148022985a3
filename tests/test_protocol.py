"""Session rules without I/O: the send window, resend after Welcome, duplicate dropping, and the cache."""

from __future__ import annotations

import pytest

from mobillm.exceptions import ProtocolError
from mobillm.server.cache import ActivationCache
from mobillm.wire.errors import ErrorCode
from mobillm.wire.protocol import ReceiveOrder, SendWindow


def test_window_blocks_when_full_and_frees_on_ack():
    window = SendWindow(2)
    a = window.add(lambda seq: f"batch{seq}".encode())
    window.add(lambda seq: f"batch{seq}".encode())
    assert a == b"batch0" and window.full
    with pytest.raises(ProtocolError, match=ErrorCode.WINDOW_FULL):
        window.add(lambda seq: b"")
    window.ack(0)
    assert not window.full and list(window.pending) == [1]
    with pytest.raises(ProtocolError, match=ErrorCode.OUT_OF_ORDER):
        window.ack(0)


def test_welcome_resends_exactly_what_the_server_lacks():
    window = SendWindow(8)
    for _ in range(5):
        window.add(lambda seq: bytes([seq]))
    window.ack(0)
    assert window.welcome(last_seq=2) == [bytes([3]), bytes([4])]
    assert list(window.pending) == [3, 4] and window.next_seq == 5


def test_receive_order_drops_duplicates_and_refuses_gaps():
    order = ReceiveOrder()
    assert order.accept(0) and order.accept(1)
    assert not order.accept(1) and not order.accept(0)
    with pytest.raises(ProtocolError, match="expected 2"):
        order.accept(3)
    assert order.last_seq == 1


def test_cache_writes_every_batch_to_disk_and_keeps_copies_in_memory_up_to_its_limit(tmp_path):
    cache = ActivationCache(tmp_path / "cache", memory_limit_bytes=10)
    cache.put(0, b"12345678")
    cache.put(1, b"abcdefgh")  # on disk only: memory is full
    cache.put(1, b"ignored")  # a resent duplicate is not stored twice
    assert cache.memory_bytes == 8 and cache.disk_bytes == cache.total_bytes == 16
    assert cache.get(0) == b"12345678" and cache.get(1) == b"abcdefgh"
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["000000000.safetensors", "000000001.safetensors"]
    assert len(cache) == 2 and cache.seqs() == [0, 1] and 1 in cache and 2 not in cache
    with pytest.raises(KeyError):
        cache.get(2)

    # A new process finds what the last one wrote; a half-written entry (no rename) is dropped.
    (tmp_path / "cache" / "000000002.tmp").write_bytes(b"half")
    cache.put(3, b"after a gap")
    restored = ActivationCache(tmp_path / "cache", memory_limit_bytes=10)
    assert restored.restore() == [0, 1, 3] and restored.get(1) == b"abcdefgh"
    restored.drop_from(2)
    assert restored.seqs() == [0, 1] and sorted(p.name for p in (tmp_path / "cache").iterdir()) == [
        "000000000.safetensors", "000000001.safetensors"]


def test_a_protocol_error_survives_pickling_with_its_code():
    """A job in another process (a Ray actor) raises it across to the front end, which answers with its code."""
    import pickle

    err = pickle.loads(pickle.dumps(ProtocolError(ErrorCode.CACHE_FULL, "job 'a' holds 10 bytes")))
    assert type(err) is ProtocolError and err.code == ErrorCode.CACHE_FULL and str(err) == "cache_full: job 'a' holds 10 bytes"

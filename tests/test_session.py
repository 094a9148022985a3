"""The sans-I/O sessions over the in-memory loopback: ordering, duplicates, the window, resend and Done replayed
after a reconnect, Hello first, unexpected messages, and every error code's Error + close code. No sockets."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import numpy as np
import pytest
from helpers import make_hello
from loopback import FakeJob, Loopback, batch_tensors

from mobillm.exceptions import JobLost, PayloadTooBig, ProtocolError, ServerRefused, WireError
from mobillm.wire.errors import ErrorCode
from mobillm.wire.frame import write_frame
from mobillm.wire.messages import (
    Ack,
    Done,
    Error,
    GetSideNet,
    Hello,
    SideNet,
    Welcome,
    decode_message,
    encode_message,
)
from mobillm.wire.session import (
    Acked,
    DeviceSession,
    Failure,
    Opened,
    ServerSession,
    SideNetArrived,
    State,
    failure,
)

DOC = Path(__file__).resolve().parents[1] / "docs" / "protocol.md"


def run(coro):
    return asyncio.run(coro)


def setup(window: int = 4, **kwargs) -> tuple[DeviceSession, Loopback, FakeJob]:
    job = FakeJob()
    device = DeviceSession(make_hello())
    return device, Loopback(device, lambda hello: job, window=window, **kwargs), job


def send_batches(loop: Loopback, device: DeviceSession, seqs) -> None:
    for seq in seqs:
        loop.send(device.batch("train", 0, batch_tensors(seq)))


def test_batches_arrive_in_order_and_acks_free_the_window():
    async def go():
        device, loop, job = setup(window=2)
        opened = await loop.connect()
        assert opened.welcome.window == 2 and opened.welcome.last_seq == -1 and opened.resend == []
        assert device.state is State.OPEN and loop.server.state is State.OPEN
        send_batches(loop, device, [0, 1])
        assert device.window_full
        with pytest.raises(ProtocolError, match=ErrorCode.WINDOW_FULL):
            device.batch("train", 0, batch_tensors(2))
        await loop.to_server_all()
        events = loop.to_device_all(limit=1)
        assert [type(e) for e in events] == [Acked] and events[0].ack.seq == 0 and not device.window_full
        send_batches(loop, device, [2])
        await loop.to_server_all()
        assert [e.ack.seq for e in loop.to_device_all()] == [1, 2] and device.all_acked
        assert job.stored == [0, 1, 2] and not loop.failures

    run(go())


def test_a_reconnect_resends_what_the_server_lacks_and_replays_every_done():
    async def go():
        device, loop, job = setup(window=8)
        await loop.connect()
        send_batches(loop, device, range(3))
        loop.send(device.done(0))
        send_batches(loop, device, range(3, 6))
        await loop.to_server_all(limit=2)  # seqs 0, 1 arrive; 2, Done(0), 3..5 are lost in the cut
        loop.to_device_all(limit=1)  # only Ack(0) reaches the device: seq 1 is held but unacked
        loop.cut()
        assert device.state is State.CLOSED and list(device.window.pending) == [1, 2, 3, 4, 5]

        opened = await loop.connect()
        assert opened.welcome.last_seq == 1 and device.opens == 2
        resent = [decode_message(d).header for d in opened.resend]
        assert [(m.type, getattr(m, "seq", None)) for m in resent] == [("batch", 2), ("batch", 3), ("batch", 4),
                                                                      ("batch", 5), ("done", None)]
        await loop.to_server_all()
        loop.to_device_all()
        assert job.stored == [0, 1, 2, 3, 4, 5] and job.done == [0] and device.all_acked

        # a second cut with everything acked: nothing to resend but the Done, which the job sees again
        loop.cut()
        opened = await loop.connect()
        assert opened.welcome.last_seq == 5 and [decode_message(d).header for d in opened.resend] == [Done(epoch=0)]
        await loop.to_server_all()
        assert job.done == [0, 0] and job.stored == [0, 1, 2, 3, 4, 5]

    run(go())


def test_a_new_device_process_resumes_the_job_from_what_the_server_holds():
    """A device process that ended mid-job, and a new one started on its job state (``resume=True``): the new
    one's first Hello resumes, it numbers on after the Welcome's last_seq, and the job stores every seq once."""
    async def go():
        job = FakeJob()
        first = DeviceSession(make_hello())
        loop = Loopback(first, lambda hello: job)
        await loop.connect()
        send_batches(loop, first, range(4))
        await loop.to_server_all(limit=3)  # seqs 0..2 arrive; the process ends with seq 3 unsent
        loop.cut()

        second = DeviceSession(make_hello(), resume=True)
        loop = Loopback(second, lambda hello: job)
        opened = await loop.connect()
        assert loop.server.hello.resume and opened.welcome.last_seq == 2 and opened.resend == []
        assert second.held == 3
        send_batches(loop, second, [3, 4])  # the device skipped its first 3 batches: these are the 4th and 5th
        loop.send(second.done(0))
        await loop.to_server_all()
        assert [e.ack.seq for e in loop.to_device_all()] == [3, 4] and second.all_acked
        assert job.stored == [0, 1, 2, 3, 4] and job.received == [0, 1, 2, 3, 4] and job.done == [0]

    run(go())


def test_a_resent_duplicate_is_reacked_not_stored_again():
    async def go():
        device, loop, job = setup()
        await loop.connect()
        data = [device.batch("train", 0, batch_tensors(seq)) for seq in range(2)]
        loop.send(*data, data[0])  # seq 0 arrives again after seq 1
        await loop.to_server_all()
        assert job.received == [0, 1, 0] and job.stored == [0, 1]
        assert [e.ack.seq for e in loop.to_device_all(limit=2)] == [0, 1]
        with pytest.raises(ProtocolError, match=ErrorCode.OUT_OF_ORDER):  # the re-ack of a seq no longer in flight
            loop.to_device_all()

    run(go())


def test_a_gap_in_the_sequence_closes_the_session_out_of_order():
    async def go():
        device, loop, job = setup()
        await loop.connect()
        data = [device.batch("train", 0, batch_tensors(seq)) for seq in range(3)]
        loop.send(data[0], data[2])
        await loop.to_server_all()
        (end,) = loop.failures
        assert end.code is ErrorCode.OUT_OF_ORDER and end.close_code == 1002 and job.stored == [0]
        assert loop.server.state is State.CLOSED
        loop.to_device_all(limit=1)
        with pytest.raises(ServerRefused, match=ErrorCode.OUT_OF_ORDER) as info:
            loop.to_device_all()
        assert info.value.code is ErrorCode.OUT_OF_ORDER and device.state is State.CLOSED

    run(go())


def test_the_side_net_request_is_repeated_after_a_reconnect_until_it_arrives():
    async def go():
        device, loop, job = setup()
        await loop.connect()
        loop.send(device.get_side_net())
        loop.cut()
        opened = await loop.connect()
        assert [decode_message(d).header for d in opened.resend] == [GetSideNet()]
        await loop.to_server_all()
        (arrived,) = loop.to_device_all()
        assert isinstance(arrived, SideNetArrived) and isinstance(arrived.frame.header, SideNet)
        assert not device.side_net_pending

    run(go())


# -- what each end refuses ------------------------------------------------------------------------------------
def test_the_first_message_must_be_hello():
    server = ServerSession(window=4)
    with pytest.raises(ProtocolError, match="first message must be hello") as info:
        server.receive(encode_message(Done(epoch=0)))
    end = server.fail(info.value)
    assert end.code is ErrorCode.BAD_HEADER and end.close_code == 1002 and server.state is State.CLOSED
    assert decode_message(end.data).header == Error(code=ErrorCode.BAD_HEADER, message=str(info.value))


def test_the_hello_must_name_the_job_of_the_url():
    async def go():
        device, loop, job = setup(url_job="other", authenticated=True)
        with pytest.raises(ServerRefused, match="auth.*'other'"):
            await loop.connect()
        assert [f.close_code for f in loop.failures] == [1008]

    run(go())
    server = ServerSession(window=4, url_job=None, authenticated=True)  # authenticated, but no /jobs/NAME
    with pytest.raises(ProtocolError, match=ErrorCode.AUTH):
        server.receive(encode_message(make_hello()))


@pytest.mark.parametrize("message", [make_hello(), Welcome(session="s", window=1, last_seq=-1, step=0),
                                     Ack(seq=0, step=0), Error(code=ErrorCode.INTERNAL, message="x")],
                         ids=lambda m: m.type)
def test_an_open_server_session_refuses_what_a_device_does_not_send(message):
    async def go():
        device, loop, job = setup()
        await loop.connect()
        loop.send(encode_message(message))
        await loop.to_server_all()
        assert [(f.code, f.close_code) for f in loop.failures] == [(ErrorCode.UNEXPECTED, 1002)]

    run(go())


def test_text_frames_and_oversized_messages():
    server = ServerSession(window=4, max_bytes=100)
    with pytest.raises(ProtocolError) as text:
        server.receive('{"type": "hello"}')
    assert server.fail(text.value).close_code == 1002 and text.value.code is ErrorCode.BAD_FRAME
    server = ServerSession(window=4, max_bytes=100)
    with pytest.raises(PayloadTooBig) as big:
        server.receive(encode_message(make_hello()))
    end = server.fail(big.value)
    assert (end.code, end.close_code) == (ErrorCode.TOO_BIG, 1009)


@pytest.mark.parametrize("message", [Done(epoch=0), Ack(seq=0, step=0)], ids=lambda m: m.type)
def test_the_device_refuses_what_the_server_does_not_send_then(message):
    device = DeviceSession(make_hello())
    device.hello()
    with pytest.raises(ProtocolError, match="expected welcome") as info:  # before the Welcome
        device.receive(encode_message(message))
    assert info.value.code is ErrorCode.UNEXPECTED
    device.receive(encode_message(Welcome(session="s", window=2, last_seq=-1, step=0)))
    with pytest.raises(ProtocolError, match=ErrorCode.UNEXPECTED):  # a second Welcome, or a device-only message
        device.receive(encode_message(Welcome(session="s", window=2, last_seq=-1, step=0)))
    with pytest.raises(ProtocolError, match=ErrorCode.UNEXPECTED):
        device.receive(encode_message(Done(epoch=0)))
    with pytest.raises(ProtocolError, match=ErrorCode.BAD_FRAME):
        device.receive("text")


def test_the_device_cannot_send_before_it_is_welcomed():
    device = DeviceSession(make_hello())
    with pytest.raises(ProtocolError, match="not been welcomed"):
        device.batch("train", 0, batch_tensors(0))
    device.hello()
    with pytest.raises(ProtocolError, match=ErrorCode.UNEXPECTED):  # one Hello per connection
        device.hello()


# -- error codes ------------------------------------------------------------------------------------------
CLOSE = {  # written out here, apart from the enum, so that a changed close code fails a test
    "bad_frame": 1002, "bad_version": 1002, "unknown_type": 1002, "bad_header": 1002, "bad_batch": 1002,
    "unexpected_tensors": 1002, "unexpected": 1002, "out_of_order": 1002, "window_full": 1002,
    "auth": 1008, "fingerprint_mismatch": 1008, "unknown_model": 1008, "cache_full": 1008,
    "too_big": 1009, "busy": 1013, "idle_timeout": 1001, "internal": 1011, "job_lost": 1012,
}


@pytest.mark.parametrize("code", list(ErrorCode), ids=str)
def test_every_error_code_ends_a_session_with_its_error_and_close_code(code):
    server = ServerSession(window=4)
    end = server.fail(ProtocolError(str(code), "why"))
    assert end.code is code and end.close_code == CLOSE[code] and end.reason == code.value
    assert code.description and server.state is State.CLOSED
    if code is ErrorCode.JOB_LOST:
        assert end.data is None  # no Error: the device takes it for a dropped connection and resumes
    else:
        header = decode_message(end.data).header
        assert header == Error(code=code, message=f"{code}: why") and header.code is code
        device = DeviceSession(make_hello())
        device.hello()
        with pytest.raises(ServerRefused) as refused:
            device.receive(end.data)
        assert refused.value.code is code


def test_the_enum_lists_exactly_the_table_and_failures_map_to_codes():
    assert {c.value: c.close_code for c in ErrorCode} == CLOSE
    fail = ServerSession(window=1).fail
    assert fail(PayloadTooBig("x")).code is ErrorCode.TOO_BIG
    assert fail(WireError("x")).code is ErrorCode.BAD_FRAME
    assert fail(JobLost("actor gone")).code is ErrorCode.JOB_LOST
    end = fail(KeyError("secret detail"))
    assert (end.code, end.close_code, end.message) == (ErrorCode.INTERNAL, 1011, "internal error: KeyError")
    assert isinstance(failure(ErrorCode.BUSY, "full"), Failure) and failure(ErrorCode.BUSY, "full").close_code == 1013


def test_an_unknown_code_is_a_bug_that_raises():
    with pytest.raises(ValueError):
        ErrorCode("no_such_code")
    with pytest.raises(ValueError):
        ProtocolError("no_such_code", "x")
    with pytest.raises(ValueError):
        failure("no_such_code", "x")
    assert ProtocolError("auth", "x").code is ErrorCode.AUTH == "auth"  # a string still compares equal
    forged = encode_message(Error(code="auth", message="x")).replace(b"auth", b"nope")  # same length
    with pytest.raises(ProtocolError, match=ErrorCode.BAD_HEADER):
        decode_message(forged)


def test_the_protocol_doc_lists_every_code_with_its_close_code():
    rows = dict(re.findall(r"^\| `([a-z_]+)` \| (\d{4}) \|", DOC.read_text(), flags=re.MULTILINE))
    assert {code: int(close) for code, close in rows.items()} == {c.value: c.close_code for c in ErrorCode}


# -- the table both devices run (tests/session_rules.json) -------------------------------------------------------
#: The device session's rules as a table that the JS session runs too (web/test/session.test.mjs); see its "about".
RULES = json.loads((Path(__file__).resolve().parent / "session_rules.json").read_text())
OBSERVED = ("error", "refused", "event", "resend", "seq", "loss", "step", "resume", "expect")
RULE_DTYPES = {"I64": np.int64, "F32": np.float32}


def expected(step: dict) -> dict:
    """What the table says a step observes."""
    return {k: step[k] for k in OBSERVED if k in step}


def rule_tensors(spec: dict | None) -> dict[str, np.ndarray]:
    """The table's ``{dtype, shape, data}`` tensors (F16 data are the raw bits, as the JS side holds them)."""
    def array(t):
        if t["dtype"] == "F16":
            return np.array(t["data"], dtype=np.uint16).view(np.float16).reshape(t["shape"])
        return np.array(t["data"], dtype=RULE_DTYPES[t["dtype"]]).reshape(t["shape"])

    return {name: array(t) for name, t in (spec or {}).items()}


def act(device: DeviceSession, step: dict, sent: dict[int, bytes]):
    """One step's action or receive; what it yields (an event, bytes or None)."""
    if "expect" in step:
        return None
    if "server" in step:
        return device.receive(write_frame(rule_tensors(step.get("tensors")), json.dumps({"v": 1, **step["server"]})))
    if "server_text" in step:
        return device.receive(step["server_text"])
    if step["do"] == "batch":
        tensors = {"sample_ids": np.array([step["sample"]], dtype=np.int64), **rule_tensors(RULES["batch"])}
        data = device.batch(step["split"], step["epoch"], tensors)
        sent[decode_message(data).header.seq] = data
        return data
    actions = {"hello": device.hello, "connection_lost": device.connection_lost, "get_side_net": device.get_side_net,
               "done": lambda: device.done(step["epoch"])}
    return actions[step["do"]]()


def describe_resent(data: bytes, sent: dict[int, bytes]) -> str:
    header = decode_message(data).header
    if header.type == "batch":
        return f"batch {header.seq}" + ("" if sent.get(header.seq) == data else " (changed)")
    return f"done {header.epoch}" if header.type == "done" else header.type


def observe(device: DeviceSession, step: dict, outcome, sent: dict[int, bytes]) -> dict:
    """Everything a step's outcome shows; the caller keeps what the table names."""
    if "expect" in step:
        held = {"state": lambda: device.state.value, "opens": lambda: device.opens, "held": lambda: device.held,
                "side_net_pending": lambda: device.side_net_pending, "window_full": lambda: device.window_full,
                "all_acked": lambda: device.all_acked, "pending": lambda: list(device.window.pending)}
        return {"expect": {k: held[k]() for k in step["expect"]}}
    if isinstance(outcome, bytes):
        header = decode_message(outcome).header
        return {"seq": getattr(header, "seq", None), "resume": getattr(header, "resume", None)}
    if isinstance(outcome, Opened):
        return {"event": "opened", "resend": [describe_resent(d, sent) for d in outcome.resend]}
    if isinstance(outcome, Acked):
        return {"event": "acked", "seq": outcome.ack.seq, "loss": outcome.ack.loss}
    if isinstance(outcome, SideNetArrived):
        return {"event": "side_net_arrived", "step": outcome.frame.header.step}
    return {}


def run_rules_case(case: dict) -> list[dict]:
    """Run one case of the table on Python's DeviceSession; per step, what it observed of what the step names."""
    options = {k: case[k] for k in ("max_bytes", "resume") if k in case}
    device = DeviceSession(Hello.model_validate(RULES["hello"]), framework="np", **options)
    sent: dict[int, bytes] = {}
    seen = []
    for step in case["steps"]:
        try:
            outcome = observe(device, step, act(device, step, sent), sent)
        except ServerRefused as err:
            seen.append({"refused": str(err.code)})
            continue
        except ProtocolError as err:
            seen.append({"error": str(err.code)})
            continue
        except PayloadTooBig:
            seen.append({"error": "too_big"})
            continue
        seen.append({k: v for k, v in outcome.items() if k in expected(step)})
    return seen


@pytest.mark.parametrize("case", RULES["cases"], ids=lambda case: case["name"])
def test_the_session_rules_both_devices_run(case):
    assert run_rules_case(case) == [expected(step) for step in case["steps"]]

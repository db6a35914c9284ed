"""The uplink writer over a real socket pair, with the kernel's acknowledgement count under test control.

No test sleeps for a fixed time: each waits for what it needs (bytes at the pool side, an answer,
loop time past a deadline), and "not yet" is asserted only once the writer provably had its chance
(a later write, or a pass of the writer that ended in a wait: `record_sleeps`). Waits scale with
GAGENT_TEST_TIMEOUT_SCALE (conftest.py).
"""
import gevent
import pytest
from gevent import socket

import gagent.uplink
from gagent.uplink import Uplink

from conftest import wait, wait_until

pytestmark = pytest.mark.timeout(30)


class Answers:
    """Stands in for a miner: records the shares the uplink answers, and how many bytes the uplink
    had written when it answered each."""

    def __init__(self, uplink):
        self.uplink = uplink
        self.got = []
        self.written_then = []

    def share_answered(self, msg_id, code):
        self.got.append((msg_id, code))
        self.written_then.append(self.uplink.bytes_sent)


@pytest.fixture
def acked(monkeypatch):
    """A dict whose "bytes" the uplink reads as the pool's acknowledged byte count; every write ends
    at "written" on that scale (setting "bytes" to it acknowledges everything written so far)."""
    state = {"bytes": 0, "written": 1000}
    monkeypatch.setattr(gagent.uplink.tcp, "bytes_acked", lambda sock: state["bytes"])
    monkeypatch.setattr(gagent.uplink.tcp, "stream_end", lambda sock: state["written"])
    return state


@pytest.fixture
def writer():
    """start(flush_delay, mode) -> (uplink, pool side of its socket pair, the miner it answers);
    everything is closed at the end of the test."""
    opened = []

    def start(flush_delay, mode):
        agent_side, pool_side = socket.socketpair()
        uplink = Uplink("test", agent_side, flush_delay, mode, lambda why: None)
        opened.append((uplink, agent_side, pool_side))
        uplink.start()
        return uplink, pool_side, Answers(uplink)

    yield start
    for uplink, agent_side, pool_side in opened:
        uplink.close()
        agent_side.close()
        pool_side.close()


def record_sleeps(monkeypatch, uplink):
    """The writer's passes that end in a wait, as the bytes each left queued, appended as they happen:
    a wait with bytes queued proves the writer looked at them and chose not to send them yet."""
    sleeps = []
    real = uplink._wait_timeout
    monkeypatch.setattr(uplink, "_wait_timeout", lambda now: sleeps.append(len(uplink._out)) or real(now))
    return sleeps


def sent_at_first_look(uplink, sleeps, frame, miner, msg_id):
    """Queue a share and wait for the writer's decision: True if it wrote it before ever waiting
    with it queued, False if it waits (its flush window)."""
    written, mark = uplink.bytes_sent, len(sleeps)
    uplink.queue_share(frame, miner, msg_id)
    assert wait_until(lambda: uplink.bytes_sent > written or any(sleeps[mark:]))
    return not any(sleeps[mark:])


def read_available(sock, seconds):
    """What the writer sent within `seconds` (one read), or b""."""
    sock.settimeout(seconds)
    try:
        return sock.recv(65536)
    except socket.timeout:
        return b""


def loop_now():
    return gevent.get_hub().loop.now()


def wait_for_loop_time(deadline):
    """Wait until the loop time (the writer's clock) is past `deadline`."""
    assert wait_until(lambda: loop_now() > deadline)


def test_a_share_is_answered_once_acknowledged_not_when_the_next_batch_leaves(acked, monkeypatch, writer):
    """Share A left and waits for its ACK while share B waits in its flush window: A's answer must
    come with the ACK, not with B's write (it did: answers then waited twice the window)."""
    monkeypatch.setattr(gagent.uplink, "PROBE_OVERDUE", 3600.0)  # however slow the machine: ACKs count
    uplink, pool_side, miner = writer(0.4, "tcp")
    sleeps = record_sleeps(monkeypatch, uplink)
    uplink.queue_share(b"A" * 15, miner, 1)
    assert read_available(pool_side, wait(2)).startswith(b"A" * 15)  # the first write also carries a probe
    written_a = uplink.bytes_sent
    assert not sent_at_first_look(uplink, sleeps, b"B" * 15, miner, 2)  # B's window started
    acked["bytes"] = acked["written"]  # the pool's ACK for A arrives while B waits
    assert wait_until(lambda: miner.got)
    assert miner.got == [(1, 0)] and miner.written_then == [written_a]  # answered before B left
    assert read_available(pool_side, wait(2)).startswith(b"B" * 15)


def test_after_the_pool_answers_a_probe_the_next_batch_leaves_with_its_first_frame(acked, monkeypatch, writer):
    """The pool's kernel delays its next ACK after it answered: a young batch takes that delay."""
    uplink, pool_side, miner = writer(0.0, "tcp")
    sleeps = record_sleeps(monkeypatch, uplink)
    uplink.queue_share(b"A" * 15, miner, 1)
    assert b"agent.get_capabilities" in read_available(pool_side, wait(2))
    uplink.flush_delay = 5.0
    assert uplink.probe_answered(1)
    assert sent_at_first_look(uplink, sleeps, b"B" * 15, miner, 2)  # not after the 5 s window
    assert read_available(pool_side, wait(2)).startswith(b"B" * 15)
    assert not sent_at_first_look(uplink, sleeps, b"C" * 15, miner, 3)  # the window applies again


def test_in_tcp_mode_answers_wait_while_a_probe_is_overdue(acked, monkeypatch, writer):
    monkeypatch.setattr(gagent.uplink, "PROBE_OVERDUE", 0.1)
    uplink, pool_side, miner = writer(0.0, "tcp")
    uplink.queue_share(b"A" * 15, miner, 1)
    assert read_available(pool_side, wait(2))
    wait_for_loop_time(loop_now() + 0.1)  # the probe, sent before, is overdue when the ACK arrives
    acked["bytes"] = acked["written"]
    uplink.queue_frame(b"R" * 15)  # no share: the pass that writes it looks at the ACKs first
    assert read_available(pool_side, wait(2)) == b"R" * 15
    assert miner.got == []  # acknowledged by the kernel, but the pool may not be reading
    assert uplink.probe_answered(1)
    assert miner.got == [(1, 0)]
    assert uplink.unconfirmed_true == 0  # the probe answer proved it read


def test_in_pool_mode_a_due_probe_waits_for_the_batch_without_spinning(acked, monkeypatch, writer):
    """A batch started before the next probe is due: once due, the probe leaves with the batch and
    the writer sleeps until then (it used to loop without waiting: 0.48 core at a 150 ms window)."""
    uplink, pool_side, miner = writer(0.3, "pool")
    sleeps = record_sleeps(monkeypatch, uplink)
    uplink.queue_share(b"A" * 15, miner, 1)
    assert read_available(pool_side, wait(2)).startswith(b"A" * 15)  # with probe 1
    assert uplink.probe_answered(1)
    assert miner.got == [(1, 0)]
    mark = len(sleeps)
    uplink.queue_share(b"B" * 15, miner, 2)  # B's window starts before the next probe is due (0.1 s)
    uplink.queue_share(b"C" * 15, miner, 3)
    second = read_available(pool_side, wait(2))
    assert second.startswith(b"B" * 15 + b"C" * 15) and b"agent.get_capabilities" in second
    assert len(sleeps) - mark < 10  # woken by the queue and the window, not once per loop iteration


def test_an_idle_writer_answers_acknowledged_shares_once_an_overdue_probe_is_answered(acked, monkeypatch, writer):
    """Nothing else queued: the probe answer must wake the writer to look at the ACKs again."""
    monkeypatch.setattr(gagent.uplink, "PROBE_OVERDUE", 0.1)
    monkeypatch.setattr(gagent.uplink, "PROBE_TIMEOUT", 3600.0)  # a writer left asleep stays asleep
    uplink, pool_side, miner = writer(0.0, "tcp")
    sleeps = record_sleeps(monkeypatch, uplink)
    uplink.queue_share(b"A" * 15, miner, 1)
    assert read_available(pool_side, wait(2))
    wait_for_loop_time(loop_now() + 0.1)  # overdue: the writer stops polling
    mark = len(sleeps)
    uplink.queue_share(b"B" * 15, miner, 2)
    assert read_available(pool_side, wait(2)) == b"B" * 15
    assert wait_until(lambda: len(sleeps) > mark and sleeps[-1] == 0)  # the writer is idle
    assert uplink.probe_answered(1)
    acked["bytes"] = acked["written"]  # B's ACK arrives just after
    assert wait_until(lambda: len(miner.got) == 2)
    assert miner.got == [(1, 0), (2, 0)]


@pytest.mark.parametrize("reply_id", [True, 1.0, "1", [1], None, 2 ** 70, -1])
def test_only_the_probe_id_itself_counts_as_a_probe_answer(acked, reply_id, writer):
    """A pool reply whose id merely compares equal (true, 1.0) or is malformed proves nothing; a
    repeated answer to the same probe proves nothing more."""
    uplink, pool_side, miner = writer(0.0, "pool")
    uplink.queue_share(b"A" * 15, miner, 1)
    assert b"agent.get_capabilities" in read_available(pool_side, wait(2))
    assert uplink.probe_answered(reply_id) is False
    assert miner.got == []
    assert uplink.probe_answered(1) is True
    assert miner.got == [(1, 0)]
    assert uplink.probe_answered(1) is False  # sent twice

"""The uplink writer over a real socket pair, with the kernel's acknowledgement count under test control."""
import gevent
import pytest
from gevent import socket

import gagent.uplink
from gagent.uplink import Uplink

pytestmark = pytest.mark.timeout(30)


class Answers:
    """Stands in for a miner: records the shares the uplink answers."""

    def __init__(self):
        self.got = []

    def share_answered(self, msg_id, code):
        self.got.append((msg_id, code))


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
        return uplink, pool_side, Answers()

    yield start
    for uplink, agent_side, pool_side in opened:
        uplink.close()
        agent_side.close()
        pool_side.close()


def read_available(sock, seconds):
    sock.settimeout(seconds)
    try:
        return sock.recv(65536)
    except socket.timeout:
        return b""


def test_a_share_is_answered_once_acknowledged_not_when_the_next_batch_leaves(acked, writer):
    """Share A left and waits for its ACK while share B waits in its flush window: A's answer must
    come with the ACK, not with B's write (it did: answers then waited twice the window)."""
    uplink, pool_side, miner = writer(0.4, "tcp")
    uplink.queue_share(b"A" * 15, miner, 1)
    first = read_available(pool_side, 2)
    assert first.startswith(b"A" * 15)  # the first write also carries a probe
    uplink.queue_share(b"B" * 15, miner, 2)  # B's window starts
    gevent.sleep(0.02)
    acked["bytes"] = acked["written"]  # the pool's ACK for A arrives while B waits
    gevent.sleep(0.1)
    assert miner.got == [(1, 0)]
    assert read_available(pool_side, 0.01) == b""  # B still in its window
    assert read_available(pool_side, 1).startswith(b"B" * 15)


def test_after_the_pool_answers_a_probe_the_next_batch_leaves_with_its_first_frame(acked, writer):
    """The pool's kernel delays its next ACK after it answered: a young batch takes that delay."""
    uplink, pool_side, miner = writer(5.0, "tcp")
    uplink.flush_delay = 0.0
    uplink.queue_share(b"A" * 15, miner, 1)
    first = read_available(pool_side, 2)
    assert b"agent.get_capabilities" in first
    uplink.flush_delay = 5.0
    assert uplink.probe_answered(1)
    uplink.queue_share(b"B" * 15, miner, 2)
    assert read_available(pool_side, 1) == b"B" * 15  # not after the 5 s window
    uplink.queue_share(b"C" * 15, miner, 3)
    assert read_available(pool_side, 0.3) == b""  # the window applies again


def test_in_tcp_mode_answers_wait_while_a_probe_is_overdue(acked, monkeypatch, writer):
    monkeypatch.setattr(gagent.uplink, "PROBE_OVERDUE", 0.1)
    uplink, pool_side, miner = writer(0.0, "tcp")
    uplink.queue_share(b"A" * 15, miner, 1)
    assert read_available(pool_side, 2)
    gevent.sleep(0.2)  # the probe is overdue when the ACK arrives
    acked["bytes"] = acked["written"]
    gevent.sleep(0.1)
    assert miner.got == []  # acknowledged by the kernel, but the pool may not be reading
    assert uplink.probe_answered(1)
    assert miner.got == [(1, 0)]
    assert uplink.unconfirmed_true == 0  # the probe answer proved it read


def test_in_pool_mode_a_due_probe_waits_for_the_batch_without_spinning(acked, monkeypatch, writer):
    """A batch started before the next probe is due: once due, the probe leaves with the batch and
    the writer sleeps until then (it used to loop without waiting: 0.48 core at a 150 ms window)."""
    uplink, pool_side, miner = writer(0.3, "pool")
    passes = []
    real = uplink._wait_timeout
    monkeypatch.setattr(uplink, "_wait_timeout", lambda now: passes.append(now) or real(now))
    uplink.queue_share(b"A" * 15, miner, 1)
    assert read_available(pool_side, 2).startswith(b"A" * 15)  # with probe 1
    assert uplink.probe_answered(1)
    assert miner.got == [(1, 0)]
    uplink.queue_share(b"B" * 15, miner, 2)  # B's window starts before the next probe is due
    uplink.queue_share(b"C" * 15, miner, 3)
    del passes[:]
    gevent.sleep(0.2)  # the probe falls due at 0.1 s, the batch leaves at 0.3 s
    assert len(passes) < 10
    second = read_available(pool_side, 1)
    assert second.startswith(b"B" * 15 + b"C" * 15) and b"agent.get_capabilities" in second


def test_an_idle_writer_answers_acknowledged_shares_once_an_overdue_probe_is_answered(acked, monkeypatch, writer):
    """Nothing else queued: the probe answer must wake the writer to look at the ACKs again."""
    monkeypatch.setattr(gagent.uplink, "PROBE_OVERDUE", 0.1)
    uplink, pool_side, miner = writer(0.0, "tcp")
    uplink.queue_share(b"A" * 15, miner, 1)
    assert read_available(pool_side, 2)
    gevent.sleep(0.2)  # overdue: the writer stops polling
    uplink.queue_share(b"B" * 15, miner, 2)
    assert read_available(pool_side, 2) == b"B" * 15
    gevent.sleep(0.05)
    assert uplink.probe_answered(1)
    acked["bytes"] = acked["written"]  # B's ACK arrives just after
    gevent.sleep(0.1)
    assert miner.got == [(1, 0), (2, 0)]


@pytest.mark.parametrize("reply_id", [True, 1.0, "1", [1], None, 2 ** 70, -1])
def test_only_the_probe_id_itself_counts_as_a_probe_answer(acked, reply_id, writer):
    """A pool reply whose id merely compares equal (true, 1.0) or is malformed proves nothing; a
    repeated answer to the same probe proves nothing more."""
    uplink, pool_side, miner = writer(0.0, "pool")
    uplink.queue_share(b"A" * 15, miner, 1)
    assert b"agent.get_capabilities" in read_available(pool_side, 2)
    assert uplink.probe_answered(reply_id) is False
    assert miner.got == []
    assert uplink.probe_answered(1) is True
    assert miner.got == [(1, 0)]
    assert uplink.probe_answered(1) is False  # sent twice

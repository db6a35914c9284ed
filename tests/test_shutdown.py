"""Graceful stop, idle sockets and dead peers (issue 10): what an operator restarting gagent would notice."""
import signal
import socket
import subprocess
import sys

import gevent
import pytest

from conftest import LineClient, wait, wait_until
from test_cli import write_agent_conf

pytestmark = pytest.mark.timeout(60)


def test_sigterm_writes_out_queued_shares_unregisters_and_exits_0_within_5_s(pool, tmp_path):
    port, conf = write_agent_conf(tmp_path, pool, connections=1, advanced={
        "pool_connection_number_per_subaccount": 1, "upstream_flush_delay_ms": 800})
    process = subprocess.Popen([sys.executable, "-m", "gagent", "-c", str(conf)])
    clients = []
    try:
        assert wait_until(lambda: len(pool.authorized) == 1, timeout=15)
        sids = []
        for n in range(5):
            client = LineClient(("127.0.0.1", port))
            extranonce1, seen = client.login("demo.stop%d" % n)
            clients.append((client, seen[-1]["params"]))
            sids.append(int(extranonce1, 16))
        assert wait_until(lambda: len(pool.authorized[0].workers) == 5, timeout=5)
        for n, (client, job) in enumerate(clients):
            client.request("mining.submit", ["demo.stop%d" % n, job[0], "%08x" % (n + 1), job[7], "00000001"])
        gevent.sleep(0.1)  # the shares sit in the 800 ms flush window
        assert pool.shares_received == 0
        stopped_at = gevent.get_hub().loop.now()
        process.send_signal(signal.SIGTERM)
        assert wait_until(lambda: process.poll() is not None, timeout=6), "agent did not stop on SIGTERM"
        assert gevent.get_hub().loop.now() - stopped_at < 5.0
        assert process.returncode == 0
        received = {(sid, en2) for _, sid, en2, _ in pool.share_keys()}
        assert received == {(sid, n + 1) for n, sid in enumerate(sids)}  # every queued share reached the pool
        assert pool.unregisters() == 5
        for client, _ in clients:
            while client.read(timeout=5) is not None:
                pass  # then closed
    finally:
        for client, _ in clients:
            client.close()
        if process.poll() is None:
            process.kill()
        process.wait(wait(10))


def test_sigterm_after_answers_on_acknowledgements_waits_until_the_pool_proved_it_read_them(pool, tmp_path):
    """Shares answered `true` on the pool's TCP acknowledgement, with no probe since: a graceful stop
    asks the pool once more instead of closing with shares it cannot vouch for (and saying so)."""
    port, conf = write_agent_conf(tmp_path, pool, connections=1, advanced={
        "pool_connection_number_per_subaccount": 1, "upstream_flush_delay_ms": 50})
    process = subprocess.Popen([sys.executable, "-m", "gagent", "-c", str(conf)], stderr=subprocess.PIPE)
    client = None
    try:
        assert wait_until(lambda: len(pool.authorized) == 1, timeout=15)
        client = LineClient(("127.0.0.1", port))
        _, seen = client.login("demo.settle")
        job = seen[-1]["params"]
        for en2 in (1, 2):  # the first write of shares carries a probe; the second, right after, does not
            msg_id = client.request("mining.submit", ["demo.settle", job[0], "%08x" % en2, job[7], "00000001"])
            assert client.answer(msg_id)["result"] is True
        process.send_signal(signal.SIGTERM)
        assert wait_until(lambda: process.poll() is not None, timeout=6), "agent did not stop on SIGTERM"
        assert process.returncode == 0
        assert "may not have reached it" not in process.stderr.read().decode()
        assert len(pool.share_keys()) == 2
    finally:
        if client is not None:
            client.close()
        if process.poll() is None:
            process.kill()
        process.wait(wait(10))


def test_a_connection_that_never_subscribes_is_closed(monkeypatch, agent_factory):
    import gagent.server
    monkeypatch.setattr(gagent.server, "SUBSCRIBE_TIMEOUT_SECONDS", 0.5)
    monkeypatch.setattr(gagent.server, "SWEEP_SECONDS", 0.2)
    agent = agent_factory()
    idle = LineClient(agent.address)
    working = LineClient(agent.address)
    try:
        working.login("demo.busy")
        assert idle.read(timeout=5) is None  # closed without a word
        assert wait_until(lambda: len(agent.miners) == 1)
        msg_id = working.request("mining.multi_version", [1])
        assert working.answer(msg_id)["result"] is True
    finally:
        idle.close()
        working.close()


def test_keepalive_on_miner_and_pool_sockets(pool, agent, clients):
    clients().login("demo.keep")
    assert wait_until(lambda: len(agent.miners) == 1)
    miner_sock = next(iter(agent.miners.values())).sock
    assert miner_sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
    pool_sock = agent.upstreams[0].session.sock
    assert pool_sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
    assert pool_sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 20000

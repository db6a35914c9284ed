"""End to end: simulated miners → gagent → simulated btcpool pool, on real loopback sockets."""

import gevent
import pytest

from gagent.protocol import hashing
from gagent.sim.miner import SimMiner

from conftest import LineClient, TINY_DIFFICULTY, wait, wait_until

pytestmark = pytest.mark.timeout(60)


def agent_connection(pool):
    assert wait_until(lambda: len(pool.authorized) == 1)
    return pool.authorized[0]


def registered(conn):
    return {sid: worker for sid, (agent, worker) in conn.workers.items()}


def test_handshake_is_btcagent_and_pool_sees_an_agent_session(pool, agent):
    conn = agent_connection(pool)
    assert conn.is_agent and conn.user_agent.startswith("btccom-agent/")
    assert conn.sub_account == "demo"
    upstream = agent.upstreams[0]
    assert upstream.extranonce1 == conn.extranonce1
    assert upstream.difficulty == TINY_DIFFICULTY
    assert "verrol" in upstream.session.pool_capabilities


def test_job_reaches_every_miner_with_pool_extranonce1_appended(pool, agent, clients):
    conn = agent_connection(pool)
    miners = [clients() for _ in range(5)]
    for n, miner in enumerate(miners):
        miner.login("demo.rig%d" % n)
    job = pool.new_job(branches=12)
    for miner in miners:
        notify = miner.read_until(lambda m: m.get("method") == "mining.notify")[-1]["params"]
        assert notify[2] == job.coinb1 + conn.extranonce1
        assert notify[3] == job.coinb2 and notify[4] == job.branches and notify[1] == job.prevhash
        assert notify[8] is False


def test_joining_miner_gets_difficulty_then_clean_job(pool, agent, clients):
    extranonce1, seen = clients().login("demo.rig1")
    assert len(extranonce1) == 8
    methods = [m.get("method") for m in seen if "method" in m]
    assert methods == ["mining.set_difficulty", "mining.notify"]
    assert seen[-2]["params"] == [TINY_DIFFICULTY]
    assert seen[-1]["params"][8] is True


def test_twenty_hashing_miners_every_share_accepted_and_credited(pool, agent):
    miners = [SimMiner(*agent.address, username="demo.rig%02d" % n, max_shares=3).start() for n in range(20)]
    try:
        assert wait_until(lambda: all(m.accepted >= 3 for m in miners), timeout=40), \
            [(m.username, m.accepted, m.rejected, m.error) for m in miners]
        assert wait_until(lambda: sum(s.accepted for s in pool.stats.values()) >= 60)
    finally:
        for miner in miners:
            miner.stop()
    for n, miner in enumerate(miners):
        stats = pool.stats[("demo", "rig%02d" % n)]
        assert stats.accepted == miner.accepted and stats.rejected == 0
    assert all(m.rejected == 0 for m in miners)


def test_version_rolled_and_ntime_rolled_shares_are_accepted(pool, agent):
    miner = SimMiner(*agent.address, username="demo.boost", version_rolling=True, max_shares=3).start()
    try:
        assert wait_until(lambda: miner.accepted >= 3, timeout=30), (miner.accepted, miner.rejected, miner.error)
    finally:
        miner.stop()
    assert pool.stats[("demo", "boost")].accepted == 3
    assert any(len(params) == 6 and int(params[5], 16) for params in miner.submitted())


def test_share_with_rolled_ntime_is_sent_with_time(pool, agent, clients):
    conn = agent_connection(pool)
    client = clients()
    extranonce1, seen = client.login("demo.timer")
    job = seen[-1]["params"]
    ntime = int(job[7], 16) + 1
    header_ok = None
    for nonce in range(2_000_000):  # find a real share at the rolled ntime
        cb = hashing.coinbase(job[2], extranonce1, "00000001", job[3])
        root = hashing.merkle_root(cb, job[4]) if header_ok is None else header_ok
        header_ok = root
        header = hashing.header(int(job[5], 16), job[1], root, ntime, int(job[6], 16), nonce)
        if hashing.meets_difficulty(header, TINY_DIFFICULTY):
            break
    answer = client.answer(client.request("mining.submit", ["demo.timer", job[0], "00000001", "%08x" % ntime,
                                                            "%08x" % nonce]))
    assert answer["result"] is True
    assert wait_until(lambda: pool.stats.get(("demo", "timer")) and pool.stats[("demo", "timer")].accepted == 1)
    assert conn.shares_received == 1


def test_disconnected_miner_is_unregistered(pool, agent, clients):
    conn = agent_connection(pool)
    first, second = clients(), clients()
    first.login("demo.stays")
    second.login("demo.leaves")
    assert wait_until(lambda: sorted(registered(conn).values()) == ["leaves", "stays"])
    second.close()
    assert wait_until(lambda: list(registered(conn).values()) == ["stays"])
    assert [e.kind for e in pool.events if e.worker_name == "leaves"] == ["register", "unregister"]
    assert wait_until(lambda: len(agent.miners) == 1)


def test_per_miner_difficulty_reaches_only_listed_miners_before_their_job(pool, agent, clients):
    conn = agent_connection(pool)
    miners = [clients() for _ in range(4)]
    sids = [int(miner.login("demo.d%d" % n)[0], 16) for n, miner in enumerate(miners)]
    assert wait_until(lambda: len(conn.workers) == 4)
    for round_ in range(5):  # each change directly precedes the job it applies to
        exp = 10 + round_
        pool.new_job(set_diff={conn: (exp, sids[:2])})
        for n, miner in enumerate(miners):
            seen = miner.read_until(lambda m: m.get("method") == "mining.notify")
            methods = [m["method"] for m in seen]
            if n < 2:
                assert methods == ["mining.set_difficulty", "mining.notify"]
                assert seen[0]["params"] == [2 ** exp]
            else:
                assert methods == ["mining.notify"]


def test_later_json_set_difficulty_from_pool_is_ignored(pool, agent, clients):
    client = clients()
    client.login("demo.rig1")
    pool.send_raw_all(b'{"id":null,"method":"mining.set_difficulty","params":[8]}\n')
    pool.new_job()
    seen = client.read_until(lambda m: m.get("method") == "mining.notify")
    assert [m["method"] for m in seen] == ["mining.notify"]


def test_submit_before_authorize_gets_error_24_and_reconnect(agent, clients):
    client = clients()
    client.answer(client.request("mining.subscribe", ["cgminer"]))
    msg_id = client.request("mining.submit", ["demo.x", "0", "00000000", "5a7fba00", "00000000"])
    answer = client.read()
    assert answer["id"] == msg_id and answer["error"][0] == 24
    assert client.read() == {"id": None, "method": "client.reconnect", "params": []}


def test_authorize_before_subscribe_and_duplicate_subscribe(agent, clients):
    client = clients()
    assert client.answer(client.request("mining.authorize", ["demo.x", "x"]))["error"][0] == 25
    client.answer(client.request("mining.subscribe", []))
    assert client.answer(client.request("mining.subscribe", []))["error"][0] == 102
    assert client.answer(client.request("mining.authorize", [7, "x"]))["error"][0] == 104


@pytest.mark.parametrize("params, code", [
    (["demo.x", "999", "00000001", "5a7fba00", "00000001"], 21),
    (["demo.x", "abc", "00000001", "5a7fba00", "00000001"], 21),
    (["demo.x", "0", "0001", "5a7fba00", "00000001"], 27),
    (["demo.x", "0", 12, "5a7fba00", "00000001"], 27),
    (["demo.x", "0", "00000001", "xyz", "00000001"], 27),
    (["demo.x", "0", "00000001", "5a7fba00", "123456789"], 27),
    (["demo.x", "0", "00000001", "5a7fba00", "00000001", "0x1"], 27),
    (["demo.x", "0"], 27),
])
def test_bad_submit_params_get_an_error(pool, agent, clients, params, code):
    client = clients()
    client.login("demo.x")
    assert client.answer(client.request("mining.submit", params))["error"][0] == code


def test_unknown_methods_are_answered_not_ignored(agent, clients):
    client = clients()
    for method in ("no.such.method", "mining.get_transactions", "mining.set_extranonce"):
        assert client.answer(client.request(method, [1]))["error"][0] == 27


def test_bad_input_costs_only_the_offending_miner(pool, agent, clients):
    good = clients()
    good.login("demo.good")
    garbage = clients()
    garbage.send_raw(b"this is not json\n")
    assert garbage.read()["error"][0] == 27
    garbage.send_raw(b'{"id": 5, "method": "mining.subscribe", "params": "oops"}\n[1,2]\n')
    assert garbage.read()["error"][0] == 27 and garbage.read()["error"][0] == 27
    huge = clients()
    huge.send_raw(b'{"id":1,"method":"mining.subscribe","params":["' + b"a" * 20000)
    assert huge.read() is None  # a line over 16 KB: disconnected
    flood = clients()
    try:
        flood.send_raw(b"x" * (1 << 20))
    except OSError:
        pass
    assert flood.read() is None
    binary = clients()
    binary.send_raw(bytes(range(256)) * 4 + b"\n")
    assert binary.read()["error"][0] == 27
    pool.new_job()
    assert good.read_until(lambda m: m.get("method") == "mining.notify")
    late = clients()
    late.login("demo.late")  # the agent still accepts and serves miners


def test_miner_that_stops_reading_does_not_delay_others_and_is_dropped(pool, agent_factory):
    from gevent import socket
    agent = agent_factory(advanced={"miner_backlog_limit_bytes": 64 * 1024})
    stuck = LineClient.__new__(LineClient)
    stuck.sock = socket.socket()
    stuck.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
    stuck.sock.connect(agent.address)
    stuck.buffer, stuck.next_id = b"", 1
    stuck.login("demo.stuck")
    others = [LineClient(agent.address) for _ in range(3)]
    try:
        for n, other in enumerate(others):
            other.login("demo.o%d" % n)
        for _ in range(60):  # ~65 KB jobs pile up for the miner that does not read
            pool.new_job(branches=1000)
            for other in others:
                other.read_until(lambda m: m.get("method") == "mining.notify", timeout=2)
            if len(agent.miners) == 3:
                break
        assert wait_until(lambda: len(agent.miners) == 3), "the stuck miner was not disconnected"
    finally:
        for client in others + [stuck]:
            client.close()


def test_pool_with_wrong_extranonce2_size_is_refused(caplog):
    from gagent.sim.pool import PoolSimulator
    from conftest import make_agent
    pool = PoolSimulator(extranonce2_size=4).start()
    agent = make_agent(pool)
    agent.start()
    try:
        assert not agent.wait_ready(wait(1))
        assert "not BTCAgent-compatible" in caplog.text
        assert all(not c.workers for c in pool.connections)
    finally:
        agent.stop()
        pool.stop()


def test_pool_loss_keeps_the_miner_and_gives_it_work_on_the_new_connection(pool, agent, clients):
    client = clients()
    client.login("demo.rig1")
    pool.close_all()
    seen = client.read_until(lambda m: m.get("method") == "mining.notify", timeout=10)
    assert [m["method"] for m in seen] == ["mining.set_difficulty", "mining.notify"]
    assert seen[-1]["params"][8] is True  # a clean job from the new connection
    assert wait_until(lambda: len(pool.authorized) == 1 and list(registered(pool.authorized[0]).values()) == ["rig1"])
    assert pool.connections_total == 2


def test_client_reconnect_from_pool_reconnects_that_connection(pool, agent):
    agent_connection(pool)
    pool.send_raw_all(b'{"id":null,"method":"client.reconnect","params":[]}\n')
    assert wait_until(lambda: pool.connections_total == 2 and len(pool.authorized) == 1)


@pytest.mark.parametrize("garbage, reconnects", [
    (b"\x7f\x05\x02\x00", True),  # frame shorter than its header
    (b"\x7f\x05\x08\x00\x01\x09\x00\x00", True),  # MINING_SET_DIFF announcing more ids than it carries
    (b'{"id":null,"method":"mining.notify","params":["x"]}\n'
     b'{"id":null,"method":"mining.notify","params":7}\nnot json\n', False),  # logged and ignored
])
def test_bad_pool_input_never_crashes_the_agent(pool, agent, clients, garbage, reconnects):
    client = clients()
    client.login("demo.rig1")
    pool.send_raw_all(garbage)
    if reconnects:  # the connection is re-established; its miner is kept and gets the new job
        assert wait_until(lambda: pool.connections_total == 2 and agent.upstreams[0].ready, timeout=10)
        assert client.read_until(lambda m: m.get("method") == "mining.notify")[-1]["params"][8] is True
    else:
        pool.new_job()
        assert client.read_until(lambda m: m.get("method") == "mining.notify")
        assert pool.connections_total == 1
    fresh = clients()
    fresh.login("demo.rig2")


def test_subres_answers_follow_the_pool_out_of_order(agent_factory, pool):
    pool.shuffle_responses = True
    agent = agent_factory(submit_response_from_server=True)
    assert wait_until(lambda: agent.upstreams[0].ready and agent.upstreams[0].session.submit_responses)
    client = LineClient(agent.address)
    try:
        extranonce1, seen = client.login("demo.subres")
        job = seen[-1]["params"]
        ids = {}
        for n in range(10):  # random nonces: rejected as low difficulty, except a duplicate pair
            nonce = "%08x" % (n // 2 * 2 if n < 2 else n)
            ids[client.request("mining.submit", ["demo.subres", job[0], "%08x" % n if n else "00000000",
                                                  job[7], nonce])] = n
        answers = {}
        while len(answers) < len(ids):
            msg = client.read()
            if msg.get("id") in ids:
                answers[msg["id"]] = msg
        statuses = pool.stats[("demo", "subres")].statuses
        assert sum(statuses.values()) == 10
        for msg_id, msg in answers.items():
            assert msg["result"] is None and msg["error"][0] == 23  # LOW_DIFFICULTY, each its own
    finally:
        client.close()


def assert_no_session_left(agent):
    """Every miner left: no session object survives (a parked greenlet would keep one alive)."""
    import gc
    from gagent.miner import MinerSession
    assert wait_until(lambda: not agent.miners)
    gevent.sleep(0.05)
    gc.collect()
    assert not [o for o in gc.get_objects() if isinstance(o, MinerSession)]


def test_miners_held_past_the_grace_period_are_closed_and_leave_nothing_behind(pool):
    """Miners that authorized while no pool was reachable are held, then let go after the grace period."""
    from conftest import make_agent
    agent = make_agent(pool, advanced={"upstream_grace_seconds": 1})
    pool.stop()  # nothing listens: no upstream will be ready
    agent.start()
    try:
        clients = []
        for n in range(30):
            client = LineClient(agent.address)
            client.answer(client.request("mining.subscribe", []))
            assert client.answer(client.request("mining.authorize", ["demo.r%d" % n, "x"]))["result"] is True
            clients.append(client)
        for client in clients:
            assert client.read(timeout=5) is None  # closed once the grace period ran out
            client.close()
        assert agent.counters.miners_dropped_after_grace == 30
        assert_no_session_left(agent)
    finally:
        agent.stop()


def test_miners_dropped_after_a_pool_loss_leave_nothing_behind(agent_factory, pool):
    agent = agent_factory(advanced={"upstream_grace_seconds": 1})
    clients = [LineClient(agent.address) for _ in range(20)]
    for n, client in enumerate(clients):
        client.login("demo.p%d" % n)
    pool.stop()  # the agent closes these miners from its pool set's greenlet, not theirs
    for client in clients:
        while client.read(timeout=5) is not None:  # kept through the grace period, then closed
            pass
        client.close()
    assert agent.counters.miners_dropped_after_grace == 20
    assert_no_session_left(agent)


def segments_sent(sock) -> int:
    """TCP segments a socket has sent (Linux TCP_INFO tcpi_segs_out): what the uplink carries."""
    import socket
    import struct
    return struct.unpack_from("<I", sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256), 136)[0]


def test_a_burst_of_shares_leaves_in_one_tcp_segment(pool, agent, clients):
    conn = agent_connection(pool)
    miners = [clients() for _ in range(20)]
    jobs = [miner.login("demo.b%d" % n)[1][-1]["params"] for n, miner in enumerate(miners)]
    assert wait_until(lambda: len(conn.workers) == 20)
    gevent.sleep(0.05)  # let the REGISTER frames go first
    uplink = agent.upstreams[0].session.sock
    before = segments_sent(uplink)
    ids = [miner.request("mining.submit", ["demo.b%d" % n, job[0], "00000001", job[7], "%08x" % n])
           for n, (miner, job) in enumerate(zip(miners, jobs))]
    for miner, msg_id in zip(miners, ids):
        assert miner.answer(msg_id)["result"] is True  # answered once written upstream
    assert wait_until(lambda: conn.shares_received == 20)
    assert segments_sent(uplink) - before <= 2  # 20 share frames in one write (plus at most one ACK)

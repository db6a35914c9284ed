"""Mining through gagent to a plain stratum v1 pool: hashing miners, an agent, the stratum pool
simulator checking every share by sha256d; extranonce subdivision, local checks, per-miner difficulty."""
import functools

import pytest

import gagent.stratumv1
from conftest import LineClient, TINY_DIFFICULTY, wait, wait_until
from gagent.config import config_from_dict
from gagent.protocol import hashing
from gagent.protocol.vardiff import Vardiff
from gagent.server import Agent
from gagent.sim.miner import SimMiner
from gagent.sim.stratum_pool import StratumPoolSimulator

pytestmark = pytest.mark.timeout(60)

POOL_DIFFICULTY = TINY_DIFFICULTY * 4  # about one share in four reaches the pool


@pytest.fixture
def stratum_pool_factory():
    pools = []

    def start(**options):
        options.setdefault("default_difficulty", POOL_DIFFICULTY)
        pool = StratumPoolSimulator(**options).start()
        pools.append(pool)
        return pool

    yield start
    for pool in pools:
        pool.stop()


@pytest.fixture
def running():
    """start(pool entries, **settings) -> a started agent, stopped at the end."""
    agents = []

    def start(entries, **settings):
        advanced = {"pool_connection_number_per_subaccount": 1, "miner_start_difficulty": TINY_DIFFICULTY}
        advanced.update(settings.pop("advanced", {}))
        conf = {"agent_listen_ip": "127.0.0.1", "agent_listen_port": 0, "pools": entries, "advanced": advanced,
                "http_listen": ""}
        conf.update(settings)
        agent = Agent(config_from_dict(conf))
        agent.start()
        agents.append(agent)
        assert agent.wait_ready(wait(10)), "no pool connection became ready"
        return agent

    yield start
    for agent in agents:
        agent.stop()


def stratum_entry(pool, user="acct"):
    return ["stratum+tcp://127.0.0.1", pool.address[1], user, "x"]


def mine(agent, names, shares=4, until=lambda: True):
    """Hashing miners through the agent until each has `shares` answers and `until()` holds; returns
    them (stopped)."""
    miners = [SimMiner("127.0.0.1", agent.address[1], username="acct.%s" % name).start() for name in names]
    try:
        assert wait_until(lambda: all(m.accepted + m.rejected >= shares for m in miners) and until(), timeout=30), \
            [(m.username, m.accepted, m.rejected, m.error) for m in miners]
    finally:
        for miner in miners:
            miner.stop()
    return miners


@pytest.mark.parametrize("extranonce2_size, told", [(8, (4, 4)), (6, (2, 4)), (4, (1, 3)), (3, (1, 2))])
def test_miners_share_one_subscription_and_every_share_the_pool_gets_is_valid(
        stratum_pool_factory, running, extranonce2_size, told):
    pool = stratum_pool_factory(extranonce2_size=extranonce2_size)
    agent = running([stratum_entry(pool)], advanced={"pool_connection_number_per_subaccount": 2})
    # about one share in four meets the pool's difficulty: mine until one has (12 shares miss it 3 % of runs)
    miners = mine(agent, ["rig1", "rig2", "rig3"], until=lambda: pool.statuses.get("accepted", 0) > 0)
    assert pool.connections_total == 2  # one subscription per upstream connection, not per miner
    for miner in miners:
        assert (len(miner.extranonce1) // 2, miner.extranonce2_size) == told
        assert miner.rejected == 0
    extranonce1s = {m.extranonce1 for m in miners}
    assert len(extranonce1s) == 3  # each miner its own prefix: no two do the same work
    # the pool hashed every share it got, found each valid, and credited the configured user
    assert pool.statuses["accepted"] > 0
    assert sum(count for reason, count in pool.statuses.items() if reason != "accepted") == 0
    assert set(pool.stats) == {"acct"}
    # shares that met only the miner's difficulty were answered here and never sent
    answered = sum(m.accepted for m in miners)
    assert pool.statuses["accepted"] < answered
    for share in pool.shares:
        assert share.difficulty >= POOL_DIFFICULTY


def test_a_share_below_the_miners_difficulty_is_refused_here(stratum_pool_factory, running):
    pool = stratum_pool_factory()
    agent = running([stratum_entry(pool)], advanced={"miner_start_difficulty": 1024})
    client = LineClient(agent.address)
    try:
        extranonce1, seen = client.login("acct.low")
        job = [m for m in seen if m.get("method") == "mining.notify"][-1]["params"]
        difficulty = [m for m in seen if m.get("method") == "mining.set_difficulty"][-1]["params"][0]
        assert difficulty == pytest.approx(POOL_DIFFICULTY)  # never above the connection's pool difficulty
        nonce = find_nonce(job, extranonce1, "00000001", below=hashing.target_for_difficulty(difficulty))
        msg_id = client.request("mining.submit", ["acct.low", job[0], "00000001", job[7], "%08x" % nonce])
        assert client.answer(msg_id)["error"][0] == 23
        assert pool.shares_received == 0  # nothing went upstream
    finally:
        client.close()


def find_nonce(job, extranonce1, extranonce2, below):
    """A nonce whose header hash is above `below` (does not meet that target)."""
    coinbase = hashing.coinbase(job[2], extranonce1, extranonce2, job[3])
    root = hashing.merkle_root(coinbase, job[4])
    for nonce in range(1000):
        header = hashing.header(int(job[5], 16), job[1], root, int(job[7], 16), int(job[6], 16), nonce)
        if hashing.header_hash_int(header) > below:
            return nonce
    raise AssertionError("no failing nonce found")


def test_each_miner_gets_its_own_difficulty_from_gagents_vardiff(stratum_pool_factory, running, monkeypatch):
    """Miners far faster than their start difficulty are raised, each on its own shares, and never
    above the pool's difficulty for the connection."""
    monkeypatch.setattr(gagent.stratumv1, "Vardiff", functools.partial(Vardiff, retarget_shares=4,
                                                                       retarget_seconds=600.0))
    pool = stratum_pool_factory(default_difficulty=TINY_DIFFICULTY * 64)
    agent = running([stratum_entry(pool)], advanced={"miner_start_difficulty": TINY_DIFFICULTY / 64})
    sessions = {}  # the agent's sessions, taken while the miners still mine (they leave once stopped)
    miners = mine(agent, ["fast1", "fast2"], shares=12,
                  until=lambda: sessions.update((m.worker_name, m) for m in agent.miners.values()) or True)
    for miner in miners:
        assert TINY_DIFFICULTY / 64 < miner.difficulty <= TINY_DIFFICULTY * 64
    assert set(sessions) == {"fast1", "fast2"}
    for name, session in sessions.items():
        assert session.difficulty > TINY_DIFFICULTY / 64 and session.hashrate() > 0
    assert sum(count for reason, count in pool.statuses.items() if reason != "accepted") == 0


def test_a_pool_leaving_less_than_three_bytes_is_refused_with_a_reason(stratum_pool_factory, caplog):
    pool = stratum_pool_factory(extranonce2_size=2)
    conf = {"agent_listen_ip": "127.0.0.1", "agent_listen_port": 0, "pools": [stratum_entry(pool)],
            "http_listen": "", "advanced": {"pool_connection_number_per_subaccount": 1}}
    agent = Agent(config_from_dict(conf))
    agent.start()
    try:
        assert wait_until(lambda: "too few to share" in caplog.text, timeout=10)
        assert not agent.wait_ready(0.1)
    finally:
        agent.stop()


def test_worker_names_upstream_where_the_pool_takes_them(stratum_pool_factory, running):
    """Opt-in per pool entry: each worker authorized as user.worker on the shared connection, and every
    share credited to the worker that found it."""
    pool = stratum_pool_factory(second_authorize="per_name", strict_worker_names=True)
    agent = running([stratum_entry(pool) + [{"worker_names": True}]])
    mine(agent, ["rig1", "rig2"], until=lambda: {"acct.rig1", "acct.rig2"} <= set(pool.stats))
    assert pool.connections_total == 1
    assert set(pool.stats) <= {"acct", "acct.rig1", "acct.rig2"}  # "acct": shares before the pool's yes
    assert all(share.worker == share.submitted_as for share in pool.shares)
    assert sum(count for reason, count in pool.statuses.items() if reason != "accepted") == 0


@pytest.mark.parametrize("behaviour", ["error", "silent"])
def test_a_pool_refusing_worker_names_gets_every_share_under_the_user(stratum_pool_factory, running, caplog,
                                                                      monkeypatch, behaviour):
    """btcpool answers a second authorize with an error, ckpool not at all: shares go under the
    configured user, said once in the log."""
    monkeypatch.setattr(gagent.stratumv1, "WORKER_AUTHORIZE_SECONDS", 0.5)
    pool = stratum_pool_factory(second_authorize=behaviour)
    agent = running([stratum_entry(pool) + [{"worker_names": True}]])
    mine(agent, ["rig1", "rig2"], until=lambda: "shares go under acct" in caplog.text and pool.shares)
    assert set(pool.stats) == {"acct"}
    assert sum(count for reason, count in pool.statuses.items() if reason != "accepted") == 0
    assert caplog.text.count("shares go under acct") == 1


def test_failover_from_a_btcagent_pool_to_a_plain_stratum_backup_and_back_keeps_miners(
        pool, stratum_pool_factory, running):
    """The BTCAgent pool goes down: its miners move to the plain stratum backup and mine there, then
    back to the BTCAgent pool once it answers again; no miner is disconnected."""
    backup = stratum_pool_factory(extranonce2_size=8)
    agent = running([["127.0.0.1", pool.address[1], "acct"], stratum_entry(backup)],
                    advanced={"pool_failback_seconds": 1})
    miners = [SimMiner("127.0.0.1", agent.address[1], username="acct.rig%d" % n).start() for n in range(2)]
    try:
        assert wait_until(lambda: pool.accepted_shares() >= 2, timeout=20)
        pool.pause_listening()
        pool.close_all()
        assert wait_until(lambda: agent.upstreams[0].ready and agent.upstreams[0].pool.kind == "stratum", timeout=10)
        assert wait_until(lambda: backup.statuses["accepted"] >= 2, timeout=30)
        before = pool.accepted_shares()
        pool.resume_listening()
        assert wait_until(lambda: agent.upstreams[0].ready and agent.upstreams[0].pool.kind == "btcagent", timeout=10)
        assert wait_until(lambda: pool.accepted_shares() > before, timeout=20)
        assert all(not m.closed and m.error is None for m in miners)
        assert len(agent.miners) == 2 and agent.counters.upstream_failbacks == 1
        assert pool.rejected_shares() == 0
        assert sum(count for reason, count in backup.statuses.items() if reason != "accepted") == 0
    finally:
        for miner in miners:
            miner.stop()


def test_version_rolling_miners_get_the_pool_mask_anded_with_theirs(stratum_pool_factory, running):
    """AntPool answers mining.configure with 5fffe000: miners roll inside it, and their version bits
    go upstream with the shares the pool then accepts."""
    pool = stratum_pool_factory(version_mask=0x5FFFE000)
    agent = running([stratum_entry(pool)])
    miners = [SimMiner("127.0.0.1", agent.address[1], username="acct.boost", version_rolling=True).start()]
    try:
        assert wait_until(lambda: miners[0].accepted >= 4 and any(s.version_bits for s in pool.shares), timeout=30)
        assert miners[0].version_mask == 0x1FFFE000  # it asked for 1fffe000
        assert miners[0].rejected == 0
        assert sum(count for reason, count in pool.statuses.items() if reason != "accepted") == 0
    finally:
        miners[0].stop()
    client = LineClient(agent.address)
    try:
        msg_id = client.request("mining.configure", [["version-rolling"], {"version-rolling.mask": "ffffffff"}])
        assert client.answer(msg_id)["result"] == {"version-rolling": True, "version-rolling.mask": "5fffe000"}
    finally:
        client.close()


def test_the_pools_set_extranonce_keeps_miners_mining_without_a_reconnect(stratum_pool_factory, running):
    """The pool's new extranonce1 goes into coinb1 of its next jobs: miners keep their own."""
    pool = stratum_pool_factory(extranonce2_size=8)
    agent = running([["stratum+tcp://127.0.0.1#xnsub", pool.address[1], "acct", "x"]])
    miner = SimMiner("127.0.0.1", agent.address[1], username="acct.rig").start()
    try:
        assert wait_until(lambda: miner.accepted >= 2, timeout=20)
        assert wait_until(lambda: pool.connections and pool.connections[0].xnsub)
        old = pool.connections[0].extranonce1
        pool.set_extranonce(None)
        new = pool.connections[0].extranonce1
        assert new != old
        assert wait_until(lambda: agent.upstreams[0].extranonce1 == new)
        pool.new_job()  # not clean: shares of the earlier jobs stay valid, with the extranonce1 they came with
        assert wait_until(lambda: sum(share.extranonce1 == new for share in pool.shares) >= 2, timeout=30)
        assert not miner.closed and pool.connections_total == 1
        assert sum(count for reason, count in pool.statuses.items() if reason != "accepted") == 0, pool.statuses
        assert miner.rejected == 0
    finally:
        miner.stop()


def test_pool_ping_and_reconnect_are_handled(stratum_pool_factory, running):
    pool = stratum_pool_factory()
    agent = running([stratum_entry(pool)])
    miner = SimMiner("127.0.0.1", agent.address[1], username="acct.rig").start()
    try:
        assert wait_until(lambda: miner.accepted >= 1, timeout=20)
        pool.ping()
        assert wait_until(lambda: any(reply.get("result") == "pong" for c in pool.connections for reply in c.replies))
        pool.reconnect()
        assert wait_until(lambda: pool.connections_total == 2 and agent.upstreams[0].ready, timeout=10)
        accepted = miner.accepted
        assert wait_until(lambda: miner.accepted > accepted + 1, timeout=20)
        assert not miner.closed
    finally:
        miner.stop()


def test_btcagent_pools_can_have_shares_checked_here_too(pool, running):
    """advanced.check_shares_locally: junk is answered 23 at once instead of travelling to the pool;
    good shares go on as before."""
    agent = running([["127.0.0.1", pool.address[1], "acct"]], advanced={"check_shares_locally": True})
    client = LineClient(agent.address)
    try:
        extranonce1, seen = client.login("acct.junk")
        job = [m for m in seen if m.get("method") == "mining.notify"][-1]["params"]
        difficulty = [m for m in seen if m.get("method") == "mining.set_difficulty"][-1]["params"][0]
        nonce = find_nonce(job, extranonce1, "00000001", below=hashing.target_for_difficulty(difficulty))
        msg_id = client.request("mining.submit", ["acct.junk", job[0], "00000001", job[7], "%08x" % nonce])
        assert client.answer(msg_id)["error"][0] == 23
    finally:
        client.close()
    miners = mine(agent, ["good"], shares=3)
    assert miners[0].rejected == 0 and pool.accepted_shares() >= 3
    assert pool.rejected_shares() == 0 and pool.shares_received == pool.accepted_shares()  # no junk reached it


class CollidingIds:
    """Session ids whose low bytes collide (5, 261, 517, …): with a 1-byte prefix no two fit one connection."""

    def __init__(self):
        self.next = 5

    def allocate(self):
        session_id, self.next = self.next, self.next + 256
        return session_id

    def free(self, session_id):
        pass


def test_a_full_connection_makes_the_pool_set_open_another(stratum_pool_factory, running):
    """A pool giving 4 bytes of extranonce2 leaves a 1-byte prefix: miners whose prefixes collide
    cannot share a connection, so the pool set opens more and every miner mines on its own prefix."""
    pool = stratum_pool_factory(extranonce2_size=4)
    agent = running([stratum_entry(pool)])
    agent.session_ids = CollidingIds()
    miners = mine(agent, ["a", "b", "c"], shares=3,
                  until=lambda: [u.miner_count for u in agent.upstreams] == [1, 1, 1])
    assert pool.connections_total == 3
    assert {m.extranonce1 for m in miners} == {"05"}  # the same prefix, on three connections
    assert all(m.rejected == 0 for m in miners)
    assert sum(count for reason, count in pool.statuses.items() if reason != "accepted") == 0


def test_jobs_older_than_the_live_window_are_stale_and_their_memory_freed(stratum_pool_factory, running):
    pool = stratum_pool_factory()
    agent = running([stratum_entry(pool)])
    client = LineClient(agent.address)
    try:
        _, seen = client.login("acct.old")
        old = [m for m in seen if m.get("method") == "mining.notify"][-1]["params"]
        for _ in range(gagent.stratumv1.LIVE_JOBS):
            pool.new_job()
            client.read_until(lambda m: m.get("method") == "mining.notify")
        session = agent.upstreams[0].session
        jobs = [job for job in session._jobs if job is not None]
        assert len(jobs) == gagent.stratumv1.LIVE_JOBS + 1
        assert [job.check.seen is None for job in jobs] == [True] + [False] * gagent.stratumv1.LIVE_JOBS
        msg_id = client.request("mining.submit", ["acct.old", old[0], "00000001", old[7], "00000001"])
        assert client.answer(msg_id)["error"][0] == 21
    finally:
        client.close()

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


def mine(agent, names, shares=4):
    """Hashing miners through the agent until each has `shares` answers; returns them (stopped)."""
    miners = [SimMiner("127.0.0.1", agent.address[1], username="acct.%s" % name).start() for name in names]
    try:
        assert wait_until(lambda: all(m.accepted + m.rejected >= shares for m in miners), timeout=30), \
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
    miners = mine(agent, ["rig1", "rig2", "rig3"])
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
    miners = mine(agent, ["fast1", "fast2"], shares=12)
    for miner in miners:
        assert TINY_DIFFICULTY / 64 < miner.difficulty <= TINY_DIFFICULTY * 64
    sessions = {m.worker_name: m for m in agent.miners.values()}
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

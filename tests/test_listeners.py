"""Several listeners in one process: each its own port, pools and options; shares stay where they belong."""
import json
import socket as std_socket

import pytest
from prometheus_client.parser import text_string_to_metric_families

import gagent.server
from conftest import TINY_DIFFICULTY, free_port, http_request, wait, wait_until
from gagent.config import config_from_dict
from gagent.farm import Farm, ListenerError
from gagent.sim.miner import SimMiner
from gagent.sim.pool import PoolSimulator
from gagent.sim.stratum_pool import StratumPoolSimulator
from gagent.status import StatusServer

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def farm_factory():
    started = []

    def start(conf):
        farm = Farm(config_from_dict(conf))
        farm.start()
        started.append(farm)
        status = StatusServer(farm, ("127.0.0.1", 0))
        status.start()
        started.append(status)
        return farm, status

    yield start
    for thing in reversed(started):
        thing.stop()


def listener(name, pools, **keys):
    advanced = {"pool_connection_number_per_subaccount": 1, "miner_start_difficulty": TINY_DIFFICULTY}
    advanced.update(keys.pop("advanced", {}))
    return dict({"name": name, "agent_listen_ip": "127.0.0.1", "agent_listen_port": free_port(), "pools": pools,
                 "advanced": advanced}, **keys)


def metrics(status):
    _, _, body = http_request(status.address, "/metrics")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body.decode()) for s in family.samples}


def test_three_listeners_keep_their_miners_and_shares_apart(farm_factory):
    btcpool = PoolSimulator(default_difficulty=TINY_DIFFICULTY).start()
    other = StratumPoolSimulator(default_difficulty=TINY_DIFFICULTY * 4).start()
    try:
        farm, status = farm_factory({"http_listen": "", "listeners": [
            listener("alpha", [["127.0.0.1", btcpool.address[1], "demo"]]),
            listener("beta", [["127.0.0.1", btcpool.address[1], "demo"]]),  # same pool, same sub-account
            listener("gamma", [["stratum+tcp://127.0.0.1", other.address[1], "acct"]])]})
        assert farm.wait_ready(wait(10))
        alpha, beta, gamma = farm.agents
        miners = {agent.name: [SimMiner("127.0.0.1", agent.address[1], username="demo.%s%d" % (agent.name, n)).start()
                               for n in range(2)] for agent in farm.agents}
        try:
            # gamma's pool takes about one share in four: mine until it has one (6 shares miss it 18 % of runs)
            assert wait_until(lambda: all(m.accepted >= 3 for ms in miners.values() for m in ms)
                              and other.statuses.get("accepted", 0) > 0, timeout=30)
            # each pool connection carries only its own listener's workers
            for agent in (alpha, beta):
                [upstream] = agent.upstreams
                [conn] = [c for c in btcpool.authorized if c.extranonce1 == upstream.extranonce1]
                assert sorted(w for _, w in conn.workers.values()) == ["%s0" % agent.name, "%s1" % agent.name]
            assert {w for (_, w) in btcpool.stats} == {"alpha0", "alpha1", "beta0", "beta1"}
            assert other.statuses["accepted"] > 0 and set(other.stats) == {"acct"}
            assert btcpool.rejected_shares() == 0
            assert sum(n for reason, n in other.statuses.items() if reason != "accepted") == 0
            # per-listener series
            scrape = metrics(status)
            for agent in farm.agents:
                sub_account = "acct" if agent is gamma else "demo"
                assert scrape[("gagent_miners_authorized", (("listener", agent.name),
                                                            ("sub_account", sub_account)))] == 2
                assert scrape[("gagent_healthy", (("listener", agent.name),))] == 1
            document = json.loads(http_request(status.address, "/status.json")[2])
            assert [entry["name"] for entry in document["listeners"]] == ["alpha", "beta", "gamma"]
            assert all(entry["totals"]["authorized"] == 2 for entry in document["listeners"])
            assert sorted(m["listener"] for m in document["miners"]) == ["alpha"] * 2 + ["beta"] * 2 + ["gamma"] * 2
            # gamma's pool goes down: only gamma's miners are held, the others mine on
            other.pause_listening()
            other.close_all()
            assert wait_until(lambda: gamma.pool_sets["acct"].held_count == 2, timeout=10)
            assert alpha.pool_sets["demo"].held_count == 0 and beta.pool_sets["demo"].held_count == 0
            before = btcpool.accepted_shares()
            assert wait_until(lambda: btcpool.accepted_shares() >= before + 4, timeout=20)
            status_code, _, body = http_request(status.address, "/healthz")
            assert (status_code, body) == (503, b"listener gamma: no pool connection ready\n")
            assert all(not m.closed for ms in miners.values() for m in ms)
        finally:
            for ms in miners.values():
                for miner in ms:
                    miner.stop()
    finally:
        btcpool.stop()
        other.stop()


def test_status_shows_the_port_a_listener_is_bound_to(farm_factory):
    pool = PoolSimulator(default_difficulty=TINY_DIFFICULTY).start()
    try:
        farm, status = farm_factory({"http_listen": "", "listeners": [
            listener("fixed", [["127.0.0.1", pool.address[1], "demo"]]),
            listener("any-port", [["127.0.0.1", pool.address[1], "demo"]], agent_listen_port=0)]})
        fixed, any_port = farm.agents
        document = json.loads(http_request(status.address, "/status.json")[2])
        addresses = [entry["address"] for entry in document["listeners"]]
        assert addresses == ["127.0.0.1:%d" % fixed.config.agent_listen_port, "127.0.0.1:%d" % any_port.address[1]]
        assert any_port.address[1] != 0
    finally:
        pool.stop()


def test_a_multi_user_listener_with_no_miner_yet_is_healthy_when_its_pools_answer(farm_factory, monkeypatch):
    """/healthz must let the first miner in: before it, there is no sub-account to connect, so the
    listener is healthy when its pools are reachable."""
    monkeypatch.setattr(gagent.server, "REACHABILITY_SECONDS", 0.2)
    pool = PoolSimulator(default_difficulty=TINY_DIFFICULTY).start()
    try:
        farm, status = farm_factory({"http_listen": "", "listeners": [
            listener("hosting", [["127.0.0.1", pool.address[1], ""]], multi_user_mode=True)]})
        assert wait_until(lambda: http_request(status.address, "/healthz")[0] == 200, timeout=10)
        assert not farm.agents[0].pool_sets  # healthy with no pool connection open
        pool.pause_listening()
        assert wait_until(lambda: http_request(status.address, "/healthz")[2] == b"no pool reachable\n", timeout=10)
        pool.resume_listening()
        assert wait_until(lambda: http_request(status.address, "/healthz")[0] == 200, timeout=10)
    finally:
        pool.stop()


def test_a_listener_whose_port_is_taken_stops_start_up_naming_it():
    taken = std_socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    first_port = free_port()
    farm = Farm(config_from_dict({"pools": [["127.0.0.1", 1, "demo"]], "listeners": [
        {"name": "first", "agent_listen_ip": "127.0.0.1", "agent_listen_port": first_port},
        {"name": "customer-b", "agent_listen_ip": "127.0.0.1", "agent_listen_port": taken.getsockname()[1]}]}))
    try:
        with pytest.raises(ListenerError, match=r"^cannot listen on 127.0.0.1:%d \(listener customer-b\): the port "
                                               r"is in use" % taken.getsockname()[1]):
            farm.start()
        probe = std_socket.socket()
        probe.bind(("127.0.0.1", first_port))  # the first listener's port was closed again
        probe.close()
    finally:
        taken.close()

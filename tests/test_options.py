"""Every BTCAgent option, and the message sequences of real firmware (issue 14), end to end on loopback."""
import pytest
import trustme

from gagent.sim.miner import SimMiner
from gagent.sim.pool import PoolSimulator

from conftest import PASSWORD, TINY_DIFFICULTY, USER, LineClient, free_port, start_agent, wait, wait_until

pytestmark = pytest.mark.timeout(60)


# ---- multi_user_mode ----------------------------------------------------------------------------

def test_multi_user_mode_credits_each_sub_account_only_its_own_shares():
    pool = PoolSimulator(default_difficulty=TINY_DIFFICULTY, sub_accounts=["alice", "bob", "carol"],
                         authorize_delay=0.3).start()  # a new sub-account's authorize comes late
    agent = start_agent([pool.address[1]], sub_account="ignored-in-multi-user", multi_user_mode=True,
                        advanced={"pool_connection_number_per_subaccount": 2})
    miners = [SimMiner(*agent.address, username="%s.rig%d" % (sub, n), max_shares=3).start()
              for sub in ("alice", "bob", "carol") for n in range(2)]
    try:
        assert wait_until(lambda: all(m.accepted >= 3 for m in miners), timeout=40), \
            [(m.username, m.accepted, m.rejected, m.error) for m in miners]
        assert all(not m.closed for m in miners)  # held while their sub-account's connections opened
        for miner in miners:
            sub, worker = miner.username.split(".")
            assert pool.stats[(sub, worker)].accepted == miner.accepted
        assert {k[0] for k in pool.stats} == {"alice", "bob", "carol"}
        assert sorted(agent.pool_sets) == ["alice", "bob", "carol"]
        assert all(len(ps.connections) == 2 for ps in agent.pool_sets.values())
        assert {c.sub_account for c in pool.authorized} == {"alice", "bob", "carol"}
    finally:
        for miner in miners:
            miner.stop()
        agent.stop()
        pool.stop()


def test_multi_user_mode_refuses_unknown_and_missing_sub_accounts_with_an_error_the_miner_shows(monkeypatch):
    import gagent.server
    monkeypatch.setattr(gagent.server, "SWEEP_SECONDS", 0.2)
    monkeypatch.setattr(gagent.server, "POOL_SET_IDLE_SECONDS", 0.5)
    pool = PoolSimulator(default_difficulty=TINY_DIFFICULTY, refuse_sub_accounts=["mallory"]).start()
    agent = start_agent([pool.address[1]], multi_user_mode=True)
    try:
        refused = LineClient(agent.address)
        refused.answer(refused.request("mining.subscribe", []))
        answer = refused.answer(refused.request("mining.authorize", ["mallory.rig1", "x"]), timeout=10)
        assert answer["error"][0] == 29 and "mallory" in answer["error"][1]
        assert refused.read() is None
        bare = LineClient(agent.address)
        bare.answer(bare.request("mining.subscribe", []))
        assert bare.answer(bare.request("mining.authorize", ["rig-without-sub", "x"]))["error"][0] == 29
        good = LineClient(agent.address)
        good.login("dave.rig1")
        assert wait_until(lambda: any(c.sub_account == "dave" for c in pool.authorized))
        good.close()
        # the last miner left: its sub-account's connections close a while later
        assert wait_until(lambda: "dave" not in agent.pool_sets, timeout=5)
        assert wait_until(lambda: not any(c.sub_account == "dave" for c in pool.authorized))
        bare.close()
    finally:
        agent.stop()
        pool.stop()


# ---- pool_use_tls ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tls_pool(tmp_path_factory):
    ca = trustme.CA()
    context = __import__("ssl").SSLContext(__import__("ssl").PROTOCOL_TLS_SERVER)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(context)
    pool = PoolSimulator(default_difficulty=TINY_DIFFICULTY, ssl_context=context).start()
    ca_file = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    yield pool, str(ca_file)
    pool.stop()


def test_tls_pool_with_a_trusted_certificate_serves_miners(tls_pool):
    pool, ca_file = tls_pool
    agent = start_agent([pool.address[1]], pool_use_tls=True, advanced={"tls_ca_file": ca_file})
    miner = SimMiner(*agent.address, username="demo.tls", max_shares=2).start()
    try:
        assert wait_until(lambda: miner.accepted >= 2, timeout=30)
        assert pool.stats[("demo", "tls")].accepted >= 2
    finally:
        miner.stop()
        agent.stop()


def test_tls_pool_with_an_untrusted_certificate_is_refused_with_a_clear_line(tls_pool, caplog):
    pool, _ = tls_pool
    agent = start_agent([pool.address[1]], pool_use_tls=True)
    try:
        assert wait_until(lambda: "tls_skip_certificate_verify" in caplog.text, timeout=5)
        assert not agent.upstreams[0].ready
        line = next(r.getMessage() for r in caplog.records if "tls_skip_certificate_verify" in r.getMessage())
        assert "not trusted" in line and "\n" not in line
    finally:
        agent.stop()


def test_tls_verification_skipped_on_request(tls_pool):
    pool, _ = tls_pool
    agent = start_agent([pool.address[1]], pool_use_tls=True, advanced={"tls_skip_certificate_verify": True})
    try:
        assert agent.wait_ready(wait(5))
    finally:
        agent.stop()


# ---- proxy ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("scheme", ["socks5", "http"])
def test_pool_reached_through_a_proxy_after_a_refusing_one(pproxy, pool, scheme, caplog):
    dead = "socks5://127.0.0.1:%d" % free_port()
    working = "%s://%s:%s@127.0.0.1:%d" % (scheme, USER, PASSWORD, pproxy[scheme + "_auth"])
    agent = start_agent([pool.address[1]], proxy=[dead, working], direct_connect_after_proxy=False)
    try:
        assert agent.wait_ready(wait(10))
        client = LineClient(agent.address)
        client.login("demo.proxied")
        assert wait_until(lambda: "proxied" in [w for _, w in pool.authorized[0].workers.values()])
        assert agent.upstreams[0].session.sock.getpeername()[1] == pproxy[scheme + "_auth"]  # through the proxy
        assert "trying the next proxy" in caplog.text  # after the refusing one
        client.close()
    finally:
        agent.stop()


def test_a_refusing_proxy_alone_keeps_the_connection_down_and_says_why(pool, caplog):
    agent = start_agent([pool.address[1]], proxy=["http://127.0.0.1:%d" % free_port()],
                        direct_connect_after_proxy=False)
    try:
        assert wait_until(lambda: "through proxy http://127.0.0.1" in caplog.text, timeout=5)
        assert not agent.upstreams[0].ready
    finally:
        agent.stop()


def test_use_proxy_false_ignores_the_proxy_list(pool):
    agent = start_agent([pool.address[1]], proxy=["socks5://127.0.0.1:%d" % free_port()], use_proxy=False)
    try:
        assert agent.wait_ready(wait(5))
    finally:
        agent.stop()


# ---- miner methods seen in the field --------------------------------------------------------------

def test_bmminer_sequence_configure_first_then_extranonce_suggest_multi_version(pool, agent, clients):
    client = clients()
    conf = client.answer(client.request("mining.configure", [["version-rolling"], {
        "version-rolling.mask": "ffffffff", "version-rolling.min-bit-count": 2}]))
    assert conf["result"] == {"version-rolling": True, "version-rolling.mask": "1fffe000"}  # pool's mask
    client.answer(client.request("mining.subscribe", ["bmminer/2.0.0"]))
    assert client.answer(client.request("mining.extranonce.subscribe", []))["result"] is True
    auth_id = client.request("mining.authorize", ["demo.s19", "x"])
    seen = client.read_until(lambda m: m.get("method") == "mining.notify")
    assert {"id": auth_id, "result": True, "error": None} in seen
    assert {"id": None, "method": "mining.set_version_mask", "params": ["1fffe000"]} in seen
    assert client.answer(client.request("mining.suggest_difficulty", [512]))["result"] is True
    assert client.answer(client.request("mining.multi_version", [1]))["result"] is True
    assert client.answer(client.request("mining.suggest_target", ["00ff"]))["result"] is True


def test_cgminer_sequence_mines_through(pool, agent):
    miner = SimMiner(*agent.address, username="demo.cg", user_agent="cgminer/4.11.1", max_shares=2).start()
    try:
        assert wait_until(lambda: miner.accepted >= 2, timeout=30)
    finally:
        miner.stop()


@pytest.mark.parametrize("wanted, answer", [
    ("00000000", {"version-rolling": False}),             # never a zero mask (cgminer: failed connect)
    ("1fe00000", {"version-rolling": True, "version-rolling.mask": "1fe00000"}),
    ("e0000000", {"version-rolling": False}),             # nothing in common with the pool's mask
])
def test_configure_mask_is_the_miners_and_the_pools(pool, agent, clients, wanted, answer):
    client = clients()
    result = client.answer(client.request("mining.configure", [["version-rolling"], {"version-rolling.mask": wanted}]))
    assert result["result"] == answer and result["error"] is None


def test_configure_without_a_mask_gets_a_bip310_object(pool, agent, clients):
    client = clients()
    result = client.answer(client.request("mining.configure", [["minimum-difficulty", "subscribe-extranonce"],
                                                               {"minimum-difficulty.value": 2048}]))
    assert result["result"] == {"minimum-difficulty": False, "subscribe-extranonce": False}


def test_set_version_mask_to_a_miner_is_its_mask_and_the_pools(pool, agent, clients):
    client = clients()
    client.answer(client.request("mining.configure", [["version-rolling"], {"version-rolling.mask": "00ffe000"}]))
    _, seen = client.login("demo.narrow")
    assert {"id": None, "method": "mining.set_version_mask", "params": ["00ffe000"]} in seen


def test_configure_before_any_pool_mask_offers_1fffe000():
    pool = PoolSimulator(default_difficulty=TINY_DIFFICULTY)
    pool.start()
    pool.pause_listening()
    agent = start_agent([pool.address[1]])
    try:
        client = LineClient(agent.address)
        answer = client.answer(client.request("mining.configure", [["version-rolling"], {"version-rolling.mask": "ffffffff"}]))
        assert answer["result"] == {"version-rolling": True, "version-rolling.mask": "1fffe000"}
        client.close()
    finally:
        agent.stop()
        pool.stop()


def test_second_authorize_same_name_true_other_name_25(pool, agent, clients):
    client = clients()
    client.login("demo.one")
    assert client.answer(client.request("mining.authorize", ["demo.one", "x"]))["result"] is True
    assert client.answer(client.request("mining.authorize", ["demo.two", "x"]))["error"][0] == 25
    assert wait_until(lambda: [w for _, w in pool.authorized[0].workers.values()] == ["one"])


def test_login_without_a_dot_is_the_worker_name(pool, agent, clients):
    clients().login("s19-rack4-07")
    assert wait_until(lambda: [w for _, w in pool.authorized[0].workers.values()] == ["s19-rack4-07"])


def test_numeric_job_id_and_null_sixth_param_are_accepted(pool, agent, clients):
    client = clients()
    _, seen = client.login("demo.lenient")
    job = seen[-1]["params"]
    answer = client.answer(client.request("mining.submit", ["demo.lenient", int(job[0]), "00000001", job[7],
                                                            "00000001", None]))
    assert answer["result"] is True
    assert wait_until(lambda: pool.shares_received == 1)


def test_pool_statuses_36_and_37_reach_the_miner_as_21(agent_factory, pool):
    agent = agent_factory(submit_response_from_server=True)
    assert wait_until(lambda: agent.upstreams[0].ready and agent.upstreams[0].session.submit_responses)
    miner = SimMiner(*agent.address, username="demo.stale", max_shares=4).start()
    try:
        pool.force_status(36)
        pool.force_status(37)
        assert wait_until(lambda: miner.accepted + miner.rejected >= 4, timeout=30)
        assert miner.rejected == 2
        assert agent.counters.shares_rejected == {("demo", 21): 2}  # what the miner was told
        assert pool.statuses[36] == 1 and pool.statuses[37] == 1
    finally:
        miner.stop()


def test_subres_works_when_the_pool_answers_authorize_late():
    pool = PoolSimulator(default_difficulty=TINY_DIFFICULTY, authorize_delay=0.5).start()
    agent = start_agent([pool.address[1]], submit_response_from_server=True)
    miner = SimMiner(*agent.address, username="demo.late", max_shares=2).start()
    try:
        assert wait_until(lambda: agent.upstreams[0].ready and agent.upstreams[0].session.submit_responses, timeout=10)
        assert wait_until(lambda: miner.accepted >= 2, timeout=30)
        assert pool.authorized[0].subres
    finally:
        miner.stop()
        agent.stop()
        pool.stop()


def test_a_pool_that_offers_subres_but_never_answers_does_not_leave_miners_waiting(monkeypatch, pool):
    import gagent.btcagent
    monkeypatch.setattr(gagent.btcagent, "SUBMIT_RESPONSE_SILENCE_SECONDS", 0.5)
    agent = start_agent([pool.address[1]], submit_response_from_server=True)
    try:
        assert wait_until(lambda: agent.upstreams[0].ready and agent.upstreams[0].session.submit_responses)
        pool.authorized[0].subres = False  # a pool that offered answers, then sends none
        client = LineClient(agent.address)
        _, seen = client.login("demo.waiting")
        job = seen[-1]["params"]
        msg_id = client.request("mining.submit", ["demo.waiting", job[0], "00000001", job[7], "00000001"])
        assert client.answer(msg_id, timeout=5)["result"] is True
        assert not agent.upstreams[0].session.submit_responses
        client.close()
    finally:
        agent.stop()

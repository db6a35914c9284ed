"""The status listener: /metrics, /status.json, /healthz and / against stand-in agents and a real farm.

The stand-ins below carry exactly the attributes the status code reads (the agent's reporting
contract), so these tests pin that contract; the farm tests run the real agent, the pool simulator
and hashing miners and compare what the listener reports with what the simulators did.
"""
import json
import time
from collections import Counter
from types import SimpleNamespace

import gevent
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import TINY_DIFFICULTY, http_request, wait, wait_until
from gagent.config import PoolEntry, config_from_dict
from gagent.counters import Counters
from gagent.sim.miner import SimMiner
from gagent.farm import Farm
from gagent.status import StatusServer
from gagent.status.snapshot import _encode, format_hashrate, miner_row, reason_name, status_json

pytestmark = pytest.mark.timeout(60)


# ---- stand-ins for the agent's reporting contract -------------------------------------------------

class FakeMiner:
    def __init__(self, session_id, worker, sub_account="demo", accepted=0, rejected=0, difficulty=1024.0,
                 last_share_at=0.0, rate=0.0, held=False, connected_at=None):
        self.session_id = session_id
        self.worker_name = worker
        self.sub_account = sub_account
        self.peer_ip = "10.0.%d.%d" % (session_id // 256, session_id % 256)
        self.user_agent = "bmminer/2.0.0"
        self.connected_at = time.time() - 60 if connected_at is None else connected_at
        self.difficulty = difficulty
        self.accepted = accepted
        self.rejected = rejected
        self.last_share_at = last_share_at
        self.held = held
        self.rate = rate

    def hashrate(self):
        return self.rate


def fake_connection(slot, state="ready", miners=0, host="pool.example", port=1800, sub_account="demo"):
    return SimpleNamespace(slot=slot, pool=PoolEntry(host, port, sub_account), state=state,
                           state_since=time.time() - 30, ready=state == "ready", miner_count=miners,
                           difficulty=16384.0, extranonce1="0a0b0c%02x" % slot, bytes_sent=1000 + slot,
                           bytes_received=5000 + slot, frames_sent=10 + slot, frames_received=50 + slot)


def fake_agent(miners=(), connections=None, per_worker=False, listening=True, held=0):
    config = config_from_dict({"pools": [["pool.example", 1800, "demo"]], "http_listen": "",
                               "http_per_worker_metrics": per_worker})
    if connections is None:
        connections = [fake_connection(0, miners=len(miners)), fake_connection(1, state="backoff")]
    pool_set = SimpleNamespace(sub_account="demo", connections=connections, held_count=held)
    return SimpleNamespace(config=config, name=config.name, counters=Counters(), started_at=time.time() - 120,
                           address=(config.agent_listen_ip, config.agent_listen_port),
                           listening=listening, miners={m.session_id: m for m in miners},
                           pool_sets={"demo": pool_set}, pools_reachable=None)


@pytest.fixture
def serve():
    servers = []

    def start(agent):
        server = StatusServer(Farm(agent.config, [agent]), ("127.0.0.1", 0))
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def http_get(server, path, method="GET"):
    """(status, headers, body) of one request to the status server."""
    return http_request(server.address, path, method)


def get_json(server, path="/status.json"):
    status, _, body = http_get(server, path)
    assert status == 200
    return json.loads(body)


def metrics(server):
    """{(sample name, frozenset(labels)): value} of one scrape."""
    status, headers, body = http_get(server, "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    return parse_metrics(body)


def parse_metrics(body):
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(body.decode()) for s in family.samples}


def sample(scrape, name, **labels):
    """The value of one series; a series of the one listener matches without its `listener` label."""
    exact = (name, frozenset(labels.items()))
    if exact in scrape:
        return scrape[exact]
    found = [value for (sample_name, sample_labels), value in scrape.items()
             if sample_name == name and {key for key, _ in sample_labels} == set(labels) | {"listener"}
             and set(labels.items()) <= sample_labels]
    assert len(found) == 1, "%s %r: %d series" % (name, labels, len(found))
    return found[0]


# ---- against the contract -------------------------------------------------------------------------

def test_status_json_lists_miners_pools_and_rejects(serve):
    now = time.time()
    miners = [FakeMiner(1, "rig1", accepted=7, rejected=1, last_share_at=now - 5, rate=3e12),
              FakeMiner(2, "rig2", accepted=2, last_share_at=now - 900, rate=1e12),  # stale
              FakeMiner(3, "", difficulty=None)]                                      # not authorized yet
    agent = fake_agent(miners, held=1)
    agent.counters.shares_accepted["demo"] = 9
    agent.counters.shares_rejected[("demo", 23)] = 1
    status = get_json(serve(agent))
    assert [m["worker"] for m in status["miners"]] == ["rig1", "rig2", ""]
    rig1 = status["miners"][0]
    assert rig1["address"] == "10.0.0.1" and rig1["firmware"] == "bmminer/2.0.0"
    assert (rig1["difficulty"], rig1["accepted"], rig1["rejected"], rig1["hashrate"]) == (1024.0, 7, 1, 3e12)
    assert rig1["last_share"] == pytest.approx(now - 5) and not rig1["stale"]
    assert status["miners"][1]["stale"] and status["miners"][2]["last_share"] is None
    totals = status["totals"]
    assert (totals["miners"], totals["authorized"], totals["held"], totals["stale"]) == (3, 2, 1, 1)
    assert totals["hashrate"] == 4e12 and (totals["accepted"], totals["rejected"]) == (9, 1)
    assert (totals["connections_ready"], totals["connections"]) == (1, 2)
    [pool_set] = status["pools"]
    assert pool_set["sub_account"] == "demo" and pool_set["held"] == 1
    assert [(c["slot"], c["host"], c["port"], c["state"], c["miners"], c["extranonce1"])
            for c in pool_set["connections"]] == [(0, "pool.example", 1800, "ready", 3, "0a0b0c00"),
                                                  (1, "pool.example", 1800, "backoff", 0, "0a0b0c01")]
    assert status["rejects"] == [{"listener": agent.name, "sub_account": "demo", "code": 23,
                                  "reason": "Low difficulty", "count": 1}]
    assert status["healthy"] is True


def test_metrics_parse_and_carry_the_counters(serve):
    miners = [FakeMiner(1, "rig1", accepted=3, rate=2e12), FakeMiner(2, "rig2", rate=1e12), FakeMiner(3, "")]
    agent = fake_agent(miners, held=2)
    counters = agent.counters
    counters.shares_accepted["demo"] = 40
    counters.shares_rejected[("demo", 21)] = 3
    counters.shares_rejected[("demo", 23)] = 2
    counters.shares_refused_upstream_lost = 4
    counters.shares_true_unconfirmed_at_loss = 7
    counters.upstream_reconnects, counters.miners_moved = 5, 6
    for seconds in (0.001, 0.02, 0.02, 3.0):
        counters.observe_fanout(seconds)
    scrape = metrics(serve(agent))
    assert sample(scrape, "gagent_miners_connected") == 3
    assert sample(scrape, "gagent_miners_authorized", sub_account="demo") == 2
    assert sample(scrape, "gagent_miners_held", sub_account="demo") == 2
    assert sample(scrape, "gagent_hashrate", sub_account="demo") == 3e12
    assert sample(scrape, "gagent_shares_accepted_total", sub_account="demo") == 40
    assert sample(scrape, "gagent_shares_rejected_total", sub_account="demo", reason="job_not_found_stale",
                  code="21") == 3
    assert sample(scrape, "gagent_shares_rejected_total", sub_account="demo", reason="low_difficulty",
                  code="23") == 2
    assert sample(scrape, "gagent_shares_refused_upstream_lost_total") == 4
    assert sample(scrape, "gagent_shares_true_unconfirmed_at_loss_total") == 7
    assert sample(scrape, "gagent_upstream_reconnects_total") == 5
    assert sample(scrape, "gagent_miners_moved_total") == 6
    for state, count in (("ready", 1), ("backoff", 1), ("connecting", 0), ("handshake", 0), ("stopped", 0)):
        assert sample(scrape, "gagent_upstream_connections", sub_account="demo", pool="pool.example:1800",
                      state=state) == count
    assert sample(scrape, "gagent_upstream_sent_bytes_total", sub_account="demo") == 2001
    assert sample(scrape, "gagent_upstream_received_frames_total", sub_account="demo") == 101
    assert sample(scrape, "gagent_job_fanout_seconds_bucket", le="0.005") == 1
    assert sample(scrape, "gagent_job_fanout_seconds_bucket", le="0.025") == 3
    assert sample(scrape, "gagent_job_fanout_seconds_bucket", le="2.5") == 3
    assert sample(scrape, "gagent_job_fanout_seconds_bucket", le="+Inf") == 4
    assert sample(scrape, "gagent_job_fanout_seconds_count") == 4
    assert sample(scrape, "gagent_job_fanout_seconds_sum") == pytest.approx(3.041)
    assert sample(scrape, "process_resident_memory_bytes") > 1e6
    assert sample(scrape, "process_open_fds") > 3
    assert sample(scrape, "process_cpu_seconds_total") > 0
    assert sample(scrape, "gagent_healthy") == 1
    assert not any(name.startswith("gagent_worker_") for name, _ in scrape)


def test_per_worker_series_only_when_configured_and_summed_per_name(serve):
    miners = [FakeMiner(1, "rig1", accepted=3, rejected=1, rate=2e12, last_share_at=100.0),
              FakeMiner(2, "rig1", accepted=4, rate=1e12, last_share_at=200.0),  # same name, second address
              FakeMiner(3, "rig2", sub_account="other", accepted=1)]
    scrape = metrics(serve(fake_agent(miners, per_worker=True)))
    assert sample(scrape, "gagent_worker_connections", sub_account="demo", worker="rig1") == 2
    assert sample(scrape, "gagent_worker_shares_accepted_total", sub_account="demo", worker="rig1") == 7
    assert sample(scrape, "gagent_worker_shares_rejected_total", sub_account="demo", worker="rig1") == 1
    assert sample(scrape, "gagent_worker_hashrate", sub_account="demo", worker="rig1") == 3e12
    assert sample(scrape, "gagent_worker_last_share_time_seconds", sub_account="demo", worker="rig1") == 200.0
    assert sample(scrape, "gagent_worker_shares_accepted_total", sub_account="other", worker="rig2") == 1
    assert sample(scrape, "gagent_miners_authorized", sub_account="other") == 1


def test_per_worker_text_is_what_prometheus_client_writes():
    """The per-worker families are written without prometheus-client's formatter (60,000 samples are
    slow through it); the text must be exactly what it would write for the same samples."""
    from prometheus_client import generate_latest
    from gagent.status.metrics import WORKER_FAMILIES, WorkerSeries, _label_texts, _Piece
    rows = sorted({("a:3333", "demo", "rig1"): [2, 7, 1, 3.3e12, 1700000000.25, 65536.0],
                   ("a:3333", "demo", 'we"ird\\name\n'): [1, 0, 0, 0.0, 0.0, 0.0],
                   ('b "x"', "caf\u00e9", "r\u00fcg"): [1, 2 ** 40, 3, 1.5e13, 1700000000.25, 1024],
                   ("a:3333", "demo", "rig2"): [1, 7, 1, 123.456, 1700000001.5, 65536.0]}.items())
    labels = _label_texts(rows)
    for index, (name, kind, documentation) in enumerate(WORKER_FAMILIES):
        series = WorkerSeries(name, kind, documentation, rows, index)
        assert "".join(series.text(labels)).encode() == generate_latest(_Piece(series.family())), name


def test_healthz_needs_listening_and_a_ready_connection(serve):
    agent = fake_agent()
    server = serve(agent)
    assert http_get(server, "/healthz")[:1] == (200,)
    agent.pool_sets["demo"].connections[0].ready = False
    status, _, body = http_get(server, "/healthz")
    assert (status, body) == (503, b"no pool connection ready\n")
    agent.pool_sets["demo"].connections[1].ready = True
    assert http_get(server, "/healthz")[0] == 200
    agent.listening = False
    status, _, body = http_get(server, "/healthz")
    assert (status, body) == (503, b"miner port not listening\n")


def test_page_404_405_and_head(serve):
    server = serve(fake_agent())
    status, headers, body = http_get(server, "/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert b"status.json" in body and b"<script" in body
    assert b"http://" not in body and b"https://" not in body  # no external assets
    assert http_get(server, "/nope")[0] == 404
    assert http_get(server, "/metrics", method="POST")[0] == 405
    status, headers, body = http_get(server, "/status.json", method="HEAD")
    assert status == 200 and body == b"" and int(headers["content-length"]) > 0


def test_ten_thousand_miners_never_block_the_hub_for_long(serve):
    """Building /status.json and /metrics for 10,000 miners yields often enough for shares to flow."""
    now = time.time()
    miners = [FakeMiner(n, "rig%05d" % n, accepted=n % 50, last_share_at=now - n % 900, rate=1e13)
              for n in range(1, 10001)]
    server = serve(fake_agent(miners, per_worker=True))
    gaps = []
    running = [True]

    def ticker():
        previous = time.perf_counter()
        while running[0]:
            gevent.sleep(0.001)
            current = time.perf_counter()
            gaps.append(current - previous)
            previous = current

    tick = gevent.spawn(ticker)
    try:
        started = time.perf_counter()
        status_body = http_get(server, "/status.json")[2]
        metrics_body = http_get(server, "/metrics")[2]
        elapsed = time.perf_counter() - started
    finally:
        running[0] = False
        tick.join(wait(2))
    status = json.loads(status_body)
    scrape = parse_metrics(metrics_body)
    assert len(status["miners"]) == 10000 and status["totals"]["hashrate"] == pytest.approx(1e17)
    assert sample(scrape, "gagent_miners_connected") == 10000
    assert sample(scrape, "gagent_worker_connections", sub_account="demo", worker="rig09999") == 1
    # the whole build is about a second; between yields a few milliseconds (a GC pass can add ~30)
    assert max(gaps) < wait(0.1), "the hub was blocked for %.0f ms (whole build %.0f ms)" % (
        max(gaps) * 1000, elapsed * 1000)
    assert len(gaps) > 20  # the ticker really ran during the build, not only at its end


def test_miner_rows_are_exactly_the_encoded_rows():
    """/status.json writes each miner's row straight to text; it must be what encoding miner_row() gives,
    whatever the values: shared and unshared floats, an int difficulty equal to a float one, no
    difficulty, odd names, held and stale miners, and a value of a type the fast path does not take."""
    now = time.time()
    clock = now - 100.0  # one float object shared by many miners, as the agent's clock
    miners = [FakeMiner(n, "rig%d" % n, difficulty=1024.0, connected_at=clock, last_share_at=clock, rate=n * 1.1e12)
              for n in range(1, 6)]
    miners += [FakeMiner(6, "", difficulty=None, connected_at=clock),
               FakeMiner(7, "rig7", difficulty=1024, last_share_at=now - 1000.0, rate=0),  # int: "1024", not "1024.0"
               FakeMiner(8, 'r\u00fcg "8"\\\n\u2603', sub_account="caf\u00e9", difficulty=2 ** 40, held=True,
                         connected_at=now - 5000.0, rate=float("1e300")),
               FakeMiner(9, "rig9", difficulty=0.5, accepted=2 ** 70, rate=3)]
    miners[4].user_agent = 'cgminer "4.11"'
    odd = FakeMiner(10, "rig10")
    odd.peer_ip = None  # not a string: encoded from its dict
    miners.append(odd)
    agent = fake_agent(miners)
    document = status_json(Farm(agent.config, [agent]))
    status = json.loads(document)
    expected = _encode([miner_row(miner, status["now"], agent.name) for miner in miners]).encode()
    assert document[document.index(b'"miners":[') + len(b'"miners":'):-1] == expected
    assert status["miners"][6]["difficulty"] == 1024 and isinstance(status["miners"][6]["difficulty"], int)
    assert status["miners"][7]["worker"] == 'r\u00fcg "8"\\\n\u2603' and status["miners"][7]["held"]
    assert [m["stale"] for m in status["miners"]] == [False] * 6 + [True, True, False, False]
    totals = status["totals"]
    assert (totals["miners"], totals["authorized"], totals["stale"]) == (10, 9, 2)
    assert totals["hashrate"] == sum(miner.rate for miner in miners)


def count_builds(cache, delay=0.0):
    """Count the builds of a StatusServer body (each taking `delay` longer); returns the list of them."""
    builds = []
    build = cache.build

    def counted():
        builds.append(1)
        gevent.sleep(delay)
        return build()

    cache.build = counted
    return builds


def test_requests_during_a_build_share_it_and_metrics_are_kept_briefly(serve):
    now = time.time()
    agent = fake_agent([FakeMiner(n, "rig%d" % n, last_share_at=now, rate=1e12) for n in range(1, 1201)])
    server = serve(agent)
    builds = count_builds(server._status_json, delay=wait(0.2))  # the other requests come during the build
    first = [gevent.spawn(http_get, server, "/status.json") for _ in range(4)]
    gevent.joinall(first, raise_error=True)
    assert len(builds) == 1 and len({g.value[2] for g in first}) == 1
    assert json.loads(first[0].value[2])["totals"]["miners"] == 1200
    assert server._status_json.body is None  # not kept: the next request builds it again
    agent.miners.pop(1)
    assert json.loads(http_get(server, "/status.json")[2])["totals"]["miners"] == 1199
    assert len(builds) == 2

    metrics_builds = count_builds(server._metrics)
    assert http_get(server, "/metrics")[2] == http_get(server, "/metrics")[2]
    assert len(metrics_builds) == 1


def test_a_kept_body_is_let_go_when_it_expires(serve):
    agent = fake_agent([FakeMiner(1, "rig1")])
    server = serve(agent)
    cache = server._status_json
    cache.seconds = wait(0.3)
    builds = count_builds(cache)
    body = http_get(server, "/status.json")[2]
    assert http_get(server, "/status.json")[2] == body and len(builds) == 1
    gevent.sleep(cache.seconds + wait(0.1))
    assert cache.body is None  # dropped by its timer, not by the next request
    agent.miners.clear()
    assert json.loads(http_get(server, "/status.json")[2])["totals"]["miners"] == 0
    assert len(builds) == 2


def test_open_fds_counts_the_open_descriptors():
    import psutil
    from gagent.status.metrics import open_fds
    process = psutil.Process()
    assert abs(open_fds(process) - process.num_fds()) <= 1  # listing /proc/self/fd opens one more


def test_reason_names_and_hashrate_format():
    assert reason_name(23) == "low_difficulty"
    assert reason_name(21) == "job_not_found_stale"
    assert reason_name(12345) == "code_12345"
    assert format_hashrate(0) == "0 H/s"
    assert format_hashrate(1.5e12) == "1.5 TH/s"
    assert format_hashrate(123.4e15) == "123 PH/s"


# ---- against a real farm --------------------------------------------------------------------------

@pytest.fixture
def farm(pool, agent_factory, serve):
    """An agent answering shares with the pool's verdict, its status server, and a miner starter."""
    agent = agent_factory(submit_response_from_server=True, advanced={"pool_connection_number_per_subaccount": 2})
    server = serve(agent)
    miners = []

    def start_miner(name, **kwargs):
        miner = SimMiner(*agent.address, username="demo.%s" % name, **kwargs).start()
        miners.append(miner)
        return miner

    yield SimpleNamespace(agent=agent, server=server, start_miner=start_miner, pool=pool)
    for miner in miners:
        miner.stop()


def run_farm(farm):
    """Three hashing miners and one that guesses (rejected as low difficulty); returns them once every
    share they sent is answered and they have stopped sending."""
    hashing = [farm.start_miner("rig%d" % n, user_agent="sim-miner/%d" % n) for n in range(3)]
    # random shares at difficulty 1/65536: the pool rejects nearly all as low difficulty
    guessing = farm.start_miner("guess", hashing=False, submit_interval=0.05, user_agent="guesser/1")
    assert wait_until(lambda: all(m.accepted >= 3 for m in hashing), timeout=20), hashing
    assert wait_until(lambda: guessing.shares_sent >= 20, timeout=10), guessing
    guessing.submit_interval = None  # freeze the counts: no more shares (max_shares binds hashing only)
    for miner in hashing:
        miner.max_shares = miner.shares_sent
    everyone = hashing + [guessing]
    assert wait_until(lambda: all(m.accepted + m.rejected == m.shares_sent for m in everyone), timeout=10)
    gevent.sleep(0.1)
    return everyone


def summed(scrape, name, **labels):
    """Sum of the samples called `name` whose labels include `labels`."""
    return sum(value for (sample_name, sample_labels), value in scrape.items()
               if sample_name == name and set(labels.items()) <= sample_labels)


def test_farm_counts_match_what_the_simulators_did(farm):
    everyone = run_farm(farm)
    status = get_json(farm.server)
    rows = {row["worker"]: row for row in status["miners"]}
    assert set(rows) == {"rig0", "rig1", "rig2", "guess"}
    for miner in everyone:
        row = rows[miner.worker]
        assert (row["accepted"], row["rejected"]) == (miner.accepted, miner.rejected), miner
        assert row["difficulty"] == miner.difficulty == TINY_DIFFICULTY
        assert row["firmware"] == miner.user_agent
        assert row["address"] == "127.0.0.1" and not row["held"]
        # last_share_at is the last accepted share: a miner whose shares are all rejected has none
        assert (row["last_share"] is not None) == (miner.accepted > 0)
        assert (row["hashrate"] > 0) == (miner.accepted > 0)
    accepted = sum(m.accepted for m in everyone)
    rejected = sum(m.rejected for m in everyone)
    assert (status["totals"]["accepted"], status["totals"]["rejected"]) == (accepted, rejected)
    assert status["totals"]["connections_ready"] == 2 and status["healthy"]
    by_reason = Counter()
    for row in status["rejects"]:
        by_reason[row["code"]] += row["count"]
    assert sum(by_reason.values()) == rejected and by_reason[23] > 0

    scrape = metrics(farm.server)
    assert sample(scrape, "gagent_miners_connected") == 4
    assert summed(scrape, "gagent_miners_authorized") == 4
    assert summed(scrape, "gagent_shares_accepted_total") == accepted
    assert summed(scrape, "gagent_shares_rejected_total") == rejected
    assert summed(scrape, "gagent_shares_rejected_total", code="23") == by_reason[23]
    pool_name = "127.0.0.1:%d" % farm.pool.address[1]
    assert sample(scrape, "gagent_upstream_connections", sub_account="demo", pool=pool_name, state="ready") == 2
    assert sample(scrape, "gagent_upstream_sent_frames_total", sub_account="demo") >= accepted + rejected
    assert sample(scrape, "gagent_upstream_received_bytes_total", sub_account="demo") > 0
    assert sample(scrape, "gagent_job_fanout_seconds_count") >= 1
    assert summed(scrape, "gagent_hashrate") > 0


def test_farm_miners_and_shares_are_reported_under_their_sub_account(farm):
    everyone = run_farm(farm)
    status = get_json(farm.server)
    assert {row["sub_account"] for row in status["miners"]} == {"demo"}
    scrape = metrics(farm.server)
    assert sample(scrape, "gagent_miners_authorized", sub_account="demo") == 4
    assert sample(scrape, "gagent_shares_accepted_total", sub_account="demo") == sum(m.accepted for m in everyone)
    assert summed(scrape, "gagent_shares_rejected_total", sub_account="demo") == sum(m.rejected for m in everyone)


def test_healthz_follows_the_pool(farm):
    assert http_get(farm.server, "/healthz")[0] == 200
    farm.pool.stop()
    assert wait_until(lambda: http_get(farm.server, "/healthz")[0] == 503, timeout=10)
    status = get_json(farm.server)
    assert status["totals"]["connections_ready"] == 0
    assert all(c["state"] != "ready" for ps in status["pools"] for c in ps["connections"])
    farm.pool.start()  # same port
    assert wait_until(lambda: http_get(farm.server, "/healthz")[0] == 200, timeout=20)


def test_status_server_refuses_a_taken_port(serve):
    server = serve(fake_agent())
    with pytest.raises(OSError):
        agent = fake_agent()
        StatusServer(Farm(agent.config, [agent]), server.address).start()


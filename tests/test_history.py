"""The agent's minute-by-minute history: ring buffers, per-minute share counts, missing minutes as null,
bounded memory, the JSON the page reads, the sampling greenlet, and /history.json on a running agent."""
import json
import time
import tracemalloc

import gevent
import pytest

from conftest import http_request, wait_until
from gagent.sim.miner import SimMiner
from gagent.farm import Farm
from gagent.status import StatusServer
from gagent.status import history as history_module
from gagent.status.history import FIGURES, History, sample_agents
from test_status import FakeMiner, fake_agent, fake_connection

pytestmark = pytest.mark.timeout(60)

T0 = 1_700_000_040  # a whole minute of wall time


def figures(hashrate=0.0, miners=0, accepted=0, rejected=0, connections_ready=0):
    return {"hashrate": hashrate, "miners": miners, "accepted": accepted, "rejected": rejected,
            "connections_ready": connections_ready}


class Feed:
    """A sample function whose answer the test sets: {series: figures}."""

    def __init__(self):
        self.now = {}
        self.calls = 0

    def __call__(self):
        self.calls += 1
        return self.now


def recorded(history):
    return json.loads(history.to_json())


def test_samples_fill_the_ring_and_the_oldest_minutes_fall_out():
    feed = Feed()
    history = History(feed, points=5)
    for minute in range(8):
        feed.now = {"total": figures(hashrate=1000.0 * (minute + 1), miners=minute)}
        history.record(T0 + 60 * minute + 7)  # anywhere in the minute: filed under its start
    doc = recorded(history)
    assert doc["interval"] == 60
    assert doc["t"] == [T0 + 60 * minute for minute in range(3, 8)]
    assert doc["series"]["total"]["hashrate"] == [4000, 5000, 6000, 7000, 8000]
    assert doc["series"]["total"]["miners"] == [3, 4, 5, 6, 7]
    assert history.nbytes == 5 * 8 * 5


def test_counters_become_shares_per_minute_and_a_counter_that_goes_down_counts_from_zero():
    feed = Feed()
    history = History(feed)
    counts = [(100, 3), (130, 3), (175, 9), (5, 0), (12, 2), (12, 2)]  # a restart after the third minute
    for minute, (accepted, rejected) in enumerate(counts):
        feed.now = {"total": figures(accepted=accepted, rejected=rejected)}
        history.record(T0 + 60 * minute)
    series = recorded(history)["series"]["total"]
    assert series["accepted"] == [100, 30, 45, 5, 7, 0]  # a new series counts from zero as well
    assert series["rejected"] == [3, 0, 6, 0, 2, 0]


def test_a_second_sample_in_a_minute_replaces_its_figures_and_adds_its_shares():
    feed = Feed()
    history = History(feed)
    for second, (rate, accepted) in enumerate([(1e12, 10), (2e12, 14), (3e12, 20)]):
        feed.now = {"total": figures(hashrate=rate, accepted=accepted, miners=second + 1)}
        history.record(T0 + 20 * second)  # 0, 20, 40 s: one minute
    doc = recorded(history)
    assert doc["t"] == [T0]
    assert doc["series"]["total"]["hashrate"] == [3e12]
    assert doc["series"]["total"]["miners"] == [3]
    assert doc["series"]["total"]["accepted"] == [20]
    feed.now = {"total": figures(hashrate=4e12, accepted=26)}
    history.record(T0 + 61)
    assert recorded(history)["series"]["total"]["accepted"] == [20, 6]


def test_minutes_without_a_sample_of_a_series_are_null_and_a_gone_series_ages_out():
    feed = Feed()
    history = History(feed, points=4)
    plan = [{"a"}, {"a"}, {"a", "b"}, {"b"}, {"b"}]  # which series each minute's sample has
    for minute, names in enumerate(plan):
        feed.now = {name: figures(miners=10 * minute + (name == "b")) for name in names}
        history.record(T0 + 60 * minute)
    doc = recorded(history)
    assert doc["t"] == [T0 + 60 * minute for minute in range(1, 5)]
    assert doc["series"]["a"]["miners"] == [10, 20, None, None]
    assert doc["series"]["b"]["miners"] == [None, 21, 31, 41]
    assert doc["series"]["a"]["accepted"] == [0, 0, None, None]
    assert history.nbytes == 2 * 5 * 8 * 4
    feed.now = {"b": figures(miners=51)}
    history.record(T0 + 60 * 5)
    history.record(T0 + 60 * 6)  # a's last minute (2) is now out of the window: a is forgotten
    doc = recorded(history)
    assert set(doc["series"]) == {"b"} and doc["series"]["b"]["miners"] == [31, 41, 51, 51]
    assert history.nbytes == 5 * 8 * 4


def test_minutes_the_agent_did_not_sample_are_null_for_every_series():
    feed = Feed()
    history = History(feed, points=6)
    feed.now = {"total": figures(miners=1), "x": figures(miners=2)}
    for minute in (0, 1, 4):  # minutes 2 and 3 missed (the process was stopped, the host suspended)
        history.record(T0 + 60 * minute)
    doc = recorded(history)
    assert doc["t"] == [T0 + 60 * minute for minute in range(5)]
    assert doc["series"]["total"]["miners"] == [1, 1, None, None, 1]
    assert doc["series"]["x"]["miners"] == [2, 2, None, None, 2]
    history.record(T0 + 60 * 7)  # the ring has wrapped: minute 1 (in its slot) must not show again
    assert recorded(history)["series"]["total"]["miners"] == [None, None, 1, None, None, 1]
    history.record(T0 + 60 * 100)  # gone for longer than the window: only the new minute is left
    doc = recorded(history)
    assert doc["t"][-1] == T0 + 6000 and doc["series"]["total"]["miners"] == [None] * 5 + [1]


def test_a_clock_that_steps_back_adds_to_the_newest_minute():
    feed = Feed()
    history = History(feed)
    feed.now = {"total": figures(accepted=5)}
    history.record(T0 + 120)
    feed.now = {"total": figures(accepted=9, miners=4)}
    history.record(T0)  # two minutes back
    doc = recorded(history)
    assert doc["t"] == [T0 + 120] and doc["series"]["total"]["accepted"] == [9]
    assert doc["series"]["total"]["miners"] == [4]


def test_json_shape_and_values():
    feed = Feed()
    history = History(feed, points=1440)
    assert recorded(history) == {"interval": 60, "t": [], "series": {}}
    feed.now = {"total": figures(hashrate=123456789.0, miners=7, accepted=3, rejected=1, connections_ready=2),
                'odd "name"\n': figures(hashrate=float("inf"), miners=float("nan"))}
    history.record(T0 + 59.9)
    doc = recorded(history)
    assert doc["t"] == [T0]
    assert list(doc["series"]) == ["total", 'odd "name"\n']
    assert doc["series"]["total"] == {"hashrate": [123500000], "miners": [7], "accepted": [3], "rejected": [1],
                                      "connections_ready": [2]}  # hashrate: 4 significant digits
    assert doc["series"]['odd "name"\n']["hashrate"] == [None] and doc["series"]['odd "name"\n']["miners"] == [None]
    assert all(list(series) == list(FIGURES) for series in doc["series"].values())
    assert json.loads(History(feed, interval=0.5).to_json())["interval"] == 0.5


def test_memory_is_bounded_by_series_and_points_not_by_time():
    feed = Feed()
    feed.now = {"s%d" % n: figures(hashrate=1e15 + n, miners=3000, accepted=0, connections_ready=3)
                for n in range(10)}
    history = History(feed)
    for minute in range(1500):  # a full day and then some
        history.record(T0 + 60 * minute)
    assert history.nbytes == 10 * 57600  # the figure the docs give: 1440 x 5 x 8 bytes a series
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for minute in range(1500, 4500):  # two more days
            for n in range(10):
                feed.now["s%d" % n] = figures(hashrate=2e15, miners=minute, accepted=minute * 100)
            history.record(T0 + 60 * minute)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 20000, "the history grew by %d bytes in two days" % grown
    doc = recorded(history)
    assert len(doc["t"]) == 1440 and doc["series"]["s9"]["miners"][-1] == 4499
    assert doc["series"]["s9"]["accepted"][-1] == 100


def test_a_sample_during_a_build_makes_it_start_again(monkeypatch):
    """A build yields between series; a sample that comes then may overwrite the oldest minute, so the
    build starts over and every series still lines up with "t"."""
    feed = Feed()
    history = History(feed, points=3)

    def minute_figures(minute):
        return {name: figures(miners=minute) for name in ("a", "b", "c")}

    for minute in range(5):
        feed.now = minute_figures(minute)
        history.record(T0 + 60 * minute)
    turns = []

    def sample_meanwhile():
        turns.append(1)
        if len(turns) == 1:
            feed.now = minute_figures(5)
            history.record(T0 + 300)

    monkeypatch.setattr(history_module, "yield_to_hub", sample_meanwhile)
    doc = recorded(history)
    assert len(turns) == 4  # one series, then the whole build again
    assert doc["t"] == [T0 + 180, T0 + 240, T0 + 300]
    assert all(series["miners"] == [3, 4, 5] for series in doc["series"].values())


def test_the_greenlet_samples_at_start_then_once_every_interval_until_stopped(caplog):
    feed = Feed()
    feed.now = {"total": figures(miners=1)}
    history = History(feed, interval=0.2, points=1000)
    history.start()
    try:
        assert feed.calls == 1 and len(recorded(history)["t"]) == 1  # at once, not an interval later
        assert wait_until(lambda: feed.calls >= 4, timeout=3)
        feed.now = None  # a broken sample: logged, and the next one is taken all the same
        calls = feed.calls
        assert wait_until(lambda: feed.calls >= calls + 2, timeout=3)
        feed.now = {"total": figures(miners=2)}
        assert wait_until(lambda: recorded(history)["series"]["total"]["miners"][-1:] == [2], timeout=3)
    finally:
        history.stop()
    assert "history sample: unexpected AttributeError" in caplog.text
    doc = recorded(history)
    miners = doc["series"]["total"]["miners"]
    good, broken = miners.index(None), miners.index(2)
    assert good >= 4 and broken - good >= 2 and set(miners[:good]) == {1} and set(miners[good:broken]) == {None}
    assert len(doc["t"]) == feed.calls  # one sample an interval: none missed, none twice
    calls = feed.calls
    gevent.sleep(0.5)
    assert feed.calls == calls


def test_sample_agents_sums_the_listeners_into_total():
    now = time.time()
    east = fake_agent([FakeMiner(1, "rig1", rate=3e12, last_share_at=now), FakeMiner(2, "rig2", rate=1e12),
                       FakeMiner(3, "")])  # not authorized: connected, not online
    west = fake_agent([FakeMiner(4, "rig4", rate=5e12)],
                      connections=[fake_connection(0), fake_connection(1), fake_connection(2, state="backoff")])
    east.counters.shares_accepted.update({"demo": 7, "other": 2})
    east.counters.shares_rejected.update({("demo", 23): 3})
    west.counters.shares_accepted["demo"] = 11
    sampled = sample_agents([("10.0.0.1:3333", east), ("10.0.0.1:3334", west)])
    assert list(sampled) == ["total", "10.0.0.1:3333", "10.0.0.1:3334"]
    assert sampled["10.0.0.1:3333"] == figures(hashrate=4e12, miners=2, accepted=9, rejected=3, connections_ready=1)
    assert sampled["10.0.0.1:3334"] == figures(hashrate=5e12, miners=1, accepted=11, rejected=0, connections_ready=2)
    assert sampled["total"] == figures(hashrate=9e12, miners=3, accepted=20, rejected=3, connections_ready=3)


def test_sample_agents_lets_the_hub_run_during_a_long_walk():
    agent = fake_agent([FakeMiner(n, "rig%d" % n, rate=1e9) for n in range(1, 2001)])
    ticks = []
    ticker = gevent.spawn(lambda: [ticks.append(gevent.sleep(0)) for _ in range(1000)])
    sampled = sample_agents([("a", agent)])
    ticker.kill()
    assert sampled["a"]["miners"] == 2000 and sampled["a"]["hashrate"] == pytest.approx(2e12)
    assert len(ticks) >= 3  # 2000 miners: a turn for the hub every 500


def test_history_json_is_served_by_a_running_agents_status_server_with_the_first_sample(agent):
    miner = SimMiner(*agent.address, username="demo.rig1", max_shares=3).start()
    server = None
    try:
        assert wait_until(lambda: miner.accepted == 3 and sum(agent.counters.shares_accepted.values()) == 3,
                          timeout=20), miner
        [session] = agent.miners.values()
        rate = session.hashrate()  # no more shares: it only decays, by 0.17 % a second
        assert rate > 0
        minute = int(time.time() // 60) * 60
        server = StatusServer(Farm(agent.config, [agent]), ("127.0.0.1", 0))
        server.start()
        status, headers, body = http_request(server.address, "/history.json")
        assert status == 200 and headers["content-type"] == "application/json"
        doc = json.loads(body)
        assert doc["t"] in ([minute], [minute + 60])  # the sample taken at start, not a minute later
        name = "127.0.0.1:0"  # the listen address as configured: the listener's default name
        assert set(doc["series"]) == {"total", name}
        for series in doc["series"].values():
            assert series["miners"] == [1] and series["connections_ready"] == [1]
            assert series["accepted"] == [3] and series["rejected"] == [0]
            assert series["hashrate"][0] == pytest.approx(rate, rel=0.005)
    finally:
        miner.stop()
        if server is not None:
            server.stop()


def test_status_server_stops_its_history():
    feed = Feed()
    feed.now = {"total": figures()}
    history = History(feed, interval=0.05)
    fake = fake_agent()
    server = StatusServer(Farm(fake.config, [fake]), ("127.0.0.1", 0), history=history)
    server.start()
    assert wait_until(lambda: feed.calls >= 3, timeout=3)
    server.stop()
    calls = feed.calls
    gevent.sleep(0.2)
    assert feed.calls == calls

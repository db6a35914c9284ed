"""The status page in a real headless Chromium: it shows the farm the simulators run, follows a miner
that leaves, highlights a stale worker, its table sorts and filters, and it says when the agent is gone;
its chart draws the history the agent kept before the page opened, again after a reload.

Skipped, with the reason, where Chromium or chromedriver is missing (.ci/run installs both).
Selenium's calls block, and the page's requests are served by this process's gevent hub, so every
browser call runs in gevent's thread pool while the hub keeps serving.
"""
import shutil
import time

import gevent
import pytest

from conftest import wait_until
from gagent.sim.miner import SimMiner
from gagent.farm import Farm
from gagent.status import StatusServer
from gagent.status.history import History, sample_agents

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')")
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.select import Select  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = "/usr/bin/chromedriver" if shutil.which("/usr/bin/chromedriver") else shutil.which("chromedriver")
pytestmark = [
    pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                       reason="the browser test needs chromium and chromedriver "
                              "(apt-get install chromium chromium-driver; .ci/run does it)"),
    pytest.mark.timeout(90),
]
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1400,1400")


def in_thread(function, *args):
    """Run a blocking browser call in a real thread; the hub keeps serving meanwhile."""
    return gevent.get_hub().threadpool.apply(function, args)


def start_browser(profile_dir):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument("--user-data-dir=%s" % profile_dir)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # Started here, not in a thread: gevent's subprocess (the tests patch it) starts processes from the
    # hub's own thread only. Its handshake goes through the patched sockets, so the hub keeps serving;
    # no connection is kept alive, as later calls come from the thread pool (a thread of their own).
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options, keep_alive=False)


def page_state(browser):
    """What the page shows, read in one go (the table may be redrawn between two separate reads)."""
    return in_thread(browser.execute_script, """
        var rows = Array.prototype.map.call(document.querySelectorAll('#workers tbody tr[data-id]'), function (tr) {
          var cells = tr.querySelectorAll('td');
          return {worker: tr.dataset.worker, stale: tr.classList.contains('stale'),
                  firmware: cells[3].textContent, accepted: Number(cells[6].textContent.replace(/,/g, ''))};
        });
        function text(id) { return document.getElementById(id).textContent; }
        var chart = document.getElementById('chart').dataset;
        return {rows: rows, online: text('miners-online'), connections: text('connections'),
                health: text('health'), stale: text('stale-count'), rejects: text('rejects'),
                count: text('workers-count'), chart_note: text('chart-note'), error: text('error'),
                updated: text('updated'),
                chart: {points: Number(chart.points), first: Number(chart.first), peak: Number(chart.peak)}};
    """)


@pytest.fixture
def browser(tmp_path):
    browser = start_browser(tmp_path / "chromium-profile")
    yield browser
    in_thread(browser.quit)


@pytest.fixture
def farm(agent_factory, browser):
    agent = agent_factory(submit_response_from_server=True, advanced={"pool_connection_number_per_subaccount": 2})
    status = StatusServer(Farm(agent.config, [agent]), ("127.0.0.1", 0))
    status.start()
    miners = {}
    try:
        for n in (1, 2, 3, 4):
            miners["rig%02d" % n] = SimMiner(*agent.address, username="demo.rig%02d" % n,
                                             user_agent="bmminer/2.0.%d" % n).start()
        miners["guess"] = SimMiner(*agent.address, username="demo.guess", hashing=False, submit_interval=0.2,
                                   user_agent="guesser/1").start()
        yield agent, status, miners, browser
    finally:
        for miner in miners.values():
            miner.stop()
        status.stop()


def test_page_shows_the_farm_follows_it_sorts_filters_and_says_when_the_agent_is_gone(farm):
    agent, status, miners, browser = farm
    in_thread(browser.get, "http://%s:%d/?refresh=0.5" % status.address)

    def shows(predicate):
        def check():
            state = page_state(browser)
            return predicate(state)
        return wait_until(check, timeout=15, step=0.2)

    everyone = {"rig01", "rig02", "rig03", "rig04", "guess"}
    assert shows(lambda s: {r["worker"] for r in s["rows"]} == everyone), page_state(browser)
    state = page_state(browser)
    assert state["online"] == "5" and state["connections"] == "2 / 2" and state["health"] == "healthy"
    assert {r["firmware"] for r in state["rows"]} == {"bmminer/2.0.1", "bmminer/2.0.2", "bmminer/2.0.3",
                                                      "bmminer/2.0.4", "guesser/1"}
    assert shows(lambda s: "Low difficulty" in s["rejects"]), "the guesser's rejects are not shown by reason"
    assert shows(lambda s: s["chart"]["points"] >= 2 and s["chart_note"].startswith("(since ")), \
        "the chart did not get two points"

    # a miner leaves
    miners["rig03"].stop()
    assert shows(lambda s: {r["worker"] for r in s["rows"]} == everyone - {"rig03"} and s["online"] == "4")

    # a worker with no share for over 10 minutes is highlighted
    [guess] = [m for m in agent.miners.values() if m.worker_name == "guess"]
    guess.connected_at -= 1200  # it never had a share accepted, so it is stale once connected that long
    assert shows(lambda s: [r["worker"] for r in s["rows"] if r["stale"]] == ["guess"] and s["stale"] == "1")

    # sort: by worker (the default, ascending), then descending, then by accepted (largest first)
    assert [r["worker"] for r in page_state(browser)["rows"]] == ["guess", "rig01", "rig02", "rig04"]
    header = in_thread(browser.find_element, By.CSS_SELECTOR, "#workers th[data-key=worker]")
    in_thread(header.click)
    assert [r["worker"] for r in page_state(browser)["rows"]] == ["rig04", "rig02", "rig01", "guess"]
    in_thread(in_thread(browser.find_element, By.CSS_SELECTOR, "#workers th[data-key=accepted]").click)
    accepted = [r["accepted"] for r in page_state(browser)["rows"]]
    assert accepted == sorted(accepted, reverse=True) and len(accepted) == 4
    assert shows(lambda s: [r["accepted"] for r in s["rows"]] == sorted((r["accepted"] for r in s["rows"]),
                                                                         reverse=True))

    # filter: by firmware, then by worker, then only stale ones
    search = in_thread(browser.find_element, By.ID, "filter")
    in_thread(search.send_keys, "bmminer/2.0.2")
    assert shows(lambda s: [r["worker"] for r in s["rows"]] == ["rig02"] and s["count"] == "1 of 4 miners")
    in_thread(search.clear)
    in_thread(search.send_keys, "RIG0")  # case-insensitive
    assert shows(lambda s: {r["worker"] for r in s["rows"]} == {"rig01", "rig02", "rig04"})
    in_thread(search.clear)
    in_thread(search.send_keys, " ")  # fire an input event for the cleared box
    in_thread(in_thread(browser.find_element, By.ID, "stale-only").click)
    assert shows(lambda s: [r["worker"] for r in s["rows"]] == ["guess"])

    severe = [entry for entry in in_thread(browser.get_log, "browser") if entry["level"] == "SEVERE"]
    assert severe == [], severe
    assert page_state(browser)["error"] == ""

    # the agent goes away: the page says so instead of showing old numbers as if live
    status.stop()
    assert shows(lambda s: "Cannot reach the agent" in s["error"])


def test_the_chart_draws_the_history_kept_before_the_page_opened_and_again_after_a_reload(agent, browser):
    left = 60 - time.time() % 60
    if left < 10:  # the first look expects no new minute meanwhile
        gevent.sleep(left + 0.1)
    name = "127.0.0.1:0"
    prefill = {}  # while it holds figures, the history samples those instead of the agent
    history = History(lambda: dict(prefill) or sample_agents([(name, agent)]))
    first_minute = int(time.time() // 60) - 180
    for minute in range(180):  # three hours before the page opens, ten minutes of them missed
        if 100 <= minute < 110:
            continue
        rate = 1e12 * (1 + minute % 7)
        figures = {"hashrate": rate, "miners": 3, "accepted": 12 * minute, "rejected": 0, "connections_ready": 1}
        prefill.update({"total": figures, name: figures})
        history.record((first_minute + minute) * 60)
    prefill.clear()
    status = StatusServer(Farm(agent.config, [agent]), ("127.0.0.1", 0), history=history)
    status.start()  # its first sample: the agent now, no miners, 0 H/s
    try:
        def chart_once_live():
            """The chart once the page has drawn its first live point after the history."""
            assert wait_until(lambda: page_state(browser)["updated"].startswith("updated"), timeout=15)
            return page_state(browser)["chart"]

        # a refresh a minute: one live point on top of the history, so the count is exact
        in_thread(browser.get, "http://%s:%d/?refresh=60" % status.address)
        chart = chart_once_live()
        assert chart["first"] == first_minute * 60  # three hours before the page opened
        assert chart["points"] == 170 + 1 + 1      # the kept minutes, the sample at start, the live point
        assert chart["peak"] == 7e12
        in_thread(browser.refresh)
        chart = chart_once_live()
        assert chart["first"] == first_minute * 60 and chart["peak"] == 7e12
        assert chart["points"] in (172, 173)  # a minute may have passed: one more sample
        in_thread(lambda: Select(browser.find_element(By.ID, "chart-span")).select_by_value("3600"))
        chart = page_state(browser)["chart"]
        assert time.time() - 3600 - 120 < chart["first"] < time.time() - 3600 + 120
        assert chart["points"] in (61, 62)  # the last hour's minutes and the live point
        severe = [entry for entry in in_thread(browser.get_log, "browser") if entry["level"] == "SEVERE"]
        assert severe == [], severe
    finally:
        status.stop()

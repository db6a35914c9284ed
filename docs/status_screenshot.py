"""Make docs/status-page.png: the status page of a simulated farm of 30 miners, in headless Chromium.

    python docs/status_screenshot.py [--seconds 60] [--out docs/status-page.png]

Everything runs on loopback in this process: the pool simulator, the agent with two listeners
("farm-east" and "customer-b", each its own sub-account) and its status listener; on farm-east 26
hashing miners with a few firmware names, 2 that send guessed shares (rejected as low difficulty) and 2
that send nothing and are shown as connected 20 minutes ago, so they appear stale; on customer-b 8
hashing miners. Needs chromium and chromedriver (apt-get install chromium chromium-driver) and selenium.
"""
import argparse
import base64
import shutil
import sys
import tempfile
from typing import Any, List

import gevent
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from gagent.config import config_from_dict
from gagent.sim.miner import SimMiner
from gagent.sim.pool import PoolSimulator
from gagent.farm import Farm
from gagent.status import StatusServer

FIRMWARE = ("bmminer/2.0.0", "cgminer/4.11.1", "bosminer/1.2.0", "btminer/3.1.0")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars")


def in_thread(function: Any, *args: Any) -> Any:
    return gevent.get_hub().threadpool.apply(function, args)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="how long the farm runs before the shot")
    parser.add_argument("--out", default="docs/status-page.png")
    args = parser.parse_args()

    pool = PoolSimulator(default_difficulty=1.0 / 65536).start()
    farm = Farm(config_from_dict({
        "agent_listen_ip": "127.0.0.1", "http_listen": "", "submit_response_from_server": True,
        "pools": [["127.0.0.1", pool.address[1], "farm-east"]],
        "advanced": {"pool_connection_number_per_subaccount": 3},
        "listeners": [{"name": "farm-east", "agent_listen_port": 0},
                      {"name": "customer-b", "agent_listen_port": 0,
                       "pools": [["127.0.0.1", pool.address[1], "customer-b"]],
                       "advanced": {"pool_connection_number_per_subaccount": 1}}]}))
    farm.start()
    if not farm.wait_ready(15):
        print("the agent got no pool connection", file=sys.stderr)
        return 1
    agent, customer = farm.agents
    status = StatusServer(farm, ("127.0.0.1", 0))
    status.start()
    miners: List[SimMiner] = [
        SimMiner(*customer.address, username="customer-b.s%02d" % (n + 1), user_agent=FIRMWARE[n % 2]).start()
        for n in range(8)]
    for n in range(26):
        miners.append(SimMiner(*agent.address, username="farm-east.rack%d-%02d" % (n // 10 + 1, n % 10 + 1),
                               user_agent=FIRMWARE[n % len(FIRMWARE)]).start())
    for n in range(2):
        miners.append(SimMiner(*agent.address, username="farm-east.rack9-%02d" % (n + 1), hashing=False,
                               submit_interval=1.0, user_agent="cgminer/4.9.2").start())
    quiet = [SimMiner(*agent.address, username="farm-east.rack8-%02d" % (n + 1), hashing=False,
                      user_agent="bmminer/1.0.0").start() for n in range(2)]
    miners += quiet
    profile = tempfile.mkdtemp(prefix="gagent-shot-")
    browser = None
    try:
        gevent.sleep(2)
        for miner in agent.miners.values():
            if miner.worker_name.startswith("rack8-"):
                miner.connected_at -= 1200  # connected 20 minutes ago, never a share: stale
        options = webdriver.ChromeOptions()
        options.binary_location = shutil.which("chromium") or shutil.which("chromium-browser") or ""
        for flag in FLAGS:
            options.add_argument(flag)
        options.add_argument("--window-size=1400,1000")
        options.add_argument("--user-data-dir=%s" % profile)
        browser = in_thread(lambda: webdriver.Chrome(service=Service(shutil.which("chromedriver")),
                                                     options=options))
        in_thread(browser.get, "http://%s:%d/?refresh=2" % status.address)
        gevent.sleep(args.seconds)
        # the whole page: headless Chromium will not make its window taller than its screen
        height = in_thread(browser.execute_script, "return document.documentElement.scrollHeight")
        in_thread(browser.execute_cdp_cmd, "Emulation.setDeviceMetricsOverride",
                  {"width": 1400, "height": height, "deviceScaleFactor": 1, "mobile": False})
        gevent.sleep(2.5)  # one more refresh at the final size
        shot = in_thread(browser.execute_cdp_cmd, "Page.captureScreenshot", {"format": "png"})
        with open(args.out, "wb") as handle:
            handle.write(base64.b64decode(shot["data"]))
        print("wrote %s (%d miners)" % (args.out, len(miners)))
        return 0
    finally:
        if browser is not None:
            in_thread(browser.quit)
        for miner in miners:
            miner.stop()
        status.stop()
        farm.stop()
        pool.stop()
        shutil.rmtree(profile, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

"""Logs: size-capped rotation, reopening on SIGHUP (in-process and in a real agent), the summary line."""
import logging
import os
import signal
import subprocess
import sys
from types import SimpleNamespace

import pytest

from conftest import wait, wait_until
from gagent.config import config_from_dict
from gagent.counters import Counters
from gagent.logs import SummaryLogger, setup_logging
from test_cli import write_agent_conf

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def restore_logging():
    """setup_logging replaces the root handlers and the SIGHUP handler: put them back after the test."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    previous_sighup = signal.getsignal(signal.SIGHUP)
    setups = []
    yield setups.append
    for setup in setups:
        setup.close()
    root.handlers[:] = handlers
    root.setLevel(level)
    signal.signal(signal.SIGHUP, previous_sighup)


def log_config(tmp_path, **keys):
    config = config_from_dict(dict({"pools": [["127.0.0.1", 1, "demo"]]}, **keys))
    config.log_dir = str(tmp_path / "logs")
    return config


def test_log_files_rotate_at_the_size_cap(tmp_path, restore_logging):
    setup = setup_logging(log_config(tmp_path, log_max_bytes=4096, log_backups=2))
    restore_logging(setup)
    for n in range(300):
        logging.getLogger("gagent.test").info("line %04d %s", n, "x" * 60)
    names = sorted(os.listdir(tmp_path / "logs"))
    assert names == ["gagent.log", "gagent.log.1", "gagent.log.2"]
    for name in names:
        assert os.path.getsize(tmp_path / "logs" / name) <= 4096
    assert "line 0299" in (tmp_path / "logs" / "gagent.log").read_text()


def test_no_backups_means_the_file_is_truncated(tmp_path, restore_logging):
    setup = setup_logging(log_config(tmp_path, log_max_bytes=4096, log_backups=0))
    restore_logging(setup)
    for n in range(300):
        logging.getLogger("gagent.test").info("line %04d %s", n, "x" * 60)
    assert os.listdir(tmp_path / "logs") == ["gagent.log"]
    assert os.path.getsize(tmp_path / "logs" / "gagent.log") <= 4096


def test_sighup_reopens_the_log_file_after_logrotate_moved_it(tmp_path, restore_logging):
    setup = setup_logging(log_config(tmp_path))
    restore_logging(setup)
    logger = logging.getLogger("gagent.test")
    logger.info("before rotation")
    path = tmp_path / "logs" / "gagent.log"
    os.rename(path, str(path) + ".1")          # what logrotate does
    logger.info("after the move, before SIGHUP")  # still goes to the moved file
    os.kill(os.getpid(), signal.SIGHUP)
    assert wait_until(path.exists, timeout=5)
    logger.info("after SIGHUP")
    moved = (tmp_path / "logs" / "gagent.log.1").read_text()
    assert "before rotation" in moved and "after the move" in moved and "after SIGHUP" not in moved
    fresh = path.read_text()
    assert "reopened (SIGHUP)" in fresh and "after SIGHUP" in fresh


def test_summary_line_counts_miners_connections_rates_and_hashrate(caplog):
    def miner(n, worker, rate):
        return SimpleNamespace(session_id=n, worker_name=worker, sub_account="demo", hashrate=lambda: rate)

    counters = Counters()
    ready = SimpleNamespace(ready=True)
    lost = SimpleNamespace(ready=False)
    agent = SimpleNamespace(
        name="0.0.0.0:3333", counters=counters, miners={1: miner(1, "a", 2e12), 2: miner(2, "b", 1e12), 3: miner(3, "", 0.0)},
        pool_sets={"demo": SimpleNamespace(connections=[ready, ready, lost], held_count=1)})
    summary = SummaryLogger(SimpleNamespace(agents=[agent]), interval=0.2)
    with caplog.at_level(logging.INFO, logger="gagent"):
        summary.start()
        counters.shares_accepted["demo"] += 10
        counters.shares_rejected[("demo", 23)] += 1
        try:
            assert wait_until(lambda: "summary:" in caplog.text, timeout=5)
        finally:
            summary.stop()
    line = [r.getMessage() for r in caplog.records if r.getMessage().startswith("summary:")][0]
    assert line.startswith("summary: 2 miners online (3 connected, 1 held), pool connections ready 2/3, ")
    assert "hashrate 3 TH/s" in line
    accepted = float(line.split("accepted ")[1].split()[0])
    assert 10 / wait(2) < accepted <= 10 / 0.2


@pytest.mark.timeout(60)
def test_running_agent_reopens_its_log_on_sighup(pool, tmp_path):
    port, conf = write_agent_conf(tmp_path, pool, connections=1, http_listen="")
    logdir = tmp_path / "logs"
    process = subprocess.Popen([sys.executable, "-m", "gagent", "-c", str(conf), "-l", str(logdir)])
    path = logdir / "gagent.log"
    try:
        assert wait_until(lambda: path.exists() and "listening for miners" in path.read_text(), timeout=15)
        os.rename(path, logdir / "gagent.log.1")
        process.send_signal(signal.SIGHUP)
        assert wait_until(lambda: path.exists() and "reopened (SIGHUP)" in path.read_text(), timeout=10)
        assert process.poll() is None  # SIGHUP did not end it
        process.send_signal(signal.SIGTERM)
        assert wait_until(lambda: process.poll() is not None, timeout=10)
        assert process.returncode == 0
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(wait(10))
    assert "stopping" in path.read_text() and "listening for miners on 127.0.0.1:%d" % port not in path.read_text()


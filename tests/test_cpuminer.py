"""Interoperability with a real miner: cpuminer (minerd) mines through gagent to a plain stratum pool.

minerd is built from its public sources by ../shared/peers/build.sh (not in CI: the build needs the
sources fetched); set GAGENT_MINERD to its path, or leave it in /work/peers/minerd. Without it the
test is skipped and says why.
"""
import os
import re
import subprocess

import pytest

from conftest import wait, wait_until
from gagent.config import config_from_dict
from gagent.server import Agent
from gagent.sim.stratum_pool import StratumPoolSimulator

MINERD = os.environ.get("GAGENT_MINERD", "/work/peers/minerd")
# cpuminer hashes sha256d at a few MH/s a thread: a share every second or so at 1/1024
MINER_DIFFICULTY = 1.0 / 1024
POOL_DIFFICULTY = 1.0 / 256

pytestmark = [pytest.mark.timeout(90),
              pytest.mark.skipif(not os.access(MINERD, os.X_OK),
                                 reason="no cpuminer at %s (build it with ../shared/peers/build.sh, or set "
                                        "GAGENT_MINERD)" % MINERD)]


def last_answer_count(log: str) -> int:
    """The accepted count of cpuminer's last "accepted: A/S" line (0 before the first)."""
    answers = re.findall(r"accepted: (\d+)/(\d+)", log)
    return int(answers[-1][0]) if answers else 0


@pytest.mark.parametrize("extranonce2_size", [8, 4])
def test_cpuminer_mines_through_gagent_to_a_plain_stratum_pool(tmp_path, extranonce2_size):
    pool = StratumPoolSimulator(default_difficulty=POOL_DIFFICULTY, extranonce2_size=extranonce2_size,
                                job_interval=5).start()
    agent = Agent(config_from_dict({
        "agent_listen_ip": "127.0.0.1", "agent_listen_port": 0, "http_listen": "",
        "pools": [["stratum+tcp://127.0.0.1", pool.address[1], "acct", "x"]],
        "advanced": {"pool_connection_number_per_subaccount": 1, "miner_start_difficulty": MINER_DIFFICULTY}}))
    agent.start()
    output = tmp_path / "minerd.log"
    with open(output, "w") as log_file:
        process = subprocess.Popen([MINERD, "-a", "sha256d", "-o", "stratum+tcp://127.0.0.1:%d" % agent.address[1],
                                    "-u", "acct.cpu1", "-p", "x", "-t", "1", "-q"],
                                   stdout=log_file, stderr=subprocess.STDOUT)
    try:
        assert wait_until(lambda: pool.statuses["accepted"] >= 3, timeout=60), output.read_text()[-2000:]
        session = next(iter(agent.miners.values()))
        assert session.worker_name == "cpu1" and session.extranonce2_size == min(4, extranonce2_size - 1)
        # the agent stops first, so no answer is left on the way when cpuminer stops: it reads and logs
        # every answer the agent sent before the close
        agent.stop()
        wait_until(lambda: last_answer_count(output.read_text()) == session.accepted, timeout=10)
    finally:
        process.terminate()
        process.wait(wait(10))
        agent.stop()
        pool.stop()
    text = output.read_text()
    answers = re.findall(r"accepted: (\d+)/(\d+)", text)
    assert answers, text[-2000:]
    accepted, sent = map(int, answers[-1])
    assert accepted == sent and sent >= 3, text[-2000:]  # every share cpuminer sent was accepted
    assert sum(count for reason, count in pool.statuses.items() if reason != "accepted") == 0
    assert session.accepted == accepted and session.rejected == 0

"""The `gagent` entry point as an operator runs it: a subprocess with a config file and a log dir."""
import json
import signal
import socket as std_socket
import subprocess
import sys

import pytest

from conftest import LineClient, wait, wait_until


def free_port() -> int:
    with std_socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def write_agent_conf(tmp_path, pool, connections: int):
    """An agent_conf.json on a free port for `pool`; returns (port, path)."""
    port = free_port()
    conf = tmp_path / "agent_conf.json"
    conf.write_text(json.dumps({"agent_listen_ip": "127.0.0.1", "agent_listen_port": port,
                                "pools": [["127.0.0.1", pool.address[1], "demo"]],
                                "advanced": {"pool_connection_number_per_subaccount": connections}}))
    return port, conf


@pytest.mark.timeout(60)
def test_gagent_serves_miners_logs_to_logdir_and_stops_on_sigterm(pool, tmp_path):
    port, conf = write_agent_conf(tmp_path, pool, connections=2)
    logdir = tmp_path / "logs"
    process = subprocess.Popen([sys.executable, "-m", "gagent", "-c", str(conf), "-l", str(logdir)])
    try:
        assert wait_until(lambda: len(pool.authorized) == 2, timeout=15), "agent did not connect to the pool"
        client = LineClient(("127.0.0.1", port))
        client.login("demo.cli")
        assert wait_until(lambda: any(w == ("cgminer/4.11", "cli") for c in pool.authorized
                                      for w in c.workers.values()))
        client.close()
        process.send_signal(signal.SIGTERM)
        assert wait_until(lambda: process.poll() is not None, timeout=10), "agent did not stop on SIGTERM"
        assert process.returncode == 0
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(wait(10))
    log_text = (logdir / "gagent.log").read_text()
    assert "listening for miners on 127.0.0.1:%d" % port in log_text
    assert "authorized at 127.0.0.1:%d as demo" % pool.address[1] in log_text


@pytest.mark.timeout(60)
def test_out_of_file_descriptors_is_explained_and_survived(pool, tmp_path):
    """With a tiny open-file limit the agent says what to raise, keeps its miners, and recovers."""
    import resource
    port, conf = write_agent_conf(tmp_path, pool, connections=1)
    log_path = tmp_path / "agent.log"

    def low_limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (40, 40))

    with open(log_path, "w") as log_file:
        process = subprocess.Popen([sys.executable, "-m", "gagent", "-c", str(conf)], stderr=log_file,
                                   preexec_fn=low_limit)
    clients = []
    try:
        assert wait_until(lambda: len(pool.authorized) == 1, timeout=15)
        first = LineClient(("127.0.0.1", port))
        first.login("demo.first")
        clients.append(first)
        for _ in range(45):  # more than the agent has descriptors for
            client = LineClient(("127.0.0.1", port))
            client.request("mining.subscribe", [])
            clients.append(client)
        assert wait_until(lambda: "too many open files" in log_path.read_text(), timeout=10)
        assert "raise the open-file limit" in log_path.read_text()
        pool.new_job()
        assert first.read_until(lambda m: m.get("method") == "mining.notify")  # served miners stay served
        for client in clients[1:]:
            client.close()
        late = LineClient(("127.0.0.1", port))
        clients.append(late)
        late.login("demo.late")  # descriptors freed: accepting again
        assert process.poll() is None
    finally:
        for client in clients:
            client.close()
        process.terminate()
        process.wait(wait(10))
    assert "Traceback" not in log_path.read_text()

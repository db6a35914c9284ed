"""The `gagent` entry point as an operator runs it: a subprocess with a config file and a log dir."""
import json
import signal
import subprocess
import sys

import psutil
import pytest

from conftest import LineClient, free_port, http_request, wait, wait_until


def write_agent_conf(tmp_path, pool, connections: int, http_listen: str = "", **keys):
    """An agent_conf.json on a free port for `pool`; returns (port, path).

    `http_listen` defaults to "" (status listener off) so no test ever binds the default port 8080.
    """
    port = free_port()
    conf = tmp_path / "agent_conf.json"
    conf.write_text(json.dumps(dict({"agent_listen_ip": "127.0.0.1", "agent_listen_port": port,
                                     "pools": [["127.0.0.1", pool.address[1], "demo"]],
                                     "http_listen": http_listen,
                                     "advanced": {"pool_connection_number_per_subaccount": connections}},
                                    **keys)))
    return port, conf


def http_get(port: int, path: str):
    """(status, body) from the agent's status listener, without blocking the hub (the pool runs here)."""
    status, _, body = http_request(("127.0.0.1", port), path)
    return status, body


@pytest.mark.timeout(60)
def test_gagent_serves_miners_logs_to_logdir_and_stops_on_sigterm(pool, tmp_path):
    http_port = free_port()
    port, conf = write_agent_conf(tmp_path, pool, connections=2, http_listen="127.0.0.1:%d" % http_port)
    logdir = tmp_path / "logs"
    process = subprocess.Popen([sys.executable, "-m", "gagent", "-c", str(conf), "-l", str(logdir)])
    try:
        assert wait_until(lambda: len(pool.authorized) == 2, timeout=15), "agent did not connect to the pool"
        client = LineClient(("127.0.0.1", port))
        client.login("demo.cli")
        assert wait_until(lambda: any(w == ("cgminer/4.11", "cli") for c in pool.authorized
                                      for w in c.workers.values()))
        assert http_get(http_port, "/healthz") == (200, b"ok\n")
        status = json.loads(http_get(http_port, "/status.json")[1])
        assert [m["worker"] for m in status["miners"]] == ["cli"]
        assert b'gagent_miners_connected{listener="127.0.0.1:%d"} 1.0' % port in http_get(http_port, "/metrics")[1]
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
    assert "status page on http://127.0.0.1:%d/" % http_port in log_text


@pytest.mark.timeout(60)
def test_gagent_runs_no_thread_while_resolving_pool_names(pool, tmp_path):
    """The entry point sets gevent up as the product's shape says: DNS look-ups on the event loop
    (c-ares), not in gevent's default thread pool, so the process keeps its single thread."""
    port, conf = write_agent_conf(tmp_path, pool, connections=3, pools=[["localhost", pool.address[1], "demo"]])
    process = subprocess.Popen([sys.executable, "-m", "gagent", "-c", str(conf)], stderr=subprocess.DEVNULL)
    try:
        assert wait_until(lambda: len(pool.authorized) == 3, timeout=15), "agent did not connect"
        client = LineClient(("127.0.0.1", port))
        client.login("demo.threads")
        assert wait_until(lambda: any(w[1] == "threads" for c in pool.authorized for w in c.workers.values()))
        client.close()
        assert psutil.Process(process.pid).num_threads() == 1
    finally:
        process.kill()
        process.wait(wait(10))


def run_gagent(*args):
    return subprocess.run([sys.executable, "-m", "gagent", *args], capture_output=True, text=True,
                          timeout=wait(30))


@pytest.mark.timeout(60)
def test_check_config_prints_the_effective_settings_with_secrets_masked(tmp_path):
    conf = tmp_path / "agent_conf.json"
    conf.write_text(json.dumps({"pools": [["pool.example", 1800, "mysub"]], "http_listen": "",
                                "proxy": ["socks5://alice:s3cret@10.0.0.1:1080", "http://10.0.0.2:3128"],
                                "advanced": {"pool_connection_number_per_subaccount": 3}}))
    result = run_gagent("--check-config", "-c", str(conf), "--agent-listen-port", "3334")
    assert result.returncode == 0, result.stderr
    settings = json.loads(result.stdout)
    assert settings["pools"] == [{"pool": "pool.example:1800", "kind": "btcagent", "user": "mysub", "password": "x"}]
    assert settings["agent_listen_port"] == 3334            # the command line wins
    assert settings["pool_connection_number_per_subaccount"] == 3
    assert settings["http_listen"] == "" and settings["log_max_bytes"] == 50 << 20
    assert settings["proxy"] == ["socks5://alice:***@10.0.0.1:1080", "http://10.0.0.2:3128"]
    assert "s3cret" not in result.stdout + result.stderr
    assert "check_config" not in settings


@pytest.mark.timeout(60)
def test_check_config_with_a_bad_config_exits_2_with_one_line(tmp_path):
    conf = tmp_path / "agent_conf.json"
    conf.write_text(json.dumps({"pools": [["pool.example", 1800, "mysub"]], "http_listen": "localhost"}))
    result = run_gagent("--check-config", "-c", str(conf))
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        'gagent: configuration error: http_listen: expected "host:port" (e.g. "127.0.0.1:8080") or "" to '
        "turn it off, got 'localhost'"]


def test_secrets_are_masked():
    from gagent.cli import effective_settings
    from gagent.connect import redact_url
    from gagent.config import config_from_dict
    assert redact_url("socks5://bob:pw@h:1") == "socks5://bob:***@h:1"
    assert redact_url("socks5h://bob@h:1") == "socks5h://bob@h:1"
    assert redact_url("not a url") == "not a url"
    config = config_from_dict({"pools": [["h", 1, "s"]]})
    config.proxy_password = "hunter2"  # a future secret key is masked by its name
    assert effective_settings(config)["proxy_password"] == "***"


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

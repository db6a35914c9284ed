"""The shipped process-manager files, really used: supervisord runs gagent from supervisor/gagent.conf,
and systemd-analyze accepts etc/gagent.service.

Only paths are rewritten (to this test's temp dir and this virtualenv) and the status listener moved
to a free port; everything else is the file an operator copies.
"""
import configparser
import json
import os
import resource
import shlex
import shutil
import signal
import sys
from pathlib import Path

import pytest
from gevent import subprocess

from conftest import LineClient, free_port, wait, wait_until
from test_cli import http_get, write_agent_conf

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def rewrite(value: str, paths: dict) -> str:
    for old, new in paths.items():
        value = value.replace(old, new)
    return value


def read_ini(path: Path) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # keep key case
    parser.read(path)
    return parser


# ---- supervisord ----------------------------------------------------------------------------------

def supervisor_conf(tmp_path: Path, agent_conf: Path) -> Path:
    """supervisor/gagent.conf made runnable here: paths into tmp_path, an HTTP control port, minfds capped
    at the hard open-file limit (supervisord refuses to start above it)."""
    shipped = read_ini(ROOT / "supervisor" / "gagent.conf")
    (tmp_path / "logs").mkdir()
    paths = {"/opt/gagent/.venv/bin/": str(BIN) + "/", "/etc/gagent/agent_conf.json": str(agent_conf),
             "/var/log/gagent": str(tmp_path / "logs"), "/opt/gagent": str(tmp_path)}
    conf = configparser.RawConfigParser(interpolation=None)
    conf.optionxform = str
    for section in shipped.sections():
        conf.add_section(section)
        for key, value in shipped.items(section):
            conf.set(section, key, rewrite(value, paths))
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and int(conf.get("supervisord", "minfds")) > hard:
        conf.set("supervisord", "minfds", str(hard))
    control = "127.0.0.1:%d" % free_port()
    conf.set("supervisord", "logfile", str(tmp_path / "supervisord.log"))
    conf.set("supervisord", "pidfile", str(tmp_path / "supervisord.pid"))
    conf.set("supervisord", "childlogdir", str(tmp_path))
    conf["inet_http_server"] = {"port": control}
    conf["supervisorctl"] = {"serverurl": "http://" + control}
    conf["rpcinterface:supervisor"] = {
        "supervisor.rpcinterface_factory": "supervisor.rpcinterface:make_main_rpcinterface"}
    path = tmp_path / "supervisord.conf"
    with open(path, "w") as handle:
        conf.write(handle)
    return path


def supervisorctl(conf: Path, *args: str) -> str:
    result = subprocess.run([str(BIN / "supervisorctl"), "-c", str(conf), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, timeout=wait(20))
    return result.stdout.decode()


def closed_by_agent(client: LineClient) -> bool:
    """Read whatever is left until the agent closes the connection."""
    for _ in range(100):
        if client.read(timeout=5) is None:
            return True
    return False


def test_shipped_supervisor_entry_keeps_its_promises():
    program = read_ini(ROOT / "supervisor" / "gagent.conf")["program:gagent"]
    command = shlex.split(program["command"])
    assert command[0].endswith("/bin/gagent") and "-c" in command and "-l" in command
    assert program["stopsignal"] == "TERM" and program["autorestart"] == "true"
    assert int(read_ini(ROOT / "supervisor" / "gagent.conf")["supervisord"]["minfds"]) >= 20000


@pytest.mark.timeout(60)
def test_supervisord_runs_gagent_from_the_shipped_entry_and_stops_it_cleanly(pool, tmp_path):
    http_port = free_port()
    port, agent_conf = write_agent_conf(tmp_path, pool, connections=1, http_listen="127.0.0.1:%d" % http_port)
    conf = supervisor_conf(tmp_path, agent_conf)
    supervisord = subprocess.Popen([str(BIN / "supervisord"), "-n", "-c", str(conf)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = None
    try:
        assert wait_until(lambda: len(pool.authorized) == 1, timeout=15), "gagent did not reach the pool"
        client = LineClient(("127.0.0.1", port))
        client.login("demo.supervised")
        assert http_get(http_port, "/healthz") == (200, b"ok\n")
        workers = [m["worker"] for m in json.loads(http_get(http_port, "/status.json")[1])["miners"]]
        assert workers == ["supervised"]
        # RUNNING once it stayed up startsecs (3 s)
        assert wait_until(lambda: "RUNNING" in supervisorctl(conf, "status", "gagent"), timeout=10, step=0.5)
        pid = int(supervisorctl(conf, "pid", "gagent"))

        assert supervisorctl(conf, "stop", "gagent").strip() == "gagent: stopped"
        assert "STOPPED" in supervisorctl(conf, "status", "gagent")
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
        assert closed_by_agent(client)
    finally:
        if client is not None:
            client.close()
        supervisord.send_signal(signal.SIGTERM)
        try:
            supervisord.wait(timeout=wait(20))
        except subprocess.TimeoutExpired:
            supervisord.kill()
            supervisord.wait()
    supervisor_log = (tmp_path / "supervisord.log").read_text()
    assert "stopped: gagent (exit status 0)" in supervisor_log  # it ended on SIGTERM by itself
    assert "SIGKILL" not in supervisor_log and "FATAL" not in supervisor_log
    assert "exited: gagent" not in supervisor_log  # never ended unexpectedly
    agent_log = (tmp_path / "logs" / "gagent.log").read_text()
    assert "stopping" in agent_log and "Traceback" not in agent_log


# ---- systemd --------------------------------------------------------------------------------------

def test_shipped_systemd_unit_keeps_its_promises():
    service = read_ini(ROOT / "etc" / "gagent.service")["Service"]
    assert service["LimitNOFILE"] == "65536"
    assert service["Restart"] == "always"
    assert service["KillSignal"] == "SIGTERM"
    command = shlex.split(service["ExecStart"])
    assert command[0].endswith("/bin/gagent")
    assert command[command.index("-c") + 1] == "/etc/gagent/agent_conf.json"
    assert command[command.index("-l") + 1] == "/var/log/gagent"
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"  # reopens the log file


@pytest.mark.timeout(60)
@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verifies_the_unit(tmp_path):
    text = (ROOT / "etc" / "gagent.service").read_text()
    unit = tmp_path / "gagent.service"
    unit.write_text(text.replace("/opt/gagent/.venv/bin/gagent", str(BIN / "gagent")))  # verify wants it to exist
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, timeout=wait(30))
    output = result.stdout.decode()
    assert result.returncode == 0, output
    assert "gagent.service" not in output, output


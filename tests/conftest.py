"""Shared fixtures: a simulated pool and a running agent on free loopback ports, stopped after each test.

Set GAGENT_TEST_TIMEOUT_SCALE (e.g. 3) on slow machines: every wait in the tests is multiplied by it.
The standard library is patched as the `gagent` command patches it (gagent/entry.py), first.
"""
from gagent.entry import patch

patch()

import os  # noqa: E402
import resource  # noqa: E402
import socket as std_socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import gevent  # noqa: E402
import pytest  # noqa: E402

from gagent.config import config_from_dict  # noqa: E402
from gagent.server import Agent  # noqa: E402
from gagent.sim.pool import PoolSimulator  # noqa: E402

SCALE = float(os.environ.get("GAGENT_TEST_TIMEOUT_SCALE", "1"))
TINY_DIFFICULTY = 1.0 / 65536  # a Python miner finds a share in ~65k hashes


def wait(seconds: float) -> float:
    """A timeout scaled for the machine."""
    return seconds * SCALE


def wait_until(predicate, timeout: float = 5.0, step: float = 0.01) -> bool:
    """Poll `predicate` cooperatively until it is true or the scaled timeout passes."""
    deadline = gevent.get_hub().loop.now() + wait(timeout)
    while not predicate():
        if gevent.get_hub().loop.now() > deadline:
            return False
        gevent.sleep(step)
    return True


@pytest.fixture(scope="session", autouse=True)
def raise_file_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    yield


@pytest.fixture
def pool():
    sim = PoolSimulator(default_difficulty=TINY_DIFFICULTY)
    sim.start()
    yield sim
    sim.stop()


def start_agent(pools, sub_account="demo", **settings):
    """A started Agent for `pools` (simulators or ports, in order) with one connection unless
    settings say otherwise; top-level keys as keywords, nested ones in `advanced={...}`."""
    advanced = {"pool_connection_number_per_subaccount": 1}
    advanced.update(settings.pop("advanced", {}))
    ports = [p if isinstance(p, int) else p.address[1] for p in pools]
    conf = {"agent_listen_ip": "127.0.0.1", "agent_listen_port": 0, "advanced": advanced,
            "pools": [["127.0.0.1", port, sub_account] for port in ports]}
    conf.update(settings)
    agent = Agent(config_from_dict(conf))
    agent.start()
    return agent


def http_request(address, path, method="GET"):
    """(status, headers, body) of one request on a gevent socket: urllib would block the hub serving it."""
    from gevent import socket
    sock = socket.create_connection(address, timeout=wait(10))
    try:
        sock.sendall(("%s %s HTTP/1.0\r\nHost: test\r\n\r\n" % (method, path)).encode())
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        sock.close()
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def make_agent(pool_sim, **overrides):
    conf = {"agent_listen_ip": "127.0.0.1", "agent_listen_port": 0,
            "pools": [["127.0.0.1", pool_sim.address[1], "demo"]],
            "advanced": {"pool_connection_number_per_subaccount": 1}}
    advanced = overrides.pop("advanced", {})
    conf.update(overrides)
    conf["advanced"].update(advanced)
    return Agent(config_from_dict(conf))


@pytest.fixture
def agent_factory(pool):
    agents = []

    def start(**overrides):
        agent = make_agent(pool, **overrides)
        agent.start()
        agents.append(agent)
        assert agent.wait_ready(wait(5)), "agent did not get an authorized pool connection"
        return agent

    yield start
    for agent in agents:
        agent.stop()


@pytest.fixture
def agent(agent_factory):
    return agent_factory()


class LineClient:
    """A bare stratum client on a real socket: send requests, read the agent's lines in order."""

    def __init__(self, address):
        from gevent import socket
        self.sock = socket.create_connection(address, timeout=wait(5))
        self.buffer = b""
        self.next_id = 1

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def request(self, method, params):
        import json
        msg_id = self.next_id
        self.next_id += 1
        self.send_raw(json.dumps({"id": msg_id, "method": method, "params": params}).encode() + b"\n")
        return msg_id

    def read(self, timeout: float = 5.0):
        """The next message (parsed), or None when the agent closed the connection."""
        import json
        self.sock.settimeout(wait(timeout))
        while b"\n" not in self.buffer:
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                return None
            if not data:
                return None
            self.buffer += data
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)

    def read_until(self, predicate, timeout: float = 5.0):
        """Messages up to and including the first that matches."""
        seen = []
        while True:
            msg = self.read(timeout)
            assert msg is not None, "connection closed; got %r" % seen
            seen.append(msg)
            if predicate(msg):
                return seen

    def answer(self, msg_id, timeout: float = 5.0):
        return self.read_until(lambda m: m.get("id") == msg_id and "method" not in m, timeout)[-1]

    def login(self, login="demo.rig1", user_agent="cgminer/4.11"):
        """Subscribe and authorize; returns (extranonce1, messages after authorize until the first job)."""
        sub = self.answer(self.request("mining.subscribe", [user_agent]))
        auth_id = self.request("mining.authorize", [login, "x"])
        seen = self.read_until(lambda m: m.get("method") == "mining.notify")
        assert {"id": auth_id, "result": True, "error": None} in seen
        return sub["result"][1], seen

    def close(self):
        self.sock.close()


@pytest.fixture
def clients(agent):
    opened = []

    def connect(address=None):
        client = LineClient(address or agent.address)
        opened.append(client)
        return client

    yield connect
    for client in opened:
        client.close()


USER, PASSWORD = "farm", "s3cret"  # of the proxies the pproxy fixture starts


def free_port() -> int:
    """A free TCP port on loopback."""
    with std_socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def pproxy():
    """One pproxy process listening as four proxies; {"socks5"|"socks5_auth"|"http"|"http_auth": port}."""
    ports = {name: free_port() for name in ("socks5", "socks5_auth", "http", "http_auth")}
    # --auth 0: by default pproxy remembers for 30 days an IP that authenticated once and then lets any
    # password through, which would hide wrong-password failures.
    args = [sys.executable, "-m", "pproxy", "--auth", "0"]
    for name, port in ports.items():
        auth = "#%s:%s" % (USER, PASSWORD) if name.endswith("_auth") else ""
        args += ["-l", "%s://127.0.0.1:%d%s" % (name.split("_")[0], port, auth)]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + wait(10)
        for port in ports.values():
            while True:
                assert process.poll() is None, "pproxy exited: %s" % process.stderr.read().decode()
                assert time.monotonic() < deadline, "pproxy did not listen in time"
                try:
                    std_socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.02)
        yield ports
    finally:
        process.terminate()
        process.wait(wait(5))
        process.stderr.close()

"""Shared fixtures: a simulated pool and a running agent on free loopback ports, stopped after each test.

Set GAGENT_TEST_TIMEOUT_SCALE (e.g. 3) on slow machines: every wait in the tests is multiplied by it.
"""
import os
import resource

import gevent
import pytest

from gagent.config import config_from_dict
from gagent.server import Agent
from gagent.sim.pool import PoolSimulator

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

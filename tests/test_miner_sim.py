"""SimMiner against a tiny pool-like stratum server built here (no agent, no pool simulator)."""
import gevent
import pytest
from gevent import socket
from gevent.server import StreamServer

from gagent.protocol import hashing
from gagent.protocol.stratum import loads, notification_line, result_line
from gagent.sim.miner import SimMiner

# docs/protocol.md §4.6: the job as the pool sent it; gagent appends the pool's extranonce1 to coinb1.
PREVHASH = "4d16b6f85af6e2198f44ae2a6de67f78487ae5611b77c6c0440b921e00000000"
COINB1 = "01000000010000000000000000000000000000000000000000000000000000000000000000ffffffff2503ef98030400ba7f5a"
COINB2 = ("0a2f6d792d706f6f6c2fffffffff0100f2052a010000001976a914000000000000000000000000000000000000"
          "000088ac00000000")
BRANCHES = ["1b2e4ca2dd5d4e87ac1bd6efa7a6b4f3a16c6e2ef7b6ee4c4a1de3c4b1d2e3f4",
            "5a6b7c8d9e0f112233445566778899aabbccddeeff00112233445566778899aa"]
POOL_EN1 = "9a3c01f2"
MINER_EN1 = "0000002a"
DIFF = 1.0 / 65536


def job(job_id="3", clean=True):
    return [job_id, PREVHASH, COINB1 + POOL_EN1, COINB2, BRANCHES, "20000000", "1a0ffff0", "5a7fba00", clean]


def share_header(job_params, en2, ntime, nonce, vbits=0):
    """The header the pool would hash for a miner submit on `job_params`."""
    _, prevhash, coinb1, coinb2, branches, version, nbits = job_params[:7]
    root = hashing.merkle_root(hashing.coinbase(coinb1, MINER_EN1, en2, coinb2), branches)
    return hashing.header(int(version, 16) ^ vbits, prevhash, root, int(ntime, 16), int(nbits, 16),
                          int(nonce, 16))


def test_worked_share_vector():
    """Our header builder reproduces docs/protocol.md §4.6 (so the checks below mean something)."""
    head = share_header(job(), "0000beef", "5a7fba00", "1c9f0a77", 0x00a4c000)
    assert hashing.sha256d(head)[::-1].hex() == \
        "fd3ae6e23ad538ac5fdc7c0a30fa79220581ff90414013dac455004dd5f42ed6"


class FakePool:
    """Answers subscribe/configure/authorize, pushes difficulty + job, checks every submit by hashing."""

    def __init__(self, difficulty=DIFF):
        self.difficulty = difficulty
        self.jobs = {"3": job("3")}
        self.submits = []          # (params, valid, arrival time)
        self.conns = []
        self.server = StreamServer(("127.0.0.1", 0), self.handle)

    def start(self):
        self.server.start()
        return self

    @property
    def port(self):
        return self.server.address[1]

    def stop(self):
        self.server.stop(timeout=1)
        for sock in self.conns:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def push(self, line):
        for sock in self.conns:
            sock.sendall(line)

    def new_job(self, job_id):
        self.jobs[job_id] = job(job_id)
        # same job content under a new id is enough for the miner to restart its search
        self.push(notification_line("mining.notify", self.jobs[job_id]))

    def set_difficulty(self, difficulty):
        self.difficulty = difficulty
        self.push(notification_line("mining.set_difficulty", [difficulty]))

    def check(self, params):
        _, job_id, en2, ntime, nonce = params[:5]
        vbits = int(params[5], 16) if len(params) > 5 else 0
        if job_id not in self.jobs or len(en2) != 8 or vbits & ~0x1FFFE000:
            return False
        head = share_header(self.jobs[job_id], en2, ntime, nonce, vbits)
        return hashing.meets_difficulty(head, self.difficulty)

    def handle(self, sock, _addr):
        self.conns.append(sock)
        try:
            self.serve(sock)
        except OSError:
            pass

    def serve(self, sock):
        for line in sock.makefile("rb"):
            msg = loads(line)
            method, params, msg_id = msg["method"], msg["params"], msg["id"]
            if method == "mining.subscribe":
                sock.sendall(result_line(msg_id, [[["mining.set_difficulty", MINER_EN1],
                                                   ["mining.notify", MINER_EN1]], MINER_EN1, 4]))
            elif method == "mining.configure":
                sock.sendall(result_line(msg_id, {"version-rolling": True,
                                                  "version-rolling.mask": "1fffe000"}))
            elif method == "mining.authorize":
                sock.sendall(result_line(msg_id, True)
                             + notification_line("mining.set_difficulty", [self.difficulty])
                             + notification_line("mining.notify", self.jobs["3"]))
            elif method == "mining.submit":
                valid = self.check(params)
                self.submits.append((params, valid, gevent.get_hub().loop.now()))
                if valid:
                    sock.sendall(result_line(msg_id, True))
                else:
                    sock.sendall(b'{"id":%d,"result":null,"error":[23,"Low difficulty",null]}\n' % msg_id)
            else:
                sock.sendall(b'{"id":%d,"result":null,"error":[27,"Illegal params",null]}\n' % msg_id)


@pytest.fixture
def fake_pool():
    pool = FakePool().start()
    yield pool
    pool.stop()


@pytest.fixture
def miners():
    started = []

    def make(*args, **kwargs):
        miner = SimMiner(*args, **kwargs)
        started.append(miner)
        return miner.start()

    yield make
    for miner in started:
        miner.stop()


@pytest.mark.timeout(20)
def test_hashing_miner_finds_valid_shares(fake_pool, miners):
    miner = miners("127.0.0.1", fake_pool.port, username="sub.rig1", max_shares=4)
    assert miner.wait_for(lambda: miner.accepted + miner.rejected >= 4, 15), miner
    assert miner.error is None
    assert miner.extranonce1 == MINER_EN1 and miner.extranonce2_size == 4
    assert miner.authorized is True and miner.difficulty == DIFF
    assert miner.accepted == 4 and miner.rejected == 0 and miner.shares_sent == 4
    params = [p for p, _, _ in fake_pool.submits]
    assert all(valid for _, valid, _ in fake_pool.submits)
    assert all(p[0] == "sub.rig1" and p[1] == "3" and p[3] == "5a7fba00" and len(p) == 5 for p in params)
    assert len({(p[2], p[4]) for p in params}) == 4, "duplicate share"
    gevent.sleep(0.3)
    assert miner.shares_sent == 4, "max_shares not honoured"
    assert [m["method"] for m in miner.received if m.get("method")] == ["mining.set_difficulty", "mining.notify"]


@pytest.mark.timeout(20)
def test_version_rolling_shares(fake_pool, miners):
    miner = miners("127.0.0.1", fake_pool.port, version_rolling=True, max_shares=3)
    assert miner.wait_for(lambda: miner.accepted + miner.rejected >= 3, 15), miner
    assert miner.version_mask == 0x1FFFE000
    assert miner.accepted == 3, fake_pool.submits
    for params, valid, _ in fake_pool.submits:
        assert valid and len(params) == 6
        vbits = int(params[5], 16)
        assert vbits and not vbits & ~0x1FFFE000


@pytest.mark.timeout(20)
def test_new_job_and_difficulty_restart_search(fake_pool, miners):
    miner = miners("127.0.0.1", fake_pool.port)
    assert miner.wait_for(lambda: miner.accepted >= 2, 10)
    fake_pool.new_job("4")
    assert miner.wait_for(lambda: any(p[1] == "4" for p, _, _ in fake_pool.submits), 10)
    fake_pool.set_difficulty(DIFF * 2)
    assert miner.wait_for(lambda: miner.difficulty == DIFF * 2, 5)
    gevent.sleep(0.05)  # let shares already on the wire reach the pool
    count = len(fake_pool.submits)
    assert miner.wait_for(lambda: len(fake_pool.submits) >= count + 3, 10)
    miner.stop()
    assert all(valid for _, valid, _ in fake_pool.submits[count:])
    shares = [(p[1], p[2], p[4], p[5] if len(p) > 5 else None) for p, _, _ in fake_pool.submits]
    assert len(shares) == len(set(shares)), "a share was submitted twice"


@pytest.mark.timeout(20)
def test_non_hashing_mode_submits_at_interval(fake_pool, miners):
    miner = miners("127.0.0.1", fake_pool.port, hashing=False, submit_interval=0.1)
    assert miner.wait_for(lambda: len(fake_pool.submits) >= 8, 5)
    assert miner.wait_for(lambda: miner.accepted + miner.rejected == miner.shares_sent, 2)
    times = [t for _, _, t in fake_pool.submits[:8]]
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert all(0.05 < gap < 0.3 for gap in gaps), gaps
    for params, _, _ in fake_pool.submits:
        assert params[1] == "3" and len(params[2]) == 8 and len(params[4]) == 8 and params[3] == "5a7fba00"
    assert miner.error is None and miner.hashes == 0


@pytest.mark.timeout(20)
def test_helpers_and_server_close(fake_pool, miners):
    miner = miners("127.0.0.1", fake_pool.port, hashing=False, auto_handshake=False)
    msg_id = miner.send_request("mining.suggest_difficulty", [1])
    answer = miner.wait_response(msg_id, 5)
    assert answer is not None and answer["error"][0] == 27
    sub_id = miner.send_request("mining.subscribe", ["x/1"])
    miner.send_request("mining.authorize", ["a.b", "x"])
    assert miner.wait_for(lambda: miner.job is not None, 5)
    assert miner.responses[sub_id]["result"][1] == MINER_EN1
    assert len(miner.messages("mining.notify")) == 1 and len(miner.messages("mining.set_difficulty")) == 1
    miner.send_raw(b"")  # harmless
    for sock in fake_pool.conns:
        sock.shutdown(socket.SHUT_RDWR)
    assert miner.wait_for(lambda: miner.closed, 5)
    assert miner.error is None


@pytest.mark.timeout(20)
def test_connection_refused_is_recorded(miners):
    server = StreamServer(("127.0.0.1", 0), lambda s, a: None)
    server.init_socket()
    port = server.address[1]
    server.close()
    miner = miners("127.0.0.1", port)
    assert miner.wait_for(lambda: miner.closed, 5)
    assert isinstance(miner.error, OSError)

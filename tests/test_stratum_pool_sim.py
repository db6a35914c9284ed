"""The plain stratum v1 pool simulator, driven over sockets by a line client and the hashing SimMiner."""
import json
import re
import signal
import struct
import subprocess
import sys
import time

import gevent
import pytest

from conftest import LineClient, wait
from gagent.protocol import hashing
from gagent.sim.miner import SimMiner
from gagent.sim.stratum_pool import StratumPoolSimulator, build_parser, pool_from_args

EASY = 2.0 ** -24  # a share in about 256 hashes
USER = "acct.rig1"


@pytest.fixture
def make_pool():
    pools = []

    def make(**kwargs):
        kwargs.setdefault("default_difficulty", EASY)
        sim = StratumPoolSimulator(**kwargs).start()
        pools.append(sim)
        return sim

    yield make
    for sim in pools:
        sim.stop()


@pytest.fixture
def connect():
    clients = []

    def make(pool_or_address):
        client = Session(getattr(pool_or_address, "address", pool_or_address))
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def miners():
    started = []

    def start(pool, **kwargs):
        miner = SimMiner("127.0.0.1", pool.address[1], **kwargs).start()
        started.append(miner)
        return miner

    yield start
    for miner in started:
        miner.stop()


def header_prefix(job, en1, en2, vbits=0, mask=0):
    """The first 76 header bytes a pool builds for a submit on `job` (notify params), BIP310 version."""
    _, prevhash, coinb1, coinb2, branches, version, nbits, ntime = job[:8]
    root = hashing.merkle_root(hashing.coinbase(coinb1, en1, en2, coinb2), branches)
    merged = (int(version, 16) & ~mask) | vbits
    return hashing.header(merged, prevhash, root, int(ntime, 16), int(nbits, 16), 0)[:76]


def search(job, en1, en2, meets, misses=None, vbits=0, mask=0):
    """(nonce, hash) of the first nonce whose header hash meets difficulty `meets` (None: any) and
    misses difficulty `misses` (None: no upper bound)."""
    head = header_prefix(job, en1, en2, vbits, mask)
    high = hashing.target_for_difficulty(meets) if meets is not None else (1 << 256)
    low = hashing.target_for_difficulty(misses) if misses is not None else -1
    for nonce in range(1 << 32):
        value = hashing.header_hash_int(head + struct.pack("<I", nonce))
        if low < value <= high:
            return nonce, value
    raise AssertionError("no nonce found")


class Session(LineClient):
    """A stratum v1 client that remembers what the pool told it and builds shares by hashing."""

    def __init__(self, address):
        super().__init__(address)
        self.en1 = self.size = self.job = None
        self.mask = 0
        self.seen = []  # every message read, in order

    def read(self, timeout: float = 5.0):
        msg = super().read(timeout)
        self.seen.append(msg)
        return msg

    def subscribe(self):
        result = self.answer(self.request("mining.subscribe", ["test/1.0"]))["result"]
        self.en1, self.size = result[1], result[2]
        return result

    def configure(self, mask):
        conf = self.answer(self.request("mining.configure", [["version-rolling"], {"version-rolling.mask": mask}]))
        self.mask = int(conf["result"].get("version-rolling.mask", "0"), 16)
        return conf["result"]

    def authorize(self, user=USER):
        """Authorize and read up to the first job: the messages seen."""
        auth = self.request("mining.authorize", [user, "x"])
        seen = self.read_until(lambda m: m.get("id") == auth)
        if seen[-1]["result"] is True:
            seen += self.next_job()
        return seen

    def login(self, user=USER, mask=None):
        """Subscribe, configure version rolling when `mask` is given, authorize, read the first job."""
        self.subscribe()
        if mask is not None:
            self.configure(mask)
        self.authorize(user)
        assert self.job is not None, "not authorized"

    def next_job(self):
        """Read up to the next mining.notify: the messages seen."""
        seen = self.read_until(lambda m: m.get("method") == "mining.notify")
        self.job = seen[-1]["params"]
        return seen

    def share(self, meets=EASY, misses=None, en2=1, vbits=0, job=None, en1=None, size=None, user=USER):
        """(submit params, hash) of a share found by hashing."""
        job = job or self.job
        en2_hex = "%0*x" % (2 * (size or self.size), en2)
        nonce, value = search(job, en1 or self.en1, en2_hex, meets, misses, vbits, self.mask)
        params = [user, job[0], en2_hex, job[7], "%08x" % nonce]
        if vbits:
            params.append("%08x" % vbits)
        return params, value

    def submit(self, params):
        return self.answer(self.request("mining.submit", params))


def error(code, message):
    return [code, message, None]


@pytest.mark.parametrize("en1_size, en2_size, style, pattern", [
    (4, 8, "hex", r"[0-9a-f]{16}\Z"), (4, 4, "dashed", r"j-[0-9a-f]{4}-[0-9a-f]+-[0-9a-f]{6}\Z"),
    (5, 3, "decimal", r"[0-9]+\Z"), (4, 1, "hex", r"[0-9a-f]{16}\Z"), (4, 16, "hex", r"[0-9a-f]{16}\Z")])
def test_handshake_job_and_a_share_at_every_extranonce_size(make_pool, connect, en1_size, en2_size, style,
                                                            pattern):
    pool = make_pool(extranonce1_size=en1_size, extranonce2_size=en2_size, job_id_style=style,
                     accounts=["acct"])
    client, other = connect(pool), connect(pool)
    result = client.subscribe()
    en1 = client.en1
    assert result == [[["mining.set_difficulty", en1], ["mining.notify", en1]], en1, en2_size]
    assert len(en1) == 2 * en1_size and en1 == pool.connections[0].extranonce1
    other.subscribe()
    assert other.en1 != en1
    refused = other.answer(other.request("mining.authorize", ["stranger.rig", "x"]))
    assert refused["error"] == error(24, "Unauthorized worker")
    seen = client.authorize()
    assert seen[-2] == {"id": None, "method": "mining.set_difficulty", "params": [EASY]}
    job_id, _, _, _, branches, version, nbits, ntime, clean = client.job
    job = pool.jobs[pool.job_id]
    assert job_id == pool.job_id and re.match(pattern, job_id)
    assert len(branches) == 12 and clean is True
    assert (version, nbits, ntime) == ("%08x" % job.version, "%08x" % job.nbits, "%08x" % job.ntime)
    params, value = client.share()
    assert client.submit(params)["result"] is True
    share = pool.shares[-1]
    assert share.hash_value == value <= hashing.target_for_difficulty(EASY)
    assert (share.worker, share.extranonce1, share.extranonce2) == (USER, en1, params[2])
    wrong = client.share(size=en2_size + 1)[0]
    assert client.submit(wrong)["error"] == error(20, "Invalid extranonce2 length")
    assert (pool.stats[USER].accepted, pool.stats[USER].rejected) == (1, 1)


@pytest.mark.parametrize("en1_size, en2_size, mask", [(4, 8, 0x1FFFE000), (4, 4, 0x5FFFE000), (5, 3, 0x1FFFE000)])
def test_hashing_miner_gets_every_share_accepted(make_pool, miners, en1_size, en2_size, mask):
    difficulty = 2.0 ** -16
    pool = make_pool(default_difficulty=difficulty, extranonce1_size=en1_size, extranonce2_size=en2_size,
                     version_mask=mask)
    miner = miners(pool, username=USER, version_rolling=True, max_shares=4)
    assert pool.wait_for(lambda: miner.accepted + miner.rejected == 4, wait(20)), miner
    assert miner.accepted == miner.shares_sent == 4
    stats = pool.stats[USER]
    assert (stats.accepted, stats.rejected, stats.difficulty) == (4, 0, 4 * difficulty)
    target = hashing.target_for_difficulty(difficulty)
    for share, sent in zip(pool.shares, miner.submitted()):
        assert share.hash_value <= target and share.extranonce1 == miner.extranonce1
        assert share.extranonce2 == sent[2] and len(sent[2]) == 2 * en2_size
        assert share.version_bits == int(sent[5], 16) and share.version_bits & ~mask == 0
    assert any(share.version_bits for share in pool.shares)


def test_rejections_carry_stratum_codes(make_pool, connect):
    pool = make_pool()
    client = connect(pool)
    client.subscribe()
    early = client.submit([USER, pool.job_id, "00" * 8, "00000000", "00000000"])
    assert early["error"] == error(24, "Unauthorized worker")
    client.authorize()
    target = hashing.target_for_difficulty(EASY)
    valid, value = client.share()
    assert value <= target and client.submit(valid)["result"] is True
    assert pool.shares[-1].hash_value == value
    assert client.submit(valid)["error"] == error(22, "Duplicate share")
    low, value = client.share(meets=None, misses=EASY, en2=2)
    assert value > target and client.submit(low)["error"] == error(23, "Low difficulty share")
    unknown = [USER, "00000000deadbeef"] + valid[2:]
    assert client.submit(unknown)["error"] == error(21, "Job not found")
    late = valid[:3] + ["%08x" % (int(valid[3], 16) + 601), valid[4]]
    assert client.submit(late)["error"] == error(20, "Ntime out of range")
    rolled, _ = client.share(en2=3, vbits=0x2000)  # no mining.configure: no bit may roll
    assert client.submit(rolled)["error"] == error(20, "Invalid version mask")
    old = client.share(en2=4)[0]
    pool.new_job(clean=True)
    client.next_job()
    assert client.submit(old)["error"] == error(21, "Stale share")
    assert client.submit(client.share(en2=4)[0])["result"] is True
    assert pool.statuses == {"accepted": 2, "unauthorized": 1, "duplicate": 1, "low_difficulty": 1,
                             "job_not_found": 1, "bad_ntime": 1, "bad_version": 1, "stale": 1}
    assert pool.stats[USER].reasons["stale"] == 1 and pool.rejected_shares() == 7


def test_vardiff_raises_for_later_jobs_and_judges_older_jobs_at_their_difficulty(make_pool, connect):
    pool = make_pool(vardiff_target=60, vardiff_interval=0.3, max_difficulty=3 * EASY)
    client = connect(pool)
    client.login()
    for en2 in range(10):  # two worker names: the rate is the connection's
        params, _ = client.share(en2=en2, user=("acct.rig1", "acct.rig2")[en2 % 2])
        assert client.submit(params)["result"] is True
    gevent.sleep(0.3)
    assert client.submit(client.share(en2=10)[0])["result"] is True
    conn = pool.connections[0]
    assert pool.wait_for(lambda: conn.difficulty > EASY)
    raised = conn.difficulty
    assert raised == 3 * EASY  # far over the target: raised, up to max_difficulty
    params, value = client.share(meets=EASY, misses=raised, en2=11)  # still the first job
    assert client.submit(params)["result"] is True
    assert pool.shares[-1].difficulty == EASY and pool.shares[-1].hash_value == value
    pool.new_job()
    client.next_job()
    changes = [m["params"] for m in client.seen if m.get("method") == "mining.set_difficulty"]
    assert changes == [[EASY], [raised]] and conn.jobs[client.job[0]].difficulty == raised
    params, value = client.share(meets=EASY, misses=raised, en2=12)
    assert value > hashing.target_for_difficulty(raised)
    assert client.submit(params)["error"] == error(23, "Low difficulty share")
    params, value = client.share(meets=raised, en2=13)
    assert client.submit(params)["result"] is True
    assert pool.shares[-1].difficulty == raised and pool.shares[-1].hash_value == value
    stats = pool.stats[USER]
    assert (stats.accepted, stats.rejected, stats.difficulty) == (13, 1, 12 * EASY + raised)
    assert "acct.rig2" not in pool.stats


def test_vardiff_lowers_an_idle_connection_down_to_min_difficulty(make_pool, connect):
    pool = make_pool(vardiff_target=60, vardiff_interval=0.1, min_difficulty=EASY / 2)
    client = connect(pool)
    client.login()
    gevent.sleep(0.15)
    pool.new_job()
    seen = client.next_job()
    assert seen[-2] == {"id": None, "method": "mining.set_difficulty", "params": [EASY / 2]}
    assert pool.connections[0].jobs[client.job[0]].difficulty == EASY / 2
    params, value = client.share(meets=EASY / 2, misses=EASY)
    assert client.submit(params)["result"] is True and pool.shares[-1].difficulty == EASY / 2


@pytest.mark.parametrize("mode, answer, credited", [
    ("error", {"result": None, "error": error(25, "Not subscribed")}, "acct.a"),
    ("silent", None, "acct.a"),
    ("last_wins", {"result": True, "error": None}, "acct.b")])
def test_second_authorize(make_pool, connect, mode, answer, credited):
    pool = make_pool(second_authorize=mode)
    client = connect(pool)
    client.login("acct.a")
    again = client.request("mining.authorize", ["acct.b", "x"])
    params, value = client.share(user="acct.a")  # the first name, after the second authorize
    submit = client.request("mining.submit", params)
    first = client.read()
    if answer is None:  # never answered: the next line is the submit's answer
        assert first["id"] == submit
    else:
        assert first == dict(answer, id=again)
        first = client.read()
    assert first == {"id": submit, "result": True, "error": None}
    other, _ = client.share(en2=2, user="acct.b")
    assert client.submit(other)["result"] is True
    assert [(s.worker, s.submitted_as) for s in pool.shares] == [(credited, "acct.a"), (credited, "acct.b")]
    assert pool.stats[credited].accepted == 2 and list(pool.stats) == [credited]
    assert pool.shares[-1].hash_value == search(client.job, client.en1, other[2], EASY)[1]


def test_strict_worker_names_refuse_a_name_never_authorized(make_pool, connect):
    pool = make_pool(strict_worker_names=True)
    client = connect(pool)
    client.login("acct.a")
    assert client.submit(client.share(user="acct.b")[0])["error"] == error(24, "Unauthorized worker")
    assert client.submit(client.share(en2=2, user="acct.a")[0])["result"] is True
    assert pool.stats["acct.a"].accepted == 1 and pool.stats["acct.a"].reasons == {"unauthorized": 1}


def test_set_extranonce_applies_to_the_jobs_sent_after_it(make_pool, connect):
    pool = make_pool()
    client, bystander = connect(pool), connect(pool)
    client.login()
    bystander.login()
    xnsub = client.answer(client.request("mining.extranonce.subscribe", []))
    assert xnsub == {"id": 3, "result": True, "error": None}
    old_en1, old_size, old_job = client.en1, client.size, client.job
    pool.set_extranonce(None, size=4)  # None: only connections that subscribed to it
    params = client.read_until(lambda m: m.get("method") == "mining.set_extranonce")[-1]["params"]
    client.en1, client.size = params
    assert client.size == 4 and client.en1 != old_en1 and client.en1 == pool.connections[0].extranonce1
    assert pool.connections[1].extranonce1 == bystander.en1
    # the job sent before the change keeps the extranonce it came with
    before, value = client.share(job=old_job, en1=old_en1, size=old_size)
    assert client.submit(before)["result"] is True
    assert (pool.shares[-1].extranonce1, pool.shares[-1].hash_value) == (old_en1, value)
    pool.new_job()
    client.job = client.read_until(lambda m: m.get("method") == "mining.notify")[-1]["params"]
    fresh, value = client.share()
    assert client.submit(fresh)["result"] is True
    assert (pool.shares[-1].extranonce1, pool.shares[-1].hash_value) == (client.en1, value)
    stale_size = client.share(en1=old_en1, size=old_size, en2=2)[0]
    assert client.submit(stale_size)["error"] == error(20, "Invalid extranonce2 length")
    # a nonce that makes a share with the old extranonce1 but not with the new one
    target = hashing.target_for_difficulty(EASY)
    old_head, new_head = (header_prefix(client.job, en1, "00000003") for en1 in (old_en1, client.en1))
    nonce = next(n for n in range(1 << 32) if hashing.header_hash_int(old_head + struct.pack("<I", n))
                 <= target < hashing.header_hash_int(new_head + struct.pack("<I", n)))
    params = [USER, client.job[0], "00000003", client.job[7], "%08x" % nonce]
    assert client.submit(params)["error"] == error(23, "Low difficulty share")
    pool.set_extranonce(pool.connections[1], en1="00c0ffee")  # a given connection: even without xnsub
    assert bystander.read_until(lambda m: m.get("method") == "mining.set_extranonce")[-1]["params"] == [
        "00c0ffee", 8]


def test_version_mask_5fffe000_as_antpool(make_pool, connect):
    pool = make_pool(version_mask=0x5FFFE000)
    wide, narrow = connect(pool), connect(pool)
    wide.subscribe()
    assert wide.configure("ffffffff") == {"version-rolling": True, "version-rolling.mask": "5fffe000"}
    wide.authorize()
    narrow.login(mask="1fffe000")
    assert narrow.mask == 0x1FFFE000
    params, value = wide.share(vbits=0x40002000)  # bit 30: inside 5fffe000 only; hashed as BIP310
    assert wide.submit(params)["result"] is True
    share = pool.shares[-1]
    assert (share.version_bits, share.hash_value) == (0x40002000, value)
    outside, _ = wide.share(en2=2, vbits=0x80000000)
    assert wide.submit(outside)["error"] == error(20, "Invalid version mask")
    not_granted, _ = narrow.share(vbits=0x40000000)  # this connection negotiated 1fffe000
    assert narrow.submit(not_granted)["error"] == error(20, "Invalid version mask")
    assert pool.statuses == {"accepted": 1, "bad_version": 2}


def test_ping_reconnect_and_unknown_methods(make_pool, connect):
    pool = make_pool()
    client = connect(pool)
    client.login()
    conn = pool.connections[0]
    pool.ping(conn)
    ping = client.read()
    assert ping == {"id": "ping-1", "method": "mining.ping", "params": []}
    client.send_raw(b'{"id":"ping-1","result":"pong","error":null}\n')
    assert pool.wait_for(lambda: conn.replies)
    assert conn.replies == [{"id": "ping-1", "result": "pong", "error": None}]
    assert client.answer(client.request("mining.ping", [])) == {"id": 3, "result": "pong", "error": None}
    assert client.answer(client.request("mining.frobnicate", []))["error"] == error(20, "Unknown method")
    pool.reconnect()
    pool.reconnect(conn, host="pool.example", port=3334, wait=5)
    assert client.read() == {"id": None, "method": "client.reconnect", "params": []}
    assert client.read() == {"id": None, "method": "client.reconnect", "params": ["pool.example", 3334, 5]}
    pool.send_raw(conn, b'{"id":null,"method":"client.show_message","params":["hi"]}\n')
    pool.send_raw_all(b'{"id":null,"method":"client.get_version","params":[]}\n')
    assert [client.read()["method"] for _ in range(2)] == ["client.show_message", "client.get_version"]
    assert client.submit(client.share()[0])["result"] is True  # the connection lives on


def test_fault_injection_and_restart(make_pool, connect):
    pool = make_pool()
    client = connect(pool)
    client.login()
    pool.force_status(37)
    params, _ = client.share()
    assert client.submit(params)["error"] == error(37, "Stale share")
    assert pool.statuses == {"forced": 1} and not pool.shares
    pool.stop_reading(pool.connections[0])
    submit = client.request("mining.submit", client.share(en2=2)[0])
    gevent.sleep(0.2)
    assert pool.shares_received == 1
    pool.resume_reading(pool.connections[0])
    assert client.answer(submit)["result"] is True
    address = pool.address
    pool.reset(pool.connections[0])
    assert client.read() is None
    assert pool.wait_for(lambda: pool.disconnects == 1)
    pool.stop()
    pool.start()
    again = connect(pool)
    again.login()
    assert pool.address == address and pool.connections_total == 2 and len(pool.connect_times) == 2
    assert again.submit(again.share()[0])["result"] is True


def test_observers_see_each_notify_and_each_judged_share_with_its_read_time(make_pool, connect):
    notifies, shares = [], []
    pool = make_pool(on_notify=lambda conn, job_id, t: notifies.append((conn, job_id, t)),
                     on_share=lambda conn, params, verdict, t: shares.append((conn, params, verdict, t)))
    client = connect(pool)
    before = time.time()
    client.login()
    conn = pool.connections[0]
    assert [(c, j) for c, j, _ in notifies] == [(conn, pool.job_id)] and notifies[0][2] >= before
    params, _ = client.share()
    low, _ = client.share(meets=None, misses=EASY, en2=2)
    assert client.submit(params)["result"] is True
    assert client.submit(low)["error"][0] == 23
    assert [(c, p, v) for c, p, v, _ in shares] == [(conn, params, pool.shares[0]), (conn, low, "low_difficulty")]
    assert before <= shares[0][3] <= shares[1][3] <= time.time()
    pool.new_job()
    assert pool.wait_for(lambda: len(notifies) == 2) and notifies[1][1] == pool.job_id
    assert pool.reads >= 3 and pool.bytes_received > len(json.dumps(params)) + len(json.dumps(low))


def test_command_line_builds_the_simulator():
    args = build_parser().parse_args([
        "--port", "0", "--extranonce1-size", "5", "--extranonce2-size", "3", "--version-mask", "5fffe000",
        "--account", "a", "--account", "b", "--job-id-style", "dashed", "--branches", "3",
        "--second-authorize", "last_wins", "--vardiff-target", "20", "--vardiff-interval", "60",
        "--min-difficulty", "1", "--job-interval", "0"])
    pool = pool_from_args(args)
    assert (pool.port, pool.extranonce1_size, pool.extranonce2_size, pool.version_mask) == (0, 5, 3, 0x5FFFE000)
    assert (pool.accounts, pool.job_id_style, pool.branches, pool.second_authorize) == (
        {"a", "b"}, "dashed", 3, "last_wins")
    assert (pool.vardiff_target, pool.vardiff_interval, pool.min_difficulty, pool.job_interval) == (20, 60, 1, None)
    with pytest.raises(ValueError):
        pool_from_args(build_parser().parse_args(["--extranonce2-size", "17"]))
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--second-authorize", "maybe"])


def test_job_interval_makes_new_jobs(make_pool, connect):
    pool = make_pool(job_interval=0.05, branches=2)
    client = connect(pool)
    client.login()
    first = client.job
    client.next_job()
    assert client.job[0] != first[0] and client.job[8] is False and len(client.job[4]) == 2
    assert client.job[1] == first[1]  # same block: the first job is not stale
    assert client.submit(client.share(job=first)[0])["result"] is True


def test_runs_from_the_command_line(connect):
    process = subprocess.Popen([sys.executable, "-m", "gagent.sim.stratum_pool", "--port", "0", "--difficulty",
                                str(EASY), "--extranonce2-size", "4", "--report-every", "0.1"],
                               stderr=subprocess.PIPE)
    try:
        line = process.stderr.readline().decode()
        port = int(re.search(r"listening on 127\.0\.0\.1:(\d+)", line).group(1))
        client = connect(("127.0.0.1", port))
        client.login()
        assert client.size == 4 and client.submit(client.share()[0])["result"] is True
        while "1 accepted" not in line:
            line = process.stderr.readline().decode()
            assert line, "no count line"
        process.send_signal(signal.SIGINT)
        assert process.wait(wait(10)) == 0
    finally:
        process.kill()
        process.wait()
        process.stderr.close()

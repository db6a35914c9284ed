"""The pool simulator, driven by a bare socket client that speaks the real BTCAgent protocol."""
import json
import ssl
import struct

import gevent.ssl
import pytest
import trustme
from gevent import socket

from gagent.protocol import exmessage as ex
from gagent.protocol import hashing, stratum
from gagent.sim.pool import PoolSimulator, build_parser, server_ssl_context

TINY = 1.0 / 65536
SID = 0x002A


class AgentClient:
    """Handshake lines and ex-message frames over one socket; keeps every JSON message and frame read."""

    def __init__(self, address, tls=None):
        self.sock = socket.create_connection(address, timeout=5)
        if tls is not None:
            self.sock = tls.wrap_socket(self.sock, server_hostname=address[0])
        self.splitter = ex.StreamSplitter(1 << 20)
        self.items = []

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def handshake(self, sub_account="demo", subres=True, user_agent="btccom-agent/2.0.0-mu"):
        caps = ["verrol", "subres"] if subres else ["verrol"]
        self.send(stratum.request_line("caps", "agent.get_capabilities", [caps])
                  + stratum.request_line("conf", "mining.configure", [["version-rolling"], {
                      "version-rolling.mask": "ffffffff", "version-rolling.min-bit-count": 0}])
                  + stratum.request_line("sub", "mining.subscribe", [user_agent])
                  + stratum.request_line("auth", "mining.authorize", [sub_account, ""])
                  + stratum.request_line("caps_again", "agent.get_capabilities", [caps]))

    def next(self, timeout=5.0):
        """The next item (dict for JSON, Frame for ex-messages), or None on close (FIN or RST)."""
        self.sock.settimeout(timeout)
        while not self.items:
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                return None
            if not data:
                return None
            self.items.extend(json.loads(i) if isinstance(i, bytes) else i for i in self.splitter.feed(data))
        return self.items.pop(0)

    def read_until(self, predicate, timeout=5.0):
        seen = []
        while True:
            item = self.next(timeout)
            assert item is not None, "connection closed after %r" % seen
            seen.append(item)
            if predicate(item):
                return seen

    def notify(self):
        return self.read_until(lambda m: isinstance(m, dict) and m.get("method") == "mining.notify")[-1]

    def response(self):
        frame = self.read_until(lambda m: isinstance(m, ex.Frame) and m.cmd == ex.CMD_SUBMIT_RESPONSE)[-1]
        return ex.decode_submit_response(frame.body)

    def close(self):
        self.sock.close()


@pytest.fixture
def pool():
    sim = PoolSimulator(default_difficulty=TINY)
    sim.start()
    yield sim
    sim.stop()


@pytest.fixture
def connect(pool):
    opened = []

    def make():
        client = AgentClient(pool.address)
        opened.append(client)
        return client

    yield make
    for client in opened:
        client.close()


def ready_client(connect, pool, worker="rig1"):
    """An authorized client with subres and one registered miner; returns (client, notify params)."""
    client = connect()
    client.handshake()
    params = client.notify()["params"]
    assert client.read_until(lambda m: m.get("id") == "caps_again")
    client.send(ex.encode_register_worker(SID, "cgminer/4.11", worker))
    assert pool.wait_for(lambda: pool.events)
    return client, params


def find_share(pool_en1: str, params, difficulty: float, sid: int = SID, en2: int = 0xBEEF):
    """Search nonces like a miner does; returns a nonce whose header meets `difficulty`."""
    job_id, prevhash, coinb1, coinb2, branches, version, nbits, ntime = params[:8]
    cb = hashing.coinbase(coinb1, pool_en1, "%08x%08x" % (sid, en2), coinb2)
    head = hashing.header(int(version, 16), prevhash, hashing.merkle_root(cb, branches),
                          int(ntime, 16), int(nbits, 16), 0)[:76]
    target = hashing.target_for_difficulty(difficulty)
    for nonce in range(1 << 32):
        if hashing.header_hash_int(head + struct.pack("<I", nonce)) <= target:
            return nonce
    raise AssertionError("no nonce found")


@pytest.mark.timeout(20)
def test_handshake_replies_in_order(pool, connect):
    client = connect()
    client.handshake()
    seen = client.read_until(lambda m: m.get("method") == "mining.notify")
    en1 = pool.connections[0].extranonce1
    assert en1 == "01000000"
    assert seen[0] == {"id": "caps", "result": {"capabilities": ["verrol", "subres"]}}
    assert seen[1] == {"id": "conf", "result": {"version-rolling": True, "version-rolling.mask": "1fffe000"},
                       "error": None}
    assert seen[2] == {"id": None, "method": "mining.set_version_mask", "params": ["1fffe000"]}
    assert seen[3] == {"id": "sub", "result": [[["mining.set_difficulty", en1], ["mining.notify", en1]], en1, 8],
                       "error": None}
    assert seen[4] == {"id": "auth", "result": True, "error": None}
    assert seen[5] == {"id": None, "method": "mining.set_difficulty", "params": [TINY]}
    notify = seen[6]["params"]
    assert notify[0] == "0" and notify[8] is True and len(notify[4]) == 2
    assert notify[5:8] == ["20000000", "1d00ffff", notify[7]]
    assert client.next() == {"id": "caps_again", "result": {"capabilities": ["verrol", "subres"]}}
    conn = pool.connections[0]
    assert conn.sub_account == "demo" and conn.subres and conn.state == "authorized"
    # later jobs carry increasing short ids and clean=false
    pool.new_job()
    assert client.notify()["params"][0] == "1"


@pytest.mark.timeout(20)
def test_authorize_rules(connect, pool):
    pool.sub_accounts = {"good"}
    client = connect()
    client.send(stratum.request_line(1, "mining.authorize", ["good", ""]))
    assert client.next() == {"id": 1, "result": None, "error": [25, "Not subscribed", None]}
    client.send(stratum.request_line(2, "mining.subscribe", ["btccom-agent/1.0.0-su"])
                + stratum.request_line(3, "mining.authorize", ["bad", ""]))
    assert client.next()["id"] == 2
    assert client.next() == {"id": 3, "result": None, "error": [29, "Invalid username", None]}
    client.send(stratum.request_line(4, "mining.authorize", ["good", ""]))
    assert client.next() == {"id": 4, "result": True, "error": None}


@pytest.mark.timeout(20)
def test_non_agent_subscribe_is_refused(connect):
    client = connect()
    client.send(stratum.request_line(1, "mining.subscribe", ["cgminer/4.11"]))
    assert client.next() is None


@pytest.mark.timeout(20)
def test_real_share_accepted_then_duplicate(pool, connect):
    client, params = ready_client(connect, pool)
    en1 = pool.connections[0].extranonce1
    nonce = find_share(en1, params, TINY)
    share = ex.encode_submit_share(int(params[0]), SID, 0xBEEF, nonce)
    client.send(share)
    assert client.response() == (0, stratum.ACCEPT)
    client.send(share)
    assert client.response() == (1, stratum.DUPLICATE_SHARE)
    assert pool.stats[("demo", "rig1")].accepted == 1
    assert pool.stats[("demo", "rig1")].rejected == 1
    assert pool.statuses == {stratum.ACCEPT: 1, stratum.DUPLICATE_SHARE: 1}
    assert pool.connections[0].workers == {SID: ("cgminer/4.11", "rig1")}


@pytest.mark.timeout(20)
def test_version_rolled_share_accepted(pool, connect):
    client, params = ready_client(connect, pool)
    mask = 0x00A4C000
    rolled = list(params)
    rolled[5] = "%08x" % (int(params[5], 16) ^ mask)
    nonce = find_share(pool.connections[0].extranonce1, rolled, TINY)
    client.send(ex.encode_submit_share(int(params[0]), SID, 0xBEEF, nonce, version_mask=mask))
    assert client.response() == (0, stratum.ACCEPT)
    client.send(ex.encode_submit_share(int(params[0]), SID, 0xBEEF, nonce, version_mask=0x80000000))
    assert client.response() == (1, 33)


@pytest.mark.timeout(20)
def test_low_difficulty_unknown_job_and_time(pool, connect):
    client, params = ready_client(connect, pool)
    pool.set_worker_difficulty(pool.connections[0], [SID], 0)
    frame = client.read_until(lambda m: isinstance(m, ex.Frame))[-1]
    assert frame.cmd == ex.CMD_MINING_SET_DIFF and ex.decode_mining_set_diff(frame.body) == (0, [SID])
    pool.new_job()
    params = client.notify()["params"]
    job = int(params[0])
    client.send(ex.encode_submit_share(job, SID, 1, 0x12345678))
    assert client.response() == (0, stratum.LOW_DIFFICULTY)
    client.send(ex.encode_submit_share(200, SID, 1, 0x12345678))
    assert client.response() == (1, 36)
    ntime = int(params[7], 16)
    client.send(ex.encode_submit_share(job, SID, 2, 1, ntime=ntime + 601))
    assert client.response() == (2, 32)
    # an unregistered session id consumes no index and gets no response
    client.send(ex.encode_submit_share(job, 0x777, 1, 1) + ex.encode_submit_share(job, SID, 3, 1))
    assert client.response() == (3, stratum.LOW_DIFFICULTY)


@pytest.mark.timeout(20)
def test_difficulty_recorded_per_local_job(pool, connect):
    client, params = ready_client(connect, pool)
    en1 = pool.connections[0].extranonce1
    pool.new_job(set_diff={pool.connections[0]: (0, [SID])})
    seen = client.read_until(lambda m: isinstance(m, dict) and m.get("method") == "mining.notify")
    assert isinstance(seen[-2], ex.Frame) and seen[-2].cmd == ex.CMD_MINING_SET_DIFF
    # the first job keeps the starting (tiny) difficulty
    nonce = find_share(en1, params, TINY)
    client.send(ex.encode_submit_share(int(params[0]), SID, 0xBEEF, nonce))
    assert client.response() == (0, stratum.ACCEPT)


@pytest.mark.timeout(20)
def test_register_rules(pool, connect):
    client, _ = ready_client(connect, pool, worker="")
    assert pool.connections[0].workers[SID] == ("cgminer/4.11", "__default__")
    client.send(ex.encode_register_worker(SID, "other", "second"))  # first registration wins
    big = struct.pack("<BBHH", 0x7F, ex.CMD_REGISTER_WORKER, 101, 7) + b"a" * 50 + b"\0" + b"w" * 43 + b"\0"
    assert len(big) == 101
    client.send(big)
    client.send(ex.encode_unregister_worker(SID))
    assert pool.wait_for(lambda: len(pool.events) == 2)
    assert [e.kind for e in pool.events] == ["register", "unregister"]
    assert pool.connections[0].workers == {}
    assert all(e.session_id == SID for e in pool.events)  # the 101-byte REGISTER of sid 7 was dropped


@pytest.mark.timeout(20)
def test_frame_shorter_than_header_closes(pool, connect):
    client, _ = ready_client(connect, pool)
    client.send(b"\x7f\x02\x03\x00")
    assert _closed(client)
    assert pool.wait_for(lambda: not pool.connections)


def _closed(client) -> bool:
    """Read until the pool closes the connection."""
    while client.next() is not None:
        pass
    return True


@pytest.mark.timeout(20)
def test_shuffled_responses_and_close_all():
    sim = PoolSimulator(default_difficulty=1, shuffle_responses=True).start()
    try:
        client = AgentClient(sim.address)
        client.handshake()
        params = client.notify()["params"]
        client.send(ex.encode_register_worker(SID, "a", "w"))
        client.send(b"".join(ex.encode_submit_share(int(params[0]), SID, i, i) for i in range(8)))
        indexes = [client.response()[0] for _ in range(8)]
        assert sorted(indexes) == list(range(8))
        sim.close_all()
        assert _closed(client)
        client.close()
    finally:
        sim.stop()


@pytest.mark.timeout(20)
def test_incompatible_extranonce2_size_and_job_resend():
    sim = PoolSimulator(default_difficulty=1, extranonce2_size=4, job_interval=0.05).start()
    try:
        client = AgentClient(sim.address)
        client.handshake(subres=False)
        sub = client.read_until(lambda m: m.get("id") == "sub")[-1]
        assert sub["result"][2] == 4
        first = client.notify()["params"]
        again = client.notify()["params"]
        assert again[0] == "1" and again[1:8] == first[1:8] and again[8] is False
        client.close()
    finally:
        sim.stop()


def _refused(address) -> bool:
    try:
        socket.create_connection(address, timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


@pytest.mark.timeout(20)
def test_pause_and_resume_listening_keep_open_connections(pool, connect):
    client, params = ready_client(connect, pool)
    address = pool.address
    pool.pause_listening()
    assert not pool.listening and _refused(address)
    assert pool.address == address
    pool.new_job()  # the open connection still gets jobs
    assert client.notify()["params"][0] == "1"
    pool.resume_listening()
    assert pool.listening and pool.address == address
    second = connect()
    second.handshake()
    assert second.notify()["params"][0] == "0"
    assert pool.connections_total == 2 and len(pool.connect_times) == 2
    assert pool.connect_times[0] <= pool.connect_times[1]


@pytest.mark.timeout(20)
def test_stop_and_start_again_on_the_same_port(pool, connect):
    client = connect()
    client.handshake()
    client.notify()
    address = pool.address
    pool.stop()
    assert _closed(client)
    assert pool.disconnects == 1 and not pool.connections
    assert pool.address == address and _refused(address)
    pool.start()
    assert pool.address == address
    again = connect()
    again.handshake()
    assert again.notify()["params"][8] is True
    with pytest.raises(RuntimeError):
        pool.start()


@pytest.fixture(scope="module")
def tls_ca():
    return trustme.CA()


def _client_tls(ca) -> ssl.SSLContext:
    ctx = gevent.ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ca.configure_trust(ctx)
    return ctx


@pytest.mark.timeout(20)
@pytest.mark.parametrize("context_from", ["stdlib", "cli"])
def test_tls_handshake_and_share(tls_ca, tmp_path, context_from):
    cert = tls_ca.issue_cert("127.0.0.1")
    if context_from == "stdlib":
        server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(server_ctx)
    else:
        pem = tmp_path / "pool.pem"
        cert.private_key_and_cert_chain_pem.write_to_path(str(pem))
        args = build_parser().parse_args(["--tls-cert", str(pem)])
        server_ctx = server_ssl_context(args.tls_cert, args.tls_key)
    sim = PoolSimulator(default_difficulty=TINY, ssl_context=server_ctx).start()
    try:
        plain = AgentClient(sim.address)  # not TLS: the handshake fails and the pool hangs up
        plain.handshake()
        assert _closed(plain)
        plain.close()
        client = AgentClient(sim.address, tls=_client_tls(tls_ca))
        client.handshake()
        params = client.notify()["params"]
        client.read_until(lambda m: m.get("id") == "caps_again")
        client.send(ex.encode_register_worker(SID, "cgminer", "tls"))
        nonce = find_share(sim.authorized[0].extranonce1, params, TINY)
        client.send(ex.encode_submit_share(int(params[0]), SID, 0xBEEF, nonce))
        assert client.response() == (0, stratum.ACCEPT)
        client.close()
        assert sim.wait_for(lambda: sim.disconnects == 2)
    finally:
        sim.stop()


def _reset_seen(client) -> bool:
    """Read to the end: True when the pool ended the connection with RST, False for FIN."""
    client.sock.settimeout(5)
    while True:
        try:
            if not client.sock.recv(65536):
                return False
        except ConnectionResetError:
            return True


@pytest.mark.timeout(20)
def test_reset_and_reset_all_send_rst(pool, connect):
    first, _ = ready_client(connect, pool)
    second = connect()
    second.handshake()
    second.notify()
    assert pool.wait_for(lambda: len(pool.authorized) == 2)
    pool.reset(pool.connections[0])
    assert _reset_seen(first)
    assert pool.wait_for(lambda: pool.disconnects == 1 and len(pool.connections) == 1)
    pool.reset_all()
    assert _reset_seen(second)
    third = connect()
    third.handshake()
    third.notify()
    pool.close_all()
    assert not _reset_seen(third)  # close_all stays a plain FIN
    assert pool.wait_for(lambda: pool.disconnects == 3)


@pytest.mark.timeout(20)
def test_close_one_by_one_spaces_the_drops(pool, connect):
    from gevent import get_hub, spawn
    clients = [connect() for _ in range(3)]
    for client in clients:
        client.handshake()
        client.notify()
    assert pool.wait_for(lambda: len(pool.authorized) == 3)

    def closed_at(client):
        assert _reset_seen(client)
        return get_hub().loop.now()

    watchers = [spawn(closed_at, c) for c in clients]
    task = pool.close_one_by_one(0.2)
    late = connect()  # opened after the call: not part of the shutdown
    late.handshake()
    late.notify()
    task.join(timeout=5)
    times = sorted(w.get(timeout=5) for w in watchers)
    assert all(b - a >= 0.15 for a, b in zip(times, times[1:]))
    assert len(pool.authorized) == 1 and pool.wait_for(lambda: pool.disconnects == 3)


@pytest.mark.timeout(20)
def test_stop_reading_parks_the_reader_until_writes_block():
    sim = PoolSimulator(default_difficulty=TINY, recv_buffer_size=4096).start()
    try:
        client = AgentClient(sim.address)
        other = AgentClient(sim.address)
        for c in (client, other):
            c.handshake()
            c.notify()
            c.read_until(lambda m: m.get("id") == "caps_again")
        conn, other_conn = sim.connections
        client.send(ex.encode_register_worker(SID, "cgminer", "w"))
        other.send(ex.encode_register_worker(SID, "cgminer", "w"))
        assert sim.wait_for(lambda: len(sim.events) == 2)
        read_before = sim.bytes_received
        sim.stop_reading(conn)
        job = conn.local_jobs[-1].short_id
        client.send(b"".join(ex.encode_submit_share(job, SID, i, 1) for i in range(3)))
        other.send(ex.encode_submit_share(job, SID, 9, 1))  # the other connection is still read
        assert other.response() == (0, stratum.LOW_DIFFICULTY)
        # fill the buffers with shares of an unregistered session id (cheap for the pool to drop)
        client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        client.sock.settimeout(0.3)
        junk = ex.encode_submit_share(job, 0x777, 0, 0) * 1000
        sent = 0
        with pytest.raises(socket.timeout):
            while sent < (8 << 20):
                sent += client.sock.send(junk)
        assert sent < (1 << 20)  # the agent's writes block after a few buffers' worth
        assert conn.shares_received == 0 and sim.shares_received == 1
        assert sim.bytes_received == read_before + 15
        sim.resume_reading(conn)
        assert sim.wait_for(lambda: sim.bytes_received >= read_before + 15 * 4 + sent)
        assert conn.shares_received == 3 and sim.shares_received == 4
        client.close()
        other.close()
    finally:
        sim.stop()


@pytest.mark.timeout(20)
def test_stop_reading_everything_includes_new_connections(pool, connect):
    pool.stop_reading()
    client = connect()
    client.handshake()
    with pytest.raises(socket.timeout):
        client.next(timeout=0.3)
    assert pool.connections and pool.connections[0].state == "connected"
    pool.resume_reading()
    assert client.notify()["params"][0] == "0"


@pytest.mark.timeout(20)
def test_authorize_delay_answers_caps_again_without_subres(pool, connect):
    from gevent import get_hub
    pool.authorize_delay = 0.3
    client = connect()
    started = get_hub().loop.now()
    client.handshake()
    seen = client.read_until(lambda m: m.get("id") == "auth")
    ids = [m.get("id") for m in seen]
    assert ids.index("caps_again") < ids.index("auth")  # answered while auto-registering
    assert seen[-1] == {"id": "auth", "result": True, "error": None}
    assert get_hub().loop.now() - started >= 0.25
    params = client.notify()["params"]
    conn = pool.connections[0]
    assert conn.state == "authorized" and not conn.subres
    client.send(ex.encode_register_worker(SID, "cgminer", "w"))
    client.send(ex.encode_submit_share(int(params[0]), SID, 1, 1))
    assert pool.wait_for(lambda: pool.shares_received == 1)
    # an agent that repeats caps once the authorize answer is in gets subres from then on
    client.send(stratum.request_line("caps_3", "agent.get_capabilities", [["verrol", "subres"]]))
    client.read_until(lambda m: isinstance(m, dict) and m.get("id") == "caps_3")
    client.send(ex.encode_submit_share(int(params[0]), SID, 2, 1))
    assert client.response() == (1, stratum.LOW_DIFFICULTY)


@pytest.mark.timeout(20)
def test_close_after_authorize(pool, connect):
    pool.close_after_authorize = True
    client = connect()
    client.handshake()
    seen = []
    while True:
        item = client.next()
        if item is None:
            break
        seen.append(item)
    assert seen[-1] == {"id": "auth", "result": True, "error": None}
    assert pool.wait_for(lambda: pool.disconnects == 1)


@pytest.mark.timeout(20)
def test_stall_handshake_answers_nothing(pool, connect):
    pool.stall_handshake = True
    client = connect()
    client.handshake()
    with pytest.raises(socket.timeout):
        client.next(timeout=0.3)
    assert pool.connections[0].state == "connected"


@pytest.mark.timeout(20)
def test_refuse_sub_accounts():
    sim = PoolSimulator(default_difficulty=1, refuse_sub_accounts=["banned"]).start()
    try:
        refused, allowed = AgentClient(sim.address), AgentClient(sim.address)
        refused.handshake(sub_account="banned")
        auth = refused.read_until(lambda m: m.get("id") == "auth")[-1]
        assert auth == {"id": "auth", "result": None, "error": [29, "Invalid username", None]}
        allowed.handshake(sub_account="other")
        assert allowed.notify()
        assert [c.sub_account for c in sim.authorized] == ["other"]
        refused.close()
        allowed.close()
    finally:
        sim.stop()


def _raw_lines_until_notify(client):
    """The raw JSON lines the pool sent, up to the first mining.notify (no JSON parsing)."""
    client.sock.settimeout(5)
    data = b""
    while b'"method":"mining.notify","params":["0"' not in data:
        chunk = client.sock.recv(65536)
        assert chunk, "closed after %r" % data
        data += chunk
    return data.split(b"\n")


@pytest.mark.timeout(20)
@pytest.mark.parametrize("value, text", [("1e400", b"1e400"), ("NaN", b"NaN"), ('"1e400"', b'"1e400"'),
                                         (b"-1", b"-1"), (2.5, b"2.5")])
def test_first_difficulty_is_sent_verbatim(pool, connect, value, text):
    pool.first_difficulty = value
    client = connect()
    client.handshake()
    lines = _raw_lines_until_notify(client)
    assert b'{"id":null,"method":"mining.set_difficulty","params":[' + text + b"]}" in lines


@pytest.mark.timeout(20)
def test_raw_after_authorize_comes_between_auth_and_difficulty(pool, connect):
    odd = '{"id":null,"method":"mining.notify","params":["\u0663"]}\n'.encode()
    pool.raw_after_authorize = odd
    client = connect()
    client.handshake()
    lines = _raw_lines_until_notify(client)
    auth = next(i for i, line in enumerate(lines) if line.startswith(b'{"id":"auth"'))
    assert lines[auth + 1] + b"\n" == odd
    assert b"mining.set_difficulty" in lines[auth + 2]


@pytest.mark.timeout(20)
def test_extranonce1_override_in_subscribe_answer_only():
    sim = PoolSimulator(default_difficulty=TINY, extranonce1_override="0x123456").start()
    try:
        client = AgentClient(sim.address)
        client.handshake()
        sub = client.read_until(lambda m: m.get("id") == "sub")[-1]
        assert sub["result"][1] == "0x123456"
        params = client.notify()["params"]
        client.read_until(lambda m: m.get("id") == "caps_again")
        client.send(ex.encode_register_worker(SID, "cgminer", "w"))
        nonce = find_share(sim.connections[0].extranonce1, params, TINY)  # the real extranonce1
        client.send(ex.encode_submit_share(int(params[0]), SID, 0xBEEF, nonce))
        assert client.response() == (0, stratum.ACCEPT)
        client.close()
    finally:
        sim.stop()


@pytest.mark.timeout(20)
def test_force_status_answers_valid_shares_and_counts_them_rejected():
    easy = 2.0 ** -40  # every nonce is a valid share
    sim = PoolSimulator(default_difficulty=easy).start()
    try:
        client = AgentClient(sim.address)
        client.handshake()
        params = client.notify()["params"]
        client.read_until(lambda m: m.get("id") == "caps_again")
        client.send(ex.encode_register_worker(SID, "cgminer", "w"))
        en1, job = sim.connections[0].extranonce1, int(params[0])
        sim.force_status(36, 2)
        sim.force_status(37)
        assert sim.forced_statuses_left == 3
        client.send(ex.encode_submit_share(job, SID, 0, 1))
        assert client.response() == (0, 36)
        client.send(ex.encode_submit_share(job, SID, 0, 1))  # a duplicate keeps its own verdict
        assert client.response() == (1, stratum.DUPLICATE_SHARE)
        for en2, expected in ((1, 36), (2, 37), (3, stratum.ACCEPT)):
            client.send(ex.encode_submit_share(job, SID, en2, find_share(en1, params, easy, en2=en2)))
            assert client.response() == (en2 + 1, expected)
        stats = sim.stats[("demo", "w")]
        assert (stats.accepted, stats.rejected) == (1, 4)
        assert stats.statuses == {36: 2, 37: 1, stratum.DUPLICATE_SHARE: 1, stratum.ACCEPT: 1}
        assert sim.statuses == stats.statuses and sim.forced_statuses_left == 0
        client.close()
    finally:
        sim.stop()


@pytest.mark.timeout(20)
def test_accounting_helpers(pool, connect):
    client, params = ready_client(connect, pool, worker="rig1")
    conn = pool.connections[0]
    en1, job = conn.extranonce1, int(params[0])
    client.send(ex.encode_register_worker(7, "cgminer", "rig2") + ex.encode_unregister_worker(SID)
                + ex.encode_unregister_worker(SID))  # the second unregister finds nothing
    assert pool.wait_for(lambda: len(pool.events) == 3)
    client.send(ex.encode_register_worker(SID, "cgminer", "rig1"))
    assert pool.wait_for(lambda: conn.registered_total == 3)
    assert conn.unregistered_total == 1 and conn.workers == {7: ("cgminer", "rig2"), SID: ("cgminer", "rig1")}
    assert (pool.registers(), pool.registers("rig1"), pool.registers("rig2", "demo")) == (3, 2, 1)
    assert (pool.unregisters(), pool.unregisters("rig1"), pool.registers(sub_account="other")) == (1, 1, 0)
    assert pool.events[0].sub_account == "demo"
    nonce = find_share(en1, params, TINY)
    client.send(ex.encode_submit_share(job, SID, 0xBEEF, nonce) + ex.encode_submit_share(job, 7, 5, 6)
                + ex.encode_submit_share(job, 0x777, 1, 2))  # unregistered: ignored, not a key
    assert client.response() == (0, stratum.ACCEPT)
    assert client.response() == (1, stratum.LOW_DIFFICULTY)
    assert pool.share_keys() == {(en1, SID, 0xBEEF, nonce), (en1, 7, 5, 6)}
    assert (pool.accepted_shares(), pool.rejected_shares()) == (1, 1)
    client.close()  # the agent side ends the connection
    assert pool.wait_for(lambda: pool.disconnects == 1 and not pool.connections)
    assert len(pool.connect_times) == 1

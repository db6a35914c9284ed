"""Hostile and broken peers (issue 13): one bad message costs at most its sender, never a pool connection.

Each test sends the input through real sockets and checks that the other miners on the same pool
connection keep having their shares written and answered, that the offender gets an error or a
clean disconnect, that the agent stays idle, and that the log holds no traceback.
"""
import contextlib
import json
import logging

import gevent
import psutil
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from gagent.sim.faults import raw_set_difficulty_line
from gagent.sim.pool import PoolSimulator

from conftest import TINY_DIFFICULTY, LineClient, make_agent, start_agent, wait, wait_until

pytestmark = pytest.mark.timeout(120)


def share_params(client, job, n):
    return [client.worker, job[0], "%08x" % n, job[7], "%08x" % n]


def logged_in(agent, name):
    client = LineClient(agent.address)
    _, seen = client.login("demo." + name)
    client.worker = "demo." + name
    client.job = seen[-1]["params"]
    return client


def assert_share_path_works(client, pool, count=3):
    """A healthy miner's shares are still written upstream and answered."""
    before = pool.shares_received
    for n in range(count):
        msg_id = client.request("mining.submit", share_params(client, client.job, 1000 + n))
        assert client.answer(msg_id, timeout=10)["result"] is True
    assert wait_until(lambda: pool.shares_received >= before + count)


def assert_no_traceback(caplog):
    """No traceback and no error record: log_unexpected shows a cause's traceback once per process,
    so a bug already seen in an earlier test leaves only an error line."""
    assert "Traceback" not in caplog.text
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


def assert_idle_cpu(seconds=1.0):
    process = psutil.Process()
    before = process.cpu_times()
    gevent.sleep(seconds)
    after = process.cpu_times()
    used = (after.user - before.user) + (after.system - before.system)
    assert used < 0.5 * seconds, "agent busy: %.2f s of CPU in %.1f s" % (used, seconds)


@pytest.mark.parametrize("raw_id", ["Infinity", "-Infinity", "NaN", "1e309", "{\"a\":1}", "[1,2]",
                                    "1" * 40, "true", "[[[[[[[[[[1]]]]]]]]]]"])
def test_a_share_id_that_cannot_be_echoed_never_wedges_the_connection(pool, agent, caplog, raw_id):
    good = logged_in(agent, "good")
    bad = logged_in(agent, "bad")
    try:
        for _ in range(3):  # the device reconnects and does it again
            bad.send_raw(b'{"id":%s,"method":"mining.submit","params":%s}\n'
                         % (raw_id.encode(), json.dumps(share_params(bad, bad.job, 7)).encode()))
            answer = bad.read()
            assert answer is not None and answer["id"] is None and answer["error"][0] == 27
        assert_share_path_works(good, pool)
        assert_no_traceback(caplog)
    finally:
        good.close()
        bad.close()


@pytest.mark.parametrize("method", [["mining.submit"], {"mining.submit": 1}, None, 7, 1.5, True],
                         ids=["list", "object", "null", "int", "float", "bool"])
def test_a_method_that_is_not_a_string_gets_an_error_and_the_miner_stays(pool, agent, caplog, method):
    client = logged_in(agent, "odd")
    try:
        client.send_raw(json.dumps({"id": "m", "method": method, "params": []}).encode() + b"\n")
        answer = client.answer("m")  # fails if the agent closed the connection instead
        assert answer["result"] is None and answer["error"][0] == 27
        assert "method must be a string" in answer["error"][1]
        assert_share_path_works(client, pool)  # the same connection
        assert_no_traceback(caplog)
    finally:
        client.close()


@pytest.mark.parametrize("payload", [b"[" * 5000 + b"]" * 5000, b"[" * 100000,
                                     b'{"id":' + b"[" * 988 + b"1" + b"]" * 988 + b',"method":"mining.submit","params":[]}'])
def test_deeply_nested_json_gets_an_error_not_a_traceback(pool, agent, caplog, payload):
    good = logged_in(agent, "good")
    bad = LineClient(agent.address)
    try:
        bad.send_raw(payload + b"\n")
        answer = bad.read()
        assert answer is None or answer["error"][0] == 27  # over 16 KB: a clean disconnect
        assert_share_path_works(good, pool)
        assert_no_traceback(caplog)
    finally:
        good.close()
        bad.close()


@pytest.mark.parametrize("job_id", ["²", "٣", ["1"], {"x": 1}, None, True, "0x1", "-1", " 1", "256"])
def test_strange_job_ids_from_a_miner_get_21_or_27(pool, agent, caplog, job_id):
    client = logged_in(agent, "odd")
    try:
        params = share_params(client, client.job, 5)
        params[1] = job_id
        assert client.answer(client.request("mining.submit", params))["error"][0] in (21, 27)
        assert_share_path_works(client, pool)
        assert_no_traceback(caplog)
    finally:
        client.close()


@pytest.mark.parametrize("difficulty", ["1e400", "\"1e400\"", "NaN", "-Infinity", "0", "-5", "1" + "0" * 400,
                                        "true", "[1]", "18446744073709551617"])
def test_an_impossible_first_difficulty_backs_off_instead_of_looping(difficulty, caplog):
    pool = PoolSimulator(default_difficulty=TINY_DIFFICULTY, first_difficulty=difficulty).start()
    agent = make_agent(pool)
    agent.start()
    try:
        gevent.sleep(wait(2))
        assert not agent.upstreams[0].ready  # a connection without a starting difficulty serves no miner
        assert pool.connections_total <= 10  # delays drawn below 0.5, 1, 2 s: not thousands of redials
        assert_idle_cpu()
        assert "not a difficulty" in caplog.text or "out of range" in caplog.text or "not a JSON number" in caplog.text
        assert_no_traceback(caplog)
    finally:
        agent.stop()
        pool.stop()


@pytest.mark.parametrize("bad", ["1" + "0" * 30, "18446744073709551617", "1e400", "0", "-5", "true", '"8"'])
def test_an_invalid_first_difficulty_is_ignored_when_a_valid_one_follows(bad, caplog):
    """Said once (it comes twice), then the valid difficulty serves: no reconnect, miners mine."""
    pool = PoolSimulator(default_difficulty=TINY_DIFFICULTY,
                         raw_after_authorize=raw_set_difficulty_line(bad) * 2).start()
    agent = make_agent(pool)
    agent.start()
    try:
        assert agent.wait_ready(wait(5)), caplog.text
        client = logged_in(agent, "rig")
        try:
            assert_share_path_works(client, pool)
        finally:
            client.close()
        assert pool.connections_total == 1 and agent.upstreams[0].difficulty == TINY_DIFFICULTY
        warned = [r.getMessage() for r in caplog.records if r.name == "gagent.upstream" and r.levelno >= logging.WARNING]
        assert len(warned) == 1 and ("not a difficulty" in warned[0] or "not valid JSON" in warned[0]), warned
        assert_no_traceback(caplog)
    finally:
        agent.stop()
        pool.stop()


def test_a_pool_that_sends_no_valid_difficulty_fails_at_the_handshake_deadline(caplog):
    """Only an invalid difficulty: each attempt ends at the handshake deadline with a line saying
    why, with back-off; the invalid value itself is said once over all attempts."""
    pool = PoolSimulator(default_difficulty=TINY_DIFFICULTY, first_difficulty="1" + "0" * 30).start()
    agent = make_agent(pool, advanced={"pool_connection_dial_timeout_seconds": 1.0})
    agent.start()

    def failures():
        return [r.getMessage() for r in caplog.records if "next try" in r.getMessage()]

    try:
        assert wait_until(lambda: len(failures()) >= 2 and pool.connections_total >= 3, timeout=10), caplog.text
        assert "no valid starting difficulty within 1 s of connecting" in failures()[0]
        assert not agent.upstreams[0].ready
        assert len([r for r in caplog.records if "not a difficulty" in r.getMessage()]) == 1, caplog.text
        assert_no_traceback(caplog)
    finally:
        agent.stop()
        pool.stop()


def test_a_pool_that_authorizes_then_closes_is_retried_with_backoff_then_the_next_pool(pool, caplog):
    flapping = PoolSimulator(default_difficulty=TINY_DIFFICULTY, close_after_authorize=True).start()
    agent = start_agent([flapping, pool])
    try:
        assert wait_until(lambda: agent.upstreams[0].ready and agent.upstreams[0].pool.port == pool.address[1],
                          timeout=10)
        gevent.sleep(wait(2))
        assert flapping.connections_total <= 10  # back-off, not thousands of redials
        assert_idle_cpu()
        assert_no_traceback(caplog)
    finally:
        agent.stop()
        flapping.stop()


@pytest.mark.parametrize("kwargs, expect", [
    ({"extranonce1_override": "0x123456"}, "not 8 hex digits"),
    ({"extranonce1_override": "１２３４５６７８"}, "not 8 hex digits"),
    ({"raw_after_authorize": '{"id":null,"method":"mining.notify","params":["²","%s","00","00",[],"20000000","1d00ffff","5a7fba00",true]}\n'
                             % ("00" * 32)}, "not a short id"),
    ({"raw_after_authorize": b'{"id":null,"method":["mining.notify"],"params":[]}\n'}, "not a name"),
    ({"raw_after_authorize": b'{"id":null,"method":"mining.set_version_mask","params":["0x1fffe000"]}\n'}, "set_version_mask"),
])
def test_bad_values_from_the_pool_are_refused_where_they_are_parsed(kwargs, expect, caplog):
    kwargs = {k: v.encode() if isinstance(v, str) and k == "raw_after_authorize" else v for k, v in kwargs.items()}
    pool = PoolSimulator(default_difficulty=TINY_DIFFICULTY, **kwargs).start()
    agent = make_agent(pool)
    agent.start()
    try:
        assert wait_until(lambda: expect in caplog.text, timeout=5), caplog.text
        gevent.sleep(wait(0.5))
        assert_idle_cpu()
        assert_no_traceback(caplog)
        if "extranonce1_override" not in kwargs:  # ignored message: the connection still serves miners
            client = logged_in(agent, "fine")
            try:
                assert_share_path_works(client, pool)
            finally:
                client.close()
    finally:
        agent.stop()
        pool.stop()


def test_authorize_racing_a_reset_never_leaves_a_closed_miner_attached(pool, agent_factory):
    """Thousands of subscribe + authorize + RST cycles with the hub kept busy: afterwards no closed
    miner is attached anywhere and the pool saw exactly one UNREGISTER per REGISTER."""
    import socket
    import struct
    agent = agent_factory()
    conn = pool.authorized[0]
    hog_running = [True]

    def hog():  # keep the hub busy now and then, as a fan-out or a slow callback would
        while hog_running[0]:
            sum(range(20000))
            gevent.sleep(0.001)

    busy = gevent.spawn(hog)

    def cycle(n):
        sock = socket.create_connection(agent.address)
        sock.sendall(b'{"id":1,"method":"mining.subscribe","params":[]}\n'
                     b'{"id":2,"method":"mining.authorize","params":["demo.race%d","x"]}\n' % n)
        if n % 3:
            gevent.sleep(0.0005 * (n % 4))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # RST

    try:
        for start in range(0, 3000, 100):
            gevent.joinall([gevent.spawn(cycle, n) for n in range(start, start + 100)])
    finally:
        hog_running[0] = False
        busy.join()
    assert wait_until(lambda: not agent.miners, timeout=10)
    for upstream in agent.upstreams:
        assert not upstream.miners, "closed miners still attached: %r" % list(upstream.miners.values())[:3]
    assert not any(ps.holding.miners for ps in agent.pool_sets.values())
    assert wait_until(lambda: pool.registers() == pool.unregisters(), timeout=10), \
        (pool.registers(), pool.unregisters())
    assert not conn.workers
    fresh = logged_in(agent, "after")
    try:
        assert_share_path_works(fresh, pool)
        assert wait_until(lambda: pool.stats.get(("demo", "after")) is not None)
    finally:
        fresh.close()


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12)
ANY_JSON_TYPE = st.one_of(  # each JSON type equally likely at the top: null, bool, int, float, string, array, object
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20),
    st.lists(JSON_VALUES, max_size=4), st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=4))


def half(well_formed, anything):
    """`well_formed` or `anything` with even odds (`|` would flatten them into one uniform choice)."""
    return st.booleans().flatmap(lambda ok: well_formed if ok else anything)


# Half well-formed, so that a line often gets past the id, method and params checks to a handler.
MINER_IDS = half(st.integers(0, 1 << 31), ANY_JSON_TYPE)
MINER_METHODS = half(st.sampled_from(["mining.subscribe", "mining.authorize", "mining.configure", "mining.submit",
                                      "mining.extranonce.subscribe", "mining.suggest_difficulty",
                                      "mining.multi_version", "x"]), ANY_JSON_TYPE)
MINER_PARAMS = half(st.lists(JSON_VALUES, max_size=6), ANY_JSON_TYPE)
POOL_REPLY_IDS = half(st.sampled_from(["sub", "auth", "caps", "caps_again", "conf", 1, 2, 3]), ANY_JSON_TYPE)
PROBE_ID = "probe-after-the-fuzzed-line"  # longer than any fuzzed string


@contextlib.contextmanager
def one_farm():
    """A pool, an agent with one connection to it and a logged-in miner; all stopped afterwards."""
    pool = PoolSimulator(default_difficulty=TINY_DIFFICULTY).start()
    agent = make_agent(pool)
    agent.start()
    good = None
    try:
        assert agent.wait_ready(wait(5))
        good = logged_in(agent, "steady")
        yield pool, agent, good
    finally:
        if good is not None:
            good.close()
        agent.stop()
        pool.stop()


@pytest.fixture(scope="module")
def shared_farm():
    with one_farm() as farm:
        yield farm


def _no_constants(name):
    raise ValueError(name)


def answer_id_for(line, msg_id):
    """The id the agent must answer `line` with: `msg_id` when it can parse the line (standard JSON,
    at most 32 containers) and write the id back (null, a 64-bit integer, an ASCII string of at
    most 128 characters), else null."""
    if line.count(b"[") + line.count(b"{") > 32:
        return None
    try:
        json.loads(line, parse_constant=_no_constants)
    except ValueError:
        return None
    if msg_id is None or (type(msg_id) is int and -2 ** 63 <= msg_id < 2 ** 63):
        return msg_id
    return msg_id if type(msg_id) is str and len(msg_id) <= 128 and msg_id.isascii() else None


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(method=MINER_METHODS, msg_id=MINER_IDS, params=MINER_PARAMS, login_first=st.booleans())
def test_random_json_into_every_miner_method(shared_farm, caplog, method, msg_id, params, login_first):
    """Every such line is answered once, with its id when it can be echoed, and the connection goes on:
    the agent closes a miner only for a line over 16 KB, a full send backlog or a refused
    sub-account, none of which these lines can cause."""
    pool, agent, good = shared_farm
    caplog.clear()  # each example answers for its own log
    client = LineClient(agent.address)
    try:
        if login_first:
            client.login("demo.fuzz")
        line = json.dumps({"id": msg_id, "method": method, "params": params}).encode()
        client.send_raw(line + b"\n")
        client.send_raw(b'{"id":"%s","method":"mining.multi_version","params":[1]}\n' % PROBE_ID.encode())
        answers = []  # a queued share may be answered after the probe
        while len(answers) < 2:
            msg = client.read(timeout=5)
            assert msg is not None, "connection closed after %r" % answers
            if "method" not in msg:
                answers.append(msg)
        probe = [a for a in answers if a["id"] == PROBE_ID]
        assert probe == [{"id": PROBE_ID, "result": True, "error": None}], answers
        answers.remove(probe[0])
        assert answers[0]["id"] == answer_id_for(line, msg_id), answers
    finally:
        client.close()
    assert_share_path_works(good, pool, count=1)
    assert_no_traceback(caplog)


def assert_pool_line_is_harmless(line):
    """On a farm of its own (a line that broke a shared one would fail every later example), send
    `line` from the pool, then a new job. The agent reads a connection in order, so once it has
    that job the line was handled: the connection must be the same and still carry shares."""
    with one_farm() as (pool, agent, good):
        upstream = agent.upstreams[0]
        pool.send_raw_all(line)
        job = pool.new_job()
        assert wait_until(lambda: pool.disconnects or (upstream.session and upstream.session.last_job and upstream.session.last_job.params[4] == job.branches)), \
            "the job sent after the line never reached the agent"
        assert pool.disconnects == 0 and pool.connections_total == 1 and upstream.ready, "connection lost"
        notify = good.read_until(lambda m: m.get("method") == "mining.notify" and m["params"][4] == job.branches)
        good.job = notify[-1]["params"]
        assert_share_path_works(good, pool, count=1)


# A failing example costs the wait for the job that never comes; the examples are small: report the
# first one found instead of shrinking it.
POOL_FUZZ = settings(max_examples=60, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate],
                     suppress_health_check=[HealthCheck.function_scoped_fixture])


@POOL_FUZZ
@given(method=st.sampled_from(["mining.notify", "mining.set_difficulty", "mining.set_version_mask",
                               "mining.set_extranonce", "x"]), params=JSON_VALUES)
def test_random_json_in_every_pool_notification(caplog, method, params):
    caplog.clear()  # each example answers for its own log
    assert_pool_line_is_harmless(json.dumps({"id": None, "method": method, "params": params}).encode() + b"\n")
    assert_no_traceback(caplog)


@POOL_FUZZ
@given(msg_id=POOL_REPLY_IDS, result=ANY_JSON_TYPE, error=ANY_JSON_TYPE)
def test_random_json_in_pool_replies(caplog, msg_id, result, error):
    """Replies with the ids of the agent's own requests (handshake, probes) or any other JSON value,
    and results and errors of every type, arriving once the connection is ready."""
    caplog.clear()
    assert_pool_line_is_harmless(json.dumps({"id": msg_id, "result": result, "error": error}).encode() + b"\n")
    assert_no_traceback(caplog)


@pytest.mark.parametrize("reply", [
    b'{"id":"auth","result":true,"error":null}\n',                       # a second authorize answer
    b'{"id":"auth","result":null,"error":[29,"Invalid username",null]}\n',
    b'{"id":"sub","result":[[],"0badc0de",8],"error":null}\n',           # a second subscribe answer
    b'{"id":"caps_again","result":{"capabilities":["verrol","subres"]}}\n',
    b'{"id":"ack1","result":{"capabilities":[]}}\n',                      # a probe answer we did not ask
    b'{"id":[1],"result":[1e308],"error":{"x":1}}\n',
    b'{"id":{"a":1},"result":null,"error":null}\n',
])
def test_replies_the_agent_did_not_ask_for_change_nothing(pool, agent, caplog, reply):
    client = logged_in(agent, "steady")
    extranonce1 = agent.upstreams[0].extranonce1
    try:
        pool.send_raw_all(reply)
        assert_share_path_works(client, pool)
        assert pool.connections_total == 1 and agent.upstreams[0].extranonce1 == extranonce1
        assert_no_traceback(caplog)
    finally:
        client.close()

"""Pure helpers: share hashing (docs/protocol.md §4.6), job transform, worker names, session ids, stratum shapes."""
import pytest

from gagent.protocol import hashing, stratum
from gagent.protocol.jobs import JobError, agent_notify
from gagent.sessionids import SessionIdAllocator
from gagent.workers import worker_name

JOB = ["3", "4d16b6f85af6e2198f44ae2a6de67f78487ae5611b77c6c0440b921e00000000",
       "01000000010000000000000000000000000000000000000000000000000000000000000000ffffffff2503ef98030400ba7f5a",
       "0a2f6d792d706f6f6c2fffffffff0100f2052a010000001976a914000000000000000000000000000000000000000088ac00000000",
       ["1b2e4ca2dd5d4e87ac1bd6efa7a6b4f3a16c6e2ef7b6ee4c4a1de3c4b1d2e3f4",
        "5a6b7c8d9e0f112233445566778899aabbccddeeff00112233445566778899aa"],
       "20000000", "1a0ffff0", "5a7fba00", False]


def test_worked_share_hashes_as_in_protocol():
    cb = hashing.coinbase(JOB[2], "9a3c01f2", "0000002a0000beef", JOB[3])
    assert hashing.sha256d(cb).hex() == "fd77add43dbde3cfb4cd67ece0d2ee19527fd3c7bfa5cb2e98448936c93e6e70"
    root = hashing.merkle_root(cb, JOB[4])
    assert root.hex() == "08292f45aeee1c59626b7db74b7ba7725d287fed06cef60535f79036f6ea8216"
    header = hashing.header(0x20000000 ^ 0x00A4C000, JOB[1], root, 0x5A7FBA00, 0x1A0FFFF0, 0x1C9F0A77)
    assert header.hex() == ("00c0a420f8b6164d19e2f65a2aae448f787fe66d61e57a48c0c6771b1e920b4400000000"
                            "08292f45aeee1c59626b7db74b7ba7725d287fed06cef60535f79036f6ea8216"
                            "00ba7f5af0ff0f1a770a9f1c")
    assert hashing.sha256d(header)[::-1].hex() == "fd3ae6e23ad538ac5fdc7c0a30fa79220581ff90414013dac455004dd5f42ed6"
    assert not hashing.meets_difficulty(header, 1)
    assert hashing.meets_difficulty(header, 2 ** -40)


def test_agent_notify_appends_pool_extranonce1_and_forces_clean_copy():
    job = agent_notify(JOB, "9a3c01f2")
    sent = stratum.loads(job.line)
    assert sent["method"] == "mining.notify" and sent["id"] is None
    assert sent["params"][2] == JOB[2] + "9a3c01f2"
    assert sent["params"][:2] == JOB[:2] and sent["params"][3:8] == JOB[3:8] and sent["params"][8] is False
    assert stratum.loads(job.line_clean)["params"][8] is True
    assert (job.short_id, job.ntime) == (3, 0x5A7FBA00)


@pytest.mark.parametrize("bad", [
    JOB[:8], ["job-77"] + JOB[1:], ["256"] + JOB[1:], JOB[:2] + ["zz"] + JOB[3:],
    JOB[:4] + [["abc"]] + JOB[5:], JOB[:7] + ["5a7fba"] + JOB[8:], "notalist"])
def test_agent_notify_refuses_malformed_jobs(bad):
    with pytest.raises(JobError):
        agent_notify(bad, "9a3c01f2")


def test_worker_names():
    assert worker_name("sub.rig 1!", "10.0.0.1") == "rig1"
    assert worker_name("kevin", "10.0.0.1") == "kevin"  # a login without a dot names the worker (Go agent)
    assert worker_name("sub.a.b", "10.0.0.1") == "a.b"
    assert worker_name("sub.x", "192.168.1.23", use_ip=True) == "192x168x1x23"
    assert worker_name("sub.x", "192.168.1.23", fixed_name="farm", use_ip=True) == "farm"


def test_session_ids_round_robin_and_exhaustion():
    ids = SessionIdAllocator(size=4)
    assert [ids.allocate() for _ in range(4)] == [0, 1, 2, 3]
    assert ids.allocate() is None
    ids.free(1)
    ids.free(3)
    assert ids.allocate() == 1 and ids.allocate() == 3 and ids.allocate() is None
    ids.free(2)
    ids.free(0)
    assert ids.allocate() == 0 and ids.in_use == 3


def test_session_id_reuse_waits_for_the_round():
    ids = SessionIdAllocator(size=10)
    first = ids.allocate()
    ids.free(first)
    assert ids.allocate() == 1  # the freed id is not handed out again at once


def test_stratum_lines():
    assert stratum.error_line(7, 24) == b'{"id":7,"result":null,"error":[24,"Unauthorized worker",null]}\n'
    assert stratum.set_difficulty_line(16384.0) == b'{"id":null,"method":"mining.set_difficulty","params":[16384]}\n'
    assert stratum.set_difficulty_line(0.5) == b'{"id":null,"method":"mining.set_difficulty","params":[0.5]}\n'
    assert stratum.parse_extranonce2("0000beef") == 0xBEEF and stratum.parse_extranonce2("beef") is None
    assert stratum.parse_hex32("1c9f0a77") == 0x1C9F0A77 and stratum.parse_hex32("123456789") is None
    assert stratum.parse_hex32(5) is None

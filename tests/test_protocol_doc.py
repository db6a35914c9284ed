"""docs/protocol.md against the code: its ex-message vectors (§3.7), command and status tables (§3.2,
§3.6) and worked share (§4.6) are read from the document and checked, so the two cannot drift apart."""
import ast
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from gagent.config import config_from_dict
from gagent.counters import Counters
from gagent.miner import MinerSession
from gagent.protocol import exmessage as ex
from gagent.protocol import hashing, jobs, stratum
from gagent.btcagent import BTCAgentSession

DOC = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"


def section(title: str) -> str:
    """The text of the section whose heading ends with `title` (found by name, not number)."""
    text = DOC.read_text(encoding="utf-8")
    match = re.search(r"^(#+) [0-9.]+ %s\n(.*?)(?=^#{1,%d} |\Z)" % (re.escape(title), 3), text, re.M | re.S)
    assert match, "docs/protocol.md has no section %r" % title
    return match.group(2)


def table_rows(text: str, first_cell: str):
    """Cells of the table rows whose first cell matches the regex `first_cell`."""
    rows = []
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("|") and re.fullmatch(first_cell, cells[0]):
            rows.append(cells)
    return rows


def unquote(cell: str) -> str:
    return cell[1:-1] if cell.startswith("`") and cell.endswith("`") else cell


# ---- §3.7 test vectors ---------------------------------------------------------------------------

def vectors():
    rows = table_rows(section("Test vectors"), r"V\d+")
    parsed = []
    for number, name, fields, frame in rows:
        values = {key: ast.literal_eval(value) for key, value in
                  re.findall(r'(\w+)=("[^"]*"|\[[^\]]*\]|\S+)', unquote(fields))}
        parsed.append(pytest.param(name, values, bytes.fromhex(unquote(frame).replace(" ", "")), id=number))
    return parsed


VECTORS = vectors()


def test_the_document_has_a_vector_for_every_command():
    assert len(VECTORS) >= 15
    names = {param.values[0] for param in VECTORS}
    assert names == {name[len("CMD_"):] for name in dir(ex) if name.startswith("CMD_")}


@pytest.mark.parametrize("name, fields, frame", VECTORS)
def test_vector_encodes_decodes_and_splits_as_documented(name, fields, frame):
    cmd = getattr(ex, "CMD_" + name)
    if name == "REGISTER_WORKER":
        encoded = ex.encode_register_worker(**fields)
        decoded = dict(zip(("session_id", "client_agent", "worker_name"), ex.decode_register_worker(frame[4:])))
    elif name == "UNREGISTER_WORKER":
        encoded = ex.encode_unregister_worker(**fields)
        decoded = {"session_id": ex.decode_unregister_worker(frame[4:])}
    elif name.startswith("SUBMIT_SHARE"):
        encoded = ex.encode_submit_share(**fields)
        decoded = {key: value for key, value in ex.decode_submit_share(cmd, frame[4:])._asdict().items()
                   if value is not None}
    elif name == "MINING_SET_DIFF":
        encoded = ex.encode_mining_set_diff(**fields)
        decoded = dict(zip(("diff_exp", "session_ids"), ex.decode_mining_set_diff(frame[4:])))
    elif name == "SUBMIT_RESPONSE":
        encoded = ex.encode_submit_response(**fields)
        decoded = dict(zip(("index", "status"), ex.decode_submit_response(frame[4:])))
    else:  # pragma: no cover - a command the document lists and this test does not know
        pytest.fail("no codec for %s" % name)
    assert encoded.hex() == frame.hex()
    assert decoded == fields
    assert frame[0] == ex.MAGIC and frame[1] == cmd and int.from_bytes(frame[2:4], "little") == len(frame)
    assert ex.StreamSplitter().feed(frame) == [ex.Frame(cmd, frame[4:])]


# ---- §3.2 and §3.6 tables ------------------------------------------------------------------------

def test_command_table_matches_the_codec():
    rows = table_rows(section("Commands"), r"0x[0-9a-f]{2}")
    assert len(rows) == 8
    for code, name, _direction, size, _body in rows:
        assert getattr(ex, "CMD_" + name) == int(code, 16)
        if int(code, 16) in ex.SUBMIT_FRAME_SIZES:
            assert int(size) == ex.SUBMIT_FRAME_SIZES[int(code, 16)]
    sizes = {name: size for _, name, _, size, _ in rows}
    assert sizes["REGISTER_WORKER"] == "8–100" and ex.MAX_REGISTER_SIZE == 100
    assert sizes["UNREGISTER_WORKER"] == str(len(ex.encode_unregister_worker(1)))
    assert sizes["SUBMIT_RESPONSE"] == str(len(ex.encode_submit_response(0, 0)))


def answer_miner_gets(status: int) -> bytes:
    """What a miner is sent for its share the pool answered with `status` in a SUBMIT_RESPONSE."""
    sent = []
    counters = Counters()
    agent = SimpleNamespace(counters=counters, clock=0.0, config=SimpleNamespace(miner_backlog_limit_bytes=1 << 20))
    miner = MinerSession(agent, SimpleNamespace(send=lambda data: sent.append(data) or len(data)), "10.0.0.1", 1)
    config = config_from_dict({"pools": [["pool.example", 1800, "sub"]], "submit_response_from_server": True})
    slot = SimpleNamespace(config=config, counters=counters, name="slot 0 (sub)", reported=set())
    upstream = BTCAgentSession(slot, config.pools[0], sock=None)
    upstream._awaiting_response[5] = (miner, 7)  # share index 5, the miner's request id 7
    upstream._on_frame(ex.Frame(ex.CMD_SUBMIT_RESPONSE, ex.encode_submit_response(5, status)[4:]))
    return b"".join(sent)


def test_status_table_is_what_miners_get():
    rows = table_rows(section("SUBMIT_RESPONSE and share statuses"), r"\d+")
    assert len(rows) >= 20
    assert {int(row[0]) for row in rows} >= set(stratum.ACCEPTED_STATUSES) | {0, 21, 22, 23, 36, 37}
    for status, _name, gets in rows:
        answer = re.match(r"`([^`]+)`", gets).group(1)  # the cell's first code span; a remark may follow
        expected = b'{"id":7,"result":%s,"error":%s}\n' % (
            (b"true", b"null") if answer == "true" else (b"null", answer.encode()))
        assert answer_miner_gets(int(status)) == expected, status


# ---- §4.6 worked share ---------------------------------------------------------------------------

def worked_share():
    block = re.search(r"```text\n(.*?)```", section("Worked share"), re.S)
    assert block, "no text block in the worked share section"
    values: dict = {}
    for line in block.group(1).splitlines():
        match = re.fullmatch(r"\s+([a-z0-9_]+)\s+(\S+)", line)
        if match:
            values.setdefault(match.group(1), []).append(match.group(2))
    return {key: value if key == "branch" else value[0] for key, value in values.items()}


def test_worked_share_is_what_the_code_computes():
    w = worked_share()
    notify = [w["job_id"], w["prevhash"], w["coinb1"], w["coinb2"], w["branch"], w["version"], w["nbits"],
              w["ntime"], False]
    job = jobs.agent_notify(notify, w["pool_extranonce1"], int(w["tag"]))
    assert job.params[0] == w["miner_job_id"] and job.params[2] == w["miner_coinb1"]
    assert jobs.parse_miner_job_id(w["miner_job_id"]) == (int(w["tag"]), int(w["job_id"]))

    session_id = int(w["session_id"], 16)
    ntime = int(w["share_ntime"], 16)
    frame = ex.encode_submit_share(job.short_id, session_id, int(w["extranonce2"], 16), int(w["nonce"], 16),
                                   None if ntime == job.ntime else ntime, int(w["version_bits"], 16) or None)
    assert frame.hex() == w["frame"]

    assert "%016x" % (session_id << 32 | int(w["extranonce2"], 16)) == w["pool_extranonce2"]
    pool_coinbase = hashing.coinbase(w["coinb1"], w["pool_extranonce1"], w["pool_extranonce2"], w["coinb2"])
    miner_coinbase = hashing.coinbase(w["miner_coinb1"], "%08x" % session_id, w["extranonce2"], w["coinb2"])
    assert miner_coinbase == pool_coinbase
    assert hashing.sha256d(pool_coinbase).hex() == w["coinbase_hash"]
    root = hashing.merkle_root(pool_coinbase, w["branch"])
    assert root.hex() == w["merkle_root"]
    header = hashing.header(int(w["version"], 16) ^ int(w["version_bits"], 16), w["prevhash"], root, ntime,
                            int(w["nbits"], 16), int(w["nonce"], 16))
    assert header.hex() == w["header"]
    assert hashing.sha256d(header)[::-1].hex() == w["header_hash"]
    assert hashing.meets_difficulty(header, 2 ** -40) and not hashing.meets_difficulty(header, 1)

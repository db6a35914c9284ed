"""Stratum v1 message shapes: JSON-RPC lines, error codes, share statuses, field parsing."""
import re
from typing import Any, Optional

import simplejson

# Miner-facing error codes (PROTOCOL.md §2) and pool share statuses (§1.6).
JOB_NOT_FOUND_OR_STALE = 21
DUPLICATE_SHARE = 22
LOW_DIFFICULTY = 23
UNAUTHORIZED = 24
NOT_SUBSCRIBED = 25
ILLEGAL_METHOD = 26
ILLEGAL_PARAMS = 27
INVALID_USERNAME = 29
INTERNAL_ERROR = 30
DUPLICATE_SUBSCRIBED = 102
WORKER_NAME_MUST_BE_STRING = 104

ACCEPT = 1798084231
ACCEPT_STALE = 950395421
SOLVED = 1422486894
SOLVED_STALE = 1713984938
ACCEPTED_STATUSES = frozenset((ACCEPT, ACCEPT_STALE, SOLVED, SOLVED_STALE))

STATUS_MESSAGES = {
    0: "Share rejected", 21: "Job not found (=stale)", 22: "Duplicate share", 23: "Low difficulty",
    24: "Unauthorized worker", 25: "Not subscribed", 26: "Illegal method", 27: "Illegal params",
    28: "Ip banned", 29: "Invalid username", 30: "Internal error", 31: "Time too old",
    32: "Time too new", 33: "Invalid version mask", 34: "Invalid Solution", 35: "Wrong Nonce Prefix",
    36: "Job not found", 37: "Stale share", 102: "Duplicate Subscribed",
    104: "Worker Name Must be a String", 2147483647: "Unknown",
}

_WORKER_NAME_DROP = re.compile(r"[^A-Za-z0-9,=/.\-_:|^]")
_HEX32 = re.compile(r"[0-9a-fA-F]{1,8}\Z")
_HEX_EXACT8 = re.compile(r"[0-9a-fA-F]{8}\Z")

_dumps = simplejson.JSONEncoder(separators=(",", ":")).encode
loads = simplejson.loads


def status_message(code: int) -> str:
    """Human text for a status or error code."""
    return STATUS_MESSAGES.get(code, "Unknown")


def result_line(msg_id: Any, result: Any) -> bytes:
    """`{"id":…,"result":…,"error":null}` plus newline."""
    return (_dumps({"id": msg_id, "result": result, "error": None}) + "\n").encode()


def true_line(msg_id: Any) -> bytes:
    """The accepted-share answer; integer ids (the common case) skip the JSON encoder."""
    if type(msg_id) is int:
        return b'{"id":%d,"result":true,"error":null}\n' % msg_id
    return result_line(msg_id, True)


def error_line(msg_id: Any, code: int, message: Optional[str] = None) -> bytes:
    """`{"id":…,"result":null,"error":[code,"message",null]}` plus newline."""
    return (_dumps({"id": msg_id, "result": None,
                    "error": [code, message or status_message(code), None]}) + "\n").encode()


def notification_line(method: str, params: Any) -> bytes:
    """`{"id":null,"method":…,"params":…}` plus newline."""
    return (_dumps({"id": None, "method": method, "params": params}) + "\n").encode()


def request_line(msg_id: Any, method: str, params: Any) -> bytes:
    """`{"id":…,"method":…,"params":…}` plus newline."""
    return (_dumps({"id": msg_id, "method": method, "params": params}) + "\n").encode()


def set_difficulty_line(difficulty: float) -> bytes:
    """mining.set_difficulty; integral values are sent as JSON integers."""
    value = int(difficulty) if float(difficulty).is_integer() else difficulty
    return notification_line("mining.set_difficulty", [value])


CLIENT_RECONNECT_LINE = notification_line("client.reconnect", [])


def filter_worker_name(name: str) -> str:
    """Keep only the characters the pool accepts in worker names."""
    return _WORKER_NAME_DROP.sub("", name)


def parse_hex32(value: Any) -> Optional[int]:
    """A hex string of 1–8 digits as an int, else None."""
    if isinstance(value, str) and _HEX32.match(value):
        return int(value, 16)
    return None


def parse_extranonce2(value: Any) -> Optional[int]:
    """A miner's extranonce2: exactly 8 hex digits (4 bytes), else None."""
    if isinstance(value, str) and _HEX_EXACT8.match(value):
        return int(value, 16)
    return None

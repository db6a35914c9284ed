"""Stratum v1 message shapes: JSON-RPC lines, error codes, share statuses, field parsing.

Everything a peer sends is checked here before it can reach a serializer, a dictionary key or
arithmetic: JSON without NaN/Infinity or non-finite numbers, bounded nesting, ASCII hex without
prefixes or signs, request ids that can be echoed back.
"""
import math
import re
from typing import Any, Optional

import simplejson

# Miner-facing error codes (docs/protocol.md §5.3) and pool share statuses (§3.6).
SHARE_REJECTED = 20  # stratum's "other": a pool's rejection without a reason (status 0)
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
    0: "Share rejected", 20: "Share rejected", 21: "Job not found (=stale)", 22: "Duplicate share", 23: "Low difficulty",
    24: "Unauthorized worker", 25: "Not subscribed", 26: "Illegal method", 27: "Illegal params",
    28: "Ip banned", 29: "Invalid username", 30: "Internal error", 31: "Time too old",
    32: "Time too new", 33: "Invalid version mask", 34: "Invalid Solution", 35: "Wrong Nonce Prefix",
    36: "Job not found", 37: "Stale share", 102: "Duplicate Subscribed",
    104: "Worker Name Must be a String", 2147483647: "Unknown",
}

_WORKER_NAME_DROP = re.compile(r"[^A-Za-z0-9,=/.\-_:|^]")
_HEX32 = re.compile(r"[0-9a-fA-F]{1,8}\Z")

_HEX_EVEN = re.compile(r"(?:[0-9a-fA-F]{2})*\Z")
_SHORT_JOB_ID = re.compile(r"[0-9]{1,3}\Z")

MAX_ID_LENGTH = 128
MAX_CONTAINERS = 32  # '[' and '{' in one miner line: a submit has 2, a configure 4
MAX_DIFFICULTY = float(2 ** 64)


def _reject_constant(name: str) -> Any:
    raise ValueError("%s is not a JSON number" % name)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("number %s is out of range" % text[:40])
    return value


_dumps = simplejson.JSONEncoder(separators=(",", ":"), allow_nan=False).encode
_decode = simplejson.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float).decode


def loads(data: Any, max_containers: Optional[int] = None) -> Any:
    """Parse one JSON text; NaN, Infinity, 1e400 and (with `max_containers`) deep nesting raise ValueError.

    Counting brackets first is a cheap upper bound on the nesting depth, so a hostile line never
    reaches the recursive parser.
    """
    if isinstance(data, bytes):
        if max_containers is not None and data.count(b"[") + data.count(b"{") > max_containers:
            raise ValueError("JSON nested too deeply")
        data = data.decode("utf-8")
    elif max_containers is not None and data.count("[") + data.count("{") > max_containers:
        raise ValueError("JSON nested too deeply")
    try:
        return _decode(data)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def echoable_id(value: Any) -> bool:
    """True for a JSON-RPC id we can write back: null, a short ASCII string or a 64-bit integer."""
    if value is None:
        return True
    kind = type(value)
    if kind is int:
        return -(1 << 63) <= value < (1 << 63)
    return kind is str and len(value) <= MAX_ID_LENGTH and value.isascii()


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


def parse_short_job_id(value: Any) -> Optional[int]:
    """A BTCAgent short job id 0-255, as a decimal ASCII string or a JSON integer, else None."""
    if type(value) is str:
        if _SHORT_JOB_ID.match(value):
            number = int(value)
            return number if number <= 255 else None
        return None
    if type(value) is int and 0 <= value <= 255:
        return value
    return None


def parse_difficulty(value: Any) -> Optional[float]:
    """A pool difficulty: a finite number with 0 < d <= 2^64 (not a bool, not a string), else None."""
    kind = type(value)
    if kind is int:
        return value if 0 < value <= 1 << 64 else None  # exact: 2^64 + 1 rounds to 2^64 as a float
    if kind is float and 0 < value <= MAX_DIFFICULTY:
        return value
    return None


def is_hex(value: Any, length: Optional[int] = None) -> bool:
    """An ASCII hex string of whole bytes (and `length` characters when given): no 0x, sign or spaces."""
    return (isinstance(value, str) and (length is None or len(value) == length)
            and _HEX_EVEN.match(value) is not None)


def parse_extranonce2(value: Any, size: int = 4) -> Optional[int]:
    """A miner's extranonce2: exactly `size` bytes of hex, else None."""
    if isinstance(value, str) and len(value) == 2 * size and _HEX_EVEN.match(value):
        return int(value, 16)
    return None

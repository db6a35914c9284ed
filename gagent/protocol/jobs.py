"""Job transforms: a pool's mining.notify as the agent's miners must receive it (PROTOCOL.md §1.2)."""
from typing import Any, NamedTuple

from .stratum import notification_line

_HEX = frozenset("0123456789abcdefABCDEF")


class JobError(ValueError):
    """A mining.notify that cannot be forwarded."""


class AgentJob(NamedTuple):
    """A job ready to fan out: its short id, ntime, and the notify line (as sent, and clean)."""
    short_id: int
    ntime: int
    line: bytes
    line_clean: bytes


def _is_hex(value: Any) -> bool:
    return isinstance(value, str) and len(value) % 2 == 0 and all(c in _HEX for c in value)


def agent_notify(params: Any, pool_extranonce1: str) -> AgentJob:
    """Append the pool's extranonce1 to coinb1 and serialize the notify once for all miners."""
    if not isinstance(params, list) or len(params) < 9:
        raise JobError("expected 9 params, got %r" % (params,))
    job_id, prevhash, coinb1, coinb2, branches, version, nbits, ntime = params[:8]
    if not (isinstance(job_id, str) and job_id.isdigit() and len(job_id) <= 3 and int(job_id) <= 255):
        raise JobError("job id %r is not a short id 0-255; is this a BTCAgent pool port?" % (job_id,))
    if not (_is_hex(coinb1) and _is_hex(coinb2) and _is_hex(prevhash) and len(prevhash) == 64):
        raise JobError("coinbase parts or prevhash are not hex")
    if not (isinstance(branches, list) and all(_is_hex(b) and len(b) == 64 for b in branches)):
        raise JobError("merkle branches must be a list of 32-byte hex hashes")
    for name, value in (("version", version), ("nbits", nbits), ("ntime", ntime)):
        if not (isinstance(value, str) and len(value) == 8 and _is_hex(value)):
            raise JobError("%s %r is not 8 hex digits" % (name, value))
    forwarded = [job_id, prevhash, coinb1 + pool_extranonce1, coinb2, branches, version, nbits, ntime]
    line = notification_line("mining.notify", forwarded + [bool(params[8])])
    line_clean = line if params[8] is True else notification_line("mining.notify", forwarded + [True])
    return AgentJob(int(job_id), int(ntime, 16), line, line_clean)

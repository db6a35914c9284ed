"""Job transforms: a pool's mining.notify as the agent's miners must receive it (docs/protocol.md §4.3),
and the fake jobs that keep miners busy while no pool is reachable (§5.7)."""
from typing import Any, List, NamedTuple

from .stratum import is_hex, notification_line, parse_short_job_id

FAKE_JOB_PREFIX = "f"


class JobError(ValueError):
    """A mining.notify that cannot be forwarded."""


MAX_TAG = 0xFFFF


class AgentJob(NamedTuple):
    """A job ready to fan out: its short id, ntime, the notify line (as sent, and clean) and its params."""
    short_id: int
    ntime: int
    line: bytes
    line_clean: bytes
    params: List[Any]


def miner_job_id(tag: int, short_id: int) -> str:
    """The job id miners see: the pool's short id with the connection's tag above it.

    Short ids 0-255 repeat on every pool connection; tagging them per connection lets a share for
    a job of a connection the miner was moved from be recognised (and refused) instead of being
    sent, under the same short id, as a share for a different job.
    """
    return str(tag << 8 | short_id)


def parse_miner_job_id(job_id: Any) -> "tuple[int, int] | None":
    """(tag, short id) of a job id made by miner_job_id (a decimal string or a JSON integer), else None."""
    if type(job_id) is str:
        if not (0 < len(job_id) <= 8 and job_id.isascii() and job_id.isdigit()):
            return None
        value = int(job_id)
    elif type(job_id) is int:
        value = job_id
    else:
        return None
    if not 0 <= value <= (MAX_TAG << 8 | 0xFF):
        return None
    return value >> 8, value & 0xFF


def check_notify(params: Any) -> List[Any]:
    """The nine params of a mining.notify, checked for shape (the job id is the caller's to judge);
    raises JobError."""
    if not isinstance(params, list) or len(params) < 9:
        raise JobError("expected 9 params, got %r" % (params,))
    _, prevhash, coinb1, coinb2, branches, version, nbits, ntime = params[:8]
    if not (is_hex(coinb1) and is_hex(coinb2) and is_hex(prevhash, 64)):
        raise JobError("coinbase parts or prevhash are not hex")
    if not (isinstance(branches, list) and all(is_hex(b, 64) for b in branches)):
        raise JobError("merkle branches must be a list of 32-byte hex hashes")
    for name, value in (("version", version), ("nbits", nbits), ("ntime", ntime)):
        if not is_hex(value, 8):
            raise JobError("%s %r is not 8 hex digits" % (name, value))
    return params[:9]


def agent_notify(params: Any, pool_extranonce1: str, tag: int = 0) -> AgentJob:
    """Append the pool's extranonce1 to coinb1, tag the job id, serialize once for all miners."""
    job_id, prevhash, coinb1, coinb2, branches, version, nbits, ntime, _ = check_notify(params)
    short_id = parse_short_job_id(job_id) if isinstance(job_id, str) else None
    if short_id is None:
        raise JobError("job id %r is not a short id 0-255; is this a BTCAgent pool port?" % (job_id,))
    forwarded = [miner_job_id(tag, short_id), prevhash, coinb1 + pool_extranonce1, coinb2, branches, version,
                 nbits, ntime]
    line = notification_line("mining.notify", forwarded + [bool(params[8])])
    line_clean = line if params[8] is True else notification_line("mining.notify", forwarded + [True])
    return AgentJob(short_id, int(ntime, 16), line, line_clean, forwarded)


# Stand-in work when no pool job was ever seen: valid shapes, worthless work.
_BLANK_JOB = ["0", "00" * 32, "01000000010000000000000000000000000000000000000000000000000000000000000000"
              "ffffffff0d03000000", "ffffffff0100000000000000000000000000", [], "20000000", "1d00ffff",
              "00000000"]


def fake_notify(template: Any, sequence: int, now: int) -> bytes:
    """A clean notify for a fake job: job id `f…`, coinb1 with `now` appended so the work is new.

    Shares on such jobs are answered `true` and never sent upstream; they only keep a miner that
    would otherwise give up hashing while the pool is unreachable. `template` is a forwarded job's
    params (AgentJob.params) or None for a blank job.
    """
    base = list(template) if template is not None else list(_BLANK_JOB)
    base[0] = "%s%04x%s" % (FAKE_JOB_PREFIX, sequence & 0xFFFF, base[0])
    base[2] = base[2] + "%016x" % (now & 0xFFFFFFFFFFFFFFFF)
    base[7] = "%08x" % (now & 0xFFFFFFFF)
    return notification_line("mining.notify", base + [True])


def is_fake_job_id(job_id: Any) -> bool:
    """True for the job ids fake_notify makes."""
    return isinstance(job_id, str) and job_id.startswith(FAKE_JOB_PREFIX)

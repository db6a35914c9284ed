"""What /status.json and /healthz report: a plain-data picture of the agent, built when asked.

Nothing here runs on the share path. Walking 10,000 miners takes tens of milliseconds, so every walk
yields to the hub each YIELD_EVERY miners: a request for the status page delays jobs and shares by
a few milliseconds at a time, never by the whole walk.
"""
import re
import time
from typing import TYPE_CHECKING, Any, Dict, Iterable, Iterator, List, Optional, Tuple

import gevent
import simplejson
from simplejson.encoder import encode_basestring_ascii

from .. import __version__, cooperative
from ..protocol.stratum import status_message

if TYPE_CHECKING:  # pragma: no cover
    from ..farm import Farm
    from ..server import Agent

YIELD_EVERY = 500        # miners handled between yields to the hub
YIELD_SECONDS = 0.0001   # see yield_to_hub
STALE_SECONDS = 600.0    # a miner with no share for this long is shown as stale
STATES = ("connecting", "handshake", "ready", "backoff", "stopped")

_encode = simplejson.JSONEncoder(separators=(",", ":")).encode
_escape = encode_basestring_ascii  # a str as the encoder writes it (C)


def reason_name(code: int) -> str:
    """A label-friendly name for a stratum error code: 23 -> "low_difficulty"."""
    words = re.sub(r"[^a-z0-9]+", "_", status_message(code).lower()).strip("_")
    return words if words != "unknown" else "code_%d" % code


def format_hashrate(hashes_per_second: float) -> str:
    """1.23e15 -> "1.23 PH/s"."""
    value = float(hashes_per_second)
    for unit in ("H/s", "kH/s", "MH/s", "GH/s", "TH/s", "PH/s"):
        if abs(value) < 1000.0:
            return "%.3g %s" % (value, unit)
        value /= 1000.0
    return "%.3g EH/s" % value


def yield_to_hub() -> None:
    """Let the hub poll sockets and run due timers, then carry on.

    `gevent.sleep(0)` is not enough: it only queues a callback, and the hub runs queued callbacks back
    to back, looking at the clock once per 50 of them; a walk that yields 20 times that way polls no
    socket until it is over (measured: one 10,000-miner /metrics held every miner for 0.4 s). Waiting
    on a timer, however short, sends the hub round its loop, which polls.
    """
    gevent.sleep(YIELD_SECONDS)


def yielding(items: Iterable[Any]) -> Iterator[Any]:
    """Iterate, letting the hub poll every YIELD_EVERY items."""
    return cooperative.yielding(items, YIELD_EVERY, YIELD_SECONDS)


class MinerTotals:
    """Sums over one walk of the miners: the single place a miner's hashrate is added up, for the
    summary line, /status.json and /metrics alike. Only authorized miners count as online."""

    __slots__ = ("connected", "authorized", "hashrate")

    def __init__(self) -> None:
        self.connected = 0
        self.authorized: Dict[str, int] = {}    # sub-account -> authorized miners
        self.hashrate: Dict[str, float] = {}    # sub-account -> their hashrate

    def add(self, miner: Any) -> float:
        """Count one miner; returns its hashrate (H/s)."""
        self.connected += 1
        rate = miner.hashrate()
        if miner.worker_name:
            sub_account = miner.sub_account
            if sub_account in self.authorized:
                self.authorized[sub_account] += 1
                self.hashrate[sub_account] += rate
            else:
                self.authorized[sub_account] = 1
                self.hashrate[sub_account] = 0.0 + rate
        return rate

    @property
    def total_authorized(self) -> int:
        return sum(self.authorized.values())

    @property
    def total_hashrate(self) -> float:
        return sum(self.hashrate.values(), 0.0)


def ready_connections(agent: "Agent") -> Tuple[int, int]:
    """(ready, total) pool connections over every pool set."""
    ready = total = 0
    for pool_set in agent.pool_sets.values():
        for connection in pool_set.connections:
            total += 1
            ready += bool(connection.ready)
    return ready, total


def health_problem(agent: "Agent") -> Optional[str]:
    """Why a listener cannot serve miners now, or None when it can: the one health rule behind
    /healthz, the "healthy" fields of /status.json and the gagent_healthy metric. A multi-user
    listener with no sub-account open yet (no miner, or idle ones closed) can serve when its pools
    are reachable."""
    if not agent.listening:
        return "miner port not listening"
    if agent.config.multi_user_mode and not agent.pool_sets:
        if agent.pools_reachable is None:
            return "checking that the pools are reachable"
        return None if agent.pools_reachable else "no pool reachable"
    if ready_connections(agent)[0] == 0:
        return "no pool connection ready"
    return None


def is_healthy(agent: "Agent") -> bool:
    """The listener can serve miners (see health_problem)."""
    return health_problem(agent) is None


def farm_health_problem(farm: "Farm") -> Optional[str]:
    """Why the farm is not healthy (every listener listening and able to serve), or None."""
    several = len(farm.agents) > 1
    for agent in farm.agents:
        problem = health_problem(agent)
        if problem is not None:
            return "listener %s: %s" % (agent.name, problem) if several else problem
    return None


def held_miners(agent: "Agent") -> int:
    return sum(pool_set.held_count for pool_set in agent.pool_sets.values())


def pools(agent: "Agent") -> List[Dict[str, Any]]:
    """One entry per pool set (sub-account) of the listener, with its connections."""
    result = []
    for sub_account, pool_set in agent.pool_sets.items():
        connections = []
        for conn in pool_set.connections:
            pool = conn.pool
            connections.append({
                "slot": conn.slot, "host": pool.host if pool else None, "port": pool.port if pool else None,
                "kind": pool.kind if pool else None,
                "state": conn.state, "since": conn.state_since, "ready": bool(conn.ready),
                "miners": conn.miner_count, "difficulty": conn.difficulty, "extranonce1": conn.extranonce1,
                "bytes_sent": conn.bytes_sent, "bytes_received": conn.bytes_received,
                "frames_sent": conn.frames_sent, "frames_received": conn.frames_received,
            })
        result.append({"listener": agent.name, "sub_account": sub_account, "held": pool_set.held_count,
                       "connections": connections})
    return result


def rejects(agents: List["Agent"]) -> List[Dict[str, Any]]:
    """Rejected shares by listener, sub-account and reason, most frequent first."""
    rows = [{"listener": agent.name, "sub_account": sub_account, "code": code, "reason": status_message(code),
             "count": count}
            for agent in agents for (sub_account, code), count in agent.counters.shares_rejected.items()]
    rows.sort(key=lambda row: (-row["count"], row["listener"], row["sub_account"], row["code"]))
    return rows


def miner_row(miner: Any, now: float, listener: str) -> Dict[str, Any]:
    """What the status page shows of one miner (the reference for the rows status_json writes)."""
    last_share = miner.last_share_at
    return {
        "id": miner.session_id, "listener": listener, "worker": miner.worker_name, "sub_account": miner.sub_account,
        "address": miner.peer_ip, "firmware": miner.user_agent, "connected_since": miner.connected_at,
        "difficulty": miner.difficulty, "accepted": miner.accepted, "rejected": miner.rejected,
        "last_share": last_share or None, "hashrate": miner.hashrate(), "held": bool(miner.held),
        "stale": now - (last_share or miner.connected_at) > STALE_SECONDS,
    }


# miner_row(), encoded: what _encode(miner_row(miner, now)) gives, written straight from the miner
ROW = ('{"id":%d,"listener":%s,"worker":%s,"sub_account":%s,"address":%s,"firmware":%s,"connected_since":%s,'
       '"difficulty":%s,"accepted":%d,"rejected":%d,"last_share":%s,"hashrate":%s,"held":%s,"stale":%s}')


class _Texts(dict):
    """JSON texts of values that many miners share, made once per build: timestamps are the agent's
    clock floats (one per second), firmware names, sub-accounts and difficulties repeat. Encoding a
    float is the dearest part of a row (about a microsecond), so a shared one is encoded once.
    Floats get a _Texts of their own: 1024 == 1024.0, but one is written "1024", the other "1024.0"."""

    def __missing__(self, value: Any) -> str:
        text = self[value] = _encode(value)
        return text


def miner_rows(miners: List[Any], now: float, totals: MinerTotals, listener: str) -> Tuple[List[str], int]:
    """miner_row() of each miner (of `listener`) as JSON text, and how many authorized ones are stale;
    each miner is added to `totals`.

    Same text as encoding the dicts, in half the time and with no dict per miner: the
    shared values come from _Texts, the rest is one % format. A miner with a value of a type the
    fast path does not expect (a float count, a non-string name) is encoded from its dict instead.
    """
    floats, others, strings = _Texts(), _Texts(), _Texts()
    esc = _escape
    float_repr = float.__repr__
    stale = 0
    count = totals.add
    listener_text = _encode(listener)
    rows: List[str] = []
    add = rows.append
    for miner in miners:
        worker = miner.worker_name
        connected = miner.connected_at
        last_share = miner.last_share_at
        difficulty = miner.difficulty
        rate = count(miner)
        is_stale = now - (last_share or connected) > STALE_SECONDS
        if worker:
            stale += is_stale
        try:
            add(ROW % (
                miner.session_id, listener_text, esc(worker), strings[miner.sub_account], esc(miner.peer_ip),
                strings[miner.user_agent],
                floats[connected] if connected.__class__ is float else others[connected],
                floats[difficulty] if difficulty.__class__ is float else others[difficulty],
                miner.accepted, miner.rejected,
                (floats[last_share] if last_share.__class__ is float else others[last_share]) if last_share
                else "null",
                float_repr(rate) if rate.__class__ is float and rate - rate == 0.0 else _encode(rate),
                "true" if miner.held else "false", "true" if is_stale else "false"))
        except TypeError:
            add(_encode(miner_row(miner, now, listener)))
    return rows, stale


def status_json_chunks(farm: "Farm") -> List[bytes]:
    """The /status.json document in pieces (joined, they are the document). Miners are written
    YIELD_EVERY at a time, yielding to the hub in between; the pieces are not joined, so the
    document is never held twice."""
    now = time.time()
    chunks: List[bytes] = []
    listeners = []
    for agent in farm.agents:
        miners = list(agent.miners.values())
        totals = MinerTotals()
        stale = 0
        for start in range(0, len(miners), YIELD_EVERY):
            rows, stale_here = miner_rows(miners[start:start + YIELD_EVERY], now, totals, agent.name)
            stale += stale_here
            if chunks:
                rows.insert(0, "")  # the comma after the previous chunk's last row
            chunks.append(",".join(rows).encode())
            yield_to_hub()
        ready, total = ready_connections(agent)
        counters = agent.counters
        problem = health_problem(agent)
        listeners.append({
            "name": agent.name, "address": "%s:%d" % agent.address,
            "listening": bool(agent.listening), "healthy": problem is None, "problem": problem,
            "multi_user_mode": agent.config.multi_user_mode,
            "pools": [pool.label for pool in agent.config.pools],
            "totals": {
                "miners": len(miners), "authorized": totals.total_authorized, "held": held_miners(agent),
                "stale": stale, "hashrate": totals.total_hashrate, "connections_ready": ready, "connections": total,
                "accepted": sum(counters.shares_accepted.values()),
                "rejected": sum(counters.shares_rejected.values()),
                "refused_upstream_lost": counters.shares_refused_upstream_lost,
            },
            "counters": counters.snapshot(),
        })
    problem = farm_health_problem(farm)
    head = {
        "version": __version__, "now": now, "started_at": farm.started_at,
        "listening": all(agent.listening for agent in farm.agents), "healthy": problem is None, "problem": problem,
        "totals": {key: sum(listener["totals"][key] for listener in listeners) for key in listeners[0]["totals"]},
        "listeners": listeners,
        "pools": [entry for agent in farm.agents for entry in pools(agent)],
        "rejects": rejects(farm.agents),
    }
    return [(_encode(head)[:-1] + ',"miners":[').encode()] + chunks + [b"]}"]


def status_json(farm: "Farm") -> bytes:
    """The /status.json document."""
    return b"".join(status_json_chunks(farm))

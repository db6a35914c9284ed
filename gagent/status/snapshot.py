"""What /status.json and /healthz report: a plain-data picture of the agent, built when asked.

Nothing here runs on the share path. Walking 10,000 miners takes tens of milliseconds, so every walk
yields to the hub each YIELD_EVERY miners: a request for the status page delays jobs and shares by
a few milliseconds at a time, never by the whole walk.
"""
import re
import time
from typing import TYPE_CHECKING, Any, Dict, Iterable, Iterator, List, Tuple

import gevent
import simplejson

from .. import __version__
from ..protocol.stratum import status_message

if TYPE_CHECKING:  # pragma: no cover
    from ..server import Agent

YIELD_EVERY = 500        # miners handled between yields to the hub
YIELD_SECONDS = 0.0001   # see yield_to_hub
STALE_SECONDS = 600.0    # a miner with no share for this long is shown as stale
STATES = ("connecting", "handshake", "ready", "backoff", "stopped")

_encode = simplejson.JSONEncoder(separators=(",", ":")).encode


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
    for count, item in enumerate(items, 1):
        yield item
        if not count % YIELD_EVERY:
            yield_to_hub()


def ready_connections(agent: "Agent") -> Tuple[int, int]:
    """(ready, total) pool connections over every pool set."""
    ready = total = 0
    for pool_set in agent.pool_sets.values():
        for connection in pool_set.connections:
            total += 1
            ready += bool(connection.ready)
    return ready, total


def is_healthy(agent: "Agent") -> bool:
    """Miners can be served: the miner port is listening and some pool connection is ready."""
    return bool(agent.listening) and ready_connections(agent)[0] > 0


def held_miners(agent: "Agent") -> int:
    return sum(pool_set.held_count for pool_set in agent.pool_sets.values())


def pools(agent: "Agent") -> List[Dict[str, Any]]:
    """One entry per pool set (sub-account) with its connections."""
    result = []
    for sub_account, pool_set in agent.pool_sets.items():
        connections = []
        for conn in pool_set.connections:
            pool = conn.pool
            connections.append({
                "slot": conn.slot, "host": pool.host if pool else None, "port": pool.port if pool else None,
                "state": conn.state, "since": conn.state_since, "ready": bool(conn.ready),
                "miners": conn.miner_count, "difficulty": conn.difficulty, "extranonce1": conn.extranonce1,
                "bytes_sent": conn.bytes_sent, "bytes_received": conn.bytes_received,
                "frames_sent": conn.frames_sent, "frames_received": conn.frames_received,
            })
        result.append({"sub_account": sub_account, "held": pool_set.held_count, "connections": connections})
    return result


def rejects(agent: "Agent") -> List[Dict[str, Any]]:
    """Rejected shares by sub-account and reason, most frequent first."""
    rows = [{"sub_account": sub_account, "code": code, "reason": status_message(code), "count": count}
            for (sub_account, code), count in agent.counters.shares_rejected.items()]
    rows.sort(key=lambda row: (-row["count"], row["sub_account"], row["code"]))
    return rows


def miner_row(miner: Any, now: float) -> Dict[str, Any]:
    """What the status page shows of one miner."""
    last_share = miner.last_share_at
    return {
        "id": miner.session_id, "worker": miner.worker_name, "sub_account": miner.sub_account,
        "address": miner.peer_ip, "firmware": miner.user_agent, "connected_since": miner.connected_at,
        "difficulty": miner.difficulty, "accepted": miner.accepted, "rejected": miner.rejected,
        "last_share": last_share or None, "hashrate": miner.hashrate(), "held": bool(miner.held),
        "stale": now - (last_share or miner.connected_at) > STALE_SECONDS,
    }


def status_json(agent: "Agent") -> bytes:
    """The /status.json document. Miners are encoded YIELD_EVERY at a time, yielding in between."""
    now = time.time()
    miners = list(agent.miners.values())
    chunks: List[str] = []
    authorized = stale = 0
    hashrate = 0.0
    for start in range(0, len(miners), YIELD_EVERY):
        rows = []
        for miner in miners[start:start + YIELD_EVERY]:
            row = miner_row(miner, now)
            rows.append(row)
            hashrate += row["hashrate"]
            if row["worker"]:
                authorized += 1
                stale += row["stale"]
        chunks.append(_encode(rows)[1:-1])
        yield_to_hub()
    ready, total = ready_connections(agent)
    counters = agent.counters
    head = {
        "version": __version__, "now": now, "started_at": agent.started_at, "listening": bool(agent.listening),
        "healthy": bool(agent.listening) and ready > 0,
        "totals": {
            "miners": len(miners), "authorized": authorized, "held": held_miners(agent), "stale": stale,
            "hashrate": hashrate, "connections_ready": ready, "connections": total,
            "accepted": sum(counters.shares_accepted.values()),
            "rejected": sum(counters.shares_rejected.values()),
            "refused_upstream_lost": counters.shares_refused_upstream_lost,
        },
        "counters": counters.snapshot(),
        "pools": pools(agent),
        "rejects": rejects(agent),
    }
    body = _encode(head)
    return (body[:-1] + ',"miners":[' + ",".join(chunk for chunk in chunks if chunk) + "]}").encode()

"""One pool connection slot: dial the pools in order, back off, fail over and back, whatever they speak.

A slot's greenlet dials a pool entry, hands the connected socket to a protocol session made for
that entry (`new_session`: the BTCAgent protocol today), and when the session ends hands its miners
to the pool set and dials again. The slot never disconnects a miner; it only says what happened.
"""
import logging
import time
from typing import Any, Callable, Dict, List, Optional

import gevent
from gevent import socket

from . import tcp
from .backoff import Backoff
from .config import Config, PoolEntry
from .counters import Counters
from .errors import log_unexpected
from .protocol.exmessage import ProtocolError
from .protocol.jobs import MAX_TAG
from .upstream_api import Miner, ProtocolSession, SlotOwner

log = logging.getLogger("gagent.upstream")

STABLE_SECONDS = 5.0          # ready for less than this, then lost: a failed attempt, not a served one
DRAIN_POLL_SECONDS = 0.01
ASKED_TO_RECONNECT = "the pool asked us to reconnect"


class PoolRefused(Exception):
    """The pool answered but cannot serve us (bad sub-account, incompatible protocol)."""


class AuthorizationRefused(PoolRefused):
    """The pool refused the sub-account."""


class Reconnect(Exception):
    """The pool asked us to reconnect (client.reconnect)."""


SessionFactory = Callable[["UpstreamSlot", PoolEntry, Any], ProtocolSession]
_last_tag = 0  # connection tags, process-wide, 1..MAX_TAG cycling


def new_connection_tag() -> int:
    """A tag for a new pool connection: every connection's job ids differ from every other's."""
    global _last_tag
    _last_tag = _last_tag % MAX_TAG + 1
    return _last_tag


class UpstreamSlot:
    """One upstream connection slot: dials the pools in order with back-off, runs a session at a time.

    `state` is one of "connecting", "handshake", "ready", "backoff", "stopped".
    """

    def __init__(self, config: Config, pools: List[PoolEntry], slot: int, owner: SlotOwner,
                 counters: Counters, new_session: SessionFactory, failback_attempt: bool = False) -> None:
        self.config = config
        self.pools = pools
        self.slot = slot
        self.owner = owner
        self.counters = counters
        self.new_session = new_session
        self.failback_attempt = failback_attempt  # tries the first pool once, never retries
        self.session: Optional[ProtocolSession] = None
        self.state = "connecting"
        self.state_since = time.time()
        self.pool: Optional[PoolEntry] = None
        self.pool_index = 0
        self._ended = [0, 0, 0, 0]  # bytes sent, received, frames sent, received by ended sessions
        self._ready_at = 0.0
        self._greenlet: Optional[gevent.Greenlet] = None
        self._stopping = False

    def __repr__(self) -> str:
        where = "%s:%d" % (self.pool.host, self.pool.port) if self.pool else "-"
        return "<UpstreamSlot %d %s %s>" % (self.slot, where, self.state)

    @property
    def name(self) -> str:
        """How log lines name this connection."""
        kind = "failback attempt" if self.failback_attempt else "slot"
        return "%s %d (%s)" % (kind, self.slot, self.owner.sub_account)

    # ---- what the pool set and the status page read --------------------------------------------

    @property
    def ready(self) -> bool:
        session = self.session
        return session is not None and session.ready

    @property
    def miners(self) -> Dict[int, Miner]:
        session = self.session
        return session.miners if session is not None else {}

    @property
    def miner_count(self) -> int:
        session = self.session
        return session.miner_count if session is not None else 0

    @property
    def difficulty(self) -> Optional[float]:
        return self.session.difficulty if self.session is not None else None

    @property
    def extranonce1(self) -> str:
        return self.session.extranonce1 if self.session is not None else ""

    @property
    def version_mask(self) -> Optional[int]:
        return self.session.version_mask if self.session is not None else None

    def _traffic(self, index: int, field: str) -> int:
        session = self.session
        return self._ended[index] + (getattr(session, field) if session is not None else 0)

    @property
    def bytes_sent(self) -> int:
        return self._traffic(0, "bytes_sent")

    @property
    def bytes_received(self) -> int:
        return self._traffic(1, "bytes_received")

    @property
    def frames_sent(self) -> int:
        return self._traffic(2, "frames_sent")

    @property
    def frames_received(self) -> int:
        return self._traffic(3, "frames_received")

    def can_take(self, miner: Miner) -> bool:
        session = self.session
        return session is not None and session.ready and session.can_take(miner)

    def attach(self, miner: Miner) -> None:
        """Give a miner to the ready session."""
        self.session.attach(miner)

    def detach(self, miner: Miner) -> None:
        if self.session is not None:
            self.session.detach(miner)

    # ---- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        self._greenlet = gevent.spawn(self._run)

    def stop(self) -> None:
        """Close the connection for good (no reconnect); attached miners are handed to the pool set."""
        self._stopping = True
        if self._greenlet is not None and self._greenlet is not gevent.getcurrent():
            self._greenlet.kill(block=False)
        self._end_session("stopped")
        self._set_state("stopped")

    def drain(self, deadline: float) -> None:
        """Graceful stop: let the session write out what is queued and wait for the pool to confirm it
        (until `deadline`, loop time), then close for good."""
        self._stopping = True
        if self.session is not None:
            self.session.drain(deadline)
        self.stop()

    def layout_seen(self, prefix_size: int, miner_extranonce2_size: int) -> None:
        """Called by a plain stratum session that learnt its pool's extranonce layout."""
        self.owner.layout_seen(prefix_size, miner_extranonce2_size)

    def session_ready(self) -> None:
        """Called by the session once miners can be attached."""
        self._ready_at = time.time()
        self._set_state("ready")
        self.owner.connection_ready(self)

    def _set_state(self, state: str) -> None:
        if state != self.state:
            self.state = state
            self.state_since = time.time()

    def _run(self) -> None:
        """Dial the pools in order until one serves us; on loss start again from the first pool.

        A connection that served for STABLE_SECONDS redials at once. A failed attempt (refused,
        handshake error, or lost within STABLE_SECONDS of becoming ready) moves on to the next pool;
        after a pass over the whole list, wait a capped, jittered, growing delay (per slot).
        """
        backoff = Backoff()  # 0.5 s doubling to 30 s, full jitter
        index = 0
        while not self._stopping:
            pool = self.pools[0] if self.failback_attempt else self.pools[index]
            self.pool_index = 0 if self.failback_attempt else index
            reason = self._attempt(pool)
            if self._stopping:
                return
            served = self._ready_at and time.time() - self._ready_at >= STABLE_SECONDS
            was_ready, self._ready_at = bool(self._ready_at), 0.0
            if was_ready and reason == ASKED_TO_RECONNECT and not backoff.failures:
                backoff.failures = 1  # honoured at once; a pool that keeps asking gets back-off
                served = True
            if served:
                if reason != ASKED_TO_RECONNECT:
                    backoff.reset()
                self.counters.upstream_reconnects += 1
                log.warning("%s: connection to %s:%d lost (%s); reconnecting now", self.name, pool.host,
                            pool.port, reason)
                index = 0
                continue
            if self.failback_attempt and not was_ready:
                log.info("%s: first pool %s:%d still unavailable (%s); staying on the backup", self.name,
                         pool.host, pool.port, reason)
                self.owner.failback_attempt_failed(self)
                return
            if self.failback_attempt:
                self.failback_attempt = False  # it served, briefly: from now on an ordinary slot
            index = (index + 1) % len(self.pools)
            if index == 0:
                delay = backoff.next_delay()
                next_pool = self.pools[0]
                self._set_state("backoff")
                log.warning("%s: pool %s:%d: %s; no pool available, next try %s:%d in %.1f s", self.name,
                            pool.host, pool.port, reason, next_pool.host, next_pool.port, delay)
                gevent.sleep(delay)
            else:
                next_pool = self.pools[index]
                log.warning("%s: pool %s:%d: %s; trying %s:%d", self.name, pool.host, pool.port, reason,
                            next_pool.host, next_pool.port)

    def _attempt(self, pool: PoolEntry) -> str:
        """One connection to `pool` from dial to loss; returns why it ended."""
        reason = "closed"
        try:
            self.pool = pool
            self._set_state("connecting")
            sock = self.owner.open_socket(pool)
            tcp.tune_pool_socket(sock)
            self._set_state("handshake")
            self.session = self.new_session(self, pool, sock)
            self.session.serve()
        except Reconnect:
            reason = ASKED_TO_RECONNECT
        except AuthorizationRefused as exc:
            self.owner.authorization_refused(self, str(exc))
            reason = "refused: %s" % exc
        except PoolRefused as exc:
            reason = "refused: %s" % exc
        except (OSError, ProtocolError) as exc:
            reason = getattr(self.session, "broken", "") or _describe_error(exc)
        except gevent.GreenletExit:
            raise
        except Exception as exc:  # a bug must cost one connection, never the slot
            log_unexpected(log, "%s with pool %s:%d" % (self.name, pool.host, pool.port), exc)
            reason = "internal error (%s)" % type(exc).__name__
        finally:
            self._end_session("connection to %s:%d lost" % (pool.host, pool.port))
        return reason

    def _end_session(self, reason: str) -> None:
        """Close the session, if any: its miners go back to the pool set."""
        session, self.session = self.session, None
        if session is None:
            return
        miners = session.close(reason)
        ended = self._ended
        ended[0] += session.bytes_sent
        ended[1] += session.bytes_received
        ended[2] += session.frames_sent
        ended[3] += session.frames_received
        if not self._stopping:
            self._set_state("connecting")
        if miners:
            self.owner.connection_lost(self, miners, reason)


def _describe_error(exc: Exception) -> str:
    if isinstance(exc, socket.timeout):
        return "no answer within the timeout; check the pool address and that the pool is up"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused; check the pool address and port"
    if isinstance(exc, socket.gaierror):
        return "cannot resolve the pool host name: %s" % exc
    return str(exc) or exc.__class__.__name__

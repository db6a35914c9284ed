"""A pool set: the N upstream connections of one sub-account, and where its miners go.

New miners go to the ready connection with the fewest miners. When a connection breaks its miners
are not dropped: they are held (kept connected, shares answered 21) and moved to the other ready
connections at once, or to the first connection that becomes ready. Held miners whose grace period
runs out are disconnected so they fail over to their backup pool, or, with `always_keep_downconn`,
kept busy with fake jobs until a connection is back. A connection serving from a backup pool
retries the first pool every `pool_failback_seconds` and its miners move back when it answers.
"""
import logging
import time
from typing import Any, Callable, Dict, List, Optional

import gevent

from .config import Config, PoolEntry
from .cooperative import yielding
from .counters import Counters
from .protocol import stratum
from .protocol.jobs import fake_notify, is_fake_job_id
from .slot import UpstreamSlot
from .upstream_api import QUEUED, Miner

log = logging.getLogger("gagent.poolset")

GRACE_CHECK_SECONDS = 1.0
DRAIN_SECONDS = 3.0
MAX_CONNECTIONS = 128  # per pool set, when full connections make it open more
FAN_OUT_BATCH = 256  # miners handled between yields to the hub when many move at once
_NO_ANSWER = object()

SlotFactory = Callable[["PoolSet", int, bool], UpstreamSlot]  # (pool set, slot number, failback attempt)


class HeldMiners:
    """Where miners wait while no connection of their pool set is ready (an upstream that never is).

    Shares of held miners are answered 21 (their job's connection is gone) and counted; on a fake
    job they are answered `true` and go nowhere.
    """

    ready = False
    version_mask = None

    def __init__(self, pool_set: "PoolSet") -> None:
        self.pool_set = pool_set
        self.miners: Dict[int, Miner] = {}
        self.since: Dict[int, float] = {}   # session id -> loop time it was held
        self.faking: Dict[int, Miner] = {}  # past the grace period, on fake jobs
        self.awaiting_answer: Dict[int, Any] = {}  # session id -> authorize id, answered once placed

    @property
    def miner_count(self) -> int:
        return len(self.miners)

    def attach(self, miner: Miner) -> None:
        if miner.closed:
            return
        self.miners[miner.session_id] = miner
        self.since[miner.session_id] = gevent.get_hub().loop.now()
        miner.upstream = self

    def detach(self, miner: Miner) -> None:
        self.miners.pop(miner.session_id, None)
        self.since.pop(miner.session_id, None)
        self.faking.pop(miner.session_id, None)
        self.awaiting_answer.pop(miner.session_id, None)
        if miner.upstream is self:
            miner.upstream = None

    def submit(self, miner: Miner, msg_id: Any, job_id: Any, extra_nonce2: int, ntime: int,
               nonce: int, version_mask: Optional[int]) -> int:
        if miner.session_id in self.faking and is_fake_job_id(job_id):
            miner.send(stratum.true_line(msg_id))  # keeps the miner hashing; never sent anywhere
            return QUEUED
        self.pool_set.counters.shares_refused_upstream_lost += 1
        return stratum.JOB_NOT_FOUND_OR_STALE

    def send_version_mask(self, miner: Miner) -> None:
        """Nothing to tell until a connection is ready."""


class PoolSet:
    """The connections of one sub-account: placement, holding, moving, failback."""

    def __init__(self, config: Config, sub_account: str, pools: List[PoolEntry], counters: Counters,
                 open_socket: Callable[[PoolEntry], Any], new_slot: "SlotFactory",
                 answer_at_once: bool = True) -> None:
        self.config = config
        self.sub_account = sub_account
        # Single-user mode answers authorize at once (the sub-account is the operator's own); in
        # multi-user mode a new sub-account's miners wait for the pool to accept it.
        self.answer_at_once = answer_at_once
        self.accepted = False      # a connection was authorized at least once
        self.refused = ""          # why every pool refused this sub-account (before any success)
        self._refused_by: set = set()  # indexes of the pools that refused it
        self.pools = pools
        self.counters = counters
        self.open_socket = open_socket  # pool entry -> connected socket (direct, TLS or proxied, as configured)
        self.new_slot = new_slot
        self.connections: List[UpstreamSlot] = [
            new_slot(self, slot, False) for slot in range(config.pool_connection_number_per_subaccount)]
        self.holding = HeldMiners(self)
        self.last_job_params: Optional[List[Any]] = None  # the newest real job's, for fake jobs
        self._failback_attempts: Dict[int, UpstreamSlot] = {}  # slot -> its attempt on the first pool
        self._releaser: Optional[gevent.Greenlet] = None
        self._grace_keeper: Optional[gevent.Greenlet] = None
        self._failback: Optional[gevent.Greenlet] = None
        self._fake_sequence = 0
        self._stopped = False
        self.on_ready: Any = None  # called with a connection that became ready (the agent's ready event)
        self.on_layout: Any = None  # called with (prefix size, miner extranonce2 size) a stratum pool gave

    # ---- what the agent and the status page read ------------------------------------------------

    @property
    def ready(self) -> bool:
        """At least one connection can take miners."""
        return any(conn.ready for conn in self.connections)

    @property
    def held_count(self) -> int:
        return self.holding.miner_count

    @property
    def miner_count(self) -> int:
        return sum(conn.miner_count for conn in self.connections) + self.holding.miner_count

    # ---- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        for conn in self.connections:
            conn.start()
        if len(self.pools) > 1:
            self._failback = gevent.spawn(self._failback_loop)

    def stop(self, deadline: Optional[float] = None) -> None:
        """Close every connection: with a deadline (loop time), first write out what is queued."""
        self._stopped = True
        for greenlet in (self._releaser, self._grace_keeper, self._failback):
            if greenlet is not None:
                greenlet.kill(block=False)
        for attempt in list(self._failback_attempts.values()):
            attempt.stop()
        self._failback_attempts.clear()
        if deadline is None:
            for conn in self.connections:
                conn.stop()
        else:
            gevent.joinall([gevent.spawn(conn.drain, deadline) for conn in self.connections])

    # ---- miners --------------------------------------------------------------------------------

    def authorize(self, miner: Miner, msg_id: Any) -> None:
        """Answer a miner's authorize and give it work, or hold it (and, for a sub-account not yet
        accepted by the pool, its answer) until a connection is ready."""
        if self.refused:
            miner.send(stratum.error_line(msg_id, stratum.INVALID_USERNAME, self.refused))
            miner.close()
            return
        if self.answer_at_once or self.accepted:
            miner.send(stratum.true_line(msg_id))
            if not miner.closed:  # the answer may have found the socket reset: never attach a closed miner
                self.place(miner)
            return
        self.holding.awaiting_answer[miner.session_id] = msg_id
        self.holding.attach(miner)
        self._keep_grace()

    def _answer_authorize(self, miner: Miner) -> None:
        msg_id = self.holding.awaiting_answer.pop(miner.session_id, _NO_ANSWER)
        if msg_id is not _NO_ANSWER:
            miner.send(stratum.true_line(msg_id))

    def authorization_refused(self, conn: UpstreamSlot, reason: str) -> None:
        """A pool refused this sub-account. Once every pool did, before any accepted it, miners
        waiting for their authorize answer get an error they can show, and so do later ones."""
        if self.accepted or self.answer_at_once:  # the operator's own sub-account: keep trying
            return
        self._refused_by.add(conn.pool_index)
        if len(self._refused_by) < len(self.pools):
            return
        self.refused = "Sub-account %s not accepted by the pool" % self.sub_account
        waiting = [self.holding.miners[sid] for sid in list(self.holding.awaiting_answer) if sid in self.holding.miners]
        log.warning("%s: every pool refused the sub-account (%s); refusing its %d waiting miners",
                    self.sub_account, reason, len(waiting))
        for miner in waiting:
            msg_id = self.holding.awaiting_answer.pop(miner.session_id)
            miner.send(stratum.error_line(msg_id, stratum.INVALID_USERNAME, self.refused))
            miner.close()

    def place(self, miner: Miner) -> None:
        """Attach an authorized miner to the least-loaded ready connection that has room, or hold it."""
        target = self._least_loaded(miner)
        if target is not None:
            target.attach(miner)
            return
        self.holding.attach(miner)
        self.counters.miners_held += 1
        if self.ready:
            self._grow()
        self._keep_grace()

    def _least_loaded(self, miner: Optional[Miner] = None) -> Optional[UpstreamSlot]:
        """The ready connection with the fewest miners (that has room for `miner`, if given)."""
        best = None
        for conn in self.connections:
            if conn.ready and (best is None or conn.miner_count < best.miner_count) and (
                    miner is None or conn.can_take(miner)):
                best = conn
        return best

    def _grow(self) -> None:
        """Every ready connection is full for a miner (a 1-byte extranonce prefix holds 256 miners):
        open one more connection, unless one is already on its way or the cap is reached."""
        if any(not conn.ready for conn in self.connections) or len(self.connections) >= MAX_CONNECTIONS:
            return
        conn = self.new_slot(self, len(self.connections), False)
        self.connections.append(conn)
        log.info("%s: the ready connections have no room for more miners (the pool's extranonce2 leaves "
                 "a 1-byte prefix: 256 miners per connection); opening connection %d", self.sub_account,
                 conn.slot)
        conn.start()

    # ---- events from connections ---------------------------------------------------------------

    def connection_ready(self, conn: UpstreamSlot) -> None:
        self.accepted = True
        self.refused = ""
        if conn.failback_attempt:
            self._promote(conn)
        if self.on_ready is not None:
            self.on_ready(conn)
        if self.holding.miners:
            self._release_soon()

    def connection_lost(self, conn: UpstreamSlot, miners: List[Miner], reason: str) -> None:
        """Hold the miners of a broken connection at once, then move them to ready connections."""
        for miner in miners:
            self.holding.attach(miner)
        held = self.holding.miner_count
        if self._stopped:
            return
        self.counters.miners_held += len(miners)
        target = self._least_loaded()
        if target is not None:
            log.warning("%s: %s; moving its %d miners to the other ready connections", conn.name, reason,
                        len(miners))
            self._release_soon()
        else:
            log.warning("%s: %s; holding its %d miners (%d held in all) for up to %.0f s while reconnecting",
                        conn.name, reason, len(miners), held, self.config.upstream_grace_seconds)
            self._keep_grace()

    def job_seen(self, params: List[Any]) -> None:
        """Remember the newest real job: fake jobs are built from it."""
        self.last_job_params = params

    def layout_seen(self, prefix_size: int, miner_extranonce2_size: int) -> None:
        if self.on_layout is not None:
            self.on_layout((prefix_size, miner_extranonce2_size))

    def failback_attempt_failed(self, attempt: UpstreamSlot) -> None:
        if self._failback_attempts.get(attempt.slot) is attempt:
            del self._failback_attempts[attempt.slot]

    # ---- moving held miners --------------------------------------------------------------------

    def _release_soon(self) -> None:
        if self._releaser is None or self._releaser.dead:
            self._releaser = gevent.spawn(self._release_held)

    def _release_held(self) -> None:
        """Move held miners to ready connections, spread by load, yielding between batches."""
        moved = 0
        no_room = False
        started = gevent.get_hub().loop.now()
        for miner in yielding(list(self.holding.miners.values()), FAN_OUT_BATCH):
            if self._stopped or not self.ready:
                break  # no connection ready any more: the rest stay held
            if self.holding.miners.get(miner.session_id) is not miner:
                continue  # it left meanwhile
            target = self._least_loaded(miner)
            if target is None:
                no_room = True
                continue
            if not miner.closed:
                self._answer_authorize(miner)  # before any job: "true" first, as a pool would
            self.holding.detach(miner)
            if miner.closed:  # it left, or the answer found its socket reset
                continue
            target.attach(miner)
            moved += 1
        if no_room and not self._stopped and self.ready:
            self._grow()
        if moved:
            self.counters.miners_moved += moved
            log.info("%s: %d miners given work on ready connections (%.2f s); %d still held",
                     self.sub_account, moved, gevent.get_hub().loop.now() - started, self.holding.miner_count)
        if self.holding.miners:
            self._keep_grace()

    # ---- the grace period and fake jobs --------------------------------------------------------

    def _keep_grace(self) -> None:
        if not self._stopped and (self._grace_keeper is None or self._grace_keeper.dead):
            self._grace_keeper = gevent.spawn(self._grace_loop)

    def _grace_loop(self) -> None:
        """While miners are held: past the grace period, disconnect them or put them on fake jobs."""
        config = self.config
        loop = gevent.get_hub().loop
        last_fake = 0.0
        while self.holding.miners:
            gevent.sleep(GRACE_CHECK_SECONDS)
            now = loop.now()
            since = self.holding.since
            expired = [m for sid, m in list(self.holding.miners.items())
                       if sid not in self.holding.faking and now - since.get(sid, now) >= config.upstream_grace_seconds]
            if expired and config.always_keep_downconn:
                for miner in expired:
                    self._answer_authorize(miner)
                    self.holding.faking[miner.session_id] = miner
                log.warning("%s: no pool connection for %.0f s; %d miners get fake jobs until one is back",
                            self.sub_account, config.upstream_grace_seconds, len(expired))
                last_fake = 0.0
            elif expired:
                log.warning("%s: no pool connection for %.0f s; disconnecting %d held miners so they fail "
                            "over to their backup pool", self.sub_account, config.upstream_grace_seconds,
                            len(expired))
                self.counters.miners_dropped_after_grace += len(expired)
                for miner in yielding(expired, FAN_OUT_BATCH):
                    msg_id = self.holding.awaiting_answer.pop(miner.session_id, _NO_ANSWER)
                    if msg_id is not _NO_ANSWER:
                        miner.send(stratum.error_line(msg_id, stratum.INTERNAL_ERROR, "No pool connection ready"))
                    miner.close()
            if self.holding.faking and now - last_fake >= config.fake_job_notify_interval_seconds:
                last_fake = now
                self._send_fake_job()

    def _send_fake_job(self) -> None:
        self._fake_sequence += 1
        template = self.last_job_params
        line = fake_notify(template, self._fake_sequence, int(time.time()))
        for miner in yielding(list(self.holding.faking.values()), FAN_OUT_BATCH):
            miner.send(line)

    # ---- failback ------------------------------------------------------------------------------

    def _failback_loop(self) -> None:
        """Every pool_failback_seconds, a connection serving from a backup pool retries the first."""
        while not self._stopped:
            gevent.sleep(self.config.pool_failback_seconds)
            for conn in list(self.connections):
                if conn.ready and conn.pool_index > 0 and conn.slot not in self._failback_attempts:
                    attempt = self.new_slot(self, conn.slot, True)
                    self._failback_attempts[conn.slot] = attempt
                    attempt.start()

    def _promote(self, attempt: UpstreamSlot) -> None:
        """The first pool answered a failback attempt: it takes the slot, the backup's miners move to it."""
        self._failback_attempts.pop(attempt.slot, None)
        old = self.connections[attempt.slot]
        self.connections[attempt.slot] = attempt
        attempt.failback_attempt = False
        miners = list(old.miners.values())
        for miner in yielding(miners, FAN_OUT_BATCH):
            old.detach(miner)
            attempt.attach(miner)
        # The backup writes out what it holds (unregisters, shares awaiting acknowledgement) first.
        gevent.spawn(old.drain, gevent.get_hub().loop.now() + DRAIN_SECONDS)
        self.counters.upstream_failbacks += 1
        self.counters.miners_moved += len(miners)
        log.info("%s: back on the first pool %s:%d; %d miners moved from %s:%d", attempt.name,
                 attempt.pool.host, attempt.pool.port, len(miners),
                 old.pool.host if old.pool else "-", old.pool.port if old.pool else 0)

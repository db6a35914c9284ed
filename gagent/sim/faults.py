"""Fault injection for the pool simulator: the pool troubles an agent must survive.

`FaultInjection` is a mixin of `PoolSimulator` (pool.py) and `StratumPoolSimulator` (stratum_pool.py):
the actions a test triggers while the pool runs. The handshake faults and hostile first messages are
modes, keyword arguments of `PoolSimulator.__init__`, because they act inside the handshake handlers.

- refusing connects (`pause_listening` / `resume_listening`): a pool host that is up but whose
  sserver is down answers every connect with RST (ECONNREFUSED), while sessions already open live on.
- drops: `close_all()` (FIN, in pool.py), `reset()` / `reset_all()` (RST), and `close_one_by_one()`,
  btcpool's graceful shutdown, which aborts its sessions one at a time over a grace period so that
  the agents' reconnects spread out.
- a pool that stops reading (`stop_reading` / `resume_reading`): its reader greenlet parks, what the
  agent sends stays in the kernel buffers until they fill and the agent's writes block (make them
  small with `PoolSimulator(recv_buffer_size=...)`); nothing parked is counted as received.
- share verdicts (`force_status`): valid shares answered JOB_NOT_FOUND, STALE_SHARE and the like, as
  a pool does around a block change or a job repository hiccup.
"""
import collections
import logging
from typing import Any, Deque, List, Optional, Sequence, Tuple

import gevent
import simplejson
from gevent.server import StreamServer

from ..protocol import stratum

# pool.PoolConnection or stratum_pool.StratumConnection: both modules import this one, not the other way round
Connection = Any

log = logging.getLogger("gagent.sim.pool")


def raw_set_difficulty_line(value: Any) -> bytes:
    """A `mining.set_difficulty` line whose value is `value`: str/bytes verbatim as raw JSON text
    (so "NaN" or "1e400" go out as such), anything else JSON-encoded."""
    if isinstance(value, str):
        raw = value.encode()
    elif isinstance(value, bytes):
        raw = value
    else:
        raw = simplejson.dumps(value).encode()
    return b'{"id":null,"method":"mining.set_difficulty","params":[' + raw + b']}\n'


class FaultInjection:
    """Actions that break what the agent sees of the pool; mixed into both pool simulators."""

    # provided by the simulator
    connections: Sequence[Connection]
    _running: bool
    _server: Optional[StreamServer]

    def __init__(self) -> None:
        self._fault_tasks: List[gevent.Greenlet] = []
        self.reading_stopped = False  # stop_reading() for every connection, new ones included
        self._forced_statuses: Deque[int] = collections.deque()

    def _listen(self) -> None:  # pragma: no cover - PoolSimulator's
        raise NotImplementedError

    @property
    def address(self) -> Tuple[str, int]:  # pragma: no cover - PoolSimulator's
        raise NotImplementedError

    # ---- listening ----------------------------------------------------------------------------

    @property
    def listening(self) -> bool:
        """True while new connects are accepted."""
        return self._server is not None

    def pause_listening(self) -> None:
        """Close the listening socket: new connects get ECONNREFUSED; open connections stay."""
        if self._server is not None:
            self._server.close()
            self._server = None
            log.info("pool simulator stopped listening on %s:%d", *self.address)

    def resume_listening(self) -> None:
        """Listen again on the same port after `pause_listening()`."""
        if not self._running:
            raise RuntimeError("pool simulator not started")
        if self._server is None:
            self._listen()
            log.info("pool simulator listening again on %s:%d", *self.address)

    # ---- drops --------------------------------------------------------------------------------

    def reset(self, conn: Connection) -> None:
        """Abort one connection with a TCP RST (SO_LINGER {1, 0}, then close)."""
        conn.close(rst=True)

    def reset_all(self) -> None:
        """Abort every open connection with a TCP RST."""
        for conn in list(self.connections):
            conn.close(rst=True)

    def close_one_by_one(self, interval: float, rst: bool = True) -> gevent.Greenlet:
        """Close the connections open now one at a time, `interval` seconds apart, in a greenlet.

        btcpool's graceful shutdown (`shutdown_grace_period`) aborts with RST, hence the default.
        Connections opened afterwards are left alone: call `pause_listening()` first for a pool
        that is going away. Returns the greenlet (join it to wait for the last close).
        """
        targets = list(self.connections)

        def run() -> None:
            first = True
            for conn in targets:
                if conn.closed:
                    continue
                if not first:
                    gevent.sleep(interval)
                first = False
                conn.close(rst=rst)

        task = gevent.spawn(run)
        self._fault_tasks.append(task)
        return task

    # ---- reading ------------------------------------------------------------------------------

    def stop_reading(self, conn: Optional[Connection] = None) -> None:
        """Stop reading `conn`; None: every connection, including those accepted until
        `resume_reading()`. A chunk whose recv was already waiting is held back unprocessed."""
        if conn is None:
            self.reading_stopped = True
            targets = list(self.connections)
        else:
            targets = [conn]
        for target in targets:
            if not target.closed:
                target.reading.clear()

    def resume_reading(self, conn: Optional[Connection] = None) -> None:
        """Read `conn` again; None: every connection, and new ones are read from the start."""
        if conn is None:
            self.reading_stopped = False
            targets = list(self.connections)
        else:
            targets = [conn]
        for target in targets:
            target.reading.set()

    # ---- share verdicts -----------------------------------------------------------------------

    def force_status(self, status: int, count: int = 1) -> None:
        """Answer the next `count` valid shares (on any connection) with `status` instead of ACCEPT.

        They are counted under that status in `stats` and `statuses`: rejected, unless `status` is
        one of the accepted ones (ACCEPT_STALE, SOLVED...). Invalid shares keep their own verdict
        and do not use up the count. Calls add up.
        """
        self._forced_statuses.extend([status] * count)

    @property
    def forced_statuses_left(self) -> int:
        """How many valid shares will still get a forced status."""
        return len(self._forced_statuses)

    def _verdict(self, status: int) -> int:
        """The status a share is answered with: `status`, or the next forced one if it is ACCEPT."""
        if status == stratum.ACCEPT and self._forced_statuses:
            return self._forced_statuses.popleft()
        return status

    # ---- life cycle ---------------------------------------------------------------------------

    def kill_fault_tasks(self) -> None:
        """End every greenlet started by a fault action (stop() calls this)."""
        tasks, self._fault_tasks = self._fault_tasks, []
        gevent.killall(tasks, timeout=1)

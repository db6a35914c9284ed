"""The sending half of one pool connection: batching frames and deciding when a share is safe to answer.

Miners queue frames (REGISTER/UNREGISTER/SUBMIT) with no I/O. One writer greenlet sends what is queued
once the flush window has passed or a full segment is waiting, so the farm's uplink carries few,
full segments. A share is answered `true` only once it is known to have reached the pool, as
`advanced.share_answer_after` says:

- "pool" (default): the write that carries shares also carries an `agent.get_capabilities` request
  (the pool answers it in order, with no side effect); its answer proves the pool *read* everything
  before it. One probe is in flight at a time and at most one leaves every PROBE_INTERVAL, so it
  costs at most ten small lines a second per connection, and a pool that stops reading is noticed
  within PROBE_TIMEOUT seconds. A pool's kernel acknowledges bytes its process never reads (a hung
  pool): only this mode keeps such shares from being answered `true`.
- "tcp": once the pool's TCP stack acknowledged the bytes (TCP_INFO); shares that sit unread in a
  hung pool's receive buffer are not covered.
- "write": once written to the socket (the original agents' behaviour).
"""
import logging
from collections import deque
from typing import Any, Callable, Deque, List, Optional, Tuple

import gevent
from gevent.event import Event

from . import tcp
from .errors import log_unexpected
from .protocol import stratum

log = logging.getLogger("gagent.upstream")

FULL_SEGMENT = 1400           # queued frames this large leave at once, whatever the flush window
MAX_UNSENT_BYTES = 4 << 20    # the pool stopped taking bytes: past this the connection is broken
ACK_POLL_SECONDS = 0.005      # how often answers waiting for a TCP acknowledgement are checked
PROBE_TIMEOUT = 10.0          # a pool that has not answered a probe for this long is not reading
PROBE_INTERVAL = 0.1          # at most one probe per connection this often: ~60 bytes up, one ACK
PROBE_PREFIX = "ack"
ANSWER_MODES = ("pool", "tcp", "write")

Waiting = Tuple[int, Any, Any]  # (queued end offset, miner, JSON-RPC id)


class Uplink:
    """Queue and writer for one connected pool socket. `on_broken` is called once if it fails."""

    def __init__(self, name: str, sock: Any, flush_delay: float, answer_after: str,
                 on_broken: Callable[[str], None]) -> None:
        self.name = name
        self.sock = sock
        self.flush_delay = flush_delay
        self.answer_after = answer_after
        self.on_broken = on_broken
        self.bytes_sent = 0
        self.frames_sent = 0
        self._out = bytearray()
        self._queued = 0                  # bytes ever queued
        self._awaiting: Deque[Waiting] = deque()
        self._batches: Deque[Tuple[int, int]] = deque()  # "tcp": (written end, stream end)
        self._probe_id: Optional[str] = None
        self._probe_covers = 0            # written offset the outstanding probe follows
        self._probe_sent_at = -PROBE_INTERVAL
        self._probe_count = 0
        self._wake = Event()
        self._full = Event()
        self._greenlet: Optional[gevent.Greenlet] = None

    # ---- queueing (called by miners; no I/O) --------------------------------------------------

    def queue_frame(self, frame: bytes) -> None:
        out = self._out
        out += frame
        self._queued += len(frame)
        self.frames_sent += 1
        if not self._wake.is_set():
            self._wake.set()
        if len(out) >= FULL_SEGMENT:
            self._full.set()
            if len(out) > MAX_UNSENT_BYTES:
                self._broken("the pool has not taken %d bytes" % len(out))

    def queue_share(self, frame: bytes, miner: Any, msg_id: Any) -> None:
        """Queue a share the uplink answers itself once it reached the pool."""
        self.queue_frame(frame)
        self._awaiting.append((self._queued, miner, msg_id))

    @property
    def idle(self) -> bool:
        """Nothing queued and no share waiting for its answer."""
        return not self._out and not self._awaiting

    # ---- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        self._greenlet = gevent.spawn(self._write_loop)

    def close(self) -> List[Tuple[Any, Any]]:
        """Stop writing; returns the (miner, id) of every share not known to have reached the pool."""
        if self._greenlet is not None and self._greenlet is not gevent.getcurrent():
            self._greenlet.kill(block=False)
        self._greenlet = None
        awaiting, self._awaiting = self._awaiting, deque()
        self._out = bytearray()
        self._batches.clear()
        return [(miner, msg_id) for _, miner, msg_id in awaiting]

    def flush_now(self) -> None:
        """Send what is queued without waiting for the flush window (graceful stop)."""
        self.flush_delay = 0.0
        self._wake.set()
        self._full.set()

    def _broken(self, why: str) -> None:
        callback, self.on_broken = self.on_broken, None
        if callback is not None:
            callback(why)

    # ---- the writer ----------------------------------------------------------------------------

    def _write_loop(self) -> None:
        """Send batches and answer shares as they are confirmed. Any failure reports the uplink
        broken: the session then closes the connection, so it is never left half alive."""
        wake, full, sock = self._wake, self._full, self.sock
        loop = gevent.get_hub().loop
        try:
            while True:
                wake.wait(self._wait_timeout())
                if self._batches:
                    self._answer_acknowledged()
                if self._probe_id is not None and loop.now() - self._probe_sent_at > PROBE_TIMEOUT:
                    raise _Stalled("no answer to a probe for %.0f s: the pool is not reading (a pool that never "
                                   "answers agent.get_capabilities needs advanced.share_answer_after \"tcp\")"
                                   % PROBE_TIMEOUT)
                wake.clear()
                if not self._out and not self._needs_probe():
                    continue
                if self.flush_delay and len(self._out) < FULL_SEGMENT and self._out:
                    full.wait(self.flush_delay)
                full.clear()
                data, self._out = self._out, bytearray()
                queued = self._queued  # frames queued while sendall yields are not in this write
                shares_sent = bool(self._awaiting) and self._awaiting[0][0] <= queued
                if self._needs_probe():
                    data += self._probe_line(queued)
                sock.sendall(data)
                self.bytes_sent += len(data)
                if shares_sent:
                    self._after_write(queued)
        except gevent.GreenletExit:
            raise
        except _Stalled as exc:
            self._broken(str(exc))
        except OSError as exc:
            self._broken("write to pool failed: %s" % (exc,))
        except Exception as exc:
            log_unexpected(log, "%s writer" % self.name, exc)
            self._broken("internal error in the writer (%s)" % type(exc).__name__)

    def _wait_timeout(self) -> Optional[float]:
        if self._batches:
            return ACK_POLL_SECONDS
        if self._probe_id is not None:
            return PROBE_TIMEOUT / 4
        if self._awaiting and self.answer_after == "pool":  # the next probe is due then
            return max(0.0, self._probe_sent_at + PROBE_INTERVAL - gevent.get_hub().loop.now())
        return None

    def _after_write(self, queued: int) -> None:
        if self.answer_after == "write":
            self._answer_up_to(queued)
        elif self.answer_after == "tcp":
            end = tcp.stream_end(self.sock)
            if end is None:  # no way to see acknowledgements here: answer once written
                self._answer_up_to(queued)
            else:
                self._batches.append((queued, end))
                self._answer_acknowledged()

    # ---- "pool": probes ------------------------------------------------------------------------

    def _needs_probe(self) -> bool:
        return (self.answer_after == "pool" and self._probe_id is None and bool(self._awaiting)
                and gevent.get_hub().loop.now() - self._probe_sent_at >= PROBE_INTERVAL)

    def _probe_line(self, covers: int) -> bytes:
        self._probe_count += 1
        self._probe_id = "%s%d" % (PROBE_PREFIX, self._probe_count)
        self._probe_covers = covers
        self._probe_sent_at = gevent.get_hub().loop.now()
        return stratum.request_line(self._probe_id, "agent.get_capabilities", [["verrol"]])

    def probe_answered(self, msg_id: Any) -> bool:
        """The pool answered a request: if it is our probe, everything written before it was read."""
        if msg_id is None or msg_id != self._probe_id:
            return False
        covers, self._probe_id = self._probe_covers, None
        self._answer_up_to(covers)
        if self._awaiting:
            self._wake.set()  # shares written after the probe: the writer sends the next one when due
        return True

    # ---- "tcp": kernel acknowledgements --------------------------------------------------------

    def _answer_acknowledged(self) -> None:
        batches = self._batches
        acked = tcp.bytes_acked(self.sock)
        if acked is None:
            return
        covered = None
        while batches and batches[0][1] <= acked:
            covered = batches.popleft()[0]
        if covered is not None:
            self._answer_up_to(covered)

    def _answer_up_to(self, queued: int) -> None:
        awaiting = self._awaiting
        while awaiting and awaiting[0][0] <= queued:
            _, miner, msg_id = awaiting.popleft()
            miner.share_answered(msg_id, 0)


class _Stalled(Exception):
    """The pool stopped answering probes."""

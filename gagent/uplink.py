"""The sending half of one pool connection: batching frames and deciding when a share is safe to answer.

Miners put frames (REGISTER/UNREGISTER/SUBMIT) on the connection's gevent queue, with no I/O. One
writer greenlet takes them off in order and sends the batch once the flush window has passed since
its first frame, or at once when a full segment is waiting, so the farm's uplink carries few, full
segments. A share is answered `true` only once it
is known to have reached the pool, as `advanced.share_answer_after` says:

- "tcp" (default): once the pool's TCP stack acknowledged its bytes (TCP_INFO). A pool's kernel also
  acknowledges bytes its process never reads (a hung pool), so about once a second a small
  `agent.get_capabilities` request rides along with the shares (the pool answers it in order, with
  no side effect). While one has gone unanswered for PROBE_OVERDUE, answers wait; a pool that answers
  none for PROBE_TIMEOUT is not reading and the connection is closed. Shares answered `true` since
  the last answered probe are counted when a connection is lost: only those can have been lost.
- "pool": every write of shares carries such a probe, and its answer, proving the pool *read*
  everything before it, is what answers the shares. Nothing is ever answered `true` unread, at the
  cost of a probe line and the pure ACK for its answer per write (about 40 kbps at 10,000 miners).
- "write": once written to the socket (the original agents' behaviour).
"""
import logging
from collections import deque
from typing import Any, Callable, Deque, List, Optional, Tuple

import gevent
from gevent.event import Event
from gevent.queue import Empty, Queue

from . import tcp
from .errors import log_unexpected
from .protocol import stratum

log = logging.getLogger("gagent.upstream")

FULL_SEGMENT = 1400           # queued frames this large leave at once, whatever the flush window
MAX_UNSENT_BYTES = 4 << 20    # the pool stopped taking bytes: past this the connection is broken
ACK_POLL_SECONDS = 0.005      # how often answers waiting for a TCP acknowledgement are checked
PROBE_TIMEOUT = 10.0          # a pool that has not answered a probe for this long is not reading
PROBE_INTERVAL = {"pool": 0.1, "tcp": 1.0}  # at most one probe per connection this often
PROBE_OVERDUE = 0.5           # "tcp": answers wait while a probe is unanswered for longer than this

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
        self._queue: Queue = Queue()       # frames (bytes) and shares ((frame, miner, id)) from the miners
        self._in_queue = 0                # bytes on the queue, not yet taken by the writer
        self._out = bytearray()           # the batch being gathered: taken off the queue, not yet written
        self._queued = 0                  # bytes ever taken into a batch
        self._written = 0                 # bytes ever written (on the queued scale)
        self._flush_at: Optional[float] = None  # when the batch in _out leaves
        self._flush_soon = False          # the next batch leaves with its first frame
        self._draining = False            # graceful stop: probe until everything is proven read
        self._awaiting: Deque[Waiting] = deque()
        self._batches: Deque[Tuple[int, int]] = deque()  # "tcp": (written end, stream end)
        self._probe_interval = PROBE_INTERVAL.get(answer_after)
        self._probe_id: Optional[int] = None
        self._probe_covers = 0            # written offset the outstanding probe follows
        self._probe_sent_at = -PROBE_TIMEOUT
        self._probe_count = 0
        self._unconfirmed: Deque[Tuple[int, int]] = deque()  # "tcp": (last offset, shares) answered true, not yet proven read
        self._full = Event()  # the batch (with what is still on the queue) fills a segment
        self._clock = gevent.get_hub().loop.now
        self._greenlet: Optional[gevent.Greenlet] = None

    # ---- queueing (called by miners; no I/O) --------------------------------------------------

    def queue_frame(self, frame: bytes) -> None:
        """Put a frame on the queue for the writer."""
        self._queue.put_nowait(frame)
        self._queued_more(len(frame))

    def queue_share(self, frame: bytes, miner: Any, msg_id: Any) -> None:
        """Put a share on the queue; the uplink answers it itself once it reached the pool."""
        self._queue.put_nowait((frame, miner, msg_id))
        self._queued_more(len(frame))

    def _queued_more(self, size: int) -> None:
        self.frames_sent += 1
        waiting = self._in_queue = self._in_queue + size
        waiting += len(self._out)
        if waiting >= FULL_SEGMENT:
            self._full.set()
            if waiting > MAX_UNSENT_BYTES:
                self._broken("the pool has not taken %d bytes" % waiting)

    def _take_queued(self) -> None:
        """Move what the miners queued into the batch, in their order (writer only)."""
        queue = self._queue
        out = self._out
        awaiting = self._awaiting
        take = queue.get_nowait
        for _ in range(queue.qsize()):
            item = take()
            if item.__class__ is bytes:
                out += item
                self._queued += len(item)
            elif item is not None:  # None only wakes the writer
                out += item[0]
                self._queued += len(item[0])
                awaiting.append((self._queued, item[1], item[2]))
        self._in_queue = 0

    def _wake(self) -> None:
        """Have an idle writer look again (it waits on the queue)."""
        self._queue.put_nowait(None)

    @property
    def settled(self) -> bool:
        """Nothing queued, no share waiting for its answer, none answered but not yet proven read."""
        return not self._out and not self._in_queue and not self._awaiting and not self._unconfirmed

    @property
    def unconfirmed_true(self) -> int:
        """Shares answered `true` that no probe answer has yet proven the pool read ("tcp")."""
        return sum(count for _, count in self._unconfirmed)

    # ---- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        self._greenlet = gevent.spawn(self._write_loop)

    def close(self) -> List[Tuple[Any, Any]]:
        """Stop writing; returns the (miner, id) of every share not known to have reached the pool."""
        if self._greenlet is not None and self._greenlet is not gevent.getcurrent():
            self._greenlet.kill(block=False)
        self._greenlet = None
        self._take_queued()
        awaiting, self._awaiting = self._awaiting, deque()
        self._out = bytearray()
        self._batches.clear()
        return [(miner, msg_id) for _, miner, msg_id in awaiting]

    def flush_now(self) -> None:
        """Graceful stop: send what is queued without waiting for the flush window, and probe until
        every share answered `true` is proven read (see `settled`)."""
        self.flush_delay = 0.0
        self._flush_at = None
        self._draining = True
        self._wake()
        self._full.set()

    def _broken(self, why: str) -> None:
        callback, self.on_broken = self.on_broken, None
        if callback is not None:
            callback(why)

    # ---- the writer ----------------------------------------------------------------------------

    def _write_loop(self) -> None:
        """Send batches and answer shares as they are confirmed. Any failure reports the uplink
        broken: the session then closes the connection, so it is never left half alive."""
        clock = self._clock
        try:
            while True:
                now = clock()
                if self._probe_id is not None and now - self._probe_sent_at > PROBE_TIMEOUT:
                    raise _Stalled("no answer to a probe for %.0f s: the pool is not reading (a pool that never "
                                   "answers agent.get_capabilities needs advanced.share_answer_after \"write\")"
                                   % PROBE_TIMEOUT)
                if self._batches:
                    self._answer_acknowledged(now)
                if self._queue.qsize():
                    self._take_queued()
                out = self._out
                if out and self._flush_at is None:
                    self._flush_at = now if self._flush_soon else now + self.flush_delay
                if out and (now >= self._flush_at or len(out) >= FULL_SEGMENT):
                    self._write(now)
                elif not out and self._probe_alone_due(now):
                    self._write(now)
                elif out:
                    self._full.clear()
                    self._full.wait(self._wait_timeout(now))
                else:
                    try:
                        self._queue.peek(timeout=self._wait_timeout(now))
                    except Empty:
                        pass
        except gevent.GreenletExit:
            raise
        except _Stalled as exc:
            self._broken(str(exc))
        except OSError as exc:
            self._broken("write to pool failed: %s" % (exc,))
        except Exception as exc:
            log_unexpected(log, "%s writer" % self.name, exc)
            self._broken("internal error in the writer (%s)" % type(exc).__name__)

    def _write(self, now: float) -> None:
        data, self._out = self._out, bytearray()
        self._flush_at = None
        self._flush_soon = False
        queued = self._queued  # frames queued while sendall yields are not in this write
        carries_shares = bool(self._awaiting) and self._awaiting[-1][0] > self._written
        self._written = queued
        if self._probe_wanted(now, carries_shares):
            data += self._probe_line(queued, now)
        self.sock.sendall(data)
        self.bytes_sent += len(data)
        if carries_shares:
            self._after_write(queued)

    def _wait_timeout(self, now: float) -> Optional[float]:
        deadlines = []
        if self._flush_at is not None and self._out:
            deadlines.append(self._flush_at - now)
        if self._batches and not self._probe_overdue(now):
            deadlines.append(ACK_POLL_SECONDS)
        if self._probe_id is not None:
            deadlines.append(self._probe_sent_at + PROBE_TIMEOUT - now)
        elif self.answer_after == "pool" and self._awaiting and not self._out:  # a probe alone is due then
            deadlines.append(self._probe_sent_at + PROBE_INTERVAL["pool"] - now)
        return max(0.0, min(deadlines)) if deadlines else None

    def _after_write(self, queued: int) -> None:
        if self.answer_after == "write":
            self._answer_up_to(queued)
        elif self.answer_after == "tcp":
            end = tcp.stream_end(self.sock)
            if end is None:  # no way to see acknowledgements here: answer once written
                self._answer_up_to(queued)
            else:
                self._batches.append((queued, end))
                self._answer_acknowledged(self._clock())

    # ---- probes --------------------------------------------------------------------------------

    def _probe_wanted(self, now: float, carries_shares: bool) -> bool:
        """A probe goes with this write: "pool" whenever shares wait for one, "tcp" about once a
        second along with shares (never on its own, so it costs no segment), or to settle a stop."""
        if self._probe_interval is None or self._probe_id is not None:
            return False
        if self._draining and self._unconfirmed:
            return True
        if now - self._probe_sent_at < self._probe_interval:
            return False
        return carries_shares or (self.answer_after == "pool" and bool(self._awaiting))

    def _probe_alone_due(self, now: float) -> bool:
        """No batch is pending, and shares wait for a probe: written after the last one ("pool"),
        or answered on acknowledgements while the agent stops ("tcp")."""
        return (self._draining or self.answer_after == "pool") and self._probe_wanted(now, False)

    def _probe_line(self, covers: int, now: float) -> bytes:
        self._probe_count += 1
        self._probe_id = self._probe_count  # an integer: every other request of ours has a string id
        self._probe_covers = covers
        self._probe_sent_at = now
        return stratum.request_line(self._probe_id, "agent.get_capabilities", [])

    def probe_answered(self, msg_id: Any) -> bool:
        """The pool answered a request: if it is our probe, everything written before it was read."""
        if type(msg_id) is not int or msg_id != self._probe_id:
            return False
        covers, self._probe_id = self._probe_covers, None
        if self.answer_after == "pool":
            self._answer_up_to(covers)
            if self._awaiting:
                self._wake()  # shares written after the probe: the writer sends the next one when due
        else:
            if self._batches:
                self._answer_acknowledged(self._clock())  # answers held while the probe was overdue
            unconfirmed = self._unconfirmed
            while unconfirmed and unconfirmed[0][0] <= covers:
                unconfirmed.popleft()
            # Having answered, the pool's TCP stack delays its next ACK (interactive mode, up to
            # 40 ms): let a batch of a share or two take that delay instead of a full window's.
            self._flush_at = self._clock() if self._out else None
            self._flush_soon = True
            self._full.set()
            self._wake()  # an idle writer resumes checking acknowledgements it stopped trusting
        return True

    # ---- "tcp": kernel acknowledgements --------------------------------------------------------

    def _probe_overdue(self, now: float) -> bool:
        return self._probe_id is not None and now - self._probe_sent_at > PROBE_OVERDUE

    def _answer_acknowledged(self, now: float) -> None:
        if self._probe_overdue(now):
            return  # the pool may have stopped reading: its kernel's acknowledgements prove nothing now
        batches = self._batches
        acked = tcp.bytes_acked(self.sock)
        if acked is None:
            return
        covered = None
        while batches and batches[0][1] <= acked:
            covered = batches.popleft()[0]
        if covered is not None:
            answered = self._answer_up_to(covered)
            if answered:
                self._unconfirmed.append((covered, answered))

    def _answer_up_to(self, queued: int) -> int:
        awaiting = self._awaiting
        answered = 0
        while awaiting and awaiting[0][0] <= queued:
            _, miner, msg_id = awaiting.popleft()
            miner.share_answered(msg_id, 0)
            answered += 1
        return answered


class _Stalled(Exception):
    """The pool stopped answering probes."""

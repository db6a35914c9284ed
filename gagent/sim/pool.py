"""An in-process btcpool-compatible pool simulator (sserver's agent-facing side), built on gevent.

Follows docs/protocol.md §7.1 (handshake), §7.2 (ex-messages), §7.3 (share validation order),
§7.4 (per-miner difficulty recorded per local job) and §7.5 (submit responses). One greenlet per agent
connection; shares are hashed synchronously. Nothing here monkey-patches.

    python -m gagent.sim.pool --host 127.0.0.1 --port 3334 --difficulty 0.0001 --job-interval 30
    python -m gagent.sim.pool --port 3335 --tls-cert pool.pem --tls-key pool.key
"""
import argparse
import collections
import logging
import os
import random
import ssl
import struct
import time
from typing import (Any, Callable, Collection, Counter, Dict, Iterable, List, Mapping, NamedTuple,
                    Optional, Sequence, Set, Tuple, Union)

import gevent
import gevent.event
import gevent.lock
import gevent.ssl
import simplejson
from gevent import socket
from gevent.server import StreamServer

from ..protocol import exmessage as ex
from ..protocol import hashing
from ..protocol import stratum
from .faults import FaultInjection, raw_set_difficulty_line

log = logging.getLogger("gagent.sim.pool")

AGENT_USER_AGENT_PREFIX = "btccom-agent/"
DEFAULT_VERSION_MASK = 0x1FFFE000
DEFAULT_WORKER = "__default__"
MAX_LOCAL_JOBS = 256
LOCAL_JOBS_AFTER_CLEAN = 4
TIME_TOO_NEW_SECONDS = 600
MIN_TIME_BEFORE_NTIME = 3600  # the job's minTime (GBT mintime, about median-time-past + 1)
UNKNOWN = 2147483647
STALE_SHARE = 37
TIME_TOO_OLD = 31
TIME_TOO_NEW = 32
ILLEGAL_VERMASK = 33
JOB_NOT_FOUND = 36
RESPONSE_BATCH = 4
RESPONSE_DELAY = 0.005
LISTEN_BACKLOG = 1024
TLS_HANDSHAKE_TIMEOUT = 15.0  # sserver's read timeout before authorize

CONNECTED, SUBSCRIBED, AUTHORIZED = "connected", "subscribed", "authorized"
AUTO_REGISTERING = "auto_registering"  # authorize answered late (authorize_delay)

ShareCallback = Callable[["PoolConnection", ex.SubmitShare, int, float], None]
NotifyCallback = Callable[["PoolConnection", int, float], None]


class Job:
    """One pool job (what `mining.notify` carries, minus the short id and clean flag)."""

    __slots__ = ("job_id", "height", "prevhash", "coinb1", "coinb2", "branches", "version", "nbits",
                 "ntime", "min_time")

    def __init__(self, job_id: int, height: int, prevhash: str, coinb1: str, coinb2: str,
                 branches: List[str], version: int, nbits: int, ntime: int) -> None:
        self.job_id = job_id
        self.height = height
        self.prevhash = prevhash
        self.coinb1 = coinb1
        self.coinb2 = coinb2
        self.branches = branches
        self.version = version
        self.nbits = nbits
        self.ntime = ntime
        self.min_time = ntime - MIN_TIME_BEFORE_NTIME

    def notify_line(self, job_id: Union[int, str], clean: bool) -> bytes:
        """The notify exactly as sserver writes it for an agent session (or a stratum pool under
        its own job id)."""
        return stratum.notification_line("mining.notify", [
            str(job_id), self.prevhash, self.coinb1, self.coinb2, self.branches,
            "%08x" % self.version, "%08x" % self.nbits, "%08x" % self.ntime, clean])


class LocalJob:
    """A job as sent on one connection: its short id, each miner's difficulty then, and dedup keys."""

    __slots__ = ("short_id", "job", "diffs", "shares")

    def __init__(self, short_id: int, job: Job, diffs: Dict[int, float]) -> None:
        self.short_id = short_id
        self.job = job
        self.diffs = diffs
        self.shares: Set[Tuple[int, int, int, int]] = set()


class WorkerStats:
    """Share counts of one (sub-account, worker)."""

    __slots__ = ("accepted", "rejected", "statuses")

    def __init__(self) -> None:
        self.accepted = 0
        self.rejected = 0
        self.statuses: Counter[int] = collections.Counter()

    def __repr__(self) -> str:
        return "WorkerStats(accepted=%d, rejected=%d)" % (self.accepted, self.rejected)


class Event(NamedTuple):
    """A REGISTER_WORKER / UNREGISTER_WORKER the pool acted on."""
    time: float
    kind: str  # "register" or "unregister"
    extranonce1: str
    session_id: int
    client_agent: str
    worker_name: str
    sub_account: Optional[str] = None


class PoolConnection:
    """The pool side of one agent TCP connection."""

    __slots__ = ("pool", "sock", "peer", "en1", "extranonce1", "state", "user_agent", "is_agent",
                 "sub_account", "subres", "version_mask", "workers", "diffs", "local_jobs",
                 "next_short_id", "submit_index", "shares_received", "registered_total",
                 "unregistered_total", "closed", "reader", "reading",
                 "authorizer", "_write_lock", "_pending", "_flusher")

    def __init__(self, pool: "PoolSimulator", sock: Any, peer: Any, en1: int) -> None:
        self.pool = pool
        self.sock = sock
        self.peer = peer
        self.en1 = en1
        self.extranonce1 = "%08x" % en1
        self.state = CONNECTED
        self.user_agent = ""
        self.is_agent = False
        self.sub_account: Optional[str] = None
        self.subres = False
        self.version_mask = 0
        self.workers: Dict[int, Tuple[str, str]] = {}  # sid -> (client agent, worker name)
        self.diffs: Dict[int, float] = {}  # sid -> difficulty for jobs sent from now on
        self.local_jobs: List[LocalJob] = []  # oldest first
        self.next_short_id = 0
        self.submit_index = 0
        self.shares_received = 0
        self.registered_total = 0  # REGISTER_WORKER frames acted on, over the connection's life
        self.unregistered_total = 0
        self.closed = False
        self.reader: Optional[gevent.Greenlet] = None  # the greenlet reading this connection
        self.reading = gevent.event.Event()  # cleared while the pool stops reading (stop_reading)
        self.reading.set()
        self.authorizer: Optional[gevent.Greenlet] = None  # a delayed authorize answer
        self._write_lock = gevent.lock.Semaphore()
        self._pending: List[bytes] = []
        self._flusher: Optional[gevent.Greenlet] = None

    def __repr__(self) -> str:
        return "<PoolConnection %s %s %s>" % (self.extranonce1, self.sub_account, self.state)

    def send(self, data: bytes) -> bool:
        """Write bytes in order with other writers; on failure close the connection."""
        if self.closed:
            return False
        try:
            with self._write_lock:
                self.sock.sendall(data)
            return True
        except OSError as exc:
            log.info("%s: write failed: %s", self.extranonce1, exc)
            self.close()
            return False

    def close(self, rst: bool = False) -> None:
        """Drop the connection (the reader greenlet then ends): FIN, or with `rst` an abort (RST,
        SO_LINGER {1, 0}), as btcpool drops sessions at shutdown."""
        if self.closed:
            return
        self.closed = True
        self.reading.set()  # a parked reader wakes up, sees `closed` and ends
        for task in (self._flusher, self.authorizer):
            if task is not None and task is not gevent.getcurrent():
                task.kill(block=False)
        steps: List[Callable[[], Any]] = [self.sock.close]
        if rst:
            steps.insert(0, lambda: self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                                         struct.pack("ii", 1, 0)))
        else:
            steps.insert(0, lambda: self.sock.shutdown(socket.SHUT_RDWR))
        for step in steps:
            try:
                step()
            except OSError:
                pass

    def find_local_job(self, short_id: int) -> Optional[LocalJob]:
        """The newest local job sent under `short_id`."""
        for local in reversed(self.local_jobs):
            if local.short_id == short_id:
                return local
        return None

    def queue_response(self, data: bytes) -> None:
        """Hold a SUBMIT_RESPONSE and send it later in a shuffled batch (responses out of order)."""
        self._pending.append(data)
        if len(self._pending) >= RESPONSE_BATCH:
            self.flush_responses()
        elif self._flusher is None:
            self._flusher = gevent.spawn_later(RESPONSE_DELAY, self.flush_responses)

    def flush_responses(self) -> None:
        """Send every held response, shuffled."""
        pending, self._pending = self._pending, []
        flusher, self._flusher = self._flusher, None
        if flusher is not None and flusher is not gevent.getcurrent():
            flusher.kill(block=False)
        random.shuffle(pending)
        if pending:
            self.send(b"".join(pending))


def _varint(n: int) -> bytes:
    if n < 0xFD:
        return bytes((n,))
    return b"\xfd" + struct.pack("<H", n)


def coinbase_parts(height: int, extranonce_size: int, extra: bytes = b"") -> Tuple[str, str]:
    """coinb1/coinb2 of a real-looking coinbase whose scriptSig holds `extranonce_size` bytes
    (extranonce1 + extranonce2) between them."""
    head = b"\x03" + struct.pack("<I", height)[:3] + b"\x04" + struct.pack("<I", int(time.time()))
    tail = extra + b"\x0a/gagent-sim/"
    script_len = len(head) + extranonce_size + len(tail)
    coinb1 = (struct.pack("<I", 1) + b"\x01" + b"\0" * 32 + b"\xff\xff\xff\xff"
              + _varint(script_len) + head)
    coinb2 = (tail + b"\xff\xff\xff\xff" + b"\x01" + struct.pack("<Q", 625000000)
              + b"\x19\x76\xa9\x14" + os.urandom(20) + b"\x88\xac" + b"\0\0\0\0")
    return coinb1.hex(), coinb2.hex()


def open_listener(host: str, port: int, recv_buffer_size: Optional[int] = None) -> socket.socket:
    """A listening TCP socket on (host, port), SO_REUSEADDR set (bind again while connections
    accepted on an old listener live on); `recv_buffer_size` sets SO_RCVBUF, which accepted
    sockets inherit."""
    family, _, _, _, sockaddr = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM, 0,
                                                   socket.AI_PASSIVE)[0]
    listener = socket.socket(family, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if recv_buffer_size:  # must precede listen()
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, recv_buffer_size)
        listener.bind(sockaddr)
        listener.listen(LISTEN_BACKLOG)
    except OSError:
        listener.close()
        raise
    return listener


def _json_id(value: Any) -> Any:
    """sserver echoes integer and string ids; anything else becomes null."""
    if isinstance(value, (int, str)) and not isinstance(value, bool):
        return value
    return None


class PoolSimulator(FaultInjection):
    """A btcpool sserver look-alike for BTCAgent connections; see the module docstring.

    `stats` maps (sub_account, worker) to WorkerStats; `statuses` counts every verdict. The fault
    injection actions (refusing connects, resets, a pool that stops reading, forced share statuses)
    come from `FaultInjection` in faults.py.

    Connection bookkeeping for back-off and failover tests: `connect_times` holds the event-loop time
    (`gevent.get_hub().loop.now()`, the clock the tests' waits use) of every accepted connection,
    `disconnects` counts accepted connections that ended, whichever side closed them.
    `ssl_context` (a server-side `ssl.SSLContext`; a gevent.ssl one or the standard library's) makes
    every accepted connection TLS, as a pool behind a TLS terminator is; the TLS handshake runs in
    the connection's greenlet, and a client that fails it is just disconnected.
    `recv_buffer_size` sets SO_RCVBUF of the accepted sockets, so that a pool that stops reading
    (`stop_reading`) makes the agent's writes block after that many bytes rather than megabytes.

    Handshake faults (attributes of the same names; change them at any time, they apply to the
    next handshake step):

    - `authorize_delay`: answer mining.authorize after that many seconds, as btcpool does while it
      auto-registers a new sub-account (state AUTO_REGISTING). Lines that arrive meanwhile are
      handled in order: a `caps_again` request is answered but does not enable subres (the
      session is not authorized yet), a second authorize gets 25 "Not subscribed", ex-messages
      are dropped.
    - `close_after_authorize`: answer authorize `true`, then close at once (no difficulty, no job).
    - `stall_handshake`: read but never answer a JSON line of a connection not yet authorized.
    - `refuse_sub_accounts`: authorize of these sub-accounts answers 29 "Invalid username", as
      for names outside the `sub_accounts` allow-list.

    Hostile first messages, for the agent's input hardening (also attributes):

    - `first_difficulty`: the `mining.set_difficulty` sent after authorize carries this value; a
      str (or bytes) is raw JSON text written verbatim, so literals no JSON encoder emits reach the
      agent: "1e400", "NaN", "-1", '"1e400"' (a string). Anything else is JSON-encoded. Shares are
      still checked against `default_difficulty`.
    - `extranonce1_override`: the subscribe answer names this as extranonce1 (e.g. "0x123456");
      shares are still checked against the connection's real extranonce1.
    - `raw_after_authorize`: bytes written right after the authorize answer, before the difficulty
      and the first job (e.g. a notify whose job id is a non-ASCII digit such as U+0663).
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, default_difficulty: float = 16384,
                 server_id: int = 1, extranonce2_size: int = 8,
                 version_mask: int = DEFAULT_VERSION_MASK,
                 sub_accounts: Optional[Collection[str]] = None, job_interval: Optional[float] = None,
                 shuffle_responses: bool = False, on_share: Optional[ShareCallback] = None,
                 on_notify: Optional[NotifyCallback] = None,
                 ssl_context: Optional[ssl.SSLContext] = None,
                 recv_buffer_size: Optional[int] = None, authorize_delay: float = 0,
                 close_after_authorize: bool = False, stall_handshake: bool = False,
                 refuse_sub_accounts: Collection[str] = (), first_difficulty: Any = None,
                 extranonce1_override: Optional[str] = None,
                 raw_after_authorize: Optional[bytes] = None) -> None:
        if not default_difficulty > 0:
            raise ValueError("default_difficulty must be positive")
        FaultInjection.__init__(self)
        self.host = host
        self.port = port
        self.default_difficulty = default_difficulty
        self.server_id = server_id & 0xFF
        self.extranonce2_size = extranonce2_size
        self.version_mask = version_mask
        self.sub_accounts = set(sub_accounts) if sub_accounts is not None else None
        self.job_interval = job_interval
        self.shuffle_responses = shuffle_responses
        self.on_share = on_share
        self.on_notify = on_notify
        self.ssl_context = ssl_context
        self.recv_buffer_size = recv_buffer_size
        self.authorize_delay = authorize_delay
        self.close_after_authorize = close_after_authorize
        self.stall_handshake = stall_handshake
        self.refuse_sub_accounts = set(refuse_sub_accounts)
        self.first_difficulty = first_difficulty
        self.extranonce1_override = extranonce1_override
        self.raw_after_authorize = raw_after_authorize
        self.connections: List[PoolConnection] = []
        self.connections_total = 0
        self.connect_times: List[float] = []
        self.disconnects = 0
        self.stats: Dict[Tuple[str, str], WorkerStats] = {}
        self.statuses: Counter[int] = collections.Counter()
        self.events: List[Event] = []
        self.bytes_received = 0
        self.reads = 0
        self.shares_received = 0
        self._share_keys: Set[Tuple[str, int, int, int]] = set()
        self.jobs_created = 0
        self.job: Optional[Job] = None
        self.height = 800000
        self._prevhash = ""
        self._en1_counter = 0
        self._running = False
        self._bound: Optional[Tuple[str, int]] = None
        self._server: Optional[StreamServer] = None
        self._ticker: Optional[gevent.Greenlet] = None

    # ---- life cycle ---------------------------------------------------------------------------

    def start(self) -> "PoolSimulator":
        """Listen, make the first job, and start the optional re-send timer.

        After `stop()` this starts again on the same port (`address` does not change), as a pool
        restarted by its operator does; agents reconnect to where they were.
        """
        if self._running:
            raise RuntimeError("pool simulator already started")
        self._listen()
        self._running = True
        self.new_job(clean=True)
        if self.job_interval:
            self._ticker = gevent.spawn(self._resend_loop, self.job_interval)
        log.info("pool simulator listening on %s:%d", *self.address[:2])
        return self

    def _listen(self) -> None:
        """Open the listening socket (on the port bound before, if any) and accept on it."""
        host, port = self._bound if self._bound is not None else (self.host, self.port)
        self._server = StreamServer(open_listener(host, port, self.recv_buffer_size), self._handle)
        self._server.start()
        self._bound = tuple(self._server.address[:2])  # type: ignore[assignment]

    @property
    def address(self) -> Tuple[str, int]:
        """(host, port) bound; it stays the same across stop()/start() and pause_listening()."""
        if self._bound is None:
            raise RuntimeError("pool simulator not started")
        return self._bound

    def stop(self) -> None:
        """Stop listening, drop every connection and end every greenlet of the simulator."""
        self._running = False
        if self._ticker is not None:
            self._ticker.kill()
            self._ticker = None
        self.kill_fault_tasks()
        if self._server is not None:
            self._server.close()
            self._server = None
        readers = [c.reader for c in self.connections if c.reader is not None]
        self.close_all()
        gevent.joinall(readers, timeout=1)

    def close_all(self) -> None:
        """Drop every agent connection (a pool failure, as the agent sees it)."""
        for conn in list(self.connections):
            conn.close()

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 5.0, step: float = 0.01) -> bool:
        """Poll `predicate` cooperatively; True when it became true within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                return False
            gevent.sleep(step)
        return True

    @property
    def authorized(self) -> List[PoolConnection]:
        """Open connections that completed mining.authorize."""
        return [c for c in self.connections if c.state == AUTHORIZED and not c.closed]

    # ---- accounting ---------------------------------------------------------------------------

    def registers(self, worker: Optional[str] = None, sub_account: Optional[str] = None) -> int:
        """REGISTER_WORKER frames the pool acted on, for that worker name / sub-account (None: any)."""
        return self._count_events("register", worker, sub_account)

    def unregisters(self, worker: Optional[str] = None, sub_account: Optional[str] = None) -> int:
        """UNREGISTER_WORKER frames that removed a registered worker; filters as `registers`."""
        return self._count_events("unregister", worker, sub_account)

    def _count_events(self, kind: str, worker: Optional[str], sub_account: Optional[str]) -> int:
        return sum(1 for e in self.events if e.kind == kind and worker in (None, e.worker_name)
                   and sub_account in (None, e.sub_account))

    def accepted_shares(self) -> int:
        """Shares answered with an accepted status, over every worker."""
        return sum(s.accepted for s in self.stats.values())

    def rejected_shares(self) -> int:
        """Shares answered with any other status."""
        return sum(s.rejected for s in self.stats.values())

    def share_keys(self) -> Set[Tuple[str, int, int, int]]:
        """(extranonce1 of the connection, session id, extra_nonce2, nonce) of every share the pool
        read and judged, valid or not: a miner told `true` for a share missing here was lied to.
        Shares the pool ignores (unregistered session id, wrong frame size, sent before authorize,
        still unread after stop_reading) are not in it. A copy."""
        return set(self._share_keys)

    # ---- jobs and difficulty ------------------------------------------------------------------

    def new_job(self, clean: bool = False, branches: int = 2, coinbase_extra: bytes = b"",
                set_diff: Optional[Mapping[PoolConnection, Tuple[int, Iterable[int]]]] = None) -> Job:
        """Make a fresh job and notify every authorized agent connection.

        `clean` starts a new block height (new prevhash; older jobs become stale). `set_diff` maps a
        connection to (exp, session ids): those miners get difficulty 2^exp, sent as MINING_SET_DIFF
        immediately before this notify on that connection, as btcpool does.
        """
        if clean or not self._prevhash:
            self.height += 1
            self._prevhash = os.urandom(32).hex()
        self.jobs_created += 1
        coinb1, coinb2 = coinbase_parts(self.height, 4 + self.extranonce2_size, coinbase_extra)
        job = Job(self.jobs_created, self.height, self._prevhash, coinb1, coinb2,
                  [os.urandom(32).hex() for _ in range(branches)], 0x20000000, 0x1D00FFFF,
                  int(time.time()))
        self.job = job
        set_diff = set_diff or {}
        for conn in self.authorized:
            prefix = b""
            if conn in set_diff:
                exp, sids = set_diff[conn]
                prefix = self._record_diff(conn, exp, sids)
            self._send_job(conn, job, clean, prefix)
        return job

    def set_worker_difficulty(self, conn_or_all: Optional[PoolConnection], session_ids: Optional[Iterable[int]],
                              exp: int) -> None:
        """Set 2^exp for those miners (None: all registered) on one connection (None: all) and send
        MINING_SET_DIFF now; it applies to jobs sent afterwards."""
        conns = [conn_or_all] if conn_or_all is not None else self.authorized
        for conn in conns:
            frames = self._record_diff(conn, exp, session_ids)
            if frames:
                conn.send(frames)

    def _record_diff(self, conn: PoolConnection, exp: int, session_ids: Optional[Iterable[int]]) -> bytes:
        sids = sorted(conn.workers) if session_ids is None else list(session_ids)
        for sid in sids:
            if sid in conn.workers:
                conn.diffs[sid] = float(2 ** exp)
        return ex.encode_mining_set_diff(exp, sids) if sids else b""

    def _send_job(self, conn: PoolConnection, job: Job, clean: bool, prefix: bytes = b"") -> None:
        """Record a local job on `conn` (with each miner's current difficulty) and send its notify."""
        short_id = conn.next_short_id
        conn.next_short_id = (short_id + 1) & 0xFF
        conn.local_jobs.append(LocalJob(short_id, job, dict(conn.diffs)))
        keep = LOCAL_JOBS_AFTER_CLEAN if clean else MAX_LOCAL_JOBS
        del conn.local_jobs[:-keep]
        if conn.send(prefix + job.notify_line(short_id, clean)) and self.on_notify is not None:
            self.on_notify(conn, short_id, time.time())

    def _resend_loop(self, interval: float) -> None:
        while True:
            gevent.sleep(interval)
            if self.job is not None:
                for conn in self.authorized:
                    self._send_job(conn, self.job, False)

    # ---- raw injection ------------------------------------------------------------------------

    def send_raw(self, conn: PoolConnection, data: bytes) -> bool:
        """Write arbitrary bytes on one connection."""
        return conn.send(data)

    def send_raw_all(self, data: bytes) -> None:
        """Write arbitrary bytes on every open connection."""
        for conn in list(self.connections):
            conn.send(data)

    # ---- per connection -----------------------------------------------------------------------

    def _handle(self, sock: Any, peer: Any) -> None:
        if not self._running:  # accepted just before stop()
            sock.close()
            return
        self.connect_times.append(gevent.get_hub().loop.now())
        en1 = (self.server_id << 24) | self._en1_counter
        self._en1_counter = (self._en1_counter + 1) & 0xFFFFFF
        conn = PoolConnection(self, sock, peer, en1)
        conn.reader = gevent.getcurrent()
        if self.reading_stopped:
            conn.reading.clear()
        self.connections.append(conn)
        self.connections_total += 1
        log.debug("%s: connection from %s", conn.extranonce1, peer)
        try:
            if self.ssl_context is not None:
                self._start_tls(conn)
            self._read_loop(conn)
        except ssl.SSLError as exc:
            log.info("%s: TLS error, closing: %s", conn.extranonce1, exc)
        except ex.ProtocolError as exc:
            log.warning("%s: protocol error, closing: %s", conn.extranonce1, exc)
        except OSError as exc:
            if not conn.closed:
                log.info("%s: connection error: %s", conn.extranonce1, exc)
        except Exception:  # bad input must never take the simulator down
            log.exception("%s: unexpected error, closing", conn.extranonce1)
        finally:
            conn.close()
            if conn in self.connections:
                self.connections.remove(conn)
            self.disconnects += 1
            log.debug("%s: closed (%d miners)", conn.extranonce1, len(conn.workers))

    def _start_tls(self, conn: PoolConnection) -> None:
        """Replace the connection's socket by a TLS one and run the server-side handshake."""
        ctx = self.ssl_context
        if isinstance(ctx, gevent.ssl.SSLContext):
            tls = ctx.wrap_socket(conn.sock, server_side=True, do_handshake_on_connect=False)
        else:  # a standard-library context: what gevent's own SSLContext.wrap_socket does with it
            tls = gevent.ssl.SSLSocket(sock=conn.sock, server_side=True, do_handshake_on_connect=False,
                                       _context=ctx)
        conn.sock = tls
        tls.settimeout(TLS_HANDSHAKE_TIMEOUT)
        tls.do_handshake()
        tls.settimeout(None)

    def _read_loop(self, conn: PoolConnection) -> None:
        """Read and act on everything the agent sends, parking while the pool stops reading."""
        splitter = ex.StreamSplitter(max_line=1 << 20)
        while not conn.closed:
            if not conn.reading.is_set():
                conn.reading.wait()  # stop_reading(): what the agent sends stays in the kernel
                continue
            data = conn.sock.recv(65536)
            if not data:
                break
            if not conn.reading.is_set():  # stopped while this recv waited: hold the chunk back
                conn.reading.wait()
                if conn.closed:
                    break
            received = time.time()
            self.bytes_received += len(data)
            self.reads += 1
            for item in splitter.feed(data):
                if conn.closed:
                    break
                if isinstance(item, ex.Frame):
                    self._on_frame(conn, item, received)
                else:
                    self._on_line(conn, item)

    def _on_line(self, conn: PoolConnection, line: bytes) -> None:
        try:
            msg = stratum.loads(line)
        except ValueError:
            log.warning("%s: unparsable line ignored: %r", conn.extranonce1, line[:200])
            return
        if not isinstance(msg, dict):
            log.warning("%s: non-object line ignored: %r", conn.extranonce1, line[:200])
            return
        if self.stall_handshake and conn.state != AUTHORIZED:
            log.debug("%s: stalling, line not answered: %r", conn.extranonce1, line[:200])
            return
        msg_id = _json_id(msg.get("id"))
        method, params = msg.get("method"), msg.get("params")
        if not isinstance(method, str) or not method or not isinstance(params, list):
            conn.send(stratum.error_line(msg_id, stratum.ILLEGAL_PARAMS))
            return
        handler = _METHODS.get(method)
        if handler is not None:
            handler(self, conn, msg_id, params)
        elif method == "mining.submit":
            log.warning("%s: JSON mining.submit on an agent session ignored", conn.extranonce1)
        else:
            conn.send(stratum.error_line(msg_id, stratum.ILLEGAL_METHOD))

    def _get_capabilities(self, conn: PoolConnection, msg_id: Any, params: list) -> None:
        conn.send(_caps_line(msg_id))
        if (conn.state == AUTHORIZED and params and isinstance(params[0], list)
                and "subres" in params[0]):
            conn.subres = True

    def _configure(self, conn: PoolConnection, msg_id: Any, params: list) -> None:
        if len(params) < 2 or not isinstance(params[0], list) or not isinstance(params[1], dict):
            conn.send(stratum.error_line(msg_id, stratum.ILLEGAL_PARAMS))
            return
        result: Dict[str, Any] = {}
        mask = None
        for ext in params[0]:
            if ext == "version-rolling":
                requested = stratum.parse_hex32(params[1].get("version-rolling.mask", "ffffffff"))
                if requested is None:
                    conn.send(stratum.error_line(msg_id, stratum.ILLEGAL_PARAMS))
                    return
                mask = requested & self.version_mask
                result["version-rolling"] = True
                result["version-rolling.mask"] = "%08x" % mask
            elif isinstance(ext, str):
                result[ext] = False
        reply = stratum.result_line(msg_id, dict(sorted(result.items())))
        if mask:
            conn.version_mask = mask
            reply += stratum.notification_line("mining.set_version_mask", ["%08x" % mask])
        conn.send(reply)

    def _subscribe(self, conn: PoolConnection, msg_id: Any, params: list) -> None:
        if conn.state != CONNECTED:
            conn.send(stratum.error_line(msg_id, UNKNOWN))
            return
        user_agent = params[0] if params and isinstance(params[0], str) else ""
        conn.user_agent = stratum.filter_worker_name(user_agent[:30])
        if not conn.user_agent.startswith(AGENT_USER_AGENT_PREFIX):
            log.warning("%s: not an agent (user agent %r), closing", conn.extranonce1, user_agent)
            conn.close()
            return
        conn.is_agent = True
        conn.state = SUBSCRIBED
        en1 = conn.extranonce1 if self.extranonce1_override is None else self.extranonce1_override
        conn.send(stratum.result_line(msg_id, [[["mining.set_difficulty", en1], ["mining.notify", en1]],
                                               en1, self.extranonce2_size]))

    def _authorize(self, conn: PoolConnection, msg_id: Any, params: list) -> None:
        if conn.state != SUBSCRIBED:
            conn.send(stratum.error_line(msg_id, stratum.NOT_SUBSCRIBED))
            return
        name = params[0] if params and isinstance(params[0], str) else ""
        sub_account = name.split(".", 1)[0]
        if (not sub_account or sub_account in self.refuse_sub_accounts
                or (self.sub_accounts is not None and sub_account not in self.sub_accounts)):
            log.info("%s: authorize refused for %r", conn.extranonce1, name)
            conn.send(stratum.error_line(msg_id, stratum.INVALID_USERNAME, "Invalid username"))
            return
        if self.authorize_delay > 0:
            conn.state = AUTO_REGISTERING
            conn.authorizer = gevent.spawn_later(self.authorize_delay, self._authorized, conn, msg_id,
                                                 sub_account)
        else:
            self._authorized(conn, msg_id, sub_account)

    def _authorized(self, conn: PoolConnection, msg_id: Any, sub_account: str) -> None:
        """Answer a successful authorize: `true`, the session difficulty and the first job."""
        conn.authorizer = None
        if conn.closed:
            return
        conn.sub_account = sub_account
        conn.state = AUTHORIZED
        conn.submit_index = 0
        log.info("%s: authorized as %s (%s)", conn.extranonce1, sub_account, conn.user_agent)
        if self.close_after_authorize:
            conn.send(stratum.result_line(msg_id, True))
            conn.close()
            return
        burst = stratum.result_line(msg_id, True) + (self.raw_after_authorize or b"")
        if self.first_difficulty is None:
            burst += stratum.set_difficulty_line(self.default_difficulty)
        else:
            burst += raw_set_difficulty_line(self.first_difficulty)
        if self.job is not None:
            self._send_job(conn, self.job, True, burst)
        else:
            conn.send(burst)

    # ---- ex-messages --------------------------------------------------------------------------

    def _on_frame(self, conn: PoolConnection, frame: ex.Frame, received: float) -> None:
        if conn.state != AUTHORIZED:
            log.debug("%s: ex-message 0x%02x before authorize dropped", conn.extranonce1, frame.cmd)
            return
        size = len(frame.body) + ex.HEADER_SIZE
        if frame.cmd in ex.SUBMIT_COMMANDS:
            if size != ex.SUBMIT_FRAME_SIZES[frame.cmd]:
                log.debug("%s: submit frame of %d bytes dropped", conn.extranonce1, size)
                return
            self._on_share(conn, ex.decode_submit_share(frame.cmd, frame.body), received)
        elif frame.cmd == ex.CMD_REGISTER_WORKER:
            if size > ex.MAX_REGISTER_SIZE or size < 8:
                log.info("%s: REGISTER_WORKER of %d bytes dropped", conn.extranonce1, size)
                return
            sid, agent, worker = ex.decode_register_worker(frame.body)
            if sid > ex.MAX_SESSION_ID or sid in conn.workers:
                return
            worker = worker or DEFAULT_WORKER
            conn.workers[sid] = (agent, worker)
            conn.diffs[sid] = float(self.default_difficulty)
            for local in conn.local_jobs:
                local.diffs[sid] = conn.diffs[sid]
            conn.registered_total += 1
            self.events.append(Event(time.time(), "register", conn.extranonce1, sid, agent, worker,
                                     conn.sub_account))
        elif frame.cmd == ex.CMD_UNREGISTER_WORKER:
            if size != 6:
                return
            sid = ex.decode_unregister_worker(frame.body)
            entry = conn.workers.pop(sid, None)
            conn.diffs.pop(sid, None)
            if entry is not None:
                conn.unregistered_total += 1
                self.events.append(Event(time.time(), "unregister", conn.extranonce1, sid, *entry,
                                         conn.sub_account))

    def _on_share(self, conn: PoolConnection, share: ex.SubmitShare, received: float) -> None:
        entry = conn.workers.get(share.session_id)
        if entry is None:
            return
        index = conn.submit_index
        conn.submit_index = (index + 1) & 0xFFFF
        conn.shares_received += 1
        self.shares_received += 1
        self._share_keys.add((conn.extranonce1, share.session_id, share.extra_nonce2, share.nonce))
        status = self._verdict(self.validate(conn, share))
        stats = self.stats.get((conn.sub_account, entry[1]))
        if stats is None:
            stats = self.stats[(conn.sub_account, entry[1])] = WorkerStats()
        if status in stratum.ACCEPTED_STATUSES:
            stats.accepted += 1
        else:
            stats.rejected += 1
        stats.statuses[status] += 1
        self.statuses[status] += 1
        if conn.subres:
            response = ex.encode_submit_response(index, status)
            if self.shuffle_responses:
                conn.queue_response(response)
            else:
                conn.send(response)
        if self.on_share is not None:
            self.on_share(conn, share, status, received)

    def validate(self, conn: PoolConnection, share: ex.SubmitShare) -> int:
        """The status sserver gives `share` on `conn` (docs/protocol.md §7.3 order); records it for dedup."""
        local = conn.find_local_job(share.job_id)
        if local is None or share.session_id not in local.diffs:
            return JOB_NOT_FOUND
        job = local.job
        ntime = share.ntime or job.ntime
        mask = share.version_mask or 0
        full_en2 = (share.session_id << 32) | share.extra_nonce2
        key = (full_en2, share.nonce, ntime, mask)
        if key in local.shares:
            return stratum.DUPLICATE_SHARE
        local.shares.add(key)
        if job.height < self.height:
            return STALE_SHARE
        if ntime < job.min_time:
            return TIME_TOO_OLD
        if ntime > job.ntime + TIME_TOO_NEW_SECONDS:
            return TIME_TOO_NEW
        if mask & ~self.version_mask:
            return ILLEGAL_VERMASK
        size = self.extranonce2_size
        en2_hex = "%0*x" % (2 * size, full_en2 & ((1 << (8 * size)) - 1))
        cb = hashing.coinbase(job.coinb1, conn.extranonce1, en2_hex, job.coinb2)
        head = hashing.header(job.version ^ mask, job.prevhash, hashing.merkle_root(cb, job.branches),
                              ntime, job.nbits, share.nonce)
        if not hashing.meets_difficulty(head, local.diffs[share.session_id]):
            return stratum.LOW_DIFFICULTY
        return stratum.ACCEPT


def _caps_line(msg_id: Any) -> bytes:
    """The static capabilities answer; sserver writes it without an "error" member."""
    return (simplejson.dumps({"id": msg_id, "result": {"capabilities": ["verrol", "subres"]}},
                             separators=(",", ":")) + "\n").encode()


_METHODS: Dict[str, Callable[[PoolSimulator, PoolConnection, Any, list], None]] = {
    "agent.get_capabilities": PoolSimulator._get_capabilities,
    "mining.configure": PoolSimulator._configure,
    "mining.subscribe": PoolSimulator._subscribe,
    "mining.authorize": PoolSimulator._authorize,
}


# ---- command line -------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    """Options of the standalone pool simulator."""
    parser = argparse.ArgumentParser(prog="python -m gagent.sim.pool",
                                     description="A btcpool-compatible pool simulator for BTCAgent clients.")
    parser.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=3334, help="listen port (default 3334, 0 = any free)")
    parser.add_argument("--difficulty", type=float, default=16384.0, help="starting difficulty (default 16384)")
    parser.add_argument("--job-interval", type=float, default=30.0,
                        help="re-send the newest job every N seconds (0 = off, default 30)")
    parser.add_argument("--new-job-interval", type=float, default=0.0,
                        help="make a fresh (non-clean) job every N seconds (0 = off)")
    parser.add_argument("--extranonce2-size", type=int, default=8, help="extranonce2 size (default 8)")
    parser.add_argument("--sub-account", action="append", dest="sub_accounts",
                        help="allowed sub-account (repeatable; default: any non-empty)")
    parser.add_argument("--shuffle-responses", action="store_true", help="send SUBMIT_RESPONSEs out of order")
    parser.add_argument("--report-every", type=float, default=5.0, help="seconds between count lines")
    parser.add_argument("--tls-cert", metavar="FILE", help="serve TLS with this PEM certificate (chain)")
    parser.add_argument("--tls-key", metavar="FILE", help="its PEM private key (default: in --tls-cert)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def server_ssl_context(cert_file: str, key_file: Optional[str] = None) -> ssl.SSLContext:
    """A server-side TLS context from PEM files (what --tls-cert/--tls-key build)."""
    ctx = gevent.ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert_file, key_file)
    return ctx


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the simulator until interrupted, logging counts every few seconds."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.tls_key and not args.tls_cert:
        parser.error("--tls-key needs --tls-cert")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ctx = server_ssl_context(args.tls_cert, args.tls_key) if args.tls_cert else None
    pool = PoolSimulator(host=args.host, port=args.port, default_difficulty=args.difficulty,
                         extranonce2_size=args.extranonce2_size, sub_accounts=args.sub_accounts,
                         job_interval=args.job_interval or None, shuffle_responses=args.shuffle_responses,
                         ssl_context=ctx)
    pool.start()
    if args.new_job_interval > 0:
        gevent.spawn(_new_job_loop, pool, args.new_job_interval)
    try:
        while True:
            gevent.sleep(args.report_every)
            accepted, rejected = pool.accepted_shares(), pool.rejected_shares()
            log.info("connections %d (authorized %d), miners %d, shares %d: %d accepted, %d rejected %s",
                     len(pool.connections), len(pool.authorized),
                     sum(len(c.workers) for c in pool.connections), pool.shares_received, accepted,
                     rejected, dict(pool.statuses))
    except KeyboardInterrupt:
        return 0
    finally:
        pool.stop()


def _new_job_loop(pool: PoolSimulator, interval: float) -> None:
    while True:
        gevent.sleep(interval)
        pool.new_job()


if __name__ == "__main__":
    raise SystemExit(main())

"""An in-process plain stratum v1 pool simulator (ckpool, btcpool, ViaBTC, AntPool or NiceHash alike,
as configured), built on gevent.

    python -m gagent.sim.stratum_pool --port 3333 --extranonce2-size 4 --version-mask 5fffe000
"""
import argparse
import collections
import logging
import random
import struct
import time
from typing import (Any, Callable, Collection, Counter, Dict, List, NamedTuple, Optional, Sequence, Set, Tuple,
                    Union)

import gevent
import gevent.event
import gevent.lock
from gevent import socket
from gevent.server import StreamServer

from ..protocol import hashing
from ..protocol import stratum
from .faults import FaultInjection
from .pool import DEFAULT_VERSION_MASK, TIME_TOO_NEW_SECONDS, Job, coinbase_parts, open_listener

log = logging.getLogger("gagent.sim.stratum_pool")

SECOND_AUTHORIZE_MODES = ("error", "silent", "last_wins", "per_name")
JOB_ID_STYLES = ("hex", "dashed", "decimal")
MAX_JOBS = 64  # jobs kept for share lookup, newest last; an older job id is "not found"
MAX_LINE = 64 * 1024
VARDIFF_TOLERANCE = 2.0  # no retarget while the rate is within target / 2 … target * 2
VARDIFF_MAX_STEP = 4.0  # one retarget changes the difficulty by at most this factor
OTHER = 20  # stratum v1 "Other/Unknown"

# reason -> (error code, message) of every share rejection; the reason names key `statuses`
REJECTS: Dict[str, Tuple[int, str]] = {
    "bad_params": (OTHER, "Invalid params"),
    "unauthorized": (stratum.UNAUTHORIZED, "Unauthorized worker"),
    "job_not_found": (stratum.JOB_NOT_FOUND_OR_STALE, "Job not found"),
    "stale": (stratum.JOB_NOT_FOUND_OR_STALE, "Stale share"),
    "bad_extranonce2": (OTHER, "Invalid extranonce2 length"),
    "duplicate": (stratum.DUPLICATE_SHARE, "Duplicate share"),
    "bad_ntime": (OTHER, "Ntime out of range"),
    "bad_version": (OTHER, "Invalid version mask"),
    "low_difficulty": (stratum.LOW_DIFFICULTY, "Low difficulty share"),
}
ACCEPTED = "accepted"
FORCED = "forced"  # a valid share answered with a status from force_status()


class Share(NamedTuple):
    """An accepted share: who it was credited to, at which difficulty, and what the pool hashed."""
    time: float
    extranonce1: str
    worker: str  # the name credited
    submitted_as: str  # the worker name in the submit
    job_id: str
    extranonce2: str
    ntime: int
    nonce: int
    version_bits: int
    difficulty: float  # the difficulty of the job as sent on that connection
    hash_value: int  # sha256d of the header as an integer (hashing.header_hash_int)


class WorkerStats:
    """Share counts of one credited worker name."""

    __slots__ = ("accepted", "rejected", "difficulty", "reasons")

    def __init__(self) -> None:
        self.accepted = 0
        self.rejected = 0
        self.difficulty = 0.0  # sum of the difficulty credited for accepted shares
        self.reasons: Counter[str] = collections.Counter()  # rejection reason -> count

    def __repr__(self) -> str:
        return "WorkerStats(accepted=%d, rejected=%d, difficulty=%g)" % (
            self.accepted, self.rejected, self.difficulty)


class SentJob:
    """A job as sent on one connection: the difficulty and extranonce in force then (a change applies
    to the jobs sent after it, as NiceHash's set_extranonce says), and the shares seen for it."""

    __slots__ = ("difficulty", "extranonce1", "extranonce2_size", "shares")

    def __init__(self, difficulty: float, extranonce1: str, extranonce2_size: int) -> None:
        self.difficulty = difficulty
        self.extranonce1 = extranonce1
        self.extranonce2_size = extranonce2_size
        self.shares: Set[Tuple[str, str, int, int, int]] = set()  # (en1, en2, ntime, nonce, vbits)


# on_share(conn, submit params, the accepted Share or the rejection reason, time the line was read)
ShareObserver = Callable[["StratumConnection", list, Union[Share, str], float], None]
NotifyObserver = Callable[["StratumConnection", str, float], None]  # (conn, job id, time sent)


class StratumConnection:
    """The pool side of one stratum v1 client connection."""

    __slots__ = ("sock", "peer", "extranonce1", "extranonce2_size", "subscribed", "xnsub", "user",
                 "users", "version_mask", "difficulty", "jobs", "window_start", "window_shares",
                 "shares_received", "accepted", "rejected", "replies", "closed", "reader", "reading",
                 "read_at", "_write_lock")

    def __init__(self, sock: Any, peer: Any, extranonce1: str, extranonce2_size: int,
                 difficulty: float) -> None:
        self.sock = sock
        self.peer = peer
        self.extranonce1 = extranonce1
        self.extranonce2_size = extranonce2_size
        self.subscribed = False
        self.xnsub = False  # sent mining.extranonce.subscribe
        self.user: Optional[str] = None  # the name shares are credited to
        self.users: List[str] = []  # every name authorized on the connection, in order
        self.version_mask = 0  # negotiated by mining.configure
        self.difficulty = difficulty  # for jobs sent from now on
        self.jobs: Dict[str, SentJob] = {}
        self.window_start = 0.0  # vardiff: the current measuring window (time.monotonic())
        self.window_shares = 0
        self.shares_received = 0
        self.accepted = 0
        self.rejected = 0
        self.replies: List[Any] = []  # answers to the pool's requests (mining.ping)
        self.closed = False
        self.reader: Optional[gevent.Greenlet] = None
        self.reading = gevent.event.Event()  # cleared while the pool stops reading (stop_reading)
        self.reading.set()
        self.read_at = 0.0  # time.time() of the last read: when the lines being handled arrived
        self._write_lock = gevent.lock.Semaphore()

    def __repr__(self) -> str:
        return "<StratumConnection %s %s>" % (self.extranonce1, self.user)

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
        """Drop the connection (the reader greenlet then ends): FIN, or with `rst` a TCP RST."""
        if self.closed:
            return
        self.closed = True
        self.reading.set()
        try:
            if rst:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            else:
                self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


class StratumPoolSimulator(FaultInjection):
    """A plain stratum v1 pool: subscribe, authorize, configure, notify, submit checked by sha256d.

    - `extranonce1_size` (1–16) bytes of extranonce1, unique per connection; `extranonce2_size`
      (1–16) in the subscribe answer.
    - `accounts`: authorize succeeds for `account` or `account.worker` of these (None: any non-empty
      account); otherwise error 24. Before subscribe: 25.
    - `second_authorize` on a connection already authorized: "error" answers 25 "Not subscribed"
      (btcpool's state machine), "silent" never answers (ckpool), "last_wins" answers true and the
      connection's shares are credited to that last name from then on (ViaBTC), "per_name" answers
      true and credits each share to the name in its submit when that name was authorized on the
      connection (pools that let a proxy carry many workers on one connection). In the other modes a
      share is credited to the connection's user (the first authorized name, or the last one with
      "last_wins"), whatever worker name the submit carries, as ckpool does; with
      `strict_worker_names` a submit naming a worker never authorized on the connection gets 24.
    - `version_mask`: mining.configure answers it ANDed with the requested mask; shares whose
      version bits leave the negotiated mask (0 without configure) get 20 "Invalid version mask".
      The header version is (job version AND NOT mask) OR version bits (BIP310).
    - Jobs get ids of `job_id_style` ("hex": 16 hex digits, "dashed": "j-1f3a-2c-9b04e1",
      "decimal") and `branches` merkle branches. The difficulty in force on a connection is
      recorded for each job sent on it and its shares are judged at that difficulty.
    - Vardiff (`vardiff_target` shares per minute, None: off): after each share, and before each job
      sent, a connection whose accepted shares over the last `vardiff_interval` seconds or more,
      all worker names together, ran over twice or under half the target gets a new difficulty
      (by the rate ratio, at most x4 or /4, within `min_difficulty`/`max_difficulty`), sent at once
      as mining.set_difficulty; it applies to the jobs sent after it.
    - `job_interval`: a new (not clean) job every that many seconds.

    Share verdicts, in order (the error code, then the reason that keys `statuses` and
    `WorkerStats.reasons`): not authorized 24 "unauthorized"; fewer than five string params or
    ntime/nonce/version bits not hex of at most 8 digits 20 "bad_params"; job id never sent on the
    connection (or older than the last MAX_JOBS jobs) 21 "job_not_found"; job older than the last
    clean job 21 "stale"; extranonce2 not exactly extranonce2_size bytes of hex 20
    "bad_extranonce2"; same (extranonce1, extranonce2, ntime, nonce, version bits) again on the job
    22 "duplicate" (an invalid share also takes its slot, as in btcpool); ntime before the job's
    minimum time or over 600 s after its ntime 20 "bad_ntime"; version bits outside the mask 20
    "bad_version"; hash above the job's target 23 "low_difficulty". The fault injection actions of
    faults.py work here too; `force_status(code)` answers valid shares with that error code, and
    `recv_buffer_size` (SO_RCVBUF of accepted sockets) makes a `stop_reading` pool block the
    client's writes sooner.

    `stats` maps the credited worker name (before authorize: the name in the submit) to
    WorkerStats, `shares` lists every accepted Share, `statuses` counts verdicts by reason
    ("accepted" for accepted ones). `bytes_received` and `reads` count what the pool read from
    every connection. Observers, as PoolSimulator's (bench/run.py records with them): `on_share(conn,
    params, verdict, t_read)` after each submit is judged (verdict: the accepted Share, or the
    rejection reason; FORCED for a valid share answered with a forced status), `on_notify(conn, job_id,
    t_sent)` after each mining.notify is written.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, default_difficulty: float = 1.0,
                 extranonce1_size: int = 4, extranonce2_size: int = 8,
                 accounts: Optional[Collection[str]] = None, version_mask: int = DEFAULT_VERSION_MASK,
                 job_id_style: str = "hex", branches: int = 12, second_authorize: str = "error",
                 strict_worker_names: bool = False, vardiff_target: Optional[float] = None,
                 vardiff_interval: float = 30.0, min_difficulty: Optional[float] = None,
                 max_difficulty: Optional[float] = None, job_interval: Optional[float] = None,
                 recv_buffer_size: Optional[int] = None, on_share: Optional[ShareObserver] = None,
                 on_notify: Optional[NotifyObserver] = None) -> None:
        if not default_difficulty > 0:
            raise ValueError("default_difficulty must be positive")
        if not (1 <= extranonce1_size <= 16 and 1 <= extranonce2_size <= 16):
            raise ValueError("extranonce sizes must be 1-16 bytes")
        if job_id_style not in JOB_ID_STYLES:
            raise ValueError("job_id_style must be one of %s" % ", ".join(JOB_ID_STYLES))
        if second_authorize not in SECOND_AUTHORIZE_MODES:
            raise ValueError("second_authorize must be one of %s" % ", ".join(SECOND_AUTHORIZE_MODES))
        if vardiff_target is not None and not (vardiff_target > 0 and vardiff_interval > 0):
            raise ValueError("vardiff_target and vardiff_interval must be positive")
        FaultInjection.__init__(self)
        self.host = host
        self.port = port
        self.default_difficulty = float(default_difficulty)
        self.extranonce1_size = extranonce1_size
        self.extranonce2_size = extranonce2_size
        self.accounts = set(accounts) if accounts is not None else None
        self.version_mask = version_mask
        self.job_id_style = job_id_style
        self.branches = branches
        self.second_authorize = second_authorize
        self.strict_worker_names = strict_worker_names
        self.vardiff_target = vardiff_target
        self.vardiff_interval = vardiff_interval
        self.min_difficulty = min_difficulty
        self.max_difficulty = max_difficulty
        self.job_interval = job_interval
        self.recv_buffer_size = recv_buffer_size
        self.on_share = on_share
        self.on_notify = on_notify
        self.bytes_received = 0
        self.reads = 0
        self.connections: List[StratumConnection] = []
        self.connections_total = 0
        self.connect_times: List[float] = []
        self.disconnects = 0
        self.stats: Dict[str, WorkerStats] = {}
        self.statuses: Counter[str] = collections.Counter()
        self.shares: List[Share] = []
        self.shares_received = 0
        self.jobs: Dict[str, Job] = {}  # job id -> job, oldest first
        self.job_id: Optional[str] = None  # the newest job's id
        self.jobs_created = 0
        self.height = 800000
        self._prevhash = ""
        self._job_id_salt = random.getrandbits(32)
        self._en1_next = random.getrandbits(8 * extranonce1_size)
        self._pings = 0
        self._running = False
        self._bound: Optional[Tuple[str, int]] = None
        self._server: Optional[StreamServer] = None
        self._ticker: Optional[gevent.Greenlet] = None

    # ---- life cycle ---------------------------------------------------------------------------

    def start(self) -> "StratumPoolSimulator":
        """Listen, make the first job, and start the optional new-job timer; after `stop()` this
        starts again on the same port."""
        if self._running:
            raise RuntimeError("pool simulator already started")
        self._listen()
        self._running = True
        self.new_job(clean=True)
        if self.job_interval:
            self._ticker = gevent.spawn(self._job_loop, self.job_interval)
        log.info("stratum pool simulator listening on %s:%d", *self.address[:2])
        return self

    def _listen(self) -> None:
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
        """Drop every connection (FIN)."""
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
    def authorized(self) -> List[StratumConnection]:
        """Open connections with an authorized user."""
        return [c for c in self.connections if c.user is not None and not c.closed]

    # ---- accounting ---------------------------------------------------------------------------

    def accepted_shares(self) -> int:
        """Shares accepted, over every worker."""
        return sum(s.accepted for s in self.stats.values())

    def rejected_shares(self) -> int:
        """Shares rejected, over every worker."""
        return sum(s.rejected for s in self.stats.values())

    # ---- jobs, difficulty, extranonce ---------------------------------------------------------

    def new_job(self, clean: bool = False, branches: Optional[int] = None) -> str:
        """Make a fresh job, send it to every authorized connection and return its id.

        `clean` starts a new block height: older jobs become stale. `branches`: how many merkle
        branches (default: the simulator's `branches`).
        """
        if clean or not self._prevhash:
            self.height += 1
            self._prevhash = random.getrandbits(256).to_bytes(32, "big").hex()
        self.jobs_created += 1
        job_id = self._job_id(self.jobs_created)
        coinb1, coinb2 = coinbase_parts(self.height, self.extranonce1_size + self.extranonce2_size)
        count = self.branches if branches is None else branches
        job = Job(self.jobs_created, self.height, self._prevhash, coinb1, coinb2,
                  [random.getrandbits(256).to_bytes(32, "big").hex() for _ in range(count)],
                  0x20000000, 0x1D00FFFF, int(time.time()))
        self.jobs[job_id] = job
        self.job_id = job_id
        while len(self.jobs) > MAX_JOBS:
            gone = next(iter(self.jobs))
            del self.jobs[gone]
            for conn in self.connections:
                conn.jobs.pop(gone, None)
        for conn in self.authorized:
            self._retarget(conn)
            self._send_job(conn, job_id, clean)
        return job_id

    def _job_id(self, number: int) -> str:
        if self.job_id_style == "hex":
            return "%08x%08x" % (self._job_id_salt, number)
        if self.job_id_style == "dashed":
            return "j-%04x-%x-%06x" % (self._job_id_salt >> 16, number, random.getrandbits(24))
        return str(number)

    def _send_job(self, conn: StratumConnection, job_id: str, clean: bool, prefix: bytes = b"") -> None:
        """Record the connection's difficulty for the job and send its notify."""
        conn.jobs[job_id] = SentJob(conn.difficulty, conn.extranonce1, conn.extranonce2_size)
        if conn.send(prefix + self.jobs[job_id].notify_line(job_id, clean)) and self.on_notify is not None:
            self.on_notify(conn, job_id, time.time())

    def _job_loop(self, interval: float) -> None:
        while True:
            gevent.sleep(interval)
            self.new_job()

    def _targets(self, conn_or_all: Optional[StratumConnection]) -> List[StratumConnection]:
        return [conn_or_all] if conn_or_all is not None else self.authorized

    def set_difficulty(self, conn_or_all: Optional[StratumConnection], difficulty: float) -> None:
        """Send mining.set_difficulty on one connection (None: every authorized one); it applies
        to the jobs sent afterwards."""
        for conn in self._targets(conn_or_all):
            conn.difficulty = float(difficulty)
            conn.send(stratum.set_difficulty_line(difficulty))

    def _retarget(self, conn: StratumConnection) -> None:
        """Vardiff on the connection's aggregate accepted share rate (see the class docstring)."""
        if self.vardiff_target is None:
            return
        now = time.monotonic()
        elapsed = now - conn.window_start
        if elapsed < self.vardiff_interval:
            return
        ratio = conn.window_shares * 60.0 / elapsed / self.vardiff_target
        conn.window_start, conn.window_shares = now, 0
        if 1 / VARDIFF_TOLERANCE <= ratio <= VARDIFF_TOLERANCE:
            return
        new = conn.difficulty * min(max(ratio, 1 / VARDIFF_MAX_STEP), VARDIFF_MAX_STEP)
        if self.min_difficulty is not None:
            new = max(new, self.min_difficulty)
        if self.max_difficulty is not None:
            new = min(new, self.max_difficulty)
        if new != conn.difficulty:
            log.debug("%s: vardiff %g -> %g (rate %.2f x target)", conn.extranonce1, conn.difficulty,
                      new, ratio)
            self.set_difficulty(conn, new)

    def _allocate_extranonce1(self) -> str:
        value = self._en1_next
        self._en1_next = (value + 1) % (1 << (8 * self.extranonce1_size))
        return "%0*x" % (2 * self.extranonce1_size, value)

    def set_extranonce(self, conn_or_all: Optional[StratumConnection], en1: Optional[str] = None,
                       size: Optional[int] = None) -> None:
        """Send `mining.set_extranonce [en1, size]` to one connection, or (None) to every authorized
        connection that sent mining.extranonce.subscribe; shares of the jobs sent from then on are
        checked with that extranonce1 and extranonce2 size. `en1` None: a fresh unique one; `size`
        None: keep."""
        if en1 is not None and not stratum.is_hex(en1):
            raise ValueError("en1 must be hex")
        targets = self._targets(conn_or_all)
        if conn_or_all is None:
            targets = [c for c in targets if c.xnsub]
        for conn in targets:
            conn.extranonce1 = en1 if en1 is not None else self._allocate_extranonce1()
            if size is not None:
                conn.extranonce2_size = size
            conn.send(stratum.notification_line("mining.set_extranonce",
                                                [conn.extranonce1, conn.extranonce2_size]))

    # ---- requests to clients ------------------------------------------------------------------

    def ping(self, conn_or_all: Optional[StratumConnection] = None) -> None:
        """Send a `mining.ping` request; answers land in the connection's `replies`."""
        for conn in self._targets(conn_or_all):
            self._pings += 1
            conn.send(stratum.request_line("ping-%d" % self._pings, "mining.ping", []))

    def reconnect(self, conn_or_all: Optional[StratumConnection] = None, host: Optional[str] = None,
                  port: Optional[int] = None, wait: Optional[int] = None) -> None:
        """Send `client.reconnect` ([] without `host`; else [host, port (default ours), wait?]);
        the connection stays open."""
        params: List[Any] = []
        if host is not None:
            params = [host, port if port is not None else self.address[1]]
            if wait is not None:
                params.append(wait)
        for conn in self._targets(conn_or_all):
            conn.send(stratum.notification_line("client.reconnect", params))

    def send_raw(self, conn: StratumConnection, data: bytes) -> bool:
        """Write arbitrary bytes on one connection."""
        return conn.send(data)

    def send_raw_all(self, data: bytes) -> None:
        """Write arbitrary bytes on every open connection."""
        for conn in list(self.connections):
            conn.send(data)

    # ---- per connection -----------------------------------------------------------------------

    def _handle(self, sock: Any, peer: Any) -> None:
        if not self._running:
            sock.close()
            return
        self.connect_times.append(gevent.get_hub().loop.now())
        conn = StratumConnection(sock, peer, self._allocate_extranonce1(), self.extranonce2_size,
                                 self.default_difficulty)
        conn.reader = gevent.getcurrent()
        if self.reading_stopped:
            conn.reading.clear()
        self.connections.append(conn)
        self.connections_total += 1
        log.debug("%s: connection from %s", conn.extranonce1, peer)
        try:
            self._read_loop(conn)
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

    def _read_loop(self, conn: StratumConnection) -> None:
        buf = b""
        while not conn.closed:
            if not conn.reading.is_set():
                conn.reading.wait()
                continue
            data = conn.sock.recv(65536)
            if not data:
                return
            if not conn.reading.is_set():  # stopped while this recv waited: hold the chunk back
                conn.reading.wait()
            conn.read_at = time.time()
            self.bytes_received += len(data)
            self.reads += 1
            buf += data
            *lines, buf = buf.split(b"\n")
            for line in lines:
                if conn.closed:
                    return
                if line.strip():
                    self._on_line(conn, line)
            if len(buf) > MAX_LINE:
                log.warning("%s: line over %d bytes, closing", conn.extranonce1, MAX_LINE)
                return

    def _on_line(self, conn: StratumConnection, line: bytes) -> None:
        try:
            msg = stratum.loads(line, stratum.MAX_CONTAINERS)
        except ValueError:
            log.warning("%s: unparsable line ignored: %r", conn.extranonce1, line[:200])
            return
        if not isinstance(msg, dict):
            return
        method, params, msg_id = msg.get("method"), msg.get("params"), msg.get("id")
        if not stratum.echoable_id(msg_id):
            msg_id = None
        if method is None:
            conn.replies.append(msg)  # an answer to mining.ping: nothing to do
            return
        if not isinstance(params, list):
            params = []
        handler = _METHODS.get(method) if isinstance(method, str) else None
        if handler is None:
            conn.send(stratum.error_line(msg_id, OTHER, "Unknown method"))
        else:
            handler(self, conn, msg_id, params)

    def _subscribe(self, conn: StratumConnection, msg_id: Any, params: list) -> None:
        conn.subscribed = True
        en1 = conn.extranonce1
        conn.send(stratum.result_line(msg_id, [[["mining.set_difficulty", en1], ["mining.notify", en1]],
                                               en1, conn.extranonce2_size]))

    def _configure(self, conn: StratumConnection, msg_id: Any, params: list) -> None:
        if len(params) < 2 or not isinstance(params[0], list) or not isinstance(params[1], dict):
            conn.send(stratum.error_line(msg_id, OTHER, "Invalid params"))
            return
        result: Dict[str, Any] = {}
        for ext in params[0]:
            if ext == "version-rolling":
                requested = stratum.parse_hex32(params[1].get("version-rolling.mask", "ffffffff"))
                if requested is None:
                    conn.send(stratum.error_line(msg_id, OTHER, "Invalid version-rolling.mask"))
                    return
                conn.version_mask = requested & self.version_mask
                result["version-rolling"] = conn.version_mask != 0
                if conn.version_mask:
                    result["version-rolling.mask"] = "%08x" % conn.version_mask
            elif isinstance(ext, str):
                result[ext] = False
        conn.send(stratum.result_line(msg_id, result))

    def _extranonce_subscribe(self, conn: StratumConnection, msg_id: Any, params: list) -> None:
        conn.xnsub = True
        conn.send(stratum.result_line(msg_id, True))

    def _ping(self, conn: StratumConnection, msg_id: Any, params: list) -> None:
        conn.send(stratum.result_line(msg_id, "pong"))

    def _valid_user(self, name: str) -> bool:
        account = name.split(".", 1)[0]
        return bool(account) and (self.accounts is None or account in self.accounts)

    def _authorize(self, conn: StratumConnection, msg_id: Any, params: list) -> None:
        name = params[0] if params and isinstance(params[0], str) else ""
        if conn.user is not None:
            if self.second_authorize == "error":
                conn.send(stratum.error_line(msg_id, stratum.NOT_SUBSCRIBED))
            elif self.second_authorize in ("last_wins", "per_name"):
                if self._valid_user(name):
                    if self.second_authorize == "last_wins":
                        conn.user = name
                    conn.users.append(name)
                    conn.send(stratum.result_line(msg_id, True))
                else:
                    conn.send(stratum.error_line(msg_id, stratum.UNAUTHORIZED))
            return  # "silent": no answer at all
        if not conn.subscribed:
            conn.send(stratum.error_line(msg_id, stratum.NOT_SUBSCRIBED))
            return
        if not self._valid_user(name):
            log.info("%s: authorize refused for %r", conn.extranonce1, name)
            conn.send(stratum.error_line(msg_id, stratum.UNAUTHORIZED))
            return
        conn.user = name
        conn.users.append(name)
        conn.window_start, conn.window_shares = time.monotonic(), 0
        log.info("%s: authorized as %s", conn.extranonce1, name)
        burst = stratum.result_line(msg_id, True) + stratum.set_difficulty_line(conn.difficulty)
        if self.job_id is not None:
            self._send_job(conn, self.job_id, True, burst)
        else:
            conn.send(burst)

    def _submit(self, conn: StratumConnection, msg_id: Any, params: list) -> None:
        conn.shares_received += 1
        self.shares_received += 1
        submitted = params[0] if params and isinstance(params[0], str) else ""
        credit = conn.user if conn.user is not None else submitted
        if self.second_authorize == "per_name" and submitted in conn.users:
            credit = submitted
        verdict = self._judge(conn, submitted, credit, params)
        if isinstance(verdict, Share):
            forced = self._verdict(stratum.ACCEPT)
            if forced not in stratum.ACCEPTED_STATUSES:
                verdict = FORCED
        stats = self.stats.get(credit)
        if stats is None:
            stats = self.stats[credit] = WorkerStats()
        if isinstance(verdict, Share):
            self.shares.append(verdict)
            stats.accepted += 1
            stats.difficulty += verdict.difficulty
            conn.accepted += 1
            conn.window_shares += 1
            self.statuses[ACCEPTED] += 1
            conn.send(stratum.true_line(msg_id))
        else:
            stats.rejected += 1
            stats.reasons[verdict] += 1
            conn.rejected += 1
            self.statuses[verdict] += 1
            if verdict == FORCED:
                conn.send(stratum.error_line(msg_id, forced))
            else:
                conn.send(stratum.error_line(msg_id, *REJECTS[verdict]))
        if self.on_share is not None:
            self.on_share(conn, params, verdict, conn.read_at)
        self._retarget(conn)

    def _judge(self, conn: StratumConnection, submitted: str, credit: str,
               params: list) -> Union[Share, str]:
        """The accepted Share credited to `credit`, or the rejection reason."""
        if conn.user is None or (self.strict_worker_names and submitted not in conn.users):
            return "unauthorized"
        if len(params) < 5 or not all(isinstance(p, str) for p in params[:5]):
            return "bad_params"
        job_id, en2 = params[1], params[2]
        ntime, nonce = stratum.parse_hex32(params[3]), stratum.parse_hex32(params[4])
        vbits: Optional[int] = 0
        if len(params) > 5 and params[5] is not None:
            vbits = stratum.parse_hex32(params[5])
        if ntime is None or nonce is None or vbits is None:
            return "bad_params"
        job, sent = self.jobs.get(job_id), conn.jobs.get(job_id)
        if job is None or sent is None:
            return "job_not_found"
        if job.height < self.height:
            return "stale"
        if not stratum.is_hex(en2, 2 * sent.extranonce2_size):
            return "bad_extranonce2"
        key = (sent.extranonce1, en2.lower(), ntime, nonce, vbits)
        if key in sent.shares:
            return "duplicate"
        sent.shares.add(key)
        if ntime < job.min_time or ntime > job.ntime + TIME_TOO_NEW_SECONDS:
            return "bad_ntime"
        if vbits & ~conn.version_mask:
            return "bad_version"
        cb = hashing.coinbase(job.coinb1, sent.extranonce1, en2, job.coinb2)
        version = (job.version & ~conn.version_mask) | vbits
        head = hashing.header(version, job.prevhash, hashing.merkle_root(cb, job.branches), ntime,
                              job.nbits, nonce)
        value = hashing.header_hash_int(head)
        if value > hashing.target_for_difficulty(sent.difficulty):
            return "low_difficulty"
        return Share(time.time(), sent.extranonce1, credit, submitted, job_id, en2, ntime, nonce, vbits,
                     sent.difficulty, value)


_METHODS: Dict[str, Callable[[StratumPoolSimulator, StratumConnection, Any, list], None]] = {
    "mining.subscribe": StratumPoolSimulator._subscribe,
    "mining.authorize": StratumPoolSimulator._authorize,
    "mining.configure": StratumPoolSimulator._configure,
    "mining.extranonce.subscribe": StratumPoolSimulator._extranonce_subscribe,
    "mining.ping": StratumPoolSimulator._ping,
    "mining.submit": StratumPoolSimulator._submit,
}


# ---- command line -------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    """Options of the standalone stratum pool simulator."""
    parser = argparse.ArgumentParser(prog="python -m gagent.sim.stratum_pool",
                                     description="A plain stratum v1 pool simulator.")
    parser.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=3333, help="listen port (default 3333, 0 = any free)")
    parser.add_argument("--difficulty", type=float, default=1.0, help="starting difficulty (default 1)")
    parser.add_argument("--extranonce1-size", type=int, default=4, help="extranonce1 bytes (default 4)")
    parser.add_argument("--extranonce2-size", type=int, default=8, help="extranonce2 bytes (default 8)")
    parser.add_argument("--account", action="append", dest="accounts",
                        help="accepted account (repeatable; default: any non-empty)")
    parser.add_argument("--version-mask", type=lambda text: int(text, 16), default=DEFAULT_VERSION_MASK,
                        help="version rolling mask offered, hex (default 1fffe000)")
    parser.add_argument("--job-id-style", choices=JOB_ID_STYLES, default="hex", help="job id form (default hex)")
    parser.add_argument("--branches", type=int, default=12, help="merkle branches per job (default 12)")
    parser.add_argument("--second-authorize", choices=SECOND_AUTHORIZE_MODES, default="error",
                        help="answer to a second mining.authorize on a connection (default error)")
    parser.add_argument("--strict-worker-names", action="store_true",
                        help="reject shares naming a worker not authorized on the connection")
    parser.add_argument("--vardiff-target", type=float, help="vardiff: shares per minute per connection (default off)")
    parser.add_argument("--vardiff-interval", type=float, default=30.0, help="vardiff: seconds between retargets")
    parser.add_argument("--min-difficulty", type=float, help="vardiff lower bound")
    parser.add_argument("--max-difficulty", type=float, help="vardiff upper bound")
    parser.add_argument("--job-interval", type=float, default=30.0, help="a new job every N seconds (0 = off)")
    parser.add_argument("--report-every", type=float, default=5.0, help="seconds between count lines")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def pool_from_args(args: argparse.Namespace) -> StratumPoolSimulator:
    """The (not started) simulator that parsed command line options describe."""
    return StratumPoolSimulator(
        host=args.host, port=args.port, default_difficulty=args.difficulty,
        extranonce1_size=args.extranonce1_size, extranonce2_size=args.extranonce2_size,
        accounts=args.accounts, version_mask=args.version_mask, job_id_style=args.job_id_style,
        branches=args.branches, second_authorize=args.second_authorize,
        strict_worker_names=args.strict_worker_names, vardiff_target=args.vardiff_target,
        vardiff_interval=args.vardiff_interval, min_difficulty=args.min_difficulty,
        max_difficulty=args.max_difficulty, job_interval=args.job_interval or None)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the simulator until interrupted, logging counts every few seconds."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        pool = pool_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    pool.start()
    try:
        while True:
            gevent.sleep(args.report_every)
            log.info("connections %d (authorized %d), shares %d: %d accepted, %d rejected %s",
                     len(pool.connections), len(pool.authorized), pool.shares_received,
                     pool.accepted_shares(), pool.rejected_shares(), dict(pool.statuses))
    except KeyboardInterrupt:
        return 0
    finally:
        pool.stop()


if __name__ == "__main__":
    raise SystemExit(main())

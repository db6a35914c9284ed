"""Load generator: N simulated stratum v1 miners from one process, over one epoll loop.

Every miner is a non-blocking socket with a small state record; there are no threads and no greenlets,
so the generator stays far cheaper than the agent it measures. Each miner subscribes, authorizes, keeps
the latest job it was sent and, once the load phase runs, submits one share every `share_interval`
seconds; the submits of all miners are spread evenly over time (N / interval shares per second).

Two ways to run it:

* standalone: ``python bench/loadgen.py --port 3333 --miners 1000 --seconds 30 --out samples.json``
  connects, runs the load phase and writes the summary and samples (``--port 3333,3334,...``: miner i
  connects to the (i mod n)-th port, so the miners spread evenly over an agent's listeners);
* ``--control``: the driver (bench/run.py) sends JSON commands on stdin and reads status lines (one JSON
  object per line) on stdout. Commands: ``{"cmd": "load", "seconds": 60}`` (submit for that long),
  ``{"cmd": "stop_load"}``, ``{"cmd": "mark", "stale": [[pool_extranonce1, job_id], ...]}`` (see
  `LoadGen.mark`), ``{"cmd": "storm_begin"}`` (start counting the miners the agent closes),
  ``{"cmd": "dump", "path": ...}``, ``{"cmd": "quit"}``.

A miner whose connection the agent closes reconnects at once if it was mining (after 0.5–1.5 s if the agent
refused it before it was authorized, or closed it within `retry_delay` of authorizing it), as real miners do; the status line counts every close
(``disconnects``) and the distinct miners closed since ``storm_begin`` (``miners_closed``).

Recorded samples:

* submits: ``[extranonce1, extranonce2, nonce, t_send, t_answer, answer, notify]`` (hex strings as sent; t =
  time.time()), so the pool side can match the frame it receives; ``answer`` is ``true``, the error code
  of the agent's answer (``-1`` when it carries none), or ``null`` with ``t_answer`` ``null`` when no answer
  arrived before the miner's connection closed (or the run ended); ``notify`` is the index in notifies of
  the job the share was submitted on;
* notifies: per distinct notify line, ``[pool_extranonce1, job_key, clean, [t_receipt, ...], params]``. The
  pool's extranonce1 is the last `pool_extranonce1_size` bytes of coinb1 (the agent appends it), which
  identifies the upstream connection the job came from. The job key is the pool's short job id for a
  BTCAgent pool (gagent's job id is tag * 256 + short id) and coinb2 for a plain stratum pool (its job ids
  do not reach the miners; the simulator's coinb2 is random per job and the agent passes it on as is).

A BTCAgent upstream's shares are never hashed: a nonce is random. Through a stratum upstream the agent
checks every share against the miner's own difficulty (its `mining.set_difficulty`), so there a miner
draws random nonces until the header hash meets that difficulty, as a real miner would; at a difficulty
under 2^-32 (a target above 2^256) the first nonce does, and nothing is hashed. The extranonce2 has the
size the agent's subscribe answer gives (4 bytes from a BTCAgent upstream; from a stratum one what the
pool's extranonce2 leaves room for).
"""
import argparse
import errno
import hashlib
import json
import os
import random
import re
import resource
import select
import socket
import struct
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

READ_SIZE = 65536
CONNECT_BATCH = 100          # default: miners between connect() and the authorize answer at once
STATUS_EVERY = 0.1           # seconds between status lines in control mode
TICK = 0.001                 # epoll timeout while submitting

# miner states
CONNECTING, SUBSCRIBING, READY, CLOSED = range(4)

# a submit record: [extranonce1, extranonce2, nonce, t_send, t_answer, answer]
T_ANSWER, ANSWER = 4, 5
DIFF1_TARGET = 0xFFFF << 208
NO_TARGET = 1 << 256         # every hash meets it
_ID_RE = re.compile(rb'"id"\s*:\s*(-?\d+)')
_TRUE_RE = re.compile(rb'"result"\s*:\s*true\b')


def raise_file_limit() -> int:
    """Raise the soft open-file limit to the hard one; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


class Miner:
    """One simulated miner connection."""

    __slots__ = ("index", "sock", "fd", "state", "buf", "en1", "en2_size", "authorized", "job", "ntime",
                 "fresh", "next_id", "en2", "out", "note", "pending", "closed_in_storm", "authorized_at",
                 "target")

    def __init__(self, index: int) -> None:
        self.index = index
        self.sock: Optional[socket.socket] = None
        self.fd = -1
        self.state = CLOSED
        self.buf = b""
        self.en1 = ""
        self.en2_size = 4        # bytes, from the subscribe answer
        self.authorized = False
        self.job: Optional[str] = None
        self.ntime = "00000000"
        self.fresh = False       # holds a notify the last mark does not call stale
        self.next_id = 3
        self.en2 = 0
        self.out = b""           # bytes the socket did not take yet
        self.note: Optional["NotifyInfo"] = None             # the notify its job came from
        self.pending: Optional[Dict[int, List[Any]]] = None  # submit id -> submit record, unanswered
        self.closed_in_storm = False   # the agent closed it since the last storm_begin
        self.authorized_at = 0.0       # time.time() of its authorize answer
        self.target = NO_TARGET        # stratum upstream: what its difficulty asks of a header hash


class NotifyInfo:
    """What a distinct notify line says, parsed once for every miner that receives it."""

    __slots__ = ("job_id", "pool_en1", "ntime", "clean", "times", "stale", "submit_id", "index", "params",
                 "_header_parts")

    def __init__(self, job_id: str, pool_en1: str, clean: bool, params: List[Any], index: int) -> None:
        self.job_id = job_id     # the job key (see the module docstring)
        self.pool_en1 = pool_en1
        self.submit_id: str = params[0]
        self.ntime: str = params[7]
        self.clean = clean
        self.params = params
        self.index = index       # in LoadGen.notifies, and so in the samples
        self.times: List[float] = []
        self.stale = False       # sent before the last mark: does not make a miner fresh
        self._header_parts: Optional[Tuple[bytes, bytes, List[bytes], bytes, bytes]] = None

    def header76(self, extranonce: bytes) -> bytes:
        """The first 76 bytes of the block header for a share with this extranonce1 ‖ extranonce2."""
        if self._header_parts is None:
            _, prevhash, coinb1, coinb2, branches, version, nbits, ntime = self.params[:8]
            raw = bytes.fromhex(prevhash)
            self._header_parts = (bytes.fromhex(coinb1), bytes.fromhex(coinb2),
                                  [bytes.fromhex(b) for b in branches],
                                  struct.pack("<I", int(version, 16)) + b"".join(
                                      raw[i:i + 4][::-1] for i in range(0, 32, 4)),
                                  struct.pack("<II", int(ntime, 16), int(nbits, 16)))
        coinb1, coinb2, branches, head, tail = self._header_parts
        root = sha256d(coinb1 + extranonce + coinb2)
        for branch in branches:
            root = sha256d(root + branch)
        return head + root + tail


class LoadGen:
    """N miners over one epoll; call `run_until()` to drive it."""

    def __init__(self, host: str, ports: List[int], miners: int, share_interval: float = 10.0,
                 user: str = "bench", seed: int = 1, retry_delay: float = 1.0,
                 connect_batch: int = CONNECT_BATCH, pool_kind: str = "btcagent",
                 pool_extranonce1_size: int = 4) -> None:
        self.host = host
        self.pool_kind = pool_kind
        self.pool_en1_hex = 2 * pool_extranonce1_size
        self.ports = ports
        self.share_interval = share_interval
        self.retry_delay = retry_delay
        self.connect_batch = connect_batch
        self.retry: List[Tuple[float, Miner]] = []
        self.user = user
        self.rand = random.Random(seed)
        self.miners = [Miner(i) for i in range(miners)]
        self.by_fd: Dict[int, Miner] = {}
        self.ep = select.epoll()
        self.to_connect: List[Miner] = list(reversed(self.miners))
        self.connecting = 0
        self.notifies: Dict[bytes, NotifyInfo] = {}
        self.submits: List[List[Any]] = []
        self.counts = {"connects": 0, "connect_errors": 0, "disconnects": 0, "submitted": 0,
                       "answers_true": 0, "answers_error": 0, "errors_other": 0, "notifies": 0,
                       "set_difficulty": 0, "reconnect_requests": 0,
                       "authorize_errors": 0, "miners_closed": 0, "hashes": 0}
        self.error_codes: Dict[str, int] = {}     # submit answers with an error, by code
        self.stale_keys: Optional[set] = None     # (pool_en1, job_id) the last mark called stale
        self.error_samples: List[str] = []
        self.loading_until = 0.0
        self.load_started = 0.0
        self.submit_cursor = 0
        self.submit_due = 0.0
        self.mark_time: Optional[float] = None
        self.all_fresh_time: Optional[float] = None

    # ---- counts --------------------------------------------------------------------------------

    def status(self) -> Dict[str, Any]:
        """Current counters as a dict (what a status line carries)."""
        connected = authorized = with_job = fresh = 0
        for m in self.miners:
            if m.state == READY:
                connected += 1
                if m.authorized:
                    authorized += 1
                    if m.job is not None:
                        with_job += 1
                        fresh += m.fresh
        out = {"t": time.time(), "miners": len(self.miners), "connected": connected,
               "authorized": authorized, "with_job": with_job, "fresh": fresh}
        out.update(self.counts)
        out["answers_error_codes"] = dict(self.error_codes)
        out["mark_time"] = self.mark_time
        out["all_fresh_time"] = self.all_fresh_time
        return out

    # ---- connections ---------------------------------------------------------------------------

    def _start_connects(self) -> None:
        if self.retry and self.retry[0][0] <= time.time():
            now = time.time()
            due = [m for t, m in self.retry if t <= now]
            self.retry = [(t, m) for t, m in self.retry if t > now]
            self.to_connect[:0] = due
        while self.to_connect and self.connecting < self.connect_batch:
            try:
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            except OSError as exc:   # EMFILE: out of file descriptors; retry on a later turn
                self._error("socket(): %s" % exc)
                return
            m = self.to_connect.pop()
            s.setblocking(False)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            rc = s.connect_ex((self.host, self.ports[m.index % len(self.ports)]))
            if rc not in (0, errno.EINPROGRESS):
                s.close()
                self.counts["connect_errors"] += 1
                self.to_connect.insert(0, m)
                return
            m.sock, m.fd, m.state, m.buf, m.out = s, s.fileno(), CONNECTING, b"", b""
            m.en1, m.authorized, m.job = "", False, None
            self.by_fd[m.fd] = m
            self.connecting += 1
            self.ep.register(m.fd, select.EPOLLOUT)

    def _on_connected(self, m: Miner) -> None:
        m.state = SUBSCRIBING
        err = m.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self.counts["connect_errors"] += 1
            self._drop(m, counted=False)
            return
        self.counts["connects"] += 1
        self.ep.modify(m.fd, select.EPOLLIN)
        self._send(m, (b'{"id":1,"method":"mining.subscribe","params":["bench/1.0"]}\n'
                       b'{"id":2,"method":"mining.authorize","params":["%s.w%d","x"]}\n'
                       % (self.user.encode(), m.index)))

    def _drop(self, m: Miner, counted: bool = True) -> None:
        """Close a miner's socket and queue it for a reconnect: at once if it was mining, after
        `retry_delay` (with jitter) if the agent refused it before it was authorized or closed it
        within `retry_delay` of authorizing it (an agent that accepts miners while it has no pool must
        not make the generator spin)."""
        if m.state == CLOSED:
            return
        if m.authorized and time.time() - m.authorized_at >= self.retry_delay:
            self.to_connect.append(m)
        else:
            self.retry.append((time.time() + self.retry_delay * (0.5 + self.rand.random()), m))
        if not m.authorized:
            self.connecting -= 1
        if counted:
            self.counts["disconnects"] += 1
            if not m.closed_in_storm:
                m.closed_in_storm = True
                self.counts["miners_closed"] += 1
        try:
            self.ep.unregister(m.fd)
        except (OSError, ValueError):
            pass
        self.by_fd.pop(m.fd, None)
        m.sock.close()
        m.sock, m.fd, m.state, m.authorized, m.job, m.fresh = None, -1, CLOSED, False, None, False
        m.note, m.pending = None, None   # answers still owed stay unanswered in the records

    # ---- I/O -----------------------------------------------------------------------------------

    def _send(self, m: Miner, data: bytes) -> None:
        if m.out:
            m.out += data
            return
        try:
            n = m.sock.send(data)
        except BlockingIOError:
            n = 0
        except OSError:
            self._drop(m)
            return
        if n < len(data):
            m.out = data[n:]
            self.ep.modify(m.fd, select.EPOLLIN | select.EPOLLOUT)

    def _flush(self, m: Miner) -> None:
        try:
            n = m.sock.send(m.out)
        except BlockingIOError:
            return
        except OSError:
            self._drop(m)
            return
        m.out = m.out[n:]
        if not m.out:
            self.ep.modify(m.fd, select.EPOLLIN)

    def _on_readable(self, m: Miner) -> None:
        try:
            data = m.sock.recv(READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            self._drop(m)
            return
        if not data:
            self._drop(m)
            return
        now = time.time()
        if m.buf:
            data = m.buf + data
        start = 0
        while True:
            nl = data.find(b"\n", start)
            if nl < 0:
                break
            self._on_line(m, data[start:nl], now)
            if m.state == CLOSED:
                return
            start = nl + 1
        m.buf = data[start:]

    # ---- protocol ------------------------------------------------------------------------------

    def _on_line(self, m: Miner, line: bytes, now: float) -> None:
        try:
            self._handle_line(m, line, now)
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            self._error("%s on %r" % (exc.__class__.__name__, line[:200]))

    def _handle_line(self, m: Miner, line: bytes, now: float) -> None:
        if b'"method"' not in line:
            self._on_reply(m, line, now)
        elif b"mining.notify" in line:
            self._on_notify(m, line, now)
            return
        elif b"mining.set_difficulty" in line:
            self.counts["set_difficulty"] += 1
            if self.pool_kind == "stratum":
                m.target = min(NO_TARGET, int(DIFF1_TARGET / float(json.loads(line)["params"][0])))
        elif b"client.reconnect" in line:
            self.counts["reconnect_requests"] += 1
            self._drop(m)
        else:
            self._error("unexpected notification: %r" % line[:200])

    def _on_reply(self, m: Miner, line: bytes, now: float) -> None:
        match = _ID_RE.search(line)
        msg_id = int(match.group(1)) if match else None
        if _TRUE_RE.search(line):
            if msg_id == 2 and not m.authorized:
                m.authorized = True
                m.authorized_at = time.time()
                m.state = READY
                self.connecting -= 1
            else:
                self.counts["answers_true"] += 1
                self._answered(m, msg_id, now, True)
            return
        self._on_other_reply(m, line, now)

    def _answered(self, m: Miner, msg_id: Optional[int], now: float, answer: Any) -> None:
        """Record the agent's answer to submit `msg_id` in that submit's record."""
        if m.pending is None or msg_id is None:
            return
        record = m.pending.pop(msg_id, None)
        if record is not None:
            record[T_ANSWER], record[ANSWER] = now, answer

    def _on_other_reply(self, m: Miner, line: bytes, now: float) -> None:
        try:
            msg = json.loads(line)
        except ValueError:
            self._error("bad line: %r" % line[:200])
            return
        msg_id, result, error = msg.get("id"), msg.get("result"), msg.get("error")
        if msg_id == 1 and result:
            m.en1, m.en2_size = result[1], result[2]
        elif error is not None:
            if msg_id in (1, 2):
                self.counts["authorize_errors"] += 1
                if len(self.error_samples) < 20:
                    self.error_samples.append("subscribe/authorize: %r" % (error,))
            else:
                self.counts["answers_error"] += 1
                code = error_code(error)
                self.error_codes[str(code)] = self.error_codes.get(str(code), 0) + 1
                if len(self.error_samples) < 20:
                    self.error_samples.append("submit: %r" % (error,))
                self._answered(m, msg_id, now, code)
        elif isinstance(msg_id, int) and msg_id > 2:
            self.counts["answers_true" if result else "answers_error"] += 1
            if not result:
                self.error_codes["-1"] = self.error_codes.get("-1", 0) + 1
            self._answered(m, msg_id, now, True if result else -1)
        else:
            self._error("unexpected: %r" % line[:200])

    def _error(self, what: str) -> None:
        self.counts["errors_other"] += 1
        if len(self.error_samples) < 20:
            self.error_samples.append(what)

    def _on_notify(self, m: Miner, line: bytes, now: float) -> None:
        info = self.notifies.get(line)
        if info is None:
            params = json.loads(line)["params"]
            job_id = params[0]
            if self.pool_kind == "stratum":
                key = params[3]
            else:  # gagent tags the pool's short id per connection: tag * 256 + short id
                key = str(int(job_id) & 0xFF) if job_id.isdigit() else job_id
            info = NotifyInfo(key, params[2][-self.pool_en1_hex:], bool(params[8]), params, len(self.notifies))
            if self.stale_keys is not None:
                info.stale = (info.pool_en1, str(info.job_id)) in self.stale_keys
            self.notifies[line] = info
        info.times.append(now)
        self.counts["notifies"] += 1
        m.job, m.ntime, m.note, m.fresh = info.submit_id, info.ntime, info, not info.stale

    def _submit(self, m: Miner) -> None:
        m.en2 = (m.en2 + 1) & ((1 << 8 * m.en2_size) - 1)
        en2 = "%0*x" % (2 * m.en2_size, m.en2)
        nonce = "%08x" % self._nonce(m, en2)
        msg_id = m.next_id
        m.next_id += 1
        line = ('{"id":%d,"method":"mining.submit","params":["%s.w%d","%s","%s","%s","%s"]}\n'
                % (msg_id, self.user, m.index, m.job, en2, m.ntime, nonce))
        record = [m.en1, en2, nonce, time.time(), None, None, m.note.index]
        self.submits.append(record)
        if m.pending is None:
            m.pending = {}
        m.pending[msg_id] = record
        self.counts["submitted"] += 1
        self._send(m, line.encode())

    def _nonce(self, m: Miner, en2: str) -> int:
        """A random nonce whose header hash meets the miner's target (any nonce when it is 2^256)."""
        nonce = self.rand.getrandbits(32)
        if m.target >= NO_TARGET:
            return nonce
        head = m.note.header76(bytes.fromhex(m.en1 + en2))
        while int.from_bytes(sha256d(head + struct.pack("<I", nonce)), "little") > m.target:
            self.counts["hashes"] += 1
            nonce = self.rand.getrandbits(32)
        self.counts["hashes"] += 1
        return nonce

    def _submit_due(self, now: float) -> None:
        """Submit for as many miners as the even schedule says are due by `now`."""
        if now >= self.loading_until:
            return
        n = len(self.miners)
        rate = n / self.share_interval
        due = int((now - self.load_started) * rate) - self.submit_due
        while due > 0:
            m = self.miners[self.submit_cursor]
            self.submit_cursor = (self.submit_cursor + 1) % n
            self.submit_due += 1
            due -= 1
            if m.state == READY and m.authorized and m.job is not None and m.en1:
                self._submit(m)

    # ---- control -------------------------------------------------------------------------------

    def start_load(self, seconds: float) -> None:
        """Start submitting now, for `seconds`."""
        self.load_started = time.time()
        self.loading_until = self.load_started + seconds
        self.submit_due = 0

    def stop_load(self) -> None:
        """Stop submitting now."""
        self.loading_until = min(self.loading_until, time.time())

    def mark(self, stale: Optional[List[List[Any]]] = None) -> None:
        """Start waiting for every miner to hold a fresh job; `all_fresh_time` is set when they all do.

        Without `stale`, every notify seen so far is stale and the next one a miner receives is fresh.
        With `stale` (``[pool_extranonce1, job_id]`` pairs: every notify the pool had sent at that
        moment), exactly those notifies are stale: a miner that received a newer one just before this
        command arrived counts as fresh already.
        """
        self.mark_time = time.time()
        self.all_fresh_time = None
        if stale is None:
            self.stale_keys = None
            for info in self.notifies.values():
                info.stale = True
        else:
            self.stale_keys = {(str(en1), str(job_id)) for en1, job_id in stale}
            for info in self.notifies.values():
                info.stale = (info.pool_en1, str(info.job_id)) in self.stale_keys
        for m in self.miners:
            m.fresh = m.note is not None and not m.note.stale

    def storm_begin(self) -> None:
        """Start counting anew the distinct miners whose connection the agent closes."""
        self.counts["miners_closed"] = 0
        for m in self.miners:
            m.closed_in_storm = False

    def _check_fresh(self) -> None:
        if self.mark_time is None or self.all_fresh_time is not None:
            return
        for m in self.miners:
            if not (m.fresh and m.authorized and m.state == READY):
                return
        self.all_fresh_time = time.time()

    def samples(self) -> Dict[str, Any]:
        """Everything recorded, JSON-ready."""
        return {"status": self.status(), "errors": self.error_samples,
                "load_started": self.load_started, "load_until": self.loading_until,
                "mark_time": self.mark_time,
                "submits": self.submits,
                "notifies": [[i.pool_en1, i.job_id, i.clean, i.times, i.params] for i in self.notifies.values()]}

    def poll(self, timeout: float, extra: Optional[Dict[int, Callable[[], bool]]] = None) -> bool:
        """One loop turn: start connects, wait for events, handle them, submit what is due.

        `extra` maps other registered fds to handlers; True from one ends the turn and is returned.
        """
        self._start_connects()
        for fd, ev in self.ep.poll(timeout):
            if extra and fd in extra:
                if extra[fd]():
                    return True
                continue
            m = self.by_fd.get(fd)
            if m is None:
                continue
            if m.state == CONNECTING:
                self._on_connected(m)
                continue
            if ev & select.EPOLLOUT and m.out:
                self._flush(m)
            if ev & (select.EPOLLIN | select.EPOLLERR | select.EPOLLHUP) and m.state != CLOSED:
                self._on_readable(m)
        self._submit_due(time.time())
        self._check_fresh()
        return False

    def run_until(self, deadline: float, stop: Any = None) -> None:
        """Run the loop until `deadline` (time.time()) or until `stop()` returns true."""
        while time.time() < deadline and not (stop and stop()):
            self.poll(TICK if self.loading_until > time.time() else 0.05)

    def close(self) -> None:
        """Close every socket."""
        for m in self.miners:
            if m.sock is not None:
                m.sock.close()
        self.ep.close()


def run_control(gen: LoadGen, max_seconds: float) -> None:
    """Control mode: JSON commands on stdin, JSON status lines on stdout."""
    stdin_fd = sys.stdin.fileno()
    os.set_blocking(stdin_fd, False)
    gen.ep.register(stdin_fd, select.EPOLLIN)
    gen.by_fd.pop(stdin_fd, None)
    pending = b""

    def on_stdin() -> bool:
        nonlocal pending
        chunk = os.read(stdin_fd, 65536)
        if not chunk:
            return True
        pending += chunk
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            if _command(gen, json.loads(line)):
                return True
        return False

    deadline = time.time() + max_seconds
    next_status = 0.0
    while time.time() < deadline:
        if gen.poll(TICK if gen.loading_until > time.time() else 0.02, {stdin_fd: on_stdin}):
            return
        now = time.time()
        if now >= next_status:
            _emit(gen.status())
            next_status = now + STATUS_EVERY


def _command(gen: LoadGen, cmd: Dict[str, Any]) -> bool:
    """Apply one control command; returns True to quit."""
    name = cmd.get("cmd")
    if name == "load":
        gen.start_load(float(cmd["seconds"]))
    elif name == "stop_load":
        gen.stop_load()
    elif name == "mark":
        gen.mark(cmd.get("stale"))
    elif name == "storm_begin":
        gen.storm_begin()
    elif name == "dump":
        with open(cmd["path"], "w") as f:
            json.dump(gen.samples(), f)
        _emit({"event": "dumped", "path": cmd["path"]})
    elif name == "quit":
        return True
    return False


def sha256d(data: bytes) -> bytes:
    """Double SHA-256."""
    return hashlib.sha256(hashlib.sha256(data).digest()).digest()


def error_code(error: Any) -> int:
    """The numeric code of a stratum error (``[code, message, data]`` or ``{"code": ...}``); -1 if none."""
    if isinstance(error, (list, tuple)) and error and isinstance(error[0], int):
        return error[0]
    if isinstance(error, dict) and isinstance(error.get("code"), int):
        return error["code"]
    if isinstance(error, int) and not isinstance(error, bool):
        return error
    return -1


def _emit(obj: Dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def _every(period: float, check: Any) -> Any:
    """Wrap `check` so that it runs at most once per `period` seconds (False in between)."""
    last = [0.0]

    def wrapped() -> bool:
        now = time.time()
        if now - last[0] < period:
            return False
        last[0] = now
        return bool(check())
    return wrapped


def parse_ports(text: str) -> List[int]:
    """"3333" or "3333,3334": the ports, in order."""
    try:
        ports = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError("not a port or comma-separated ports: %r" % text) from None
    if not all(0 < port < 65536 for port in ports):
        raise argparse.ArgumentTypeError("ports are 1..65535: %r" % text)
    return ports


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=parse_ports, required=True,
                   help="the agent's port, or several separated by commas (miners spread over them)")
    p.add_argument("--miners", type=int, default=1000)
    p.add_argument("--share-interval", type=float, default=10.0)
    p.add_argument("--seconds", type=float, default=30.0, help="load phase (standalone mode)")
    p.add_argument("--connect-timeout", type=float, default=120.0)
    p.add_argument("--user", default="bench")
    p.add_argument("--connect-batch", type=int, default=CONNECT_BATCH,
                   help="miners in flight at once between connect() and the authorize answer; keep "
                        "it under the agent's listen backlog or the kernel drops handshakes")
    p.add_argument("--retry-delay", type=float, default=1.0,
                   help="mean delay before reconnecting a miner the agent refused or closed within "
                        "this long of authorizing it (a mining miner "
                        "that loses its connection reconnects at once)")
    p.add_argument("--pool-kind", choices=("btcagent", "stratum"), default="btcagent",
                   help="the agent's upstream protocol: how a notify names its job (see the docstring)")
    p.add_argument("--pool-extranonce1-size", type=int, default=4,
                   help="bytes of the pool's extranonce1 at the end of coinb1 (they name the upstream "
                        "connection)")
    p.add_argument("--out", help="write summary and samples here (standalone mode)")
    p.add_argument("--control", action="store_true", help="driven by JSON commands on stdin")
    p.add_argument("--max-seconds", type=float, default=1800.0, help="hard limit on the run")
    args = p.parse_args(argv)
    raise_file_limit()
    gen = LoadGen(args.host, args.port, args.miners, args.share_interval, args.user,
                  retry_delay=args.retry_delay, connect_batch=args.connect_batch, pool_kind=args.pool_kind,
                  pool_extranonce1_size=args.pool_extranonce1_size)
    try:
        if args.control:
            run_control(gen, args.max_seconds)
            return 0
        t0 = time.time()
        gen.run_until(t0 + args.connect_timeout, stop=_every(0.05, lambda: gen.status()["with_job"] == args.miners))
        connect_seconds = time.time() - t0
        gen.start_load(args.seconds)
        gen.run_until(gen.loading_until + 1.0)
        result = gen.samples()
        result["connect_seconds"] = connect_seconds
        if args.out:
            with open(args.out, "w") as f:
                json.dump(result, f)
        _emit(dict(result["status"], connect_seconds=connect_seconds, errors=gen.error_samples))
    finally:
        gen.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

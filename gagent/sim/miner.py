"""A simulated stratum v1 ASIC miner: one greenlet per miner, real sha256d share search.

The miner connects, subscribes, optionally negotiates version rolling, authorizes, and then either
searches for shares at the current difficulty (``hashing=True``) or sends syntactically valid shares
with random nonces every ``submit_interval`` seconds (load tests). Every message received is kept in
``.received``. Nothing here monkey-patches: gevent sockets are used directly.
"""
import hashlib
import logging
import random
import select
import struct
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import gevent
import gevent.lock
from gevent import socket

from ..protocol import hashing as _hashing
from ..protocol.stratum import loads, request_line

log = logging.getLogger("gagent.sim.miner")

REQUESTED_VERSION_MASK = 0x1FFFE000
HASHES_PER_YIELD = 2000
MAX_LINE = 64 * 1024  # a longer line without newline is a protocol error
_sha256 = hashlib.sha256
_pack_nonce = struct.Struct("<I").pack


def _deposit(value: int, mask: int) -> int:
    """Spread the low bits of `value` over the set bits of `mask` (lowest mask bit first)."""
    out = 0
    bit = 1
    while mask and value:
        low = mask & -mask
        if value & bit:
            out |= low
        mask ^= low
        bit <<= 1
        if bit > value:
            break
    return out


class SimMiner:
    """A simulated miner; call :meth:`start`, then inspect ``received``/``accepted``/``rejected``."""

    __slots__ = (
        "host", "port", "username", "password", "user_agent", "version_rolling", "hashing",
        "submit_interval", "max_shares", "auto_handshake", "connect_timeout",
        "received", "responses", "bad_lines", "extranonce1", "extranonce2_size", "difficulty",
        "version_mask", "job", "subscribed", "authorized", "shares_sent", "accepted", "rejected",
        "hashes", "closed", "error", "connected",
        "_sock", "_greenlet", "_buf", "_next_id", "_pending", "_submits", "_gen", "_position",
        "_stopping", "_write_lock", "_rng",
    )

    def __init__(self, host: str, port: int, username: str = "sub.worker1", password: str = "x",
                 user_agent: str = "sim-miner/1.0", version_rolling: bool = False,
                 hashing: bool = True, submit_interval: Optional[float] = None,
                 max_shares: Optional[int] = None, auto_handshake: bool = True,
                 connect_timeout: float = 10.0) -> None:
        self.host = host
        self.port = port
        self.username = username
        self.password = password
        self.user_agent = user_agent
        self.version_rolling = version_rolling
        self.hashing = hashing
        self.submit_interval = submit_interval
        self.max_shares = max_shares
        self.auto_handshake = auto_handshake
        self.connect_timeout = connect_timeout
        self.received: List[Any] = []            # every parsed message, in arrival order
        self.responses: Dict[Any, Any] = {}      # request id -> answer message
        self.bad_lines: List[bytes] = []         # lines that were not JSON
        self.extranonce1: Optional[str] = None
        self.extranonce2_size: Optional[int] = None
        self.difficulty: Optional[float] = None
        self.version_mask = 0                    # negotiated mask (requested & offered)
        self.job: Optional[list] = None          # params of the last mining.notify
        self.subscribed = False
        self.authorized: Optional[bool] = None   # None until the authorize answer arrives
        self.shares_sent = 0
        self.accepted = 0
        self.rejected = 0
        self.hashes = 0
        self.closed = False                      # connection gone (server closed, error or stop)
        self.error: Optional[BaseException] = None
        self.connected = False
        self._sock: Optional[socket.socket] = None
        self._greenlet: Optional[gevent.Greenlet] = None
        self._buf = b""
        self._next_id = 1
        self._pending: Dict[Any, str] = {}       # request id -> method
        self._submits: Dict[Any, list] = {}      # submit id -> params
        self._gen = 0                            # bumped on new job / difficulty / mask / en1
        self._position: Tuple[Any, int, int] = (None, 0, 0)  # (job_id, en2, nonce) to resume from
        self._stopping = False
        self._write_lock = gevent.lock.Semaphore()
        self._rng = random.Random()

    # ------------------------------------------------------------------ public API
    @property
    def worker(self) -> str:
        """The worker part of the username (after the first dot)."""
        return self.username.split(".", 1)[1] if "." in self.username else ""

    def start(self) -> "SimMiner":
        """Spawn the miner's greenlet (connects, handshakes, then mines)."""
        self._greenlet = gevent.spawn(self._run)
        return self

    def stop(self) -> None:
        """Kill the greenlet and close the socket."""
        self._stopping = True
        if self._greenlet is not None and not self._greenlet.dead:
            self._greenlet.kill(block=True, timeout=2)
        self._close()

    def join(self, timeout: Optional[float] = None) -> None:
        """Wait for the greenlet to end."""
        if self._greenlet is not None:
            self._greenlet.join(timeout)

    def send_raw(self, data: bytes) -> None:
        """Write raw bytes to the server (waits until connected)."""
        if self._sock is None:
            self.wait_for(lambda: self.connected or self.closed, self.connect_timeout)
        if self._sock is None or self.closed:
            raise ConnectionError("miner is not connected")
        with self._write_lock:
            self._sock.sendall(data)

    def send_request(self, method: str, params: Any) -> int:
        """Send a JSON-RPC request; returns its id (its answer lands in ``responses[id]``)."""
        msg_id = self._next_id
        self._next_id += 1
        self._pending[msg_id] = method
        if method == "mining.submit":
            self._submits[msg_id] = list(params)
        self.send_raw(request_line(msg_id, method, params))
        return msg_id

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        """Poll `predicate` cooperatively; True once it holds, False after `timeout` seconds."""
        with gevent.Timeout(timeout, False):
            while not predicate():
                gevent.sleep(0.01)
            return True
        return bool(predicate())

    def wait_response(self, msg_id: Any, timeout: float = 5.0) -> Optional[Any]:
        """The answer to request `msg_id`, or None if none came within `timeout`."""
        self.wait_for(lambda: msg_id in self.responses or self.closed, timeout)
        return self.responses.get(msg_id)

    def messages(self, method: str) -> List[Any]:
        """Received notifications/requests with this method, in order."""
        return [m for m in self.received if isinstance(m, dict) and m.get("method") == method]

    def submitted(self) -> List[list]:
        """Params of every mining.submit sent, in order."""
        return [self._submits[k] for k in sorted(self._submits)]

    def __repr__(self) -> str:
        return "<SimMiner %s %s:%s sent=%d acc=%d rej=%d%s>" % (
            self.username, self.host, self.port, self.shares_sent, self.accepted, self.rejected,
            " closed" if self.closed else "")

    # ------------------------------------------------------------------ greenlet
    def _run(self) -> None:
        try:
            with gevent.Timeout(self.connect_timeout):
                self._sock = socket.create_connection((self.host, self.port))
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.connected = True
            if self.auto_handshake:
                self.send_request("mining.subscribe", [self.user_agent])
                if self.version_rolling:
                    self.send_request("mining.configure", [
                        ["version-rolling"],
                        {"version-rolling.mask": "%08x" % REQUESTED_VERSION_MASK,
                         "version-rolling.min-bit-count": 2}])
                self.send_request("mining.authorize", [self.username, self.password])
            self._loop()
        except gevent.GreenletExit:
            pass
        except BaseException as exc:  # record, never lose it silently
            if not self._stopping:
                self.error = exc
                log.warning("%s: %s: %r", self.username, type(exc).__name__, exc)
        finally:
            self._close()

    def _loop(self) -> None:
        search: Optional[Iterator[Optional[tuple]]] = None
        search_gen = -1
        next_submit = None
        loop = gevent.get_hub().loop
        while not self.closed:
            if self.hashing and self._can_mine():
                if search is None or search_gen != self._gen:
                    search, search_gen = self._search(), self._gen
                if not self._read(0.0):
                    return
                if search_gen != self._gen:
                    continue
                share = next(search, None)
                if share is not None:
                    self._submit_share(share)
                gevent.sleep(0)
                continue
            search = None
            timeout = 1.0
            if not self.hashing and self.submit_interval:
                now = loop.now()
                if self.job is not None and self.extranonce1 is not None:
                    if next_submit is None:
                        next_submit = now + self.submit_interval
                    if now >= next_submit:
                        self._submit_random()
                        next_submit += self.submit_interval
                        if next_submit < now:
                            next_submit = now + self.submit_interval
                        continue
                    timeout = max(0.0, min(timeout, next_submit - now))
            if not self._read(timeout):
                return

    def _can_mine(self) -> bool:
        return (self.job is not None and self.difficulty is not None and self.difficulty > 0
                and self.extranonce1 is not None
                and (self.max_shares is None or self.shares_sent < self.max_shares))

    # ------------------------------------------------------------------ input
    def _read(self, timeout: float) -> bool:
        """Read what is available (waiting up to `timeout`); False once the connection is closed."""
        sock = self._sock
        if timeout <= 0:
            readable, _, _ = select.select([sock], [], [], 0)
            if not readable:
                return True
            data = sock.recv(65536)
        else:
            data = None
            with gevent.Timeout(timeout, False):
                data = sock.recv(65536)
            if data is None:
                return True
        if not data:
            self.closed = True
            return False
        self._buf += data
        while True:
            pos = self._buf.find(b"\n")
            if pos < 0:
                break
            line, self._buf = self._buf[:pos], self._buf[pos + 1:]
            line = line.strip()
            if line:
                self._handle_line(line)
        if len(self._buf) > MAX_LINE:
            raise ValueError("line longer than %d bytes without newline" % MAX_LINE)
        return True

    def _handle_line(self, line: bytes) -> None:
        try:
            msg = loads(line)
        except ValueError:
            self.bad_lines.append(line)
            log.warning("%s: not JSON: %r", self.username, line[:200])
            return
        self.received.append(msg)
        if not isinstance(msg, dict):
            return
        method = msg.get("method")
        if method:
            self._handle_notification(method, msg.get("params"))
            return
        msg_id = msg.get("id")
        self.responses[msg_id] = msg
        request = self._pending.pop(msg_id, None)
        result, error = msg.get("result"), msg.get("error")
        if request == "mining.subscribe":
            if error is None and isinstance(result, list) and len(result) >= 3:
                self.subscribed = True
                self._set_extranonce(result[1], result[2])
        elif request == "mining.configure":
            if isinstance(result, dict) and result.get("version-rolling"):
                mask = _hex_int(result.get("version-rolling.mask"))
                if mask is not None:
                    self._set_mask(mask)
        elif request == "mining.authorize":
            self.authorized = result is True and error is None
        elif request == "mining.submit":
            if result is True and error is None:
                self.accepted += 1
            else:
                self.rejected += 1

    def _handle_notification(self, method: str, params: Any) -> None:
        if not isinstance(params, list):
            return
        if method == "mining.notify" and len(params) >= 9:
            self.job = params
            self._gen += 1
        elif method == "mining.set_difficulty" and params:
            try:
                self.difficulty = float(params[0])
            except (TypeError, ValueError):
                return
            self._gen += 1
        elif method == "mining.set_version_mask" and params:
            mask = _hex_int(params[0])
            if mask is not None:
                self._set_mask(mask)
        elif method == "mining.set_extranonce" and len(params) >= 2:
            self._set_extranonce(params[0], params[1])

    def _set_extranonce(self, en1: Any, size: Any) -> None:
        self.extranonce1 = en1 if isinstance(en1, str) else None
        self.extranonce2_size = size if isinstance(size, int) else None
        self._gen += 1

    def _set_mask(self, mask: int) -> None:
        mask &= REQUESTED_VERSION_MASK
        if mask != self.version_mask:
            self.version_mask = mask
            self._gen += 1

    # ------------------------------------------------------------------ output
    def _en2_hex(self, counter: int) -> str:
        size = self.extranonce2_size or 4
        return ("%0*x" % (size * 2, counter))[-size * 2:]

    def _submit_share(self, share: tuple) -> None:
        job_id, en2_hex, ntime_hex, nonce, vbits = share
        params = [self.username, job_id, en2_hex, ntime_hex, "%08x" % nonce]
        if self.version_rolling and vbits:
            params.append("%08x" % vbits)
        self.shares_sent += 1
        self.send_request("mining.submit", params)

    def _submit_random(self) -> None:
        job = self.job
        job_id, _, _, _, _, _, _, ntime = job[:8]
        counter = self._position[1] + 1 if self._position[0] == job_id else 0
        self._position = (job_id, counter, 0)
        params = [self.username, job_id, self._en2_hex(counter), ntime,
                  "%08x" % self._rng.getrandbits(32)]
        if self.version_rolling and self.version_mask:
            params.append("%08x" % _deposit(self._rng.getrandbits(16) | 1, self.version_mask))
        self.shares_sent += 1
        self.send_request("mining.submit", params)

    def _search(self) -> Iterator[Optional[tuple]]:
        """Yield None every HASHES_PER_YIELD hashes, or a share (job_id, en2, ntime, nonce, vbits).

        Progress (en2, nonce) is kept per job so a difficulty change never re-finds a sent share.
        """
        job = self.job
        job_id, prevhash, coinb1, coinb2, branches, version_hex, nbits_hex, ntime_hex = job[:8]
        version, nbits, ntime = int(version_hex, 16), int(nbits_hex, 16), int(ntime_hex, 16)
        target = _hashing.target_for_difficulty(self.difficulty)
        en1 = self.extranonce1
        mask = self.version_mask if self.version_rolling else 0
        mask_bits = bin(mask).count("1")
        pos_job, en2, nonce = self._position
        if pos_job != job_id:
            en2, nonce = 0, 0
        while True:
            en2_hex = self._en2_hex(en2)
            vbits = _deposit(en2 % ((1 << mask_bits) - 1) + 1, mask) if mask_bits else 0
            root = _hashing.merkle_root(_hashing.coinbase(coinb1, en1, en2_hex, coinb2), branches)
            head = _hashing.header(version ^ vbits, prevhash, root, ntime, nbits, 0)
            mid = _sha256(head[:64])
            tail = head[64:76]
            while nonce <= 0xFFFFFFFF:
                end = min(nonce + HASHES_PER_YIELD, 0x100000000)
                found = None
                for n in range(nonce, end):
                    h = mid.copy()
                    h.update(tail + _pack_nonce(n))
                    if int.from_bytes(_sha256(h.digest()).digest(), "little") <= target:
                        found = n
                        break
                if found is not None:
                    self.hashes += found - nonce + 1
                    nonce = found + 1
                    self._position = (job_id, en2, nonce)
                    yield (job_id, en2_hex, ntime_hex, found, vbits)
                else:
                    self.hashes += end - nonce
                    nonce = end
                    self._position = (job_id, en2, nonce)
                    yield None
            en2 += 1
            nonce = 0
            self._position = (job_id, en2, nonce)

    def _close(self) -> None:
        self.closed = True
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass


def _hex_int(value: Any) -> Optional[int]:
    if isinstance(value, str):
        try:
            return int(value, 16)
        except ValueError:
            return None
    return None

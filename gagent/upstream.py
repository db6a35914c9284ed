"""One pool connection (upstream session) speaking the BTCAgent protocol.

A reader greenlet owns the socket's input: handshake answers, jobs, difficulty and share answers,
each turned into bytes for the attached miners in the order the pool sent them. A writer greenlet
drains the session's queue (REGISTER/UNREGISTER/SUBMIT frames from miner greenlets) and sends
whatever accumulated within `upstream_flush_delay_ms` in one `sendall`.

The interface miners use — attach, detach, submit, send_version_mask, ready, miner_count —
is all another kind of upstream (a plain stratum pool, a fake-job session) must offer.
"""
import logging
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

import gevent
from gevent import socket
from gevent.queue import Queue

from . import __version__
from .config import Config, PoolEntry
from .protocol import stratum
from .protocol.exmessage import (CMD_MINING_SET_DIFF, CMD_SUBMIT_RESPONSE, Frame, ProtocolError,
                                 StreamSplitter, decode_mining_set_diff, decode_submit_response,
                                 encode_register_worker, encode_submit_share, encode_unregister_worker)
from .protocol.jobs import JobError, agent_notify
from .protocol.stratum import true_line

if TYPE_CHECKING:  # pragma: no cover
    from .miner import MinerSession

log = logging.getLogger("gagent.upstream")

USER_AGENT = "btccom-agent/%s-gagent" % __version__
POOL_MAX_LINE = 4 << 20
RECV_SIZE = 65536
RETRY_DELAY = 5.0
FAN_OUT_BATCH = 256  # miners served between yields to the hub during a job fan-out
INTERNAL_ERROR = stratum.INTERNAL_ERROR


class PoolRefused(Exception):
    """The pool answered but cannot serve us (bad sub-account, not BTCAgent-compatible)."""


class Reconnect(Exception):
    """The pool asked us to reconnect (client.reconnect)."""


class UpstreamSession:
    """One upstream connection slot: connects, walks the pool list on failure, serves its miners."""

    def __init__(self, config: Config, pools: List[PoolEntry], slot: int, on_ready: Any = None) -> None:
        self.config = config
        self.pools = pools
        self.slot = slot
        self.on_ready = on_ready
        self.miners: Dict[int, "MinerSession"] = {}
        self.ready = False
        self.pool: Optional[PoolEntry] = None
        self.extranonce1 = ""
        self.difficulty: Optional[float] = None
        self.version_mask: Optional[int] = None
        self.pool_capabilities: Tuple[str, ...] = ()
        self.answers_shares = False
        self._subres_wanted = config.submit_response_from_server
        self._job_line_clean: Optional[bytes] = None
        self._job_ntimes: List[Optional[int]] = [None] * 256
        self._submit_index = 0
        self._pending: Dict[int, Tuple["MinerSession", Any]] = {}
        self._queue: Queue = Queue()
        self._sock: Any = None
        self._greenlet: Optional[gevent.Greenlet] = None
        self._writer: Optional[gevent.Greenlet] = None
        self._stopping = False
        self._unknown_methods: set = set()

    # ---- interface used by miners --------------------------------------------------------------

    @property
    def miner_count(self) -> int:
        return len(self.miners)

    def attach(self, miner: "MinerSession") -> None:
        """Register the miner upstream and give it version mask, difficulty and the job (clean)."""
        self.miners[miner.session_id] = miner
        miner.upstream = self
        self._queue.put(encode_register_worker(miner.session_id, miner.user_agent, miner.worker_name))
        self.send_version_mask(miner)
        if self.difficulty is not None:
            miner.send(stratum.set_difficulty_line(self.difficulty))
        if self._job_line_clean is not None:
            miner.send(self._job_line_clean)

    def detach(self, miner: "MinerSession") -> None:
        """Unregister the miner upstream."""
        if self.miners.pop(miner.session_id, None) is not None and self.ready:
            self._queue.put(encode_unregister_worker(miner.session_id))
        miner.upstream = None

    def submit(self, miner: "MinerSession", msg_id: Any, job_id: int, extra_nonce2: int, ntime: int,
               nonce: int, version_mask: Optional[int]) -> int:
        """Queue a share; 0 when queued, else the stratum error code to answer."""
        if not self.ready:
            return INTERNAL_ERROR
        job_ntime = self._job_ntimes[job_id]
        if job_ntime is None:
            return stratum.JOB_NOT_FOUND_OR_STALE
        frame = encode_submit_share(job_id, miner.session_id, extra_nonce2, nonce,
                                    None if ntime == job_ntime else ntime, version_mask)
        if self.answers_shares:
            index = self._submit_index
            self._pending[index] = (miner, msg_id)
            self._submit_index = (index + 1) & 0xFFFF
            self._queue.put(frame)
        else:
            self._queue.put((frame, miner, msg_id))  # answered by the writer once written
        return 0

    def send_version_mask(self, miner: "MinerSession") -> None:
        """Tell a version-rolling miner the pool's mask (00000000 if the pool cannot take rolled shares)."""
        if miner.version_rolling and self.version_mask is not None:
            mask = self.version_mask if "verrol" in self.pool_capabilities else 0
            miner.send(stratum.notification_line("mining.set_version_mask", ["%08x" % mask]))

    # ---- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        self._greenlet = gevent.spawn(self._run)

    def stop(self) -> None:
        """Close the connection for good (no reconnect); attached miners are disconnected."""
        self._stopping = True
        if self._greenlet is not None:
            self._greenlet.kill(block=False)
        self._close_connection("agent stopping")

    def _run(self) -> None:
        """Connect to the first pool that accepts us; on loss, start again from the first pool.

        A connection that was serving is re-established at once; only a pass over the whole pool
        list that got nowhere waits RETRY_DELAY before the next.
        """
        while not self._stopping:
            served = False
            for pool in self.pools:
                if self._stopping:
                    return
                try:
                    self._serve(pool)
                except Reconnect:
                    log.info("slot %d: pool %s:%d asked us to reconnect", self.slot, pool.host, pool.port)
                except PoolRefused as exc:
                    log.error("slot %d: pool %s:%d refused: %s", self.slot, pool.host, pool.port, exc)
                except (OSError, ProtocolError) as exc:
                    log.warning("slot %d: pool %s:%d: %s", self.slot, pool.host, pool.port,
                                _describe_error(exc))
                except Exception:  # a bug must cost one connection, never the slot
                    log.exception("slot %d: unexpected error with pool %s:%d", self.slot, pool.host, pool.port)
                finally:
                    served = self.ready or served
                    self._close_connection("connection to %s:%d lost" % (pool.host, pool.port))
                if served:
                    break
            if not served and not self._stopping:
                gevent.sleep(RETRY_DELAY)

    def _serve(self, pool: PoolEntry) -> None:
        config = self.config
        self.pool = pool
        sock = socket.create_connection((pool.host, pool.port), timeout=config.pool_connection_dial_timeout_seconds)
        self._sock = sock
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(config.pool_connection_dial_timeout_seconds)
        sock.sendall(self._handshake(pool.sub_account))
        splitter = StreamSplitter(max_line=POOL_MAX_LINE)
        while True:
            data = sock.recv(RECV_SIZE)
            if not data:
                raise OSError("pool closed the connection")
            for item in splitter.feed(data):
                if type(item) is Frame:
                    self._on_frame(item)
                else:
                    self._on_line(item)

    def _handshake(self, sub_account: str) -> bytes:
        caps = ["verrol", "subres"] if self._subres_wanted else ["verrol"]
        return b"".join((
            stratum.request_line("caps", "agent.get_capabilities", [caps]),
            stratum.request_line("conf", "mining.configure", [["version-rolling"], {
                "version-rolling.mask": "ffffffff", "version-rolling.min-bit-count": 0}]),
            stratum.request_line("sub", "mining.subscribe", [USER_AGENT]),
            stratum.request_line("auth", "mining.authorize", [sub_account, ""]),
            stratum.request_line("caps_again", "agent.get_capabilities", [caps]),
        ))

    def _become_ready(self) -> None:
        self.ready = True
        self._sock.settimeout(self.config.pool_connection_read_timeout_seconds)
        self._writer = gevent.spawn(self._write_loop, self._sock)
        log.info("slot %d: authorized at %s:%d as %s (extranonce1 %s)", self.slot, self.pool.host,
                 self.pool.port, self.pool.sub_account, self.extranonce1)
        if self.on_ready is not None:
            self.on_ready(self)

    def _close_connection(self, reason: str) -> None:
        self.ready = False
        if self._writer is not None:
            self._writer.kill(block=False)
            self._writer = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        unsent, self._queue = self._queue, Queue()
        _refuse_shares(unsent.queue)
        self.difficulty = None
        self.version_mask = None
        self.answers_shares = False
        self._job_line_clean = None
        self._job_ntimes = [None] * 256
        self._submit_index = 0
        pending, self._pending = self._pending, {}
        for miner, msg_id in pending.values():
            miner.send(stratum.error_line(msg_id, INTERNAL_ERROR, "Pool connection lost before the share was answered"))
        miners = list(self.miners.values())
        self.miners.clear()
        if miners:
            log.warning("slot %d: %s; disconnecting its %d miners", self.slot, reason, len(miners))
        for miner in miners:
            miner.upstream = None
            miner.close()

    # ---- writing -------------------------------------------------------------------------------

    def _write_loop(self, sock: Any) -> None:
        """Send queued frames; frames arriving within the flush delay leave in one write.

        Queue items are control frames (bytes) or shares as (frame, miner, msg_id); a share is
        answered `true` only once written, and with an error if it never can be.
        """
        queue = self._queue
        delay = self.config.upstream_flush_delay_ms / 1000.0
        items: List[Any] = []
        try:
            while True:
                items = [queue.get()]
                if delay:
                    gevent.sleep(delay)
                while queue.qsize():
                    items.append(queue.get_nowait())
                data = b"".join([item if type(item) is bytes else item[0] for item in items])
                sock.sendall(data)
                for item in items:
                    if type(item) is tuple:
                        item[1].send(true_line(item[2]))
                items = []
        except OSError as exc:
            log.warning("slot %d: write to pool failed: %s", self.slot, exc)
            sock.close()  # the reader sees it and reconnects
        finally:
            _refuse_shares(items)

    # ---- reading -------------------------------------------------------------------------------

    def _on_line(self, line: bytes) -> None:
        try:
            msg = stratum.loads(line)
        except (ValueError, UnicodeDecodeError):
            log.warning("slot %d: pool sent a line that is not JSON: %r", self.slot, line[:200])
            return
        if not isinstance(msg, dict):
            log.warning("slot %d: pool sent a JSON value that is not an object: %r", self.slot, line[:200])
            return
        method = msg.get("method")
        if method:
            self._on_notification(method, msg.get("params"))
        else:
            self._on_reply(msg.get("id"), msg.get("result"), msg.get("error"))

    def _on_notification(self, method: str, params: Any) -> None:
        if method == "mining.notify":
            self._on_notify(params)
        elif method == "mining.set_difficulty":
            self._on_set_difficulty(params)
        elif method == "mining.set_version_mask":
            self._on_set_version_mask(params)
        elif method == "client.reconnect":
            raise Reconnect()
        elif method not in self._unknown_methods:
            self._unknown_methods.add(method)
            log.info("slot %d: ignoring pool notification %s", self.slot, method)

    def _on_reply(self, msg_id: Any, result: Any, error: Any) -> None:
        if msg_id == "sub":
            self._on_subscribe_reply(result, error)
        elif msg_id == "auth":
            if result is not True:
                raise PoolRefused("sub-account %r not authorized: %s" % (self.pool.sub_account, error or result))
            self._become_ready()
        elif msg_id == "caps" and isinstance(result, dict):
            caps = result.get("capabilities")
            self.pool_capabilities = tuple(c for c in caps if isinstance(c, str)) if isinstance(caps, list) else ()
            self.answers_shares = self._subres_wanted and "subres" in self.pool_capabilities
        elif error and msg_id not in ("conf", "caps", "caps_again"):
            log.warning("slot %d: pool answered %r with error %r", self.slot, msg_id, error)

    def _on_subscribe_reply(self, result: Any, error: Any) -> None:
        if not (isinstance(result, list) and len(result) >= 3 and isinstance(result[1], str)):
            raise PoolRefused("unexpected mining.subscribe answer %r (error %r)" % (result, error))
        extranonce1, extranonce2_size = result[1], result[2]
        if extranonce2_size != 8 or len(extranonce1) != 8:
            raise PoolRefused("extranonce1 %r / extranonce2 size %r: the pool is not BTCAgent-compatible "
                              "(it must give 4-byte extranonce1 and 8-byte extranonce2); use a pool "
                              "address that supports the BTCAgent protocol" % (extranonce1, extranonce2_size))
        try:
            int(extranonce1, 16)
        except ValueError:
            raise PoolRefused("extranonce1 %r is not hex" % extranonce1) from None
        self.extranonce1 = extranonce1.lower()

    def _on_set_difficulty(self, params: Any) -> None:
        if self.difficulty is not None:
            return  # later JSON values are the pool's decaying session artefact (PROTOCOL.md §1.5)
        value = params[0] if isinstance(params, list) and params else None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            log.warning("slot %d: ignoring invalid mining.set_difficulty %r", self.slot, params)
            return
        self.difficulty = value
        self._fan_out(stratum.set_difficulty_line(value))

    def _on_set_version_mask(self, params: Any) -> None:
        mask = stratum.parse_hex32(params[0]) if isinstance(params, list) and params else None
        if mask is None:
            log.warning("slot %d: ignoring invalid mining.set_version_mask %r", self.slot, params)
            return
        self.version_mask = mask
        for miner in list(self.miners.values()):
            self.send_version_mask(miner)

    def _on_notify(self, params: Any) -> None:
        if not self.extranonce1:
            log.warning("slot %d: mining.notify before subscribe answer ignored", self.slot)
            return
        try:
            job = agent_notify(params, self.extranonce1)
        except JobError as exc:
            log.warning("slot %d: ignoring malformed mining.notify: %s", self.slot, exc)
            return
        self._job_ntimes[job.short_id] = job.ntime
        self._job_line_clean = job.line_clean
        self._fan_out(job.line)

    def _fan_out(self, line: bytes) -> None:
        """Send one line to every attached miner, yielding now and then so shares keep flowing.

        Miners that join meanwhile already got the job from attach(); miners that leave are skipped.
        """
        for count, miner in enumerate(list(self.miners.values()), 1):
            miner.send(line)
            if not count % FAN_OUT_BATCH:
                gevent.sleep(0)

    def _on_frame(self, frame: Frame) -> None:
        if frame.cmd == CMD_MINING_SET_DIFF:
            diff_exp, session_ids = decode_mining_set_diff(frame.body)
            line = stratum.set_difficulty_line(2 ** diff_exp)
            miners = self.miners
            for session_id in session_ids:
                miner = miners.get(session_id)
                if miner is not None:
                    miner.send(line)
        elif frame.cmd == CMD_SUBMIT_RESPONSE:
            index, status = decode_submit_response(frame.body)
            entry = self._pending.pop(index, None)
            if entry is None:
                log.warning("slot %d: share answer for unknown index %d ignored", self.slot, index)
                return
            miner, msg_id = entry
            if status in stratum.ACCEPTED_STATUSES:
                miner.send(true_line(msg_id))
            else:
                miner.send(stratum.error_line(msg_id, status))
        # other commands are not for agents; ignore them as the pool does


def _refuse_shares(items: Any) -> None:
    """Answer every unwritten share in `items` with an error: it never reached the pool."""
    for item in items:
        if type(item) is tuple:
            item[1].send(stratum.error_line(item[2], INTERNAL_ERROR, "Pool connection lost, share not sent"))


def _describe_error(exc: Exception) -> str:
    if isinstance(exc, socket.timeout):
        return "no answer within the timeout; check the pool address and that the pool is up"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused; check the pool address and port"
    if isinstance(exc, socket.gaierror):
        return "cannot resolve the pool host name: %s" % exc
    return str(exc) or exc.__class__.__name__

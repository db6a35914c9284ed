"""One pool connection slot (upstream session) speaking the BTCAgent protocol.

A reader greenlet owns the connection: it dials, handshakes, and turns the pool's jobs, difficulty
and share answers into bytes for the attached miners in the order the pool sent them. The sending
half (batching, and answering shares once they reached the pool) is `uplink.Uplink`.

The slot belongs to a pool set (`poolset.PoolSet`), which it tells when it becomes ready and which
takes its miners when the connection is lost; the slot itself never disconnects a miner.
"""
import logging
import time
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

import gevent
from gevent import socket

from . import __version__, tcp
from .config import Config, PoolEntry
from .cooperative import yielding
from .counters import Counters
from .errors import log_unexpected
from .protocol import stratum
from .protocol.exmessage import (CMD_MINING_SET_DIFF, CMD_SUBMIT_RESPONSE, Frame, ProtocolError,
                                 StreamSplitter, decode_mining_set_diff, decode_submit_response,
                                 encode_register_worker, encode_submit_share, encode_unregister_worker)
from .protocol.jobs import MAX_TAG, AgentJob, JobError, agent_notify, parse_miner_job_id
from .protocol.stratum import JOB_NOT_FOUND_OR_STALE
from .uplink import Uplink
from .upstream_api import QUEUED

if TYPE_CHECKING:  # pragma: no cover
    from .miner import MinerSession
    from .poolset import PoolSet

log = logging.getLogger("gagent.upstream")

USER_AGENT = "btccom-agent/%s-gagent" % __version__
POOL_MAX_LINE = 4 << 20
POOL_MAX_CONTAINERS = 64      # a notify with its merkle branches has 3
RECV_SIZE = 65536
FAN_OUT_BATCH = 256           # miners served between yields to the hub during a job fan-out
STABLE_SECONDS = 5.0          # ready for less than this, then lost: a failed attempt, not a served one
DRAIN_POLL_SECONDS = 0.01
MAX_DIFF_EXP = 64             # MINING_SET_DIFF beyond 2^64 is not a difficulty
ASKED_TO_RECONNECT = "the pool asked us to reconnect"
SUBRES_SILENCE_SECONDS = 10.0  # subres offered, yet no share answered for this long: answer on write


_last_tag = 0  # connection tags, process-wide, 1..MAX_TAG cycling


class PoolRefused(Exception):
    """The pool answered but cannot serve us (bad sub-account, not BTCAgent-compatible)."""


class AuthorizationRefused(PoolRefused):
    """The pool refused the sub-account."""


class Reconnect(Exception):
    """The pool asked us to reconnect (client.reconnect)."""


class UpstreamSession:
    """One upstream connection slot: dials the pools in order with back-off, serves its miners.

    `state` is one of "connecting", "handshake", "ready", "backoff", "stopped".
    """

    def __init__(self, config: Config, pools: List[PoolEntry], slot: int, owner: "PoolSet",
                 counters: Counters, probe: bool = False) -> None:
        self.config = config
        self.pools = pools
        self.slot = slot
        self.owner = owner
        self.counters = counters
        self.probe = probe  # a failback attempt: tries the first pool once, never retries
        self.miners: Dict[int, "MinerSession"] = {}
        self.ready = False
        self.state = "connecting"
        self.state_since = time.time()
        self.pool: Optional[PoolEntry] = None
        self.pool_index = 0
        self.extranonce1 = ""
        self.difficulty: Optional[float] = None
        self.version_mask: Optional[int] = None
        self.pool_capabilities: Tuple[str, ...] = ()
        self.answers_shares = False
        self.last_job: Optional[AgentJob] = None
        self.bytes_received = self.frames_received = 0
        self._sent_before = (0, 0)  # bytes and frames sent on earlier connections of this slot
        self._subres_wanted = config.submit_response_from_server
        self._job_ntimes: List[Optional[int]] = [None] * 256
        self._submit_index = 0
        self._pending: Dict[int, Tuple["MinerSession", Any]] = {}  # subres index -> (miner, id)
        self.uplink: Optional[Uplink] = None   # the sending half, while ready
        self._sock: Any = None
        self._ready_at = 0.0
        self._greenlet: Optional[gevent.Greenlet] = None
        self._stopping = False
        self._authorized = False
        self._settling_subres = False
        self._subres_heard = False
        self._broken = ""
        self._tag = 0
        self._unknown_methods: set = set()
        self._reported: set = set()

    def __repr__(self) -> str:
        where = "%s:%d" % (self.pool.host, self.pool.port) if self.pool else "-"
        return "<UpstreamSession slot %d %s %s>" % (self.slot, where, self.state)

    @property
    def name(self) -> str:
        """How log lines name this connection."""
        kind = "failback probe" if self.probe else "slot"
        return "%s %d (%s)" % (kind, self.slot, self.owner.sub_account)

    # ---- interface used by miners (upstream_api.Upstream) -------------------------------------

    @property
    def miner_count(self) -> int:
        return len(self.miners)

    @property
    def bytes_sent(self) -> int:
        return self._sent_before[0] + (self.uplink.bytes_sent if self.uplink else 0)

    @property
    def frames_sent(self) -> int:
        return self._sent_before[1] + (self.uplink.frames_sent if self.uplink else 0)

    def attach(self, miner: "MinerSession") -> None:
        """Register the miner upstream and give it version mask, difficulty and the job (clean)."""
        if miner.closed:
            return  # a miner that left while being placed must never be registered
        self.miners[miner.session_id] = miner
        miner.upstream = self
        job = self.last_job
        self.uplink.queue_frame(encode_register_worker(miner.session_id, miner.user_agent, miner.worker_name))
        self.send_version_mask(miner)
        if self.difficulty is not None:
            miner.difficulty = self.difficulty
            miner.send(stratum.set_difficulty_line(self.difficulty))
        if job is not None:
            miner.send(job.line_clean)

    def detach(self, miner: "MinerSession") -> None:
        """Unregister the miner upstream (queued before its session id can be handed out again)."""
        if self.miners.pop(miner.session_id, None) is not None and self.ready:
            self.uplink.queue_frame(encode_unregister_worker(miner.session_id))
        if miner.upstream is self:
            miner.upstream = None

    def submit(self, miner: "MinerSession", msg_id: Any, job_id: Any, extra_nonce2: int, ntime: int,
               nonce: int, version_mask: Optional[int]) -> int:
        """Queue a share; QUEUED, or the stratum error code to answer at once.

        A job id of another connection (one the miner was moved from: its tag differs) cannot be
        valid here: such shares get 21 instead of a frame the pool would reject.
        """
        if not self.ready:
            self.counters.shares_refused_upstream_lost += 1
            return JOB_NOT_FOUND_OR_STALE
        parsed = parse_miner_job_id(job_id)
        if parsed is None or parsed[0] != self._tag:
            return JOB_NOT_FOUND_OR_STALE
        short_id = parsed[1]
        job_ntime = self._job_ntimes[short_id]
        if job_ntime is None:
            return JOB_NOT_FOUND_OR_STALE
        frame = encode_submit_share(short_id, miner.session_id, extra_nonce2, nonce,
                                    None if ntime == job_ntime else ntime, version_mask)
        index = self._submit_index  # the pool counts every share, whether it answers them or not
        self._submit_index = (index + 1) & 0xFFFF
        if self.answers_shares:
            if not self._pending and not self._subres_heard:
                gevent.spawn_later(SUBRES_SILENCE_SECONDS, self._check_subres_heard, self._tag)
            self._pending[index] = (miner, msg_id)
            self.uplink.queue_frame(frame)
        else:
            self.uplink.queue_share(frame, miner, msg_id)  # answered once it reached the pool
        return QUEUED

    def _check_subres_heard(self, tag: int) -> None:
        """A pool that offered subres but answers no share must not leave miners waiting."""
        if tag != self._tag or not self.ready or self._subres_heard or not self.answers_shares:
            return
        log.warning("%s: pool %s:%d offered share answers (subres) but sent none for %.0f s; answering "
                    "shares once written on this connection", self.name, self.pool.host, self.pool.port,
                    SUBRES_SILENCE_SECONDS)
        self.answers_shares = False
        pending, self._pending = self._pending, {}
        for miner, msg_id in pending.values():
            miner.share_answered(msg_id, 0)

    def send_version_mask(self, miner: "MinerSession") -> None:
        """Tell a version-rolling miner the pool's mask (00000000 if the pool cannot take rolled shares)."""
        if miner.version_rolling and self.version_mask is not None:
            mask = self.version_mask & miner.version_rolling if "verrol" in self.pool_capabilities else 0
            miner.send(stratum.notification_line("mining.set_version_mask", ["%08x" % mask]))

    # ---- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        self._greenlet = gevent.spawn(self._run)

    def stop(self) -> None:
        """Close the connection for good (no reconnect); attached miners are handed to the pool set."""
        self._stopping = True
        if self._greenlet is not None and self._greenlet is not gevent.getcurrent():
            self._greenlet.kill(block=False)
        self._close_connection("stopped")
        self._set_state("stopped")

    def drain(self, deadline: float) -> None:
        """Graceful stop: write out what is queued and wait until the pool confirmed it (every share
        answered and proven read) or `deadline` (loop time), then close for good."""
        self._stopping = True
        loop = gevent.get_hub().loop
        if self.uplink is not None:
            self.uplink.flush_now()
        while self.ready and self.uplink is not None and not self.uplink.settled and loop.now() < deadline:
            gevent.sleep(DRAIN_POLL_SECONDS)
        self.stop()

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
        backoff = self.owner.new_backoff()
        index = 0
        while not self._stopping:
            pool = self.pools[0] if self.probe else self.pools[index]
            self.pool_index = 0 if self.probe else index
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
            if self.probe and not was_ready:
                log.info("%s: first pool %s:%d still unavailable (%s); staying on the backup", self.name,
                         pool.host, pool.port, reason)
                self.owner.probe_failed(self)
                return
            if self.probe:
                self.probe = False  # it served, briefly: from now on an ordinary slot
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
        try:
            self._serve(pool)
        except Reconnect:
            return ASKED_TO_RECONNECT
        except AuthorizationRefused as exc:
            self.owner.authorization_refused(self, str(exc))
            return "refused: %s" % exc
        except PoolRefused as exc:
            return "refused: %s" % exc
        except (OSError, ProtocolError) as exc:
            return self._broken or _describe_error(exc)
        except gevent.GreenletExit:
            raise
        except Exception as exc:  # a bug must cost one connection, never the slot
            log_unexpected(log, "%s with pool %s:%d" % (self.name, pool.host, pool.port), exc)
            return "internal error (%s)" % type(exc).__name__
        finally:
            self._close_connection("connection to %s:%d lost" % (pool.host, pool.port))
        return "closed"

    def _serve(self, pool: PoolEntry) -> None:
        config = self.config
        self.pool = pool
        global _last_tag
        _last_tag = _last_tag % MAX_TAG + 1
        self._tag = _last_tag  # every connection's job ids differ from every other's
        self._set_state("connecting")
        sock = self.owner.open_socket(pool)
        self._sock = sock
        tcp.tune_pool_socket(sock)
        self._set_state("handshake")
        sock.settimeout(config.pool_connection_dial_timeout_seconds)
        sock.sendall(self._handshake(pool.sub_account))
        splitter = StreamSplitter(max_line=POOL_MAX_LINE)
        loop = gevent.get_hub().loop
        handshake_deadline = loop.now() + config.pool_connection_dial_timeout_seconds
        received_before = self.bytes_received
        while True:
            try:
                data = sock.recv(RECV_SIZE)
            except socket.timeout:
                if self.ready or self.bytes_received == received_before:
                    raise  # silent pool: "no answer within the timeout"
                raise ProtocolError(self._handshake_missing()) from None
            if not data:
                raise OSError("pool closed the connection")
            if not self.ready and loop.now() > handshake_deadline:
                raise ProtocolError(self._handshake_missing())
            self.bytes_received += len(data)
            for item in splitter.feed(data):
                if type(item) is Frame:
                    self.frames_received += 1
                    self._on_frame(item)
                else:
                    self._on_line(item)
            if self._broken:
                raise OSError(self._broken)

    def _handshake(self, sub_account: str) -> bytes:
        caps = ["verrol", "subres"] if self._subres_wanted else ["verrol"]
        return b"".join((
            stratum.request_line("caps", "agent.get_capabilities", [caps]),
            stratum.request_line("conf", "mining.configure", [["version-rolling"], {
                "version-rolling.mask": "ffffffff", "version-rolling.min-bit-count": 0}]),
            stratum.request_line("sub", "mining.subscribe", [USER_AGENT]),
            stratum.request_line("auth", "mining.authorize", [sub_account, ""]),
        ))

    def _handshake_missing(self) -> str:
        """Why a connection that answered is not ready by the handshake deadline, for the log."""
        missing = [what for what, have in (("authorization", self._authorized),
                                           ("valid starting difficulty", self.difficulty is not None)) if not have]
        return "no %s within %g s of connecting" % (" and ".join(missing) or "capabilities answer (subres)",
                                                    self.config.pool_connection_dial_timeout_seconds)

    def _become_ready(self) -> None:
        self.ready = True
        self._ready_at = time.time()
        self._set_state("ready")
        self._sock.settimeout(self.config.pool_connection_read_timeout_seconds)
        self.uplink = Uplink(self.name, self._sock, self.config.upstream_flush_delay_ms / 1000.0,
                             self.config.share_answer_after, self._uplink_broken)
        self.uplink.start()
        log.info("%s: authorized at %s:%d as %s (extranonce1 %s)", self.name, self.pool.host,
                 self.pool.port, self.pool.sub_account, self.extranonce1)
        self.owner.connection_ready(self)

    def _close_connection(self, reason: str) -> None:
        """Forget the connection; unanswered shares get an error, miners go back to the pool set."""
        self.ready = False
        self._authorized = False
        self._settling_subres = False
        self._subres_heard = False
        self._broken = ""
        unanswered: List[Tuple[Any, Any]] = []
        uplink, self.uplink = self.uplink, None
        if uplink is not None:
            unconfirmed = uplink.unconfirmed_true
            if unconfirmed:
                self.counters.shares_true_unconfirmed_at_loss += unconfirmed
                log.warning("%s: %d shares answered true since the pool last proved it was reading "
                            "(its TCP stack acknowledged them) may not have reached it", self.name, unconfirmed)
            unanswered = uplink.close()
            self._sent_before = (self._sent_before[0] + uplink.bytes_sent, self._sent_before[1] + uplink.frames_sent)
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if not self._stopping:
            self._set_state("connecting")
        pending, self._pending = self._pending, {}
        unanswered.extend(pending.values())
        if unanswered:
            self.counters.shares_refused_upstream_lost += len(unanswered)
            log.warning("%s: %s; %d shares not confirmed by the pool are answered with an error",
                        self.name, reason, len(unanswered))
        for miner, msg_id in unanswered:
            miner.share_answered(msg_id, stratum.INTERNAL_ERROR)
        self.difficulty = None
        self.version_mask = None
        self.pool_capabilities = ()
        self.answers_shares = False
        self.extranonce1 = ""
        self.last_job = None
        self._job_ntimes = [None] * 256
        self._submit_index = 0
        miners = list(self.miners.values())
        self.miners.clear()
        for miner in miners:
            miner.upstream = None
        if miners:
            self.owner.connection_lost(self, miners, reason)

    def _uplink_broken(self, why: str) -> None:
        """The sending half failed: wake the reader so it ends the connection."""
        self._broken = why
        if self._sock is not None:
            self._sock.close()

    # ---- reading -------------------------------------------------------------------------------

    def _on_line(self, line: bytes) -> None:
        try:
            msg = stratum.loads(line, POOL_MAX_CONTAINERS)
        except (ValueError, UnicodeDecodeError) as exc:
            self._report("bad-json", "pool sent a line that is not valid JSON (%s): %r" % (exc, line[:200]))
            return
        if not isinstance(msg, dict):
            self._report("not-object", "pool sent a JSON value that is not an object: %r" % line[:200])
            return
        method = msg.get("method")
        if method is not None:
            if not isinstance(method, str) or not method.isascii():
                self._report("bad-method", "pool sent a method that is not a name: %r" % line[:200])
                return
            self._on_notification(method, msg.get("params"))
        else:
            self._on_reply(msg.get("id"), msg.get("result"), msg.get("error"))

    def _report(self, key: str, text: str) -> None:
        """Log a peer's bad message once per kind per slot, not once per message."""
        if key not in self._reported:
            self._reported.add(key)
            log.warning("%s: %s (further ones are ignored silently)", self.name, text)

    def _on_notification(self, method: str, params: Any) -> None:
        if method == "mining.notify":
            self._on_notify(params)
        elif method == "mining.set_difficulty":
            self._on_set_difficulty(params)
        elif method == "mining.set_version_mask":
            self._on_set_version_mask(params)
        elif method == "client.reconnect":
            raise Reconnect()
        elif method not in self._unknown_methods and len(self._unknown_methods) < 32:
            self._unknown_methods.add(method)
            log.info("%s: ignoring pool notification %.60s", self.name, method)

    def _on_reply(self, msg_id: Any, result: Any, error: Any) -> None:
        if self.uplink is not None and self.uplink.probe_answered(msg_id):
            return
        if msg_id in ("sub", "auth") and (self._authorized if msg_id == "auth" else self.extranonce1):
            self._report("repeated-" + msg_id, "pool answered %r again; ignored" % msg_id)  # once is all we asked
        elif msg_id == "sub":
            self._on_subscribe_reply(result, error)
        elif msg_id == "auth":
            if result is not True:
                raise AuthorizationRefused("sub-account %r not authorized: %.200r" % (self.pool.sub_account, error or result))
            self._authorized = True
            if self._subres_wanted and "subres" in self.pool_capabilities:
                # The pool enables subres only for an authorized session: ask again now, and serve
                # miners only once it answered, so every share's answer mode is settled.
                self._settling_subres = True
                self._sock.sendall(stratum.request_line(
                    "caps_again", "agent.get_capabilities", [["verrol", "subres"]]))
            elif self.difficulty is not None:
                self._become_ready()
        elif msg_id in ("caps", "caps_again") and isinstance(result, dict):
            caps = result.get("capabilities")
            self.pool_capabilities = tuple(c for c in caps if isinstance(c, str))[:16] if isinstance(caps, list) else ()
            if msg_id == "caps_again" and self._settling_subres:
                self._settling_subres = False
                self.answers_shares = "subres" in self.pool_capabilities
                if self.difficulty is not None:
                    self._become_ready()
        elif error and msg_id not in ("conf", "caps", "caps_again"):
            self._report("error-reply", "pool answered %.40r with error %.200r" % (msg_id, error))

    def _on_subscribe_reply(self, result: Any, error: Any) -> None:
        if not (isinstance(result, list) and len(result) >= 3 and isinstance(result[1], str)):
            raise PoolRefused("unexpected mining.subscribe answer %.200r (error %.200r)" % (result, error))
        extranonce1, extranonce2_size = result[1], result[2]
        if type(extranonce2_size) is not int or extranonce2_size != 8 or len(extranonce1) != 8:
            raise PoolRefused("extranonce1 %.40r / extranonce2 size %.40r: the pool is not BTCAgent-compatible "
                              "(it must give 4-byte extranonce1 and 8-byte extranonce2); use a pool "
                              "address that supports the BTCAgent protocol" % (extranonce1, extranonce2_size))
        if not stratum.is_hex(extranonce1, 8):
            raise PoolRefused("extranonce1 %.40r is not 8 hex digits" % extranonce1)
        self.extranonce1 = extranonce1.lower()

    def _on_set_difficulty(self, params: Any) -> None:
        if self.difficulty is not None:
            return  # later JSON values are the pool's decaying session artefact (PROTOCOL.md §1.5)
        value = stratum.parse_difficulty(params[0]) if isinstance(params, list) and params else None
        if value is None:  # as a line that does not parse; without a valid one the handshake times out
            self._report("bad-difficulty", "ignoring mining.set_difficulty %.80r: not a difficulty (0 < d <= 2^64)"
                         % (params,))
            return
        self.difficulty = value  # no miner is attached yet: they come once the connection is ready
        if self._authorized and not self._settling_subres:
            self._become_ready()

    def _on_set_version_mask(self, params: Any) -> None:
        mask = stratum.parse_hex32(params[0]) if isinstance(params, list) and params else None
        if mask is None:
            self._report("bad-mask", "ignoring invalid mining.set_version_mask %.80r" % (params,))
            return
        self.version_mask = mask
        for miner in list(self.miners.values()):
            self.send_version_mask(miner)

    def _on_notify(self, params: Any) -> None:
        if not self.extranonce1:
            self._report("early-notify", "mining.notify before the subscribe answer ignored")
            return
        try:
            job = agent_notify(params, self.extranonce1, self._tag)
        except JobError as exc:
            self._report("bad-notify", "ignoring malformed mining.notify: %s" % exc)
            return
        self._job_ntimes[job.short_id] = job.ntime
        self.last_job = job
        self.owner.job_seen(job)
        started = time.perf_counter()
        self._fan_out(job.line)
        self.counters.observe_fanout(time.perf_counter() - started)

    def _fan_out(self, line: bytes) -> None:
        """Send one line to every attached miner, yielding now and then so shares keep flowing.

        Miners that join meanwhile already got the job from attach(); miners that leave are skipped.
        """
        for miner in yielding(list(self.miners.values()), FAN_OUT_BATCH):
            miner.send(line)

    def _on_frame(self, frame: Frame) -> None:
        if frame.cmd == CMD_MINING_SET_DIFF:
            diff_exp, session_ids = decode_mining_set_diff(frame.body)
            if diff_exp > MAX_DIFF_EXP:
                self._report("bad-diff-exp", "ignoring MINING_SET_DIFF to 2^%d" % diff_exp)
                return
            difficulty = 2 ** diff_exp
            line = stratum.set_difficulty_line(difficulty)
            miners = self.miners
            for session_id in session_ids:
                miner = miners.get(session_id)
                if miner is not None:
                    miner.difficulty = difficulty
                    miner.send(line)
        elif frame.cmd == CMD_SUBMIT_RESPONSE:
            index, status = decode_submit_response(frame.body)
            self._subres_heard = True
            entry = self._pending.pop(index, None)
            if entry is None:
                self._report("unknown-index", "share answer for unknown index %d ignored" % index)
                return
            miner, msg_id = entry
            miner.share_answered(msg_id, 0 if status in stratum.ACCEPTED_STATUSES else status)
        # other commands are not for agents; ignore them as the pool does


def _describe_error(exc: Exception) -> str:
    if isinstance(exc, socket.timeout):
        return "no answer within the timeout; check the pool address and that the pool is up"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused; check the pool address and port"
    if isinstance(exc, socket.gaierror):
        return "cannot resolve the pool host name: %s" % exc
    return str(exc) or exc.__class__.__name__

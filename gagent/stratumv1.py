"""A pool connection speaking plain stratum v1: one subscription shared by many miners.

`StratumSession` is one connected socket from handshake to loss (a `ProtocolSession`), as
`btcagent.BTCAgentSession` is for BTCAgent pools. The connection subscribes once; its miners share
the pool's extranonce2 space through a fixed-width prefix (`protocol/extranonce.py`). The pool's
extranonce1 goes into coinb1, so one job line serves every miner of the connection, and a miner's
own extranonce1 (its prefix) stays valid when it moves to another connection or the pool changes
its extranonce1. Every share is checked here by sha256d (`protocol/sharecheck.py`): below the
miner's own difficulty (gagent's vardiff) it gets 23, below the pool's it is answered `true` and
counted, at or above the pool's it is submitted and the pool's answer goes back to the miner.
"""
import logging
import time
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

import gevent

from . import __version__
from .cooperative import yielding
from .protocol import stratum
from .protocol.exmessage import ProtocolError
from .protocol.extranonce import Layout, LayoutError, plan_layout
from .protocol.jobs import JobError, miner_job_id, parse_miner_job_id
from .protocol.sharecheck import ERROR_CODES, POOL, Job, check, prepare_job
from .protocol.stratum import DUPLICATE_SHARE, JOB_NOT_FOUND_OR_STALE, SHARE_REJECTED
from .protocol.vardiff import MinerDifficulty, Vardiff
from .session import PoolSession
from .slot import AuthorizationRefused, PoolRefused, Reconnect
from .uplink import Uplink
from .upstream_api import QUEUED, Miner

if TYPE_CHECKING:  # pragma: no cover
    from .config import PoolEntry
    from .slot import UpstreamSlot

log = logging.getLogger("gagent.upstream")

USER_AGENT = "gagent/%s" % __version__
POOL_MAX_LINE = 64 * 1024     # a notify with a few thousand merkle branches at most
POOL_MAX_CONTAINERS = 64
RECV_SIZE = 65536
FAN_OUT_BATCH = 256
JOBS_KEPT = 256               # job short ids cycle through this many slots
LIVE_JOBS = 16                # jobs taking shares until a clean one (8 min at a job every 30 s); older get 21
DRAIN_POLL_SECONDS = 0.01
VARDIFF_MIN_DIFFICULTY = 1.0  # unless the configured start difficulty is lower (CPU miners, tests)
REQUEST_IDS = 1 << 30         # submit request ids cycle below this; handshake ids are strings
WORKER_AUTHORIZE_SECONDS = 5.0  # a worker's own authorize unanswered this long: the pool ignores them
WORKER_REQUEST = "worker-"    # id prefix of a worker's own mining.authorize


class PoolJob:
    """A pool job as this connection forwards it: the share check's precomputed job, the notify line
    miners get (our job id, coinb1 with the pool's extranonce1) and whether a clean job replaced it."""

    __slots__ = ("check", "line", "line_clean", "miner_params", "stale")

    def __init__(self, check_job: Job, miner_params: List[Any]) -> None:
        self.check = check_job
        self.miner_params = miner_params
        self.line = stratum.notification_line("mining.notify", miner_params + [check_job.clean])
        self.line_clean = self.line if check_job.clean else stratum.notification_line(
            "mining.notify", miner_params + [True])
        self.stale = False

    def retire(self) -> None:
        """A clean job replaced it, or LIVE_JOBS newer ones came: its shares get 21 from now on, and
        its duplicate memory (up to 8,192 shares) is freed."""
        self.stale = True
        self.check.seen = None


class StratumSession(PoolSession):
    """One connected pool socket speaking stratum v1 (a `upstream_api.ProtocolSession`)."""

    def __init__(self, slot: "UpstreamSlot", pool: "PoolEntry", sock: Any) -> None:
        super().__init__(slot, pool, sock)
        config = self.config
        self.extranonce1 = ""            # the pool's, as it gave it (hex)
        self.layout: Optional[Layout] = None
        self.difficulty: Optional[float] = None  # the pool's difficulty for jobs sent from now on
        self.version_mask: Optional[int] = None
        self.last_job: Optional[PoolJob] = None
        self.vardiff = Vardiff(config.miner_share_interval_seconds,
                               min_difficulty=min(VARDIFF_MIN_DIFFICULTY, config.miner_start_difficulty),
                               start_difficulty=config.miner_start_difficulty)
        self._jobs: List[Optional[PoolJob]] = [None] * JOBS_KEPT
        self._next_short = 0
        self._difficulty: Dict[int, MinerDifficulty] = {}  # session id -> the miner's vardiff state
        self._raised_from: Dict[int, float] = {}  # session id -> difficulty before a raise its next job brings
        self._submitted: Dict[int, Tuple[Miner, Any]] = {}  # our request id -> (miner, its request id)
        self._next_request = 0
        self._authorized = False
        # pool entry option worker_names: each worker authorized upstream under its own name
        self._worker_names_wanted = pool.worker_names
        self._upstream_names: Dict[int, str] = {}        # session id -> the name the pool accepted
        self._worker_requests: Dict[str, Tuple[int, str]] = {}  # request id -> (session id, name)

    # ---- what miners call (upstream_api.Upstream) ------------------------------------------------

    def prefix_of(self, session_id: int) -> int:
        """A miner's extranonce prefix here: its session id (unique in the agent) in the prefix's width."""
        return session_id & ((1 << 8 * self.layout.prefix_size) - 1)

    def can_take(self, miner: Miner) -> bool:
        """Room for this miner: with a 1-byte prefix, no other miner here has the same one."""
        if self.layout is None or self.layout.prefix_size >= 2:
            return self.layout is not None  # 2+ bytes hold every 16-bit session id
        prefix = self.prefix_of(miner.session_id)
        return all(self.prefix_of(other) != prefix for other in self.miners)

    def attach(self, miner: Miner) -> None:
        """Give the miner its difficulty, the version mask and the job (clean)."""
        if miner.closed or not miner.fit_extranonce(self.layout.prefix_size, self.layout.miner_en2_size):
            return
        self.miners[miner.session_id] = miner
        miner.upstream = self
        state = self._difficulty.get(miner.session_id)
        if state is None:
            state = self._difficulty[miner.session_id] = self.vardiff.start(time.monotonic(), self._pool_ceiling())
        self.send_version_mask(miner)
        miner.difficulty = state.difficulty
        miner.send(stratum.set_difficulty_line(state.difficulty))
        if self.last_job is not None:
            miner.send(self.last_job.line_clean)
        if self._worker_names_wanted and miner.worker_name:
            self._authorize_worker(miner)

    def _authorize_worker(self, miner: Miner) -> None:
        """Ask the pool to take this worker's shares under its own name on the shared connection;
        until it says yes (and if it never does), its shares go under the configured user."""
        account = self.pool.sub_account.split(".", 1)[0]
        name = "%s.%s" % (account, miner.worker_name)
        request = "%s%d" % (WORKER_REQUEST, miner.session_id)
        self._worker_requests[request] = (miner.session_id, name)
        self.uplink.queue_frame(stratum.request_line(request, "mining.authorize", [name, self.pool.password]))
        gevent.spawn_later(WORKER_AUTHORIZE_SECONDS, self._worker_unanswered, request, name)

    def _worker_unanswered(self, request: str, name: str) -> None:
        if self._worker_requests.get(request, (0, None))[1] == name and not self._closed:
            del self._worker_requests[request]
            self._worker_names_refused("did not answer the mining.authorize of %s within %.0f s"
                                       % (name, WORKER_AUTHORIZE_SECONDS))

    def _on_worker_authorized(self, request: str, result: Any, error: Any) -> None:
        entry = self._worker_requests.pop(request, None)
        if entry is None:
            return  # answered after the timeout, or for a miner that left
        session_id, name = entry
        if result is True:
            if session_id in self.miners:
                self._upstream_names[session_id] = name
        else:
            self._worker_names_refused("refused the mining.authorize of %s (%.100r)" % (name, error or result))

    def _worker_names_refused(self, what: str) -> None:
        """The pool does not take a second authorize on one connection: every share goes under the
        configured user from now on; said once per connection."""
        if self._worker_names_wanted:
            self._worker_names_wanted = False
            log.warning("%s: pool %s %s; shares go under %s on this connection (worker names are kept "
                        "per miner by gagent)", self.name, self.pool.label, what, self.pool.sub_account)
        self._upstream_names.clear()
        self._worker_requests.clear()

    def _pool_ceiling(self) -> float:
        return self.difficulty if self.difficulty is not None else float("inf")

    def detach(self, miner: Miner) -> None:
        self.miners.pop(miner.session_id, None)
        self._difficulty.pop(miner.session_id, None)
        self._raised_from.pop(miner.session_id, None)
        self._upstream_names.pop(miner.session_id, None)
        if miner.upstream is self:
            miner.upstream = None

    def submit(self, miner: Miner, msg_id: Any, job_id: Any, extra_nonce2: int, ntime: int,
               nonce: int, version_bits: Optional[int]) -> int:
        """Check the share; answer it at once, or submit it and answer with the pool's verdict."""
        if not self.ready:
            self.counters.shares_refused_upstream_lost += 1
            return JOB_NOT_FOUND_OR_STALE
        parsed = parse_miner_job_id(job_id)
        if parsed is None or parsed[0] != self._tag:
            return JOB_NOT_FOUND_OR_STALE
        job = self._jobs[parsed[1]]
        if job is None or job.stale:
            return JOB_NOT_FOUND_OR_STALE
        session_id = miner.session_id
        prefix = self.prefix_of(session_id)
        extranonce2 = self.layout.pool_extranonce2(prefix, extra_nonce2.to_bytes(self.layout.miner_en2_size, "big"))
        state = self._difficulty[session_id]
        floor = self._raised_from.get(session_id, state.difficulty)
        target = self._target(floor)
        result = check(job.check, extranonce2, ntime, nonce, version_bits, self.version_mask or 0, target)
        error = ERROR_CODES.get(result.verdict)
        if error:
            return error
        if not job.check.seen.add(extranonce2, ntime, nonce, version_bits):
            return DUPLICATE_SHARE
        if result.verdict == POOL:
            self._submit_upstream(miner, msg_id, job.check, extranonce2, ntime, nonce, version_bits)
        else:
            miner.share_answered(msg_id, 0)
        changed = self.vardiff.share(state, time.monotonic(), result.difficulty, self._pool_ceiling())
        if changed is not None:
            self._difficulty_changed(miner, changed)
        return QUEUED

    def _difficulty_changed(self, miner: Miner, difficulty: float) -> None:
        """Tell the miner its new difficulty; shares it finds on the jobs it has are still taken at the
        old one if that was lower, until the job after its next one."""
        if miner.difficulty is not None and difficulty > miner.difficulty:
            self._raised_from.setdefault(miner.session_id, miner.difficulty)
        miner.difficulty = difficulty
        miner.send(stratum.set_difficulty_line(difficulty))

    def _submit_upstream(self, miner: Miner, msg_id: Any, job: Job, extranonce2: bytes, ntime: int, nonce: int,
                         version_bits: Optional[int]) -> None:
        request = self._next_request = (self._next_request + 1) % REQUEST_IDS
        self._submitted[request] = (miner, msg_id)
        user = self._upstream_names.get(miner.session_id, self.pool.sub_account)
        params = [user, job.job_id, extranonce2.hex(), "%08x" % ntime, "%08x" % nonce]
        if version_bits is not None:
            params.append("%08x" % version_bits)
        self.uplink.queue_frame(stratum.request_line(request, "mining.submit", params))

    def send_version_mask(self, miner: Miner) -> None:
        """Tell a version-rolling miner the pool's mask."""
        if miner.version_rolling and self.version_mask is not None:
            miner.send(stratum.notification_line("mining.set_version_mask",
                                                 ["%08x" % (self.version_mask & miner.version_rolling)]))

    # ---- lifecycle (called by the slot) ----------------------------------------------------------

    def serve(self) -> None:
        """Handshake, then read until the connection ends (always by raising)."""
        config = self.config
        sock = self.sock
        sock.settimeout(config.pool_connection_dial_timeout_seconds)
        sock.sendall(self._handshake())
        loop = gevent.get_hub().loop
        handshake_deadline = loop.now() + config.pool_connection_dial_timeout_seconds
        pending = b""
        while True:
            data = sock.recv(RECV_SIZE)
            if not data:
                raise OSError("pool closed the connection")
            if not self.ready and loop.now() > handshake_deadline:
                raise ProtocolError("no subscription, authorization and job within %.0f s of connecting"
                                    % config.pool_connection_dial_timeout_seconds)
            self.bytes_received += len(data)
            if pending:
                data = pending + data
            lines = data.split(b"\n")
            pending = lines.pop()
            if len(pending) > POOL_MAX_LINE:
                raise ProtocolError("pool sent a line over %d bytes" % POOL_MAX_LINE)
            for line in lines:
                if line.strip():
                    self.frames_received += 1
                    self._on_line(line)
            if self.broken:
                raise OSError(self.broken)

    def drain(self, deadline: float) -> None:
        """Graceful stop: write out what is queued and wait for the pool's answers (until `deadline`)."""
        loop = gevent.get_hub().loop
        if self.uplink is not None:
            self.uplink.flush_now()
        while self.ready and self._submitted and loop.now() < deadline:
            gevent.sleep(DRAIN_POLL_SECONDS)

    def close(self, reason: str) -> List[Miner]:
        """Forget the connection; shares submitted and not answered get an error. Idempotent."""
        if self._closed:
            return []
        self._closed = True
        self.ready = False
        uplink, self.uplink = self.uplink, None
        if uplink is not None:
            uplink.close()
            self._sent = (uplink.bytes_sent, uplink.frames_sent)
        self.sock.close()
        submitted, self._submitted = self._submitted, {}
        if submitted:
            self.counters.shares_refused_upstream_lost += len(submitted)
            log.warning("%s: %s; %d shares not answered by the pool are answered with an error",
                        self.name, reason, len(submitted))
        for miner, msg_id in submitted.values():
            miner.share_answered(msg_id, stratum.INTERNAL_ERROR)
        miners = list(self.miners.values())
        self.miners.clear()
        self._difficulty.clear()
        self._raised_from.clear()
        for miner in miners:
            miner.upstream = None
        return miners

    def _handshake(self) -> bytes:
        lines = [
            stratum.request_line("conf", "mining.configure", [["version-rolling"], {
                "version-rolling.mask": "ffffffff", "version-rolling.min-bit-count": 0}]),
            stratum.request_line("sub", "mining.subscribe", [USER_AGENT]),
        ]
        if self.pool.extranonce_subscribe:
            lines.append(stratum.request_line("xnsub", "mining.extranonce.subscribe", []))
        lines.append(stratum.request_line("auth", "mining.authorize", [self.pool.sub_account, self.pool.password]))
        return b"".join(lines)

    def _become_ready(self) -> None:
        self.ready = True
        self.sock.settimeout(self.config.pool_connection_read_timeout_seconds)
        # Shares go upstream only at the pool's difficulty and the pool answers each: batching is all
        # the uplink does here ("write": nothing waits on acknowledgements or probes).
        self.uplink = Uplink(self.name, self.sock, self.config.upstream_flush_delay_ms / 1000.0, "write",
                             self._uplink_broken)
        self.uplink.start()
        log.info("%s: authorized at %s as %s (extranonce1 %s, extranonce2 %d bytes: %d-byte prefix, "
                 "miners get %d)", self.name, self.pool.label, self.pool.sub_account, self.extranonce1,
                 self.layout.pool_en2_size, self.layout.prefix_size, self.layout.miner_en2_size)
        self.slot.session_ready()

    # ---- reading ---------------------------------------------------------------------------------

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
            self._on_request(method, msg.get("params"), msg.get("id"))
        else:
            self._on_reply(msg.get("id"), msg.get("result"), msg.get("error"))

    def _on_request(self, method: str, params: Any, msg_id: Any) -> None:
        if method == "mining.notify":
            self._on_notify(params)
        elif method == "mining.set_difficulty":
            self._on_set_difficulty(params)
        elif method == "mining.set_version_mask":
            mask = stratum.parse_hex32(params[0]) if isinstance(params, list) and params else None
            if mask is None:
                self._report("bad-mask", "ignoring invalid mining.set_version_mask %.80r" % (params,))
            else:
                self.version_mask = mask
                for miner in list(self.miners.values()):
                    self.send_version_mask(miner)
        elif method == "mining.set_extranonce":
            self._on_set_extranonce(params)
        elif method == "client.reconnect":
            raise Reconnect()
        elif method == "mining.ping":
            if stratum.echoable_id(msg_id):
                self._send(stratum.result_line(msg_id, "pong"))
        elif msg_id is not None and stratum.echoable_id(msg_id):
            self._send(stratum.error_line(msg_id, stratum.ILLEGAL_METHOD))  # a request we cannot serve
        else:
            self._report("method-" + method[:40], "ignoring pool notification %.60s" % method)

    def _send(self, line: bytes) -> None:
        if self.uplink is not None:
            self.uplink.queue_frame(line)
        else:
            self.sock.sendall(line)

    def _on_reply(self, msg_id: Any, result: Any, error: Any) -> None:
        if type(msg_id) is int:
            entry = self._submitted.pop(msg_id, None)
            if entry is None:
                self._report("unknown-id", "answer to a request we did not make (id %r) ignored" % msg_id)
                return
            miner, miner_msg_id = entry
            miner.share_answered(miner_msg_id, 0 if result is True else _error_code(error))
        elif msg_id == "sub":
            if self.layout is not None:
                self._report("repeated-sub", "pool answered the subscription again; ignored")
            else:
                self._on_subscribe_reply(result, error)
        elif msg_id == "auth":
            if self._authorized:
                self._report("repeated-auth", "pool answered the authorization again; ignored")
            elif result is not True:
                raise AuthorizationRefused("user %r not authorized: %.200r" % (self.pool.sub_account, error or result))
            else:
                self._authorized = True
                self._ready_if_complete()
        elif msg_id == "conf":
            self._on_configure_reply(result)
        elif type(msg_id) is str and msg_id.startswith(WORKER_REQUEST):
            self._on_worker_authorized(msg_id, result, error)
        elif error and msg_id != "xnsub":
            self._report("error-reply", "pool answered %.40r with error %.200r" % (msg_id, error))

    def _on_subscribe_reply(self, result: Any, error: Any) -> None:
        if not (isinstance(result, list) and len(result) >= 3 and stratum.is_hex(result[1])
                and type(result[2]) is int):
            raise PoolRefused("unexpected mining.subscribe answer %.200r (error %.200r)" % (result, error))
        try:
            self.layout = plan_layout(result[1], result[2])
        except LayoutError as exc:
            raise PoolRefused(str(exc)) from None
        self.extranonce1 = result[1].lower()
        self.slot.layout_seen(self.layout.prefix_size, self.layout.miner_en2_size)

    def _on_configure_reply(self, result: Any) -> None:
        if isinstance(result, dict) and result.get("version-rolling") is True:
            self.version_mask = stratum.parse_hex32(result.get("version-rolling.mask"))
        else:
            self.version_mask = 0

    def _on_set_difficulty(self, params: Any) -> None:
        value = stratum.parse_difficulty(params[0]) if isinstance(params, list) and params else None
        if value is None:
            self._report("bad-difficulty", "ignoring mining.set_difficulty %.80r: not a difficulty (0 < d <= 2^64)"
                         % (params,))
            return
        self.difficulty = value  # for jobs from now on: each job keeps the difficulty it was sent under

    def _on_set_extranonce(self, params: Any) -> None:
        """New extranonce1 (and size) for the pool's next jobs (each job keeps the one it came with). It
        goes into coinb1, so miners keep theirs when the layout's shape holds; otherwise each is told
        its new one or asked to reconnect."""
        if not (isinstance(params, list) and len(params) >= 2 and stratum.is_hex(params[0])
                and type(params[1]) is int):
            self._report("bad-set-extranonce", "ignoring invalid mining.set_extranonce %.80r" % (params,))
            return
        try:
            layout = plan_layout(params[0], params[1])
        except LayoutError as exc:
            raise PoolRefused(str(exc)) from None
        old, self.layout, self.extranonce1 = self.layout, layout, params[0].lower()
        self.slot.layout_seen(layout.prefix_size, layout.miner_en2_size)
        log.info("%s: the pool set extranonce1 %s, extranonce2 %d bytes", self.name, self.extranonce1,
                 layout.pool_en2_size)
        if old is not None and not layout.keeps_miners_of(old):
            for miner in yielding(list(self.miners.values()), FAN_OUT_BATCH):
                if not miner.fit_extranonce(layout.prefix_size, layout.miner_en2_size):
                    self.detach(miner)

    def _on_notify(self, params: Any) -> None:
        if self.layout is None:
            self._report("early-notify", "mining.notify before the subscribe answer ignored")
            return
        try:
            check_job = prepare_job(params, self.layout.pool_en1, self.difficulty or 1.0)
        except JobError as exc:
            self._report("bad-notify", "ignoring malformed mining.notify: %s" % exc)
            return
        short_id = self._next_short
        self._next_short = (short_id + 1) % JOBS_KEPT
        miner_params = [miner_job_id(self._tag, short_id), params[1], self.layout.miner_coinb1(params[2]),
                        params[3], params[4], params[5], params[6], params[7]]
        job = PoolJob(check_job, miner_params)
        if check_job.clean:
            for older in self._jobs:
                if older is not None:
                    older.retire()
        else:
            older = self._jobs[(short_id - LIVE_JOBS) % JOBS_KEPT]
            if older is not None:
                older.retire()
        self._jobs[short_id] = job
        self.last_job = job
        self.slot.owner.job_seen(miner_params)
        if not self.ready:
            self._ready_if_complete()
            return
        self._fan_out(job.line)

    def _fan_out(self, line: bytes) -> None:
        """The job to every miner, after its new difficulty if vardiff changed it (time passing without
        shares lowers it; a lower pool difficulty caps it). Miners joining meanwhile got it from attach()."""
        now = time.monotonic()
        ceiling = self._pool_ceiling()
        tick = self.vardiff.tick
        states = self._difficulty
        self._raised_from.clear()  # the job that follows a raise is out: shares meet the new difficulty
        for miner in yielding(list(self.miners.values()), FAN_OUT_BATCH):
            state = states.get(miner.session_id)
            if state is not None:
                changed = tick(state, now, ceiling)
                if changed is not None:
                    self._difficulty_changed(miner, changed)
            miner.send(line)

    def _ready_if_complete(self) -> None:
        if not self.ready and self._authorized and self.last_job is not None:
            self._become_ready()


def _error_code(error: Any) -> int:
    """The stratum code of a pool's error ([code, message, data] or {"code": …}); never 0."""
    code = None
    if isinstance(error, list) and error:
        code = error[0]
    elif isinstance(error, dict):
        code = error.get("code")
    return code if type(code) is int and code > 0 else SHARE_REJECTED

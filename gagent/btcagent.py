"""A pool connection speaking the BTCAgent protocol: JSON handshake, then binary ex-messages.

`BTCAgentSession` is one connected socket from handshake to loss (a `ProtocolSession`): its slot's
greenlet reads here and turns the pool's jobs, difficulty and share answers into bytes for the
attached miners in the order the pool sent them. The sending half (batching, and answering shares
once they reached the pool) is `uplink.Uplink`. Dialing, back-off and failover are the slot's
(`slot.py`); placing, holding and moving miners are the pool set's.
"""
import logging
import time
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

import gevent
from gevent import socket

from . import __version__
from .cooperative import yielding
from .protocol import stratum
from .protocol.exmessage import (CMD_MINING_SET_DIFF, CMD_SUBMIT_RESPONSE, Frame, ProtocolError,
                                 StreamSplitter, decode_mining_set_diff, decode_submit_response,
                                 encode_register_worker, encode_submit_share, encode_unregister_worker)
from .protocol.jobs import AgentJob, JobError, agent_notify, parse_miner_job_id
from .protocol.sharecheck import ERROR_CODES, Job, check, prepare_job
from .protocol.stratum import JOB_NOT_FOUND_OR_STALE
from .session import PoolSession
from .slot import AuthorizationRefused, PoolRefused, Reconnect
from .uplink import Uplink
from .upstream_api import QUEUED, Miner

if TYPE_CHECKING:  # pragma: no cover
    from .config import PoolEntry
    from .slot import UpstreamSlot

log = logging.getLogger("gagent.upstream")

USER_AGENT = "btccom-agent/%s-gagent" % __version__
POOL_MAX_LINE = 4 << 20
POOL_MAX_CONTAINERS = 64      # a notify with its merkle branches has 3
RECV_SIZE = 65536
FAN_OUT_BATCH = 256           # miners served between yields to the hub during a job fan-out
DRAIN_POLL_SECONDS = 0.01
DEFAULT_VERSION_MASK = 0x1FFFE000  # before the pool sent mining.set_version_mask
NEVER_MET_DIFFICULTY = float(2 ** 64)  # local checks judge shares by the miner's difficulty only
MAX_DIFF_EXP = 64             # MINING_SET_DIFF beyond 2^64 is not a difficulty
SUBRES = "subres"  # the capability by which a pool offers submit responses (an answer per share)
SUBMIT_RESPONSE_SILENCE_SECONDS = 10.0  # offered, yet no share answered for this long: answer on write


class BTCAgentSession(PoolSession):
    """One connected pool socket speaking the BTCAgent protocol (a `upstream_api.ProtocolSession`)."""

    def __init__(self, slot: "UpstreamSlot", pool: "PoolEntry", sock: Any) -> None:
        super().__init__(slot, pool, sock)
        self.extranonce1 = ""
        self.extranonce1_bytes = b""
        self.difficulty: Optional[float] = None
        self.version_mask: Optional[int] = None
        self.pool_capabilities: Tuple[str, ...] = ()
        self.submit_responses = False  # the pool answers each share (submit_response_from_server)
        self.last_job: Optional[AgentJob] = None
        self._job_ntimes: List[Optional[int]] = [None] * 256
        # advanced.check_shares_locally: each job prepared for hashing shares here, by short id
        self._check_jobs: Optional[List[Optional[Job]]] = [None] * 256 if self.config.check_shares_locally else None
        self._submit_index = 0
        self._awaiting_response: Dict[int, Tuple[Miner, Any]] = {}  # share index -> (miner, id)
        self._authorized = False
        self._settling_submit_responses = False
        self._submit_response_heard = False
        self._unknown_methods: set = set()

    # ---- interface used by miners (upstream_api.Upstream) -------------------------------------

    def can_take(self, miner: Miner) -> bool:
        """Every miner fits: its session id is its extranonce1."""
        return True

    def attach(self, miner: Miner) -> None:
        """Register the miner upstream and give it version mask, difficulty and the job (clean)."""
        if miner.closed:
            return  # a miner that left while being placed must never be registered
        if not miner.fit_extranonce(4, 4):  # subscribed while a plain stratum pool set the layout
            return
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

    def detach(self, miner: Miner) -> None:
        """Unregister the miner upstream (queued before its session id can be handed out again)."""
        if self.miners.pop(miner.session_id, None) is not None and self.ready:
            self.uplink.queue_frame(encode_unregister_worker(miner.session_id))
        if miner.upstream is self:
            miner.upstream = None

    def submit(self, miner: Miner, msg_id: Any, job_id: Any, extra_nonce2: int, ntime: int,
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
        if self._check_jobs is not None:
            error = self._check_locally(miner, short_id, extra_nonce2, ntime, nonce, version_mask)
            if error:
                return error
        frame = encode_submit_share(short_id, miner.session_id, extra_nonce2, nonce,
                                    None if ntime == job_ntime else ntime, version_mask)
        index = self._submit_index  # the pool counts every share, whether it answers them or not
        self._submit_index = (index + 1) & 0xFFFF
        if self.submit_responses:
            if not self._awaiting_response and not self._submit_response_heard:
                gevent.spawn_later(SUBMIT_RESPONSE_SILENCE_SECONDS, self._check_submit_responses_heard)
            self._awaiting_response[index] = (miner, msg_id)
            self.uplink.queue_frame(frame)
        else:
            self.uplink.queue_share(frame, miner, msg_id)  # answered once it reached the pool
        return QUEUED

    def _check_locally(self, miner: Miner, short_id: int, extra_nonce2: int, ntime: int, nonce: int,
                       version_bits: Optional[int]) -> int:
        """advanced.check_shares_locally: the share hashed here; 23 (or 33 for version bits outside the
        mask) instead of a frame the pool would refuse, 0 to send it."""
        job = self._check_jobs[short_id]
        difficulty = miner.difficulty
        if job is None or not difficulty:
            return 0
        target = self._target(difficulty)
        extranonce2 = (miner.session_id << 32 | extra_nonce2).to_bytes(8, "big")  # its extranonce1, then its own
        mask = self.version_mask if self.version_mask is not None else DEFAULT_VERSION_MASK
        return ERROR_CODES.get(check(job, extranonce2, ntime, nonce, version_bits, mask, target).verdict, 0)

    def _check_submit_responses_heard(self) -> None:
        """A pool that offered submit responses but answers no share must not leave miners waiting."""
        if not self.ready or self._submit_response_heard or not self.submit_responses:
            return
        log.warning("%s: pool %s:%d offered submit responses (an answer per share) but sent none for "
                    "%.0f s; answering shares once written on this connection", self.name, self.pool.host, self.pool.port,
                    SUBMIT_RESPONSE_SILENCE_SECONDS)
        self.submit_responses = False
        pending, self._awaiting_response = self._awaiting_response, {}
        for miner, msg_id in pending.values():
            miner.share_answered(msg_id, 0)

    def send_version_mask(self, miner: Miner) -> None:
        """Tell a version-rolling miner the pool's mask (00000000 if the pool cannot take rolled shares)."""
        if miner.version_rolling and self.version_mask is not None:
            mask = self.version_mask & miner.version_rolling if "verrol" in self.pool_capabilities else 0
            miner.send(stratum.notification_line("mining.set_version_mask", ["%08x" % mask]))

    # ---- lifecycle (called by the slot) --------------------------------------------------------

    def serve(self) -> None:
        """Handshake, then read until the connection ends (always by raising)."""
        config = self.config
        sock = self.sock
        sock.settimeout(config.pool_connection_dial_timeout_seconds)
        sock.sendall(self._handshake(self.pool.sub_account))
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
            if self.broken:
                raise OSError(self.broken)

    def drain(self, deadline: float) -> None:
        """Graceful stop: write out what is queued and wait until the pool confirmed it (every share
        answered and proven read) or `deadline` (loop time)."""
        loop = gevent.get_hub().loop
        if self.uplink is not None:
            self.uplink.flush_now()
        while self.ready and self.uplink is not None and not self.uplink.settled and loop.now() < deadline:
            gevent.sleep(DRAIN_POLL_SECONDS)

    def close(self, reason: str) -> List[Miner]:
        """Forget the connection; unanswered shares get an error. Returns the miners it had. Idempotent."""
        if self._closed:
            return []
        self._closed = True
        self.ready = False
        unanswered: List[Tuple[Any, Any]] = []
        uplink, self.uplink = self.uplink, None
        if uplink is not None:
            unconfirmed = uplink.unconfirmed_true
            if unconfirmed:
                self.counters.shares_true_unconfirmed_at_loss += unconfirmed
                log.warning("%s: %d shares answered true since the pool last proved it was reading "
                            "(its TCP stack acknowledged them) may not have reached it", self.name, unconfirmed)
            unanswered = uplink.close()
            self._sent = (uplink.bytes_sent, uplink.frames_sent)
        self.sock.close()
        pending, self._awaiting_response = self._awaiting_response, {}
        unanswered.extend(pending.values())
        if unanswered:
            self.counters.shares_refused_upstream_lost += len(unanswered)
            log.warning("%s: %s; %d shares not confirmed by the pool are answered with an error",
                        self.name, reason, len(unanswered))
        for miner, msg_id in unanswered:
            miner.share_answered(msg_id, stratum.INTERNAL_ERROR)
        miners = list(self.miners.values())
        self.miners.clear()
        for miner in miners:
            miner.upstream = None
        return miners

    def _handshake(self, sub_account: str) -> bytes:
        caps = ["verrol", SUBRES] if self.config.submit_response_from_server else ["verrol"]
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
        self.sock.settimeout(self.config.pool_connection_read_timeout_seconds)
        self.uplink = Uplink(self.name, self.sock, self.config.upstream_flush_delay_ms / 1000.0,
                             self.config.share_answer_after, self._uplink_broken)
        self.uplink.start()
        log.info("%s: authorized at %s:%d as %s (extranonce1 %s)", self.name, self.pool.host,
                 self.pool.port, self.pool.sub_account, self.extranonce1)
        self.slot.session_ready()

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
            if self.config.submit_response_from_server and SUBRES in self.pool_capabilities:
                # The pool enables submit responses only for an authorized session: ask again now, and serve
                # miners only once it answered, so every share's answer mode is settled.
                self._settling_submit_responses = True
                self.sock.sendall(stratum.request_line(
                    "caps_again", "agent.get_capabilities", [["verrol", SUBRES]]))
            elif self.difficulty is not None:
                self._become_ready()
        elif msg_id in ("caps", "caps_again") and isinstance(result, dict):
            caps = result.get("capabilities")
            self.pool_capabilities = tuple(c for c in caps if isinstance(c, str))[:16] if isinstance(caps, list) else ()
            if msg_id == "caps_again" and self._settling_submit_responses:
                self._settling_submit_responses = False
                self.submit_responses = SUBRES in self.pool_capabilities
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
        self.extranonce1_bytes = bytes.fromhex(extranonce1)

    def _on_set_difficulty(self, params: Any) -> None:
        if self.difficulty is not None:
            return  # later JSON values are the pool's decaying session artefact (docs/protocol.md §6.1)
        value = stratum.parse_difficulty(params[0]) if isinstance(params, list) and params else None
        if value is None:  # as a line that does not parse; without a valid one the handshake times out
            self._report("bad-difficulty", "ignoring mining.set_difficulty %.80r: not a difficulty (0 < d <= 2^64)"
                         % (params,))
            return
        self.difficulty = value  # no miner is attached yet: they come once the connection is ready
        if self._authorized and not self._settling_submit_responses:
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
        if self._check_jobs is not None:  # the pool's difficulty is per miner: only miner targets count
            self._check_jobs[job.short_id] = prepare_job(params, self.extranonce1_bytes, NEVER_MET_DIFFICULTY)
        self.last_job = job
        self.slot.owner.job_seen(job.params)
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
            self._submit_response_heard = True
            entry = self._awaiting_response.pop(index, None)
            if entry is None:
                self._report("unknown-index", "share answer for unknown index %d ignored" % index)
                return
            miner, msg_id = entry
            # 0 is the pool's rejection without a reason, never a miner's "no error"
            miner.share_answered(msg_id, 0 if status in stratum.ACCEPTED_STATUSES else status or stratum.SHARE_REJECTED)
        # other commands are not for agents; ignore them as the pool does

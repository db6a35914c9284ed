"""One miner connection (downstream session): stratum v1 in, calls into its upstream session out.

One greenlet per miner reads and handles lines on a plain non-blocking socket. Everything sent to
the miner goes through `send()`, which never blocks: what the socket does not take at once waits in
a bounded backlog that a libev write watcher drains from the hub. So a miner that stops reading
cannot delay anyone else.
"""
import logging
import math
import sys
import time
from typing import Any, Optional, Protocol, Tuple

from gevent import get_hub
from greenlet import getcurrent, greenlet

from .protocol import stratum
from .protocol.stratum import (CLIENT_RECONNECT_LINE, ILLEGAL_PARAMS, JOB_NOT_FOUND_OR_STALE,
                               NOT_SUBSCRIBED, UNAUTHORIZED, DUPLICATE_SUBSCRIBED,
                               WORKER_NAME_MUST_BE_STRING, echoable_id, error_line,
                               parse_extranonce2, parse_hex32, result_line, true_line)
from .config import Config
from .counters import Counters
from .upstream_api import Upstream

log = logging.getLogger("gagent.miner")

MAX_LINE = 16 * 1024
RECV_SIZE = 4096
ASICBOOST_LOSS_THRESHOLD = 100
_switch = greenlet.switch
# Answered true and otherwise ignored: a miner waiting for multi_version hangs without an answer, and
# cgminer shows an error to suggest_difficulty as a rejected share. (mining.extranonce.subscribe is
# answered true too: Antminer firmware treats an error to it as fatal; it is remembered, since a
# plain stratum pool's connection may then tell the miner a new extranonce instead of a reconnect.)
ACKNOWLEDGED_METHODS = frozenset(("mining.multi_version", "mining.suggest_difficulty", "mining.suggest_target"))
DEFAULT_OFFERED_MASK = 0x1FFFE000  # before any pool mask is known (BIP320's general-purpose bits)
HASHRATE_WINDOW = 600.0  # seconds: hashrate is accepted difficulty over about the last 10 minutes
_now = time.time
_exp = math.exp


class MinerHost(Protocol):
    """What a miner session uses of the agent that accepted it."""

    config: Config
    counters: Counters
    clock: float  # wall-clock seconds, refreshed every second
    extranonce_sizes: Tuple[int, int]  # (extranonce1, extranonce2) bytes a subscribing miner is told

    def subscribed(self, miner: "MinerSession") -> None: ...
    def forget(self, miner: "MinerSession") -> None: ...
    def worker_name_for(self, login: str, peer_ip: str) -> str: ...
    def authorize(self, miner: "MinerSession", msg_id: Any, login: str) -> None: ...
    def version_mask_for(self, miner: "MinerSession") -> Optional[int]: ...


class MinerSession:
    """State of one miner: subscribe → authorize → attached to an upstream session → submits."""

    __slots__ = ("agent", "sock", "peer_ip", "session_id", "user_agent", "subscribed",
                 "worker_name", "sub_account", "upstream", "version_rolling", "asicboost_shares",
                 "connected_at", "difficulty", "accepted", "rejected", "last_share_at",
                 "extranonce1_size", "extranonce2_size", "set_extranonce_ok",
                 "_work", "_backlog", "_read_watcher", "_write_watcher", "_greenlet", "closed")

    def __init__(self, agent: MinerHost, sock: Any, peer_ip: str, session_id: int) -> None:
        self.agent = agent
        self.sock = sock
        self.peer_ip = peer_ip
        self.session_id = session_id
        self.user_agent = ""
        self.subscribed = False
        self.worker_name = ""
        self.sub_account = ""
        self.upstream: Optional[Upstream] = None
        self.version_rolling = 0  # the mask the miner asked for in mining.configure (0: no rolling)
        self.asicboost_shares = 0
        self.connected_at = agent.clock  # a shared float: miners that connect in the same second cost nothing
        self.difficulty: Optional[float] = None  # the last difficulty sent to the miner
        self.accepted = 0
        self.rejected = 0
        self.last_share_at = 0.0
        self.extranonce1_size = 4   # bytes of extranonce1 (its prefix) and extranonce2 it was told
        self.extranonce2_size = 4
        self.set_extranonce_ok = False  # it sent mining.extranonce.subscribe
        self._work = 0.0  # accepted difficulty, decayed with HASHRATE_WINDOW, as of last_share_at
        self._backlog: Optional[bytearray] = None
        self._read_watcher: Any = None
        self._write_watcher: Any = None
        self._greenlet: Any = None
        self.closed = False

    # ---- reading -------------------------------------------------------------------------------

    def run(self) -> None:
        """Read and handle lines until the miner leaves or breaks the protocol.

        The greenlet parks on the hub with one read watcher whose callback switches straight back
        to it: a shallow stack is what a parked miner costs, so this is kept flat on purpose.
        """
        hub = get_hub()
        me = self._greenlet = getcurrent()
        watcher = self._read_watcher = hub.loop.io(self.sock.fileno(), 1)
        watcher.start(me.switch)
        del me
        pending = b""
        try:
            while not self.closed:  # a miner closed by its own handler must not park again
                _switch(hub)  # park: greenlet's C switch, no wrapper frame under a parked miner
                if self.closed:
                    return
                try:
                    data = self.sock.recv(RECV_SIZE)
                except BlockingIOError:
                    continue
                if not data:
                    return
                if pending:
                    data = pending + data
                start = 0
                while not self.closed:
                    newline = data.find(b"\n", start)
                    if newline < 0:
                        break
                    if newline - start > MAX_LINE:
                        log.warning("miner %s: line over %d bytes, disconnecting", self.peer_ip, MAX_LINE)
                        return
                    self.handle_line(data[start:newline])
                    start = newline + 1
                pending = data[start:]
                data = None  # a parked miner keeps only its unfinished line
                if len(pending) > MAX_LINE:
                    log.warning("miner %s: line over %d bytes, disconnecting", self.peer_ip, MAX_LINE)
                    return
        except OSError:
            pass
        finally:
            self._greenlet = None
            self.close()

    def handle_line(self, line: bytes) -> None:
        """Handle one JSON-RPC request from the miner."""
        line = line.strip()
        if not line:
            return
        try:
            msg = stratum.loads(line, stratum.MAX_CONTAINERS)
        except (ValueError, UnicodeDecodeError):
            self.send(error_line(None, ILLEGAL_PARAMS, "Illegal params: invalid JSON"))
            return
        if not isinstance(msg, dict):
            self.send(error_line(None, ILLEGAL_PARAMS))
            return
        msg_id = msg.get("id")
        if not echoable_id(msg_id):
            self.send(error_line(None, ILLEGAL_PARAMS, "Illegal params: id must be a string, an integer or null"))
            return
        method = msg.get("method")
        params = msg.get("params")
        if params is None:
            params = []
        elif not isinstance(params, list):
            self.send(error_line(msg_id, ILLEGAL_PARAMS))
            return
        if method == "mining.submit":
            self.on_submit(msg_id, params)
        elif method == "mining.subscribe":
            self.on_subscribe(msg_id, params)
        elif method == "mining.authorize":
            self.on_authorize(msg_id, params)
        elif method == "mining.configure":
            self.on_configure(msg_id, params)
        elif method == "mining.extranonce.subscribe":
            self.set_extranonce_ok = True
            self.send(true_line(msg_id))
        elif method in ACKNOWLEDGED_METHODS:
            self.send(true_line(msg_id))
        else:
            self.send(error_line(msg_id, ILLEGAL_PARAMS))

    # ---- requests ------------------------------------------------------------------------------

    def on_subscribe(self, msg_id: Any, params: list) -> None:
        if self.subscribed:
            self.send(error_line(msg_id, DUPLICATE_SUBSCRIBED))
            return
        self.subscribed = True
        self.agent.subscribed(self)
        if params and isinstance(params[0], str) and params[0].isascii():
            self.user_agent = sys.intern(params[0][:64])  # one copy per firmware, not per miner
        self.extranonce1_size, self.extranonce2_size = self.agent.extranonce_sizes
        extranonce1 = "%0*x" % (2 * self.extranonce1_size, self.session_id & ((1 << 8 * self.extranonce1_size) - 1))
        sid = "%08x" % self.session_id
        self.send(result_line(msg_id, [[["mining.set_difficulty", sid], ["mining.notify", sid]],
                                       extranonce1, self.extranonce2_size]))

    def on_authorize(self, msg_id: Any, params: list) -> None:
        if not self.subscribed:
            self.send(error_line(msg_id, NOT_SUBSCRIBED))
            return
        if not params or not isinstance(params[0], str):
            self.send(error_line(msg_id, WORKER_NAME_MUST_BE_STRING))
            return
        if self.worker_name:  # one worker per connection, as btcpool and both agents
            same = self.agent.worker_name_for(params[0], self.peer_ip) == self.worker_name
            self.send(true_line(msg_id) if same else error_line(msg_id, NOT_SUBSCRIBED, "Already authorized"))
            return
        self.agent.authorize(self, msg_id, params[0])

    def on_configure(self, msg_id: Any, params: list) -> None:
        """BIP310: answer every requested extension; version rolling with the miner's mask AND the
        pool's (a zero result is "false": cgminer treats a 00000000 mask as a failed connect)."""
        extensions = params[0] if params and isinstance(params[0], list) else []
        options = params[1] if len(params) > 1 and isinstance(params[1], dict) else {}
        result: dict = {}
        for name in extensions[:8]:
            if isinstance(name, str) and name.isascii() and len(name) <= 64:
                result[name] = False
        if "version-rolling" in result or "version-rolling.mask" in options:
            wanted = parse_hex32(options.get("version-rolling.mask", "ffffffff"))
            allowed = self.agent.version_mask_for(self)
            mask = (wanted or 0) & (allowed if allowed is not None else DEFAULT_OFFERED_MASK)
            self.version_rolling = wanted or 0
            if mask:
                result["version-rolling"] = True
                result["version-rolling.mask"] = "%08x" % mask
            else:
                result["version-rolling"] = False
        self.send(result_line(msg_id, result))
        if self.upstream is not None and self.version_rolling:
            self.upstream.send_version_mask(self)

    def on_submit(self, msg_id: Any, params: list) -> None:
        upstream = self.upstream
        if upstream is None:
            self.send(error_line(msg_id, UNAUTHORIZED))
            self.send(CLIENT_RECONNECT_LINE)
            return
        if len(params) < 5:
            self.share_answered(msg_id, ILLEGAL_PARAMS)
            return
        extra_nonce2 = parse_extranonce2(params[2], self.extranonce2_size)
        ntime = parse_hex32(params[3])
        nonce = parse_hex32(params[4])
        rolled = len(params) > 5 and params[5] is not None  # a null sixth param means no mask (as btcpool)
        version_mask = parse_hex32(params[5]) if rolled else 0
        if extra_nonce2 is None or ntime is None or nonce is None or version_mask is None:
            self.share_answered(msg_id, ILLEGAL_PARAMS)
            return
        error = upstream.submit(self, msg_id, params[1], extra_nonce2, ntime, nonce, version_mask or None)
        if error:
            self.share_answered(msg_id, error)
        if rolled:
            self.asicboost_shares += 1
        elif self.asicboost_shares > ASICBOOST_LOSS_THRESHOLD and self.agent.config.disconnect_when_lost_asicboost:
            log.info("miner %s (%s) stopped rolling versions; asking it to reconnect",
                     self.peer_ip, self.worker_name)
            self.asicboost_shares = 0
            self.send(CLIENT_RECONNECT_LINE)

    def fit_extranonce(self, extranonce1_size: int, extranonce2_size: int) -> bool:
        """Make the miner's extranonce the layout an upstream needs: already so, or told it with
        mining.set_extranonce if it asked for that; otherwise it is asked to reconnect (and subscribe
        again) and closed, and False is returned."""
        if (self.extranonce1_size, self.extranonce2_size) == (extranonce1_size, extranonce2_size):
            return True
        if self.set_extranonce_ok:
            self.extranonce1_size, self.extranonce2_size = extranonce1_size, extranonce2_size
            extranonce1 = "%0*x" % (2 * extranonce1_size, self.session_id & ((1 << 8 * extranonce1_size) - 1))
            self.send(stratum.notification_line("mining.set_extranonce", [extranonce1, extranonce2_size]))
            return True
        log.info("miner %s (%s) subscribed with another extranonce layout; asking it to reconnect",
                 self.peer_ip, self.worker_name)
        self.send(CLIENT_RECONNECT_LINE)
        self.close()
        return False

    def share_answered(self, msg_id: Any, code: int) -> None:
        """Answer a share: `true` when `code` is 0, else the error; counted for the status page."""
        if code:
            if code in (36, 37):  # the pool's JOB_NOT_FOUND / STALE_SHARE: what miners know as 21
                code = JOB_NOT_FOUND_OR_STALE
            self.rejected += 1
            self.agent.counters.shares_rejected[(self.sub_account, code)] += 1
            self.send(error_line(msg_id, code))
            return
        self.accepted += 1
        self.agent.counters.shares_accepted[self.sub_account] += 1
        now = self.agent.clock
        if self.difficulty:
            self._work = self._work * _exp((self.last_share_at - now) / HASHRATE_WINDOW) + self.difficulty
        self.last_share_at = now
        self.send(true_line(msg_id))

    def hashrate(self) -> float:
        """Hashes per second estimated from the difficulty of accepted shares over ~10 minutes."""
        if not self._work:
            return 0.0
        work = self._work * _exp((self.last_share_at - _now()) / HASHRATE_WINDOW)
        return work * 4294967296.0 / HASHRATE_WINDOW

    @property
    def held(self) -> bool:
        """Waiting for a pool connection (kept connected, no real work)."""
        upstream = self.upstream
        return upstream is not None and not upstream.ready

    # ---- writing -------------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        """Queue bytes for the miner without ever blocking; past the backlog limit, disconnect it."""
        if self.closed:
            return
        if self._backlog is not None:
            self._backlog += data
            if len(self._backlog) > self.agent.config.miner_backlog_limit_bytes:
                log.warning("miner %s (%s) is not reading; %d bytes unsent, disconnecting",
                            self.peer_ip, self.worker_name, len(self._backlog))
                self.close()
            return
        try:
            sent = self.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.close()
            return
        if sent < len(data):
            self._backlog = bytearray(data[sent:])  # appends stay O(1) however far the miner lags
            watcher = self._write_watcher = get_hub().loop.io(self.sock.fileno(), 2)
            watcher.start(self._flush_backlog)

    def _flush_backlog(self) -> None:
        """Write watcher callback (runs in the hub): send what the socket takes now."""
        backlog = self._backlog
        if self.closed or backlog is None:
            return
        try:
            sent = self.sock.send(backlog)
        except BlockingIOError:
            return
        except OSError:
            self.close()
            return
        if sent < len(backlog):
            del backlog[:sent]
            return
        self._backlog = None
        self._stop_write_watcher()

    def _stop_write_watcher(self) -> None:
        watcher = self._write_watcher
        if watcher is not None:
            self._write_watcher = None
            watcher.stop()
            watcher.close()

    # ---- leaving -------------------------------------------------------------------------------

    def close(self) -> None:
        """Leave: unregister upstream, free the session id, close the socket. Idempotent."""
        if self.closed:
            return
        self.closed = True
        self._stop_write_watcher()
        self._backlog = None
        if self._read_watcher is not None:
            self._read_watcher.stop()
            self._read_watcher.close()
            self._read_watcher = None
        if self._greenlet is not None and self._greenlet is not getcurrent():
            get_hub().loop.run_callback(self._greenlet.switch)  # wake it so it can end
        if self.upstream is not None:
            self.upstream.detach(self)
        self.agent.forget(self)
        try:
            self.sock.close()
        except OSError:
            pass

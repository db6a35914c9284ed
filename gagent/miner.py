"""One miner connection (downstream session): stratum v1 in, calls into its upstream session out.

One greenlet per miner reads and handles lines on a plain non-blocking socket. Everything sent to
the miner goes through `send()`, which never blocks: what the socket does not take at once waits in
a bounded backlog that a libev write watcher drains from the hub. So a miner that stops reading
cannot delay anyone else.
"""
import logging
import sys
from typing import TYPE_CHECKING, Any, Optional

from gevent import get_hub
from greenlet import getcurrent, greenlet

from .protocol import stratum
from .protocol.stratum import (CLIENT_RECONNECT_LINE, ILLEGAL_PARAMS, JOB_NOT_FOUND_OR_STALE,
                               NOT_SUBSCRIBED, UNAUTHORIZED, DUPLICATE_SUBSCRIBED,
                               WORKER_NAME_MUST_BE_STRING, error_line, parse_extranonce2,
                               parse_hex32, result_line, true_line)

if TYPE_CHECKING:  # pragma: no cover
    from .server import Agent
    from .upstream import UpstreamSession

log = logging.getLogger("gagent.miner")

MAX_LINE = 16 * 1024
RECV_SIZE = 4096
ASICBOOST_LOSS_THRESHOLD = 100
_switch = greenlet.switch
EXTRANONCE2_SIZE = 4


class MinerSession:
    """State of one miner: subscribe → authorize → attached to an upstream session → submits."""

    __slots__ = ("agent", "sock", "peer_ip", "session_id", "user_agent", "subscribed",
                 "worker_name", "upstream", "version_rolling", "asicboost_shares", "_backlog",
                 "_read_watcher", "_write_watcher", "_greenlet", "closed")

    def __init__(self, agent: "Agent", sock: Any, peer_ip: str, session_id: int) -> None:
        self.agent = agent
        self.sock = sock
        self.peer_ip = peer_ip
        self.session_id = session_id
        self.user_agent = ""
        self.subscribed = False
        self.worker_name = ""
        self.upstream: Optional["UpstreamSession"] = None
        self.version_rolling = False
        self.asicboost_shares = 0
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
        recv = self.sock.recv
        pending = b""
        try:
            while not self.closed:  # a miner closed by its own handler must not park again
                _switch(hub)  # park: greenlet's C switch, no wrapper frame under a parked miner
                if self.closed:
                    return
                try:
                    data = recv(RECV_SIZE)
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
            msg = stratum.loads(line)
        except (ValueError, UnicodeDecodeError):
            self.send(error_line(None, ILLEGAL_PARAMS, "Illegal params: invalid JSON"))
            return
        if not isinstance(msg, dict):
            self.send(error_line(None, ILLEGAL_PARAMS))
            return
        msg_id = msg.get("id")
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
        else:
            self.send(error_line(msg_id, ILLEGAL_PARAMS))

    # ---- requests ------------------------------------------------------------------------------

    def on_subscribe(self, msg_id: Any, params: list) -> None:
        if self.subscribed:
            self.send(error_line(msg_id, DUPLICATE_SUBSCRIBED))
            return
        self.subscribed = True
        if params and isinstance(params[0], str):
            self.user_agent = sys.intern(params[0][:64])  # one copy per firmware, not per miner
        sid = "%08x" % self.session_id
        self.send(result_line(msg_id, [[["mining.set_difficulty", sid], ["mining.notify", sid]],
                                       sid, EXTRANONCE2_SIZE]))

    def on_authorize(self, msg_id: Any, params: list) -> None:
        if not self.subscribed:
            self.send(error_line(msg_id, NOT_SUBSCRIBED))
            return
        if not params or not isinstance(params[0], str):
            self.send(error_line(msg_id, WORKER_NAME_MUST_BE_STRING))
            return
        if self.worker_name:
            self.send(true_line(msg_id))  # already authorized; a repeated authorize changes nothing
            return
        self.worker_name = self.agent.worker_name_for(params[0], self.peer_ip)
        upstream = self.agent.choose_upstream(self)
        if upstream is None:
            log.warning("miner %s (%s): no pool connection ready, disconnecting it so it can fail over",
                        self.peer_ip, self.worker_name)
            self.send(error_line(msg_id, stratum.INTERNAL_ERROR, "No pool connection ready"))
            self.close()
            return
        self.send(true_line(msg_id))
        upstream.attach(self)

    def on_configure(self, msg_id: Any, params: list) -> None:
        options = params[1] if len(params) > 1 and isinstance(params[1], dict) else {}
        wanted = parse_hex32(options.get("version-rolling.mask"))
        if wanted is None:
            self.send(error_line(msg_id, ILLEGAL_PARAMS))
            return
        self.version_rolling = True
        allowed = self.agent.version_mask
        mask = wanted & allowed if allowed is not None else wanted
        self.send(result_line(msg_id, {"version-rolling": True, "version-rolling.mask": "%08x" % mask}))
        if self.upstream is not None:
            self.upstream.send_version_mask(self)

    def on_submit(self, msg_id: Any, params: list) -> None:
        upstream = self.upstream
        if upstream is None:
            self.send(error_line(msg_id, UNAUTHORIZED))
            self.send(CLIENT_RECONNECT_LINE)
            return
        if len(params) < 5:
            self.send(error_line(msg_id, ILLEGAL_PARAMS))
            return
        job = params[1]
        if not (isinstance(job, str) and 0 < len(job) <= 3 and job.isdigit() and int(job) <= 255):
            self.send(error_line(msg_id, JOB_NOT_FOUND_OR_STALE))
            return
        extra_nonce2 = parse_extranonce2(params[2])
        ntime = parse_hex32(params[3])
        nonce = parse_hex32(params[4])
        version_mask = parse_hex32(params[5]) if len(params) > 5 else 0
        if extra_nonce2 is None or ntime is None or nonce is None or version_mask is None:
            self.send(error_line(msg_id, ILLEGAL_PARAMS))
            return
        error = upstream.submit(self, msg_id, int(job), extra_nonce2, ntime, nonce, version_mask or None)
        if error:
            self.send(error_line(msg_id, error))
        if len(params) > 5:
            self.asicboost_shares += 1
        elif self.asicboost_shares > ASICBOOST_LOSS_THRESHOLD and self.agent.config.disconnect_when_lost_asicboost:
            log.info("miner %s (%s) stopped rolling versions; asking it to reconnect",
                     self.peer_ip, self.worker_name)
            self.asicboost_shares = 0
            self.send(CLIENT_RECONNECT_LINE)

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

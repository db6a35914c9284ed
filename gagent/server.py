"""The agent: a StreamServer for miners, the upstream connection slots, placement and shutdown."""
import _socket
import errno
import logging
import resource
from typing import Any, Dict, List, Optional, Tuple

from gevent import get_hub
from gevent.event import Event
from gevent.server import StreamServer
from greenlet import greenlet

from .config import Config
from .miner import MinerSession
from .sessionids import SessionIdAllocator
from .upstream import UpstreamSession
from .workers import worker_name

log = logging.getLogger("gagent.server")

# gevent's default backlog of 50 drops SYNs when a farm reconnects at once (after a pool loss):
# 10,000 miners then took 15 s, retrying after 1, 3 and 7 s; with 4096 they take about 2 s.
# The kernel caps it at net.core.somaxconn.
LISTEN_BACKLOG = 4096
ACCEPT_RETRY_SECONDS = 1.0


class MinerListener(StreamServer):
    """StreamServer that hands each handler a plain non-blocking socket.

    A gevent socket object carries two libev watchers and a wrapper; a miner session needs one
    watcher it owns itself, so the wrapper would be memory spent 10,000 times for nothing.
    """

    _resume_timer: Any = None

    def do_read(self) -> Any:
        try:
            fd, address = self.socket._accept()
        except BlockingIOError:
            return None
        except OSError as exc:
            if exc.errno not in (errno.EMFILE, errno.ENFILE):
                raise
            self._pause_accepting()
            return None
        sock = _socket.socket(self.socket.family, self.socket.type, self.socket.proto, fd)
        sock.setblocking(False)
        sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)  # answers and jobs leave at once
        return sock, address

    def _pause_accepting(self) -> None:
        """Out of file descriptors: say so, leave new miners in the kernel's queue, retry in a second."""
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        log.error("cannot accept more miners: too many open files (limit %d); raise the open-file limit "
                  "(ulimit -n, systemd LimitNOFILE=, supervisor minfds) to more than twice the number of miners",
                  soft)
        self.stop_accepting()
        self._resume_timer = self.loop.timer(ACCEPT_RETRY_SECONDS)
        self._resume_timer.start(self._resume_accepting)

    def _resume_accepting(self) -> None:
        self._resume_timer = None
        if not self.closed:
            self.start_accepting()


class Agent:
    """Accepts miners, places each on the least-loaded ready upstream session, stops gracefully."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.session_ids = SessionIdAllocator()
        self.miners: Dict[int, MinerSession] = {}
        self.upstreams: List[UpstreamSession] = [
            UpstreamSession(config, config.pools, slot, on_ready=self._upstream_ready)
            for slot in range(config.pool_connection_number_per_subaccount)]
        self._ready = Event()
        self._server: Optional[MinerListener] = None
        self._hub = get_hub()

    @property
    def address(self) -> Tuple[str, int]:
        """(ip, port) the miner listener is bound to."""
        return self._server.address[:2]

    @property
    def version_mask(self) -> Optional[int]:
        """The pool's version-rolling mask, once a pool connection has told us."""
        for upstream in self.upstreams:
            if upstream.version_mask is not None:
                return upstream.version_mask
        return None

    def start(self) -> None:
        """Bind the miner port (raises OSError if taken) and start connecting to the pools."""
        self._server = MinerListener((self.config.agent_listen_ip, self.config.agent_listen_port),
                                     backlog=LISTEN_BACKLOG, handle=self._handle_miner,
                                     spawn=self._spawn_miner_greenlet)
        self._server.start()
        for upstream in self.upstreams:
            upstream.start()
        log.info("listening for miners on %s:%d; pools: %s", *self.address,
                 ", ".join("%s:%d (%s)" % pool for pool in self.config.pools))

    def wait_ready(self, timeout: Optional[float] = None) -> bool:
        """Block until a pool connection is authorized."""
        return self._ready.wait(timeout)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, close every miner and pool connection."""
        if self._server is not None:
            self._server.close()
        for miner in list(self.miners.values()):
            miner.close()
        for upstream in self.upstreams:
            upstream.stop()
        if self._server is not None:
            self._server.stop(timeout=timeout)

    # ---- miners --------------------------------------------------------------------------------

    def _spawn_miner_greenlet(self, _wrapper: Any, _handle: Any, _close: Any, args: Any) -> None:
        """StreamServer's spawn: one bare greenlet per miner, running `_handle_miner` directly.

        StreamServer would run the handler through a `handle(*args)` wrapper; skipping it keeps one
        interpreter frame off the C stack every parked miner saves. `_handle_miner` closes the socket.
        """
        self._hub.loop.run_callback(greenlet(self._handle_miner, parent=self._hub).switch, *args)

    def _handle_miner(self, client_socket: Any, address: Any) -> None:
        session_id = self.session_ids.allocate()
        if session_id is None:
            log.error("all %d miner session ids are in use; refusing %s", len(self.miners), address[0])
            client_socket.close()
            return
        miner = MinerSession(self, client_socket, address[0], session_id)
        self.miners[session_id] = miner
        try:
            miner.run()
        except Exception:  # a bug must cost one miner, never the agent
            log.exception("miner %s: unexpected error", address[0])
            miner.close()

    def forget(self, miner: MinerSession) -> None:
        """A miner left: free its session id."""
        if self.miners.pop(miner.session_id, None) is not None:
            self.session_ids.free(miner.session_id)

    def worker_name_for(self, login: str, peer_ip: str) -> str:
        config = self.config
        return worker_name(login, peer_ip, config.fixed_worker_name, config.use_ip_as_worker_name,
                           config.ip_worker_name_format)

    def choose_upstream(self, miner: MinerSession) -> Optional[UpstreamSession]:
        """The ready upstream session with the fewest miners, or None."""
        ready = [u for u in self.upstreams if u.ready]
        return min(ready, key=lambda u: u.miner_count) if ready else None

    def _upstream_ready(self, upstream: UpstreamSession) -> None:
        self._ready.set()

"""The agent: a StreamServer for miners, their pool sets, and a graceful stop."""
import _socket
import errno
import logging
import resource
import time
from typing import Any, Dict, List, Optional, Tuple

import gevent
from gevent import get_hub
from gevent.event import Event
from gevent.server import StreamServer
from greenlet import greenlet

from . import tcp
from .config import Config, PoolEntry
from .connect import open_pool_socket, parse_proxy_url
from .counters import Counters
from .errors import log_unexpected
from .miner import MinerSession
from .poolset import PoolSet
from .sessionids import SessionIdAllocator
from .upstream import UpstreamSession
from .workers import worker_name

log = logging.getLogger("gagent.server")

# gevent's default backlog of 50 drops SYNs when a farm reconnects at once (after a pool loss):
# 10,000 miners then took 15 s, retrying after 1, 3 and 7 s; with 4096 they take about 2 s.
# The kernel caps it at net.core.somaxconn.
LISTEN_BACKLOG = 4096
ACCEPT_RETRY_SECONDS = 1.0
SUBSCRIBE_TIMEOUT_SECONDS = 30.0  # a connection that never subscribes is not a miner
SWEEP_SECONDS = 5.0


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
        tcp.tune_miner_socket(sock)
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
    """Accepts miners, hands each authorized one to its pool set, stops gracefully."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.counters = Counters()
        self.started_at = time.time()
        self.session_ids = SessionIdAllocator()
        self.miners: Dict[int, MinerSession] = {}
        self.pool_sets: Dict[str, PoolSet] = {}
        main = PoolSet(config, config.pools[0].sub_account, config.pools, self.counters, self.open_pool_socket)
        main.on_ready = self._upstream_ready
        self.pool_sets[main.sub_account] = main
        self._proxies = [parse_proxy_url(url) for url in config.proxy]
        self._unsubscribed: Dict[MinerSession, float] = {}
        self._ready = Event()
        self._server: Optional[MinerListener] = None
        self._sweeper: Optional[gevent.Greenlet] = None
        self._hub = get_hub()

    @property
    def address(self) -> Tuple[str, int]:
        """(ip, port) the miner listener is bound to."""
        return self._server.address[:2]

    @property
    def listening(self) -> bool:
        """The miner port is accepting connections."""
        return self._server is not None and self._server.started

    @property
    def upstreams(self) -> List[UpstreamSession]:
        """Every pool connection of every pool set."""
        return [conn for pool_set in self.pool_sets.values() for conn in pool_set.connections]

    def healthy(self) -> bool:
        """Listening, and at least one pool connection can take miners."""
        return self.listening and any(pool_set.ready for pool_set in self.pool_sets.values())

    @property
    def version_mask(self) -> Optional[int]:
        """The pool's version-rolling mask, once a pool connection has told us."""
        for upstream in self.upstreams:
            if upstream.version_mask is not None:
                return upstream.version_mask
        return None

    def open_pool_socket(self, pool: PoolEntry) -> Any:
        """A connected socket to a pool entry: through the configured proxies, with TLS if configured."""
        config = self.config
        return open_pool_socket(pool.host, pool.port, config.pool_connection_dial_timeout_seconds,
                                proxies=self._proxies, tls=config.pool_use_tls,
                                verify=not config.tls_skip_certificate_verify, ca_file=config.tls_ca_file or None)

    def start(self) -> None:
        """Bind the miner port (raises OSError if taken) and start connecting to the pools."""
        self._server = MinerListener((self.config.agent_listen_ip, self.config.agent_listen_port),
                                     backlog=LISTEN_BACKLOG, handle=self._handle_miner,
                                     spawn=self._spawn_miner_greenlet)
        self._server.start()
        for pool_set in self.pool_sets.values():
            pool_set.start()
        self._sweeper = gevent.spawn(self._sweep_loop)
        log.info("listening for miners on %s:%d; pools: %s", *self.address,
                 ", ".join("%s:%d (%s)" % pool for pool in self.config.pools))

    def wait_ready(self, timeout: Optional[float] = None) -> bool:
        """Block until a pool connection is authorized."""
        return self._ready.wait(timeout)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting; close every miner (their UNREGISTERs are queued); write out what is queued
        for the pools and wait for its acknowledgement (within `timeout`); close the pool connections."""
        deadline = self._hub.loop.now() + max(0.0, timeout - 1.0)
        if self._server is not None:
            self._server.close()
        if self._sweeper is not None:
            self._sweeper.kill(block=False)
        for count, miner in enumerate(list(self.miners.values()), 1):
            miner.close()
            if not count % 1024:
                gevent.sleep(0)
        gevent.joinall([gevent.spawn(pool_set.stop, deadline) for pool_set in self.pool_sets.values()],
                       timeout=timeout)
        if self._server is not None:
            self._server.stop(timeout=1.0)

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
        self._unsubscribed[miner] = self._hub.loop.now()
        try:
            miner.run()
        except Exception as exc:  # a bug must cost one miner, never the agent
            log_unexpected(log, "miner %s" % address[0], exc)
            miner.close()

    def subscribed(self, miner: MinerSession) -> None:
        """The miner subscribed: it is a miner, not an idle socket."""
        self._unsubscribed.pop(miner, None)

    def forget(self, miner: MinerSession) -> None:
        """A miner left: free its session id (its UNREGISTER, if any, is already queued)."""
        self._unsubscribed.pop(miner, None)
        if self.miners.get(miner.session_id) is miner:
            del self.miners[miner.session_id]
            self.session_ids.free(miner.session_id)

    def worker_name_for(self, login: str, peer_ip: str) -> str:
        config = self.config
        return worker_name(login, peer_ip, config.fixed_worker_name, config.use_ip_as_worker_name,
                           config.ip_worker_name_format)

    def pool_set_for(self, miner: MinerSession) -> PoolSet:
        """The pool set serving this miner's sub-account."""
        return next(iter(self.pool_sets.values()))

    def place(self, miner: MinerSession) -> None:
        """An authorized miner gets work: attached to a ready connection, or held until one is."""
        self.pool_set_for(miner).place(miner)

    def _upstream_ready(self, upstream: UpstreamSession) -> None:
        self._ready.set()

    def _sweep_loop(self) -> None:
        """Close connections that never subscribed within SUBSCRIBE_TIMEOUT_SECONDS."""
        while True:
            gevent.sleep(SWEEP_SECONDS)
            cutoff = self._hub.loop.now() - SUBSCRIBE_TIMEOUT_SECONDS
            idle = [miner for miner, since in self._unsubscribed.items() if since < cutoff]
            if idle:
                log.info("closing %d connections that did not subscribe within %.0f s", len(idle),
                         SUBSCRIBE_TIMEOUT_SECONDS)
            for miner in idle:
                miner.close()

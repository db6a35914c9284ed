"""The agent: a StreamServer for miners, their pool sets, and a graceful stop."""
import _socket
import errno
import logging
import resource
import time
from typing import Any, Dict, List, Optional, Set, Tuple

import gevent
from gevent import get_hub
from gevent.event import Event
from gevent.server import StreamServer
from greenlet import greenlet

from . import tcp
from .config import Config, PoolEntry
from .connect import CertificateNotTrusted, PoolConnectError, open_pool_socket, parse_proxy_url
from .cooperative import yielding
from .counters import Counters
from .errors import log_unexpected
from .miner import MinerSession
from .poolset import PoolSet
from .sessionids import SessionIdAllocator
from .btcagent import BTCAgentSession
from .slot import UpstreamSlot
from .stratumv1 import StratumSession
from .upstream_api import ProtocolSession
from .protocol.stratum import INVALID_USERNAME, error_line
from .workers import split_login, worker_name

log = logging.getLogger("gagent.server")

# gevent's default backlog of 50 drops SYNs when a farm reconnects at once (after a pool loss):
# 10,000 miners then took 15 s, retrying after 1, 3 and 7 s; with 4096 they take about 2 s.
# The kernel caps it at net.core.somaxconn.
LISTEN_BACKLOG = 4096
ACCEPT_RETRY_SECONDS = 1.0
SUBSCRIBE_TIMEOUT_SECONDS = 30.0  # a connection that never subscribes is not a miner
SWEEP_SECONDS = 5.0
POOL_SET_IDLE_SECONDS = 60.0  # multi-user: how long a sub-account's connections outlive its last miner
CLOCK_SECONDS = 1.0
REACHABILITY_SECONDS = 30.0  # multi-user, no sub-account open: how often the pools are dialled for /healthz


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

    def __init__(self, config: Config, session_ids: Optional[SessionIdAllocator] = None) -> None:
        self.config = config
        self.name = config.name  # the listener's name
        self.counters = Counters()
        self.started_at = time.time()
        self.session_ids = session_ids if session_ids is not None else SessionIdAllocator()
        self.miners: Dict[int, MinerSession] = {}
        self.pool_sets: Dict[str, PoolSet] = {}
        self._idle_since: Dict[str, float] = {}  # multi-user: sub-account -> when its last miner left
        if not config.multi_user_mode:
            main = PoolSet(config, config.pools[0].sub_account, config.pools, self.counters, self.open_pool_socket,
                           self._new_slot)
            main.on_ready = self._upstream_ready
            main.on_layout = self._layout_seen
            self.pool_sets[main.sub_account] = main
        self._proxies = [parse_proxy_url(url) for url in config.proxy]
        self._unsubscribed: Set[MinerSession] = set()  # connected, not subscribed yet
        self._ready = Event()
        self._server: Optional[MinerListener] = None
        self._sweeper: Optional[gevent.Greenlet] = None
        self._reachability: Optional[gevent.Greenlet] = None
        # multi-user with no sub-account open: whether a pool answered the last dial (None: not dialled yet)
        self.pools_reachable: Optional[bool] = None
        self._hub = get_hub()
        # Wall-clock seconds, refreshed every second: per-miner timestamps share these float objects
        # instead of each holding its own (10,000 miners, 24 bytes each, twice).
        self.clock = time.time()
        self._clock_timer: Any = None
        # (extranonce1, extranonce2) bytes a subscribing miner is told: BTCAgent's 4 + 4 until a plain
        # stratum pool says what its extranonce2 leaves room for.
        self.extranonce_sizes: Tuple[int, int] = (4, 4)

    @property
    def _log_prefix(self) -> str:
        where = "%s:%d" % (self.config.agent_listen_ip, self.config.agent_listen_port)
        return "" if self.name == where else "listener %s: " % self.name

    @property
    def address(self) -> Tuple[str, int]:
        """(ip, port) the miner listener is bound to; the configured ones before it listens."""
        if self._server is None:
            return self.config.agent_listen_ip, self.config.agent_listen_port
        return self._server.address[:2]

    @property
    def listening(self) -> bool:
        """The miner port is accepting connections."""
        return self._server is not None and self._server.started

    @property
    def upstreams(self) -> List[UpstreamSlot]:
        """Every pool connection of every pool set."""
        return [conn for pool_set in self.pool_sets.values() for conn in pool_set.connections]

    def version_mask_for(self, miner: MinerSession) -> Optional[int]:
        """The version-rolling mask of the pool connection this miner uses or will use, if known."""
        upstream = miner.upstream
        if upstream is not None and upstream.version_mask is not None:
            return upstream.version_mask
        for pool_set in self.pool_sets.values():
            if not miner.sub_account or pool_set.sub_account == miner.sub_account:
                for conn in pool_set.connections:
                    if conn.ready and conn.version_mask is not None:
                        return conn.version_mask
        return None

    def _new_slot(self, pool_set: PoolSet, slot: int, failback_attempt: bool) -> UpstreamSlot:
        """A pool set's connection slot over the pool set's own pool list."""
        return UpstreamSlot(self.config, pool_set.pools, slot, pool_set, self.counters, _new_session,
                            failback_attempt=failback_attempt)

    def open_pool_socket(self, pool: PoolEntry) -> Any:
        """A connected socket to a pool entry: through the configured proxies (in order; directly
        first with direct_connect_with_proxy, directly last with direct_connect_after_proxy), with
        TLS if configured."""
        config = self.config
        routes: List[Any] = [self._proxies] if self._proxies else [()]
        if self._proxies and config.direct_connect_with_proxy:
            routes.insert(0, ())
        elif self._proxies and config.direct_connect_after_proxy:
            routes.append(())
        for n, proxies in enumerate(routes[:-1]):
            try:
                return self._open_route(pool, proxies)
            except CertificateNotTrusted:
                raise  # the pool's certificate: another route would get the same answer
            except PoolConnectError as exc:
                log.info("%s; trying %s", exc, "the proxies" if routes[n + 1] else "a direct connection")
        return self._open_route(pool, routes[-1])

    def _open_route(self, pool: PoolEntry, proxies: Any) -> Any:
        config = self.config
        return open_pool_socket(pool.host, pool.port, config.pool_connection_dial_timeout_seconds,
                                proxies=proxies, tls=config.pool_use_tls if pool.tls is None else pool.tls,
                                verify=not config.tls_skip_certificate_verify, ca_file=config.tls_ca_file or None)

    def start(self) -> None:
        """Bind the miner port (raises OSError if taken) and start connecting to the pools."""
        self._server = MinerListener((self.config.agent_listen_ip, self.config.agent_listen_port),
                                     backlog=LISTEN_BACKLOG, handle=self._handle_miner,
                                     spawn=self._spawn_miner_greenlet)
        self._server.start()
        self._clock_timer = self._hub.loop.timer(CLOCK_SECONDS, CLOCK_SECONDS)
        self._clock_timer.start(self._tick)
        for pool_set in self.pool_sets.values():
            pool_set.start()
        self._sweeper = gevent.spawn(self._sweep_loop)
        if self.config.multi_user_mode:
            self._reachability = gevent.spawn(self._reachability_loop)
        log.info("%slistening for miners on %s:%d; pools: %s", self._log_prefix, *self.address,
                 ", ".join("%s (%s, %s)" % (pool.label, pool.sub_account, pool.kind) for pool in self.config.pools))

    def wait_ready(self, timeout: Optional[float] = None) -> bool:
        """Block until a pool connection is authorized."""
        return self._ready.wait(timeout)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting; close every miner (their UNREGISTERs are queued); write out what is queued
        for the pools and wait for its acknowledgement (within `timeout`); close the pool connections."""
        deadline = self._hub.loop.now() + max(0.0, timeout - 1.0)
        if self._server is not None:
            self._server.close()
        if self._clock_timer is not None:
            self._clock_timer.stop()
        for task in (self._sweeper, self._reachability):
            if task is not None:
                task.kill(block=False)
        for miner in yielding(list(self.miners.values()), 1024):
            miner.close()
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
        client_socket, address = args
        # A greenlet holds its callable and arguments as long as it runs: a plain function (no bound
        # method) and no (ip, port) tuple among them.
        self._hub.loop.run_callback(greenlet(Agent._handle_miner, parent=self._hub).switch,
                                    self, client_socket, address[0])

    def _handle_miner(self, client_socket: Any, peer_ip: str) -> None:
        session_id = self.session_ids.allocate()
        if session_id is None:
            log.error("all %d miner session ids are in use; refusing %s", len(self.miners), peer_ip)
            client_socket.close()
            return
        miner = MinerSession(self, client_socket, peer_ip, session_id)
        self.miners[session_id] = miner
        self._unsubscribed.add(miner)
        try:
            miner.run()
        except Exception as exc:  # a bug must cost one miner, never the agent
            log_unexpected(log, "miner %s" % peer_ip, exc)
            miner.close()

    def subscribed(self, miner: MinerSession) -> None:
        """The miner subscribed: it is a miner, not an idle socket."""
        self._unsubscribed.discard(miner)

    def forget(self, miner: MinerSession) -> None:
        """A miner left: free its session id (its UNREGISTER, if any, is already queued)."""
        self._unsubscribed.discard(miner)
        if self.miners.get(miner.session_id) is miner:
            del self.miners[miner.session_id]
            self.session_ids.free(miner.session_id)

    def worker_name_for(self, login: str, peer_ip: str) -> str:
        config = self.config
        return worker_name(login, peer_ip, config.fixed_worker_name, config.use_ip_as_worker_name,
                           config.ip_worker_name_format)

    def authorize(self, miner: MinerSession, msg_id: Any, login: str) -> None:
        """A miner's first authorize: name it, find its pool set, let the set answer and place it."""
        sub_account = split_login(login)[0]
        if self.config.multi_user_mode and not sub_account:
            miner.send(error_line(msg_id, INVALID_USERNAME, "Login must be <sub-account>.<worker>"))
            return
        miner.worker_name = self.worker_name_for(login, miner.peer_ip)
        pool_set = self.pool_set_for(sub_account)
        miner.sub_account = pool_set.sub_account
        pool_set.authorize(miner, msg_id)

    def pool_set_for(self, sub_account: str) -> PoolSet:
        """Single-user: the one pool set. Multi-user: the sub-account's own, opened on first use."""
        if not self.config.multi_user_mode:
            return next(iter(self.pool_sets.values()))
        pool_set = self.pool_sets.get(sub_account)
        if pool_set is None:
            pools = [pool._replace(sub_account=sub_account) for pool in self.config.pools]
            pool_set = PoolSet(self.config, sub_account, pools, self.counters, self.open_pool_socket,
                               self._new_slot, answer_at_once=False)
            pool_set.on_ready = self._upstream_ready
            pool_set.on_layout = self._layout_seen
            self.pool_sets[sub_account] = pool_set
            log.info("sub-account %s: first miner; opening %d pool connections", sub_account,
                     self.config.pool_connection_number_per_subaccount)
            pool_set.start()
        self._idle_since.pop(sub_account, None)
        return pool_set

    def _tick(self) -> None:
        self.clock = time.time()

    def _upstream_ready(self, upstream: UpstreamSlot) -> None:
        self._ready.set()

    def _layout_seen(self, sizes: Tuple[int, int]) -> None:
        if sizes != self.extranonce_sizes:
            log.info("miners subscribing from now on get a %d-byte extranonce1 and a %d-byte extranonce2",
                     *sizes)
            self.extranonce_sizes = sizes

    def _close_idle_pool_sets(self) -> None:
        """Multi-user: a sub-account's connections close a while after its last miner left."""
        now = self._hub.loop.now()
        for sub_account, pool_set in list(self.pool_sets.items()):
            if pool_set.miner_count:
                self._idle_since.pop(sub_account, None)
                continue
            since = self._idle_since.setdefault(sub_account, now)
            if now - since >= POOL_SET_IDLE_SECONDS:
                log.info("sub-account %s: no miner for %.0f s; closing its pool connections", sub_account,
                         now - since)
                del self.pool_sets[sub_account]
                del self._idle_since[sub_account]
                pool_set.stop()

    def _reachability_loop(self) -> None:
        """Multi-user: while no sub-account has connections open, dial the pools now and then (and close
        at once), so /healthz can say whether a first miner would be served."""
        while True:
            if not self.pool_sets:
                self.pools_reachable = self._a_pool_answers()
            gevent.sleep(REACHABILITY_SECONDS)

    def _a_pool_answers(self) -> bool:
        for pool in self.config.pools:
            try:
                self.open_pool_socket(pool).close()
                return True
            except OSError:
                continue
        return False

    def _sweep_loop(self) -> None:
        """Close connections that never subscribed within SUBSCRIBE_TIMEOUT_SECONDS, and idle pool sets."""
        while True:
            gevent.sleep(SWEEP_SECONDS)
            if self.config.multi_user_mode:
                self._close_idle_pool_sets()
            cutoff = self.clock - SUBSCRIBE_TIMEOUT_SECONDS  # as precise as the sweep, give or take a second
            idle = [miner for miner in self._unsubscribed if miner.connected_at < cutoff]
            if idle:
                log.info("closing %d connections that did not subscribe within %.0f s", len(idle),
                         SUBSCRIBE_TIMEOUT_SECONDS)
            for miner in idle:
                miner.close()


def _new_session(slot: UpstreamSlot, pool: PoolEntry, sock: Any) -> ProtocolSession:
    """The protocol session for a connected pool entry: the one place that knows the upstream kinds."""
    if pool.kind == "stratum":
        return StratumSession(slot, pool, sock)
    return BTCAgentSession(slot, pool, sock)

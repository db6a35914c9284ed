"""The farm: one agent per listener (`listeners`), in one process and one event loop.

Each listener is an `Agent` of its own — its port, pools, pool sets and options — so a share that
arrives on one port never reaches another listener's pools, and two listeners on the same pool and
sub-account keep their miners on connections of their own. They share the session id allocator, so a
miner's id names it uniquely on the status page, and they start and stop together.
"""
import errno
import logging
from typing import List, Optional

import gevent

from .config import Config
from .server import Agent
from .sessionids import SessionIdAllocator

log = logging.getLogger("gagent.server")


class ListenerError(Exception):
    """A listener's port could not be opened; str() is one line naming the listener, the port and what to do."""


class Farm:
    """Every listener's agent: `start()` opens all ports or none, `stop()` stops them together."""

    def __init__(self, config: Config, agents: Optional[List[Agent]] = None) -> None:
        """One agent per listener of `config`, or the `agents` given (built elsewhere: tests, the demo)."""
        self.config = config
        if agents is None:
            session_ids = SessionIdAllocator()
            agents = [Agent(listener, session_ids=session_ids) for listener in config.listeners]
        self.agents: List[Agent] = agents

    @property
    def started_at(self) -> float:
        return min(agent.started_at for agent in self.agents)

    def start(self) -> None:
        """Open every listener's port, then connect to the pools; raises ListenerError, with no port left
        open, when one cannot be opened."""
        started: List[Agent] = []
        for agent in self.agents:
            try:
                agent.start()
            except OSError as exc:
                for other in started:
                    other.stop(timeout=0.0)
                raise ListenerError(_listen_error(agent.config, exc)) from None
            started.append(agent)

    def wait_ready(self, timeout: Optional[float] = None) -> bool:
        """Block until every listener has a pool connection authorized."""
        deadline = None if timeout is None else gevent.get_hub().loop.now() + timeout
        for agent in self.agents:
            left = None if deadline is None else max(0.0, deadline - gevent.get_hub().loop.now())
            if not agent.wait_ready(left):
                return False
        return True

    def stop(self, timeout: float = 5.0) -> None:
        """Stop every listener gracefully, at the same time (see `Agent.stop`)."""
        gevent.joinall([gevent.spawn(agent.stop, timeout) for agent in self.agents], timeout=timeout + 1.0)


def _listen_error(config: Config, exc: OSError) -> str:
    where = "%s:%d" % (config.agent_listen_ip, config.agent_listen_port)
    listener = "listener %s" % config.name if config.name != where else "the miner port"
    if exc.errno == errno.EADDRINUSE:
        return ("cannot listen on %s (%s): the port is in use; stop the other program or set its "
                "agent_listen_port" % (where, listener))
    return "cannot listen on %s (%s): %s" % (where, listener, exc.strerror or exc)

"""Command line entry point: `gagent -c etc/agent_conf.json [-l LOGDIR]`."""
import errno
import logging
import os
import resource
import signal
import sys
from typing import List, Optional

import gevent
import gevent.event

from .config import Config, ConfigError, load_config
from .server import Agent

log = logging.getLogger("gagent")

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(config: Config) -> None:
    """Log to stderr, or to LOGDIR/gagent.log when -l is given."""
    if config.log_dir and config.log_dir != "stderr":
        os.makedirs(config.log_dir, exist_ok=True)
        handler: logging.Handler = logging.FileHandler(os.path.join(config.log_dir, "gagent.log"))
    else:
        handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(config.log_level)


def raise_file_limit() -> int:
    """Raise the soft open-file limit to the hard one; returns the limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def main(argv: Optional[List[str]] = None) -> int:
    logging.basicConfig(format=LOG_FORMAT, level=logging.INFO)
    try:
        config = load_config(argv)
    except ConfigError as exc:
        print("gagent: configuration error: %s" % exc, file=sys.stderr)
        return 2
    setup_logging(config)
    limit = raise_file_limit()
    if limit < 2 * 1024:
        log.warning("open-file limit is %d: gagent can serve at most about %d miners; raise it "
                    "(ulimit -n, LimitNOFILE= or supervisor minfds)", limit, limit - 64)
    agent = Agent(config)
    try:
        agent.start()
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            log.error("cannot listen on %s:%d: the port is in use; stop the other program or set "
                      "agent_listen_port", config.agent_listen_ip, config.agent_listen_port)
        else:
            log.error("cannot listen on %s:%d: %s", config.agent_listen_ip, config.agent_listen_port, exc)
        return 1
    stopped = gevent.event.Event()

    def request_stop() -> None:
        if stopped.is_set():
            log.warning("second signal: exiting now")
            os._exit(1)
        log.info("stopping")
        stopped.set()

    gevent.signal_handler(signal.SIGTERM, request_stop)
    gevent.signal_handler(signal.SIGINT, request_stop)
    stopped.wait()
    agent.stop()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

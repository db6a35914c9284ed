"""Command line entry point: `gagent -c etc/agent_conf.json [-l LOGDIR]`, `gagent --check-config -c FILE`."""
import logging
import os
import re
import resource
import signal
import sys
from typing import Any, Dict, List, Optional

import gevent
import gevent.event
import simplejson

from .config import Config, ConfigError, load_config
from .connect import redact_url
from .logs import LOG_FORMAT, SummaryLogger, setup_logging
from .farm import Farm, ListenerError
from .status import StatusServer

log = logging.getLogger("gagent")

SECRET_KEY = re.compile(r"pass|secret|token|key$", re.IGNORECASE)
MASK = "***"


def effective_settings(config: Config) -> Dict[str, Any]:
    """Every setting in force, as JSON-friendly values, with secrets masked."""
    settings: Dict[str, Any] = {}
    for key, value in sorted(vars(config).items()):
        if key in ("check_config", "_listeners"):
            continue
        if key == "pools":
            value = [{"pool": pool.label, "kind": pool.kind, "user": pool.sub_account,
                      "password": MASK if pool.password not in ("", "x") else pool.password} for pool in value]
        elif key == "proxy":
            value = [redact_url(url) for url in value]
        elif SECRET_KEY.search(key) and isinstance(value, str) and value:
            value = MASK
        settings[key] = value
    if len(config.listeners) > 1 or config.listeners[0] is not config:
        # per listener, the settings that differ from the top level
        settings["listeners"] = [{key: value for key, value in effective_settings(listener).items()
                                  if key == "name" or value != settings.get(key)} for listener in config.listeners]
    return settings


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
    if config.check_config:
        print(simplejson.dumps(effective_settings(config), indent=2, sort_keys=True))
        return 0
    logging_setup = setup_logging(config)
    limit = raise_file_limit()
    if limit < 2 * 1024:
        log.warning("open-file limit is %d: gagent can serve at most about %d miners; raise it "
                    "(ulimit -n, LimitNOFILE= or supervisor minfds)", limit, limit - 64)
    farm = Farm(config)
    try:
        farm.start()
    except ListenerError as exc:
        log.error("%s", exc)
        return 1
    status = start_status_server(farm)
    summary = SummaryLogger(farm)
    summary.start()
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
    summary.stop()
    if status is not None:
        status.stop()
    farm.stop()
    log.info("stopped")
    logging_setup.close()
    return 0


def start_status_server(farm: Farm) -> Optional[StatusServer]:
    """The status listener on `http_listen`, or None when it is off or cannot listen.

    A status port that is taken costs the status page, not the miners: the agent logs an error and
    keeps mining.
    """
    if not farm.config.http_listen:
        return None
    status = StatusServer(farm)
    try:
        status.start()
    except OSError as exc:
        log.error("cannot serve the status page on %s: %s; mining continues without /metrics, "
                  "/status.json and /healthz (set http_listen to a free address, or \"\" to turn it off)",
                  farm.config.http_listen, exc.strerror or exc)
        return None
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

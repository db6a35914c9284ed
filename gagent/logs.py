"""Logging: stderr, or size-capped rotating files in LOGDIR reopened on SIGHUP; a summary line a minute.

Two ways to keep the log small, pick either: gagent rotates `gagent.log` itself at `log_max_bytes`,
keeping `log_backups` old files; or logrotate renames the file and sends SIGHUP, and gagent reopens
`gagent.log`.
"""
import logging
import os
import signal
import time
from logging.handlers import RotatingFileHandler
from typing import TYPE_CHECKING, Any, List, Optional, Tuple

import gevent

from .config import Config
from .status.snapshot import MinerTotals, format_hashrate, held_miners, ready_connections, yielding

if TYPE_CHECKING:  # pragma: no cover
    from .farm import Farm

log = logging.getLogger("gagent")

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_FILE = "gagent.log"
SUMMARY_INTERVAL = 60.0


class ReopenableFileHandler(RotatingFileHandler):
    """RotatingFileHandler that can reopen its file by name (after logrotate moved it)."""

    def reopen(self) -> None:
        self.acquire()
        try:
            if self.stream is not None:
                self.stream.close()
            self.stream = self._open()
        finally:
            self.release()

    def doRollover(self) -> None:
        if self.backupCount > 0:
            super().doRollover()
            return
        # No backups wanted: the stdlib would reopen in append mode and never shrink the file.
        if self.stream is not None:
            self.stream.close()
        self.stream = open(self.baseFilename, "w", encoding=self.encoding)  # noqa: SIM115 - kept open


class LogSetup:
    """The handler setup_logging installed and its SIGHUP handler; `close()` removes both."""

    def __init__(self, handler: logging.Handler) -> None:
        self.handler = handler
        # Also when logging to stderr: SIGHUP's default action would end the agent when a logrotate
        # rule meant for another setup sends it.
        self._sighup: Any = gevent.signal_handler(signal.SIGHUP, self.reopen)

    @property
    def path(self) -> Optional[str]:
        return self.handler.baseFilename if isinstance(self.handler, ReopenableFileHandler) else None

    def reopen(self) -> None:
        """Reopen the log file by name; on stderr, nothing to do."""
        if isinstance(self.handler, ReopenableFileHandler):
            self.handler.reopen()
            log.info("log file %s reopened (SIGHUP)", self.handler.baseFilename)

    def close(self) -> None:
        if self._sighup is not None:
            self._sighup.cancel()
            self._sighup = None
        root = logging.getLogger()
        if self.handler in root.handlers:
            root.removeHandler(self.handler)
        self.handler.close()


def setup_logging(config: Config) -> LogSetup:
    """Log to stderr, or to LOGDIR/gagent.log (rotated) when -l is given; SIGHUP reopens the file."""
    if config.log_dir and config.log_dir != "stderr":
        os.makedirs(config.log_dir, exist_ok=True)
        handler: logging.Handler = ReopenableFileHandler(
            os.path.join(config.log_dir, LOG_FILE), maxBytes=config.log_max_bytes,
            backupCount=config.log_backups, encoding="utf-8")
    else:
        handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(config.log_level)
    return LogSetup(handler)


class SummaryLogger:
    """Logs a line every `interval` seconds per listener: miners, pool connections, share rates, hashrate."""

    def __init__(self, farm: "Farm", interval: float = SUMMARY_INTERVAL) -> None:
        self.farm = farm
        self.interval = interval
        self._greenlet: Optional[gevent.Greenlet] = None
        self._last = self._share_counts()

    def start(self) -> None:
        self._last = self._share_counts()
        self._greenlet = gevent.spawn(self._run)

    def stop(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill(block=False)
            self._greenlet = None

    def _run(self) -> None:
        while True:
            gevent.sleep(self.interval)
            try:
                for line in self.lines():
                    log.info(line)
            except Exception:  # a bug here must not end the summaries, let alone the agent
                log.exception("summary line failed")

    def _share_counts(self) -> Tuple[float, List[Tuple[int, int]]]:
        return (time.monotonic(), [(sum(agent.counters.shares_accepted.values()),
                                    sum(agent.counters.shares_rejected.values())) for agent in self.farm.agents])

    def lines(self) -> List[str]:
        """The summary since the previous lines (or since start), one line per listener; the listener's
        name leads each line when there are several."""
        then, counts_then = self._last
        self._last = now, counts = self._share_counts()
        elapsed = max(now - then, 1e-9)
        several = len(self.farm.agents) > 1
        lines = []
        for agent, (accepted, rejected), (accepted_then, rejected_then) in zip(self.farm.agents, counts, counts_then):
            totals = MinerTotals()
            for miner in yielding(list(agent.miners.values())):
                totals.add(miner)
            ready, total = ready_connections(agent)
            lines.append("summary%s: %d miners online (%d connected, %d held), pool connections ready %d/%d, "
                         "shares/s accepted %.2f rejected %.2f, hashrate %s"
                         % (" " + agent.name if several else "", totals.total_authorized, totals.connected,
                            held_miners(agent), ready, total, (accepted - accepted_then) / elapsed,
                            (rejected - rejected_then) / elapsed, format_hashrate(totals.total_hashrate)))
        return lines

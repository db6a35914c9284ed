"""The farm's recent past for the status page: per listener and in total, a minute at a time, 24 hours.

Every `interval` seconds (at whole minutes of wall time) History asks `sample()` for the figures of
each series and stores them in ring buffers: one array('d') of `points` slots per figure, so
5 figures x 8 bytes x 1440 points = 57,600 bytes (about 58 KB) per series for a day at one-minute
resolution, whatever the number of miners. A minute with no sample of a series holds NaN (null in
the JSON). Shares accepted and rejected arrive as counters and are kept per minute (the increase
since the previous sample); a counter that goes down (its listener restarted) counts from zero again.
"""
import logging
import math
import time
from array import array
from typing import TYPE_CHECKING, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import gevent

from ..errors import log_unexpected
from .snapshot import MinerTotals, _encode, _escape, ready_connections, yield_to_hub, yielding

if TYPE_CHECKING:  # pragma: no cover
    from ..server import Agent

log = logging.getLogger("gagent.status")

FIGURES = ("hashrate", "miners", "accepted", "rejected", "connections_ready")
COUNTERS = ("accepted", "rejected")
TOTAL = "total"
NAN = float("nan")
Figures = Dict[str, Dict[str, float]]  # series name -> figure -> value, what a sample gives


class _Series:
    """One series' ring buffers, the minute it was last sampled in and its counters then."""

    __slots__ = ("values", "last_slot", "counts")

    def __init__(self, blank: array) -> None:
        self.values = {figure: array("d", blank) for figure in FIGURES}
        self.last_slot = -1
        self.counts: Dict[str, float] = {}


class History:
    """Ring buffers of `points` samples taken every `interval` seconds: `start()`, `stop()`, `to_json()`.

    Costs 40 * `points` bytes per series (57,600 with the defaults). A new series starts empty and its
    counters count from zero; a series that is no longer sampled keeps its data until that ages out,
    then is forgotten.
    """

    def __init__(self, sample: Callable[[], Figures], interval: float = 60.0, points: int = 1440) -> None:
        self.sample = sample
        self.interval = interval
        self.points = points
        self._blank = array("d", [NAN]) * points
        self._series: Dict[str, _Series] = {}
        self._first = self._latest = -1  # slots (time // interval) of the first and the newest sample
        self._version = 0                # bumped by every sample, so that a build can tell it was overtaken
        self._greenlet: Optional[gevent.Greenlet] = None

    @property
    def nbytes(self) -> int:
        """Bytes held by the ring buffers."""
        return sum(len(values) * values.itemsize for series in self._series.values()
                   for values in series.values.values())

    def start(self) -> None:
        """Take a sample now (the page has something at once), then one at every whole interval."""
        try:
            self.record()
        except Exception as exc:  # a bug here must cost the history, not the status page or the agent
            log_unexpected(log, "history sample", exc)
        self._greenlet = gevent.spawn(self._run)

    def stop(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill(block=False)
            self._greenlet = None

    def _run(self) -> None:
        while True:
            now = time.time()
            due = int(now // self.interval) + 1
            gevent.sleep(due * self.interval - now)
            try:
                self._record(max(due, int(time.time() // self.interval)))
            except Exception as exc:
                log_unexpected(log, "history sample", exc)

    def record(self, now: Optional[float] = None) -> None:
        """Take a sample into the minute (the interval) that `now` falls in (wall-clock seconds; default:
        now). Another sample in the same minute replaces its figures and adds to its share counts."""
        self._record(int((time.time() if now is None else now) // self.interval))

    def _record(self, slot: int) -> None:
        figures = self.sample()
        slot = max(slot, self._latest)  # the clock stepped back: into the newest minute until it catches up
        if self._latest < 0:
            self._first = slot
        elif slot > self._latest:  # the minutes in between (none, normally) have no sample
            for series in self._series.values():
                for values in series.values.values():
                    self._clear(values, self._latest + 1, min(slot - self._latest, self.points))
        self._latest = slot
        for name, figures_now in figures.items():
            self._store(name, slot, figures_now)
        for name in [name for name, series in self._series.items() if series.last_slot <= slot - self.points]:
            del self._series[name]
        self._version += 1

    def _clear(self, values: array, slot: int, count: int) -> None:
        """Set `count` slots from `slot` on to NaN."""
        start = slot % self.points
        end = start + count
        if end <= self.points:
            values[start:end] = self._blank[:count]
        else:
            values[start:] = self._blank[start:]
            values[:end - self.points] = self._blank[:end - self.points]

    def _store(self, name: str, slot: int, figures: Mapping[str, float]) -> None:
        series = self._series.get(name)
        if series is None:
            series = self._series[name] = _Series(self._blank)
        again = series.last_slot == slot
        position = slot % self.points
        for figure in FIGURES:
            value = float(figures[figure])
            if not math.isfinite(value):
                value = NAN
            if figure in COUNTERS:
                last = series.counts.get(figure)
                series.counts[figure] = value
                if last is not None and value >= last:
                    value -= last  # else: new, or the counter went down (restarted): counted from zero
                if again:
                    value += series.values[figure][position]
            series.values[figure][position] = value
        series.last_slot = slot

    def _ordered(self, values: array, first: int, count: int) -> array:
        """The `count` values from slot `first` on, oldest first."""
        start = first % self.points
        end = start + count
        if end <= self.points:
            return values[start:end]
        return values[start:] + values[:end - self.points]

    def to_json(self) -> bytes:
        """{"interval": seconds, "t": [start of each minute, oldest first], "series": {name: {figure:
        [value or null for each t]}}}: accepted and rejected are shares in that minute, hashrate (H/s,
        4 significant digits), miners online and connections ready are as sampled. About 40 kB per
        series for a full day, written one series at a time (about 1 ms each) with a turn for the hub
        in between."""
        while True:
            version = self._version
            first = max(self._first, self._latest - self.points + 1)
            count = self._latest - first + 1 if self._latest >= 0 else 0
            step = int(self.interval) if float(self.interval).is_integer() else self.interval
            pieces: List[str] = []
            for name, series in list(self._series.items()):
                pieces.append(_escape(name) + ":" + self._series_json(series, first, count))
                yield_to_hub()
                if self._version != version:
                    break  # a sample came in meanwhile and may have overwritten the oldest minute: again
            else:
                return ('{"interval":%s,"t":%s,"series":{%s}}' % (
                    _encode(step), _encode([slot * step for slot in range(first, first + count)]),
                    ",".join(pieces))).encode()

    def _series_json(self, series: _Series, first: int, count: int) -> str:
        parts = []
        for figure in FIGURES:
            form = "%.4g" if figure == "hashrate" else "%d"
            values = self._ordered(series.values[figure], first, count)
            parts.append('"%s":[%s]' % (figure, ",".join(["null" if v != v else form % v for v in values])))
        return "{%s}" % ",".join(parts)


def sample_agents(agents: Sequence[Tuple[str, "Agent"]]) -> Figures:
    """The figures of each (listener name, agent) and their sums as "total": what History samples.

    Walks every miner (yielding to the hub as the other walks do). An agent's counters only grow while
    the process runs, so the total's do too.
    """
    figures: Figures = {}
    total = dict.fromkeys(FIGURES, 0.0)
    for name, agent in agents:
        miners = MinerTotals()
        for miner in yielding(list(agent.miners.values())):
            miners.add(miner)
        counters = agent.counters
        own = {"hashrate": miners.total_hashrate, "miners": miners.total_authorized,
               "accepted": sum(counters.shares_accepted.values()),
               "rejected": sum(counters.shares_rejected.values()),
               "connections_ready": ready_connections(agent)[0]}
        for figure, value in own.items():
            total[figure] += value
        figures[name] = own
    return {TOTAL: total, **figures}

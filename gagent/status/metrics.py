"""Prometheus metrics: a Collector that reads the listeners when scraped, so counting costs nothing extra.

Every gagent_* series carries the `listener` label. Series per sub-account always; per worker only with `http_per_worker_metrics` (10,000 workers are
tens of thousands of series, more than most Prometheus setups want from one target). Workers that
share a name (`fixed_worker_name`, or one rig reconnecting from two addresses) are summed into one
series, since Prometheus refuses two samples with the same labels.
"""
import copy
import os
from collections import Counter
from typing import TYPE_CHECKING, Dict, Iterator, List, Optional, Tuple

import psutil
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily,
                                    InfoMetricFamily, Metric)
from prometheus_client.utils import floatToGoString

from .. import __version__
from ..counters import FANOUT_BUCKETS
from .snapshot import STATES, MinerTotals, is_healthy, reason_name, yield_to_hub, yielding

if TYPE_CHECKING:  # pragma: no cover
    from ..farm import Farm

SAMPLES_PER_YIELD = 1000
# the per-worker families: (name, type, help), in the order of the rows AgentCollector._miners makes
WORKER_FAMILIES = (
    ("gagent_worker_connections", "gauge", "Connections of the worker"),
    ("gagent_worker_shares_accepted", "counter", "Shares of the worker answered true (since its connections opened)"),
    ("gagent_worker_shares_rejected", "counter", "Shares of the worker answered with an error "
     "(since its connections opened)"),
    ("gagent_worker_hashrate", "gauge", "Hash rate of the worker over the last 10 minutes, hashes per second"),
    ("gagent_worker_last_share_time_seconds", "gauge", "Unix time of the worker's last share (0: none yet)"),
    ("gagent_worker_difficulty", "gauge", "Last difficulty sent to the worker"),
)
WorkerRows = List[Tuple[Tuple[str, str, str], List[float]]]  # sorted [((listener, sub_account, worker), values)]


class WorkerSeries:
    """One per-worker family, written by metrics_text itself: 60,000 samples (10,000 workers) took
    about 0.8 s through prometheus-client's formatter, about 0.05 s this way. `family()` is the same
    series as a prometheus-client family: the text written must be what that formats to (a test
    compares them)."""

    labels = ["listener", "sub_account", "worker"]

    def __init__(self, name: str, kind: str, documentation: str, rows: WorkerRows, index: int) -> None:
        self.name, self.kind, self.documentation = name, kind, documentation
        self.rows, self.index = rows, index  # the value is rows[n][1][index]

    def family(self, rows: Optional[WorkerRows] = None) -> Metric:
        """The prometheus-client family of these samples (or of `rows`: no rows give the # lines only)."""
        family = (CounterMetricFamily if self.kind == "counter" else GaugeMetricFamily)(
            self.name, self.documentation, labels=self.labels)
        for key, values in self.rows if rows is None else rows:
            family.add_metric(list(key), values[self.index])
        return family

    def text(self, labels: List[str]) -> Iterator[str]:
        """The # HELP and # TYPE lines (formatted by prometheus-client), then the samples,
        SAMPLES_PER_YIELD lines per piece; `labels` holds each row's `{...} ` text."""
        yield generate_latest(_Piece(self.family([]))).decode()
        sample_name = self.name + ("_total" if self.kind == "counter" else "")
        index = self.index
        # a worker's hashrate is its own; the other values repeat between workers: format each once
        value_text = floatToGoString if index == HASHRATE_INDEX else _GoTexts().__getitem__
        rows = self.rows
        for start in range(0, len(rows), SAMPLES_PER_YIELD):
            parts = []
            add = parts.extend
            for label_text, (_, row) in zip(labels[start:start + SAMPLES_PER_YIELD],
                                            rows[start:start + SAMPLES_PER_YIELD]):
                add((sample_name, label_text, value_text(row[index]), "\n"))
            yield "".join(parts)


HASHRATE_INDEX = 3  # of gagent_worker_hashrate in WORKER_FAMILIES


class _GoTexts(dict):
    """Sample values as prometheus-client writes them, each distinct value formatted once."""

    def __missing__(self, value: float) -> str:
        text = self[value] = floatToGoString(value)  # 1 and 1.0 are both "1.0": no type mix-up here
        return text


def _escape(value: str) -> str:
    """A label value as the text format wants it."""
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _label_texts(rows: WorkerRows) -> List[str]:
    """'{listener="...",sub_account="...",worker="..."} ' of each row, SAMPLES_PER_YIELD rows between yields."""
    texts: List[str] = []
    for start in range(0, len(rows), SAMPLES_PER_YIELD):
        texts += ['{listener="%s",sub_account="%s",worker="%s"} ' % (_escape(listener), _escape(sub_account),
                                                                     _escape(worker))
                  for (listener, sub_account, worker), _ in rows[start:start + SAMPLES_PER_YIELD]]
        yield_to_hub()
    return texts


class FarmCollector:
    """Builds every gagent_* and process_* family from the listeners' live state at scrape time; every
    gagent_* series but the build's carries the `listener` label."""

    def __init__(self, farm: "Farm") -> None:
        self.farm = farm
        self.process = psutil.Process()

    def describe(self) -> List[Metric]:
        return []  # registering must not walk the agents; names are fixed and unique anyway

    def collect(self) -> Iterator[Metric]:
        agents = self.farm.agents
        info = InfoMetricFamily("gagent_build", "gagent version")
        info.add_metric([], {"version": __version__})
        yield info
        for name, doc, value_of in (
                ("gagent_start_time_seconds", "When the listener started (Unix time)", lambda a: a.started_at),
                ("gagent_listening", "1 while the listener's miner port accepts connections",
                 lambda a: 1 if a.listening else 0),
                ("gagent_healthy", "1 while the listener can serve miners (/healthz answers 200 when all can)",
                 lambda a: 1 if is_healthy(a) else 0)):
            family = GaugeMetricFamily(name, doc, labels=["listener"])
            for agent in agents:
                family.add_metric([agent.name], value_of(agent))
            yield family

        yield from self._miners()

        accepted = CounterMetricFamily("gagent_shares_accepted", "Shares answered true to miners",
                                       labels=["listener", "sub_account"])
        rejected = CounterMetricFamily("gagent_shares_rejected", "Shares answered with an error, by reason",
                                       labels=["listener", "sub_account", "reason", "code"])
        for agent in agents:
            counters = agent.counters
            for sub_account in _with_configured(counters.shares_accepted, list(agent.pool_sets)):
                accepted.add_metric([agent.name, sub_account], counters.shares_accepted[sub_account])
            for (sub_account, code), count in sorted(counters.shares_rejected.items()):
                rejected.add_metric([agent.name, sub_account, reason_name(code), str(code)], count)
        yield accepted
        yield rejected
        for name, doc, field in (
                ("gagent_shares_refused_upstream_lost",
                 "Shares answered with an error because their pool connection was lost", "shares_refused_upstream_lost"),
                ("gagent_shares_true_unconfirmed_at_loss",
                 "Shares answered true on the pool's TCP acknowledgement that no probe answer had proven read "
                 "when their pool connection was lost (at most these can be lost)", "shares_true_unconfirmed_at_loss"),
                ("gagent_upstream_reconnects", "Pool connections re-established after a loss", "upstream_reconnects"),
                ("gagent_upstream_failbacks", "Pool connections moved back to the first pool", "upstream_failbacks"),
                ("gagent_miners_moved", "Miners moved from one pool connection to another", "miners_moved"),
                ("gagent_miner_holds", "Times a miner was held while no pool connection was ready", "miners_held"),
                ("gagent_miners_dropped_after_grace", "Held miners disconnected once the grace period ran out",
                 "miners_dropped_after_grace")):
            family = CounterMetricFamily(name, doc, labels=["listener"])
            for agent in agents:
                family.add_metric([agent.name], getattr(agent.counters, field))
            yield family

        yield from self._upstreams()
        fanout = HistogramMetricFamily("gagent_job_fanout_seconds",
                                       "Time for one job to reach every miner of a pool connection",
                                       labels=["listener"])
        for agent in agents:
            cumulative, buckets = 0, []
            for bound, count in zip(FANOUT_BUCKETS + (float("inf"),), agent.counters.fanout_bucket_counts):
                cumulative += count
                buckets.append((floatToGoString(bound), cumulative))
            fanout.add_metric([agent.name], buckets, agent.counters.fanout_sum)
        yield fanout
        yield from self._process()

    def _miners(self) -> Iterator[Metric]:
        per_worker = self.farm.config.http_per_worker_metrics
        connected = GaugeMetricFamily("gagent_miners_connected", "Miner connections open (authorized or not)",
                                      labels=["listener"])
        authorized = GaugeMetricFamily("gagent_miners_authorized", "Authorized miners",
                                       labels=["listener", "sub_account"])
        held = GaugeMetricFamily("gagent_miners_held", "Miners held until a pool connection is ready",
                                 labels=["listener", "sub_account"])
        hashrate = GaugeMetricFamily("gagent_hashrate", "Hash rate estimated from accepted difficulty over the "
                                     "last 10 minutes, hashes per second", labels=["listener", "sub_account"])
        # (listener, sub_account, worker) -> [connections, accepted, rejected, hashrate, last share, difficulty]
        workers: Dict[Tuple[str, str, str], List[float]] = {}
        for agent in self.farm.agents:
            totals = MinerTotals()
            for miner in yielding(list(agent.miners.values())):  # one pass, letting the hub poll in between
                rate = totals.add(miner)
                worker = miner.worker_name
                if per_worker and worker:
                    key = (agent.name, miner.sub_account, worker)
                    row = workers.get(key)
                    if row is None:
                        row = workers[key] = [0, 0, 0, 0.0, 0.0, 0.0]
                    row[0] += 1
                    row[1] += miner.accepted
                    row[2] += miner.rejected
                    row[3] += rate
                    row[4] = max(row[4], miner.last_share_at)
                    row[5] = miner.difficulty or row[5]
            connected.add_metric([agent.name], totals.connected)
            sub_accounts = list(agent.pool_sets)
            for sub_account in _with_configured(totals.authorized, sub_accounts):
                authorized.add_metric([agent.name, sub_account], totals.authorized.get(sub_account, 0))
                hashrate.add_metric([agent.name, sub_account], totals.hashrate.get(sub_account, 0.0))
            for sub_account, pool_set in agent.pool_sets.items():
                held.add_metric([agent.name, sub_account], pool_set.held_count)
        yield connected
        yield authorized
        yield held
        yield hashrate
        if not per_worker:
            return
        rows = sorted(workers.items())
        for index, (name, kind, documentation) in enumerate(WORKER_FAMILIES):
            yield WorkerSeries(name, kind, documentation, rows, index)

    def _upstreams(self) -> Iterator[Metric]:
        states = GaugeMetricFamily("gagent_upstream_connections", "Pool connections by pool and state",
                                   labels=["listener", "sub_account", "pool", "state"])
        traffic = [CounterMetricFamily(name, doc, labels=["listener", "sub_account"]) for name, doc in (
            ("gagent_upstream_sent_bytes", "Bytes sent to the pool"),
            ("gagent_upstream_received_bytes", "Bytes received from the pool"),
            ("gagent_upstream_sent_frames", "Messages (ex-message frames and JSON lines) sent to the pool"),
            ("gagent_upstream_received_frames", "Messages (ex-message frames and JSON lines) received from the pool"))]
        for agent in self.farm.agents:
            for sub_account, pool_set in agent.pool_sets.items():
                by_state: Counter = Counter()
                totals = [0, 0, 0, 0]
                for conn in pool_set.connections:
                    pool = conn.pool.label if conn.pool is not None else ""
                    by_state[(pool, conn.state)] += 1
                    for index, value in enumerate((conn.bytes_sent, conn.bytes_received,
                                                   conn.frames_sent, conn.frames_received)):
                        totals[index] += value
                for pool in sorted({pool for pool, _ in by_state}):
                    for state in STATES:  # every state, zeros included, so dashboards see the transitions
                        states.add_metric([agent.name, sub_account, pool, state], by_state[(pool, state)])
                for family, value in zip(traffic, totals):
                    family.add_metric([agent.name, sub_account], value)
        yield states
        yield from traffic

    def _process(self) -> Iterator[Metric]:
        process = self.process
        with process.oneshot():
            cpu = process.cpu_times()
            yield GaugeMetricFamily("process_resident_memory_bytes", "Resident memory size in bytes",
                                    value=process.memory_info().rss)
            yield CounterMetricFamily("process_cpu_seconds", "User and system CPU time spent in seconds",
                                      value=cpu.user + cpu.system)
            yield GaugeMetricFamily("process_open_fds", "Open file descriptors", value=open_fds(process))
            yield GaugeMetricFamily("process_start_time_seconds", "Start time of the process since the Unix "
                                    "epoch in seconds", value=process.create_time())


def open_fds(process: psutil.Process) -> int:
    """How many file descriptors the process has open.

    Linux 6.2 and later report the count as the size of /proc/PID/fd, which takes microseconds to
    read; listing the directory (psutil's way, the fallback on other kernels) takes 15 to 30 ms at
    10,000 miners, in one piece, with the hub blocked.
    """
    try:
        count = os.stat("/proc/%d/fd" % process.pid).st_size
    except OSError:
        count = 0
    return count or process.num_fds()


def _with_configured(counts: Dict[str, float], sub_accounts: List[str]) -> List[str]:
    """Configured sub-accounts (so their series exist at 0) plus any others seen, sorted."""
    return sorted(set(sub_accounts) | set(counts))


def make_registry(farm: "Farm") -> CollectorRegistry:
    """The registry metrics_text formats (per-worker families come as WorkerSeries, which only
    metrics_text knows how to write)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FarmCollector(farm))
    return registry


class _Piece:
    """A collector holding one slice of a family, for generate_latest."""

    def __init__(self, metric: Metric) -> None:
        self.metric = metric

    def collect(self) -> List[Metric]:
        return [self.metric]


def metrics_text(registry: CollectorRegistry) -> bytes:
    """The text exposition, formatted SAMPLES_PER_YIELD samples at a time with yields in between.

    Formatting is the slow part of a scrape with per-worker series (10,000 workers: 60,000 samples);
    done in one go it would stall every miner for that long. Per-worker families are written by
    WorkerSeries; every other slice is formatted by prometheus-client itself, the # HELP/# TYPE lines
    of a family kept from its first slice only.
    """
    parts = []
    labels: Optional[List[str]] = None  # of the worker rows, shared by the per-worker families
    for family in registry.collect():
        if isinstance(family, WorkerSeries):
            if labels is None:
                labels = _label_texts(family.rows)
            for text in family.text(labels):
                parts.append(text.encode())
                yield_to_hub()
            continue
        samples = family.samples
        for start in range(0, max(len(samples), 1), SAMPLES_PER_YIELD):
            piece = copy.copy(family)
            piece.samples = samples[start:start + SAMPLES_PER_YIELD]
            text = generate_latest(_Piece(piece))
            if start:
                text = b"".join(line for line in text.splitlines(True) if not line.startswith(b"#"))
            parts.append(text)
            if len(samples) > SAMPLES_PER_YIELD:
                yield_to_hub()
    return b"".join(parts)


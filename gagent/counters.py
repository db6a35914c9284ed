"""Agent-wide event counters: plain integers bumped on the hot path, read by logs and metrics.

Nothing here does I/O or imports a metrics library: a scrape reads these fields, so counting a share
costs one attribute increment.
"""
from collections import Counter
from typing import Dict, List, Tuple

# Upper bounds (seconds) of the job fan-out histogram buckets; the last bucket is +Inf.
FANOUT_BUCKETS: Tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Counters:
    """What happened since the agent started. Keys of the `Counter` fields are noted per field."""

    def __init__(self) -> None:
        self.shares_accepted: Counter = Counter()      # sub-account -> shares answered true
        self.shares_rejected: Counter = Counter()      # (sub-account, error code) -> shares answered with an error
        self.shares_refused_upstream_lost = 0          # shares answered with an error because their connection broke
        self.shares_true_unconfirmed_at_loss = 0       # shares answered true (acknowledged by the pool's TCP stack)
                                                       # but not yet proven read when their connection broke
        self.miners_moved = 0                          # miners moved from one pool connection to another
        self.miners_held = 0                           # miners parked while no pool connection was ready
        self.miners_dropped_after_grace = 0            # held miners disconnected once the grace period ran out
        self.upstream_reconnects = 0                   # pool connections re-established after a loss
        self.upstream_failbacks = 0                    # connections moved back to the first pool
        self.fanout_bucket_counts: List[int] = [0] * (len(FANOUT_BUCKETS) + 1)
        self.fanout_sum = 0.0
        self.fanout_count = 0

    def observe_fanout(self, seconds: float) -> None:
        """Record how long one job took to reach every miner of a connection."""
        index = 0
        for index, bound in enumerate(FANOUT_BUCKETS):  # noqa: B007 - index is used after the loop
            if seconds <= bound:
                break
        else:
            index = len(FANOUT_BUCKETS)
        self.fanout_bucket_counts[index] += 1
        self.fanout_sum += seconds
        self.fanout_count += 1

    def snapshot(self) -> Dict[str, object]:
        """A JSON-friendly copy (used by the status page and tests)."""
        return {
            "shares_accepted": dict(self.shares_accepted),
            "shares_rejected": {"%s:%d" % key: n for key, n in self.shares_rejected.items()},
            "shares_refused_upstream_lost": self.shares_refused_upstream_lost,
            "shares_true_unconfirmed_at_loss": self.shares_true_unconfirmed_at_loss,
            "miners_moved": self.miners_moved,
            "miners_held": self.miners_held,
            "miners_dropped_after_grace": self.miners_dropped_after_grace,
            "upstream_reconnects": self.upstream_reconnects,
            "upstream_failbacks": self.upstream_failbacks,
            "fanout_count": self.fanout_count,
            "fanout_sum": self.fanout_sum,
        }

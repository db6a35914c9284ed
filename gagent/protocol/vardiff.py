"""Per-miner difficulty (vardiff) for plain pools, pure: state and time in, a new difficulty or None out.

Aim: one share every ``share_interval`` seconds per miner. A miner's window counts the shares that meet
its *current* difficulty; whatever the miner was last told, such shares arrive at hashrate / difficulty,
so shares of an older, lower difficulty still in flight after a raise do not inflate the estimate. A
window closes after ``retarget_shares`` (K) counted shares or ``retarget_seconds`` (M), whichever comes
first; then the difficulty that would have given the aimed rate is

    estimate = difficulty × shares × share_interval / elapsed      (no share at all counts as one)

and it is applied only when it differs from the current one by at least ``min_change`` (default 2, so
Poisson noise within a factor 2 changes nothing), clamped to [min_difficulty, pool difficulty]: above
the pool's difficulty a miner would keep back shares the pool would pay for. A pool difficulty that
drops below a miner's is applied at once. Defaults (10 s, K 60, M 600 s), measured on simulated
Poisson miners: about one spurious change a day for a well-tuned miner (K 30 / M 300 s gave twelve),
a miner 14× faster than its start difficulty retargeted in ~45 s, one 4600× slower (no share at all)
in ~20 min, as a silent window lowers the difficulty up to 60× at a time.

Difficulties are powers of two by default (``power_of_two``), as btcpool sends them: short
set_difficulty lines and exact targets, at most √2 off the aim, well inside the change band of 2. Miners
accept any float; ``power_of_two=False`` sends the estimate itself.

The caller sends mining.set_difficulty before the miner's next job and, until that job is out, checks
the miner's shares against the lower of the old and the new difficulty. State is three numbers per
miner (slots), for tens of thousands of miners.
"""
import math
from typing import Optional


class MinerDifficulty:
    """One miner's vardiff state: its difficulty, shares counted and when the window started."""

    __slots__ = ("difficulty", "shares", "since")

    def __init__(self, difficulty: float, since: float) -> None:
        self.difficulty = difficulty
        self.shares = 0
        self.since = since


class Vardiff:
    """The vardiff settings of a set of miners and the decisions taken with them."""

    __slots__ = ("share_interval", "retarget_shares", "retarget_seconds", "min_difficulty",
                 "start_difficulty", "min_change", "power_of_two")

    def __init__(self, share_interval: float = 10.0, retarget_shares: int = 60, retarget_seconds: float = 600.0,
                 min_difficulty: float = 1.0, start_difficulty: float = 16384.0, min_change: float = 2.0,
                 power_of_two: bool = True) -> None:
        if not (share_interval > 0 and retarget_shares >= 1 and retarget_seconds > 0 and min_difficulty > 0
                and start_difficulty > 0 and min_change >= 1):
            raise ValueError("vardiff settings must be positive, with min_change at least 1")
        self.share_interval = share_interval
        self.retarget_shares = retarget_shares
        self.retarget_seconds = retarget_seconds
        self.min_difficulty = min_difficulty
        self.start_difficulty = start_difficulty
        self.min_change = min_change
        self.power_of_two = power_of_two

    def start(self, now: float, pool_difficulty: float) -> MinerDifficulty:
        """A new miner's state: the start difficulty, clamped to [min_difficulty, pool difficulty]."""
        return MinerDifficulty(self._clamp(self.start_difficulty, pool_difficulty), now)

    def share(self, state: MinerDifficulty, now: float, share_difficulty: float,
              pool_difficulty: float) -> Optional[float]:
        """An accepted share of the miner (its own difficulty); the new difficulty when it should
        change, else None."""
        if share_difficulty >= state.difficulty:
            state.shares += 1
        return self.tick(state, now, pool_difficulty)

    def tick(self, state: MinerDifficulty, now: float, pool_difficulty: float) -> Optional[float]:
        """Time passing without a share (call it every few seconds for every miner, or at least
        every retarget_seconds); the new difficulty when it should change, else None."""
        current = new = state.difficulty
        if current > pool_difficulty:
            new = pool_difficulty
        else:
            elapsed = now - state.since
            if state.shares < self.retarget_shares and elapsed < self.retarget_seconds:
                return None
            estimate = current * max(state.shares, 1) * self.share_interval / max(elapsed, 1e-3)
            if max(estimate / current, current / estimate) >= self.min_change:
                if self.power_of_two:
                    estimate = 2.0 ** round(math.log2(estimate))
                new = self._clamp(estimate, pool_difficulty)
        state.difficulty = new
        state.shares = 0
        state.since = now
        return None if new == current else new

    def _clamp(self, difficulty: float, pool_difficulty: float) -> float:
        return min(max(difficulty, self.min_difficulty), pool_difficulty)


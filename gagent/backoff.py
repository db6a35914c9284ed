"""Capped exponential back-off with jitter, so many agents and connections never retry in lockstep."""
import random
from typing import Callable


class Backoff:
    """Ceilings base, 2·base, 4·base … up to `cap`; each delay is drawn uniformly below its ceiling.

    "Full jitter" spreads the retries of many agents and connections over the whole interval, and the
    first of a pool set's connections to try again after an outage does so soon after the pool is
    back (the earliest of five draws), which is when its held miners get work."""

    __slots__ = ("base", "cap", "failures", "_random")

    def __init__(self, base: float = 0.5, cap: float = 30.0, rand: Callable[[], float] = random.random) -> None:
        self.base = base
        self.cap = cap
        self.failures = 0
        self._random = rand

    def next_delay(self) -> float:
        """The delay before the next attempt; each call counts one more failure."""
        ceiling = min(self.cap, self.base * (2 ** min(self.failures, 30)))
        self.failures += 1
        return ceiling * self._random()

    def reset(self) -> None:
        """A success: the next failure starts again from `base`."""
        self.failures = 0

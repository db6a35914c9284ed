"""Capped exponential back-off with jitter, so many agents and connections never retry in lockstep."""
import random
from typing import Callable


class Backoff:
    """Delays base, 2·base, 4·base … up to `cap`, each scaled by a random factor in [0.5, 1]."""

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
        return ceiling * (0.5 + 0.5 * self._random())

    def reset(self) -> None:
        """A success: the next failure starts again from `base`."""
        self.failures = 0

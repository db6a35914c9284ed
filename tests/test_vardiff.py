"""Per-miner vardiff (gagent/protocol/vardiff.py) against simulated miners of known hashrate."""
import math
import random
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gagent.protocol.hashing import DIFF1_TARGET
from gagent.protocol.vardiff import MinerDifficulty, Vardiff

HASHES_PER_DIFF1 = 2 ** 256 / DIFF1_TARGET   # expected hashes for one share of difficulty 1 (~2^32)
S19 = 100e12                                  # hashes per second
S19_AIMED = S19 * 10 / HASHES_PER_DIFF1       # the difficulty giving one share per 10 s (~232,827)
HIGH_POOL = 2.0 ** 40


def simulate(vardiff, hashrate, seconds, pool_difficulty, seed=1, delay=5.0, tick=5.0):
    """A Poisson miner: shares at hashrate / difficulty, each of difficulty working / U (U uniform in
    (0, 1]); a new difficulty reaches the miner `delay` seconds after vardiff decides it (its next job).
    Returns (state, [(time, new difficulty)], [(time, share difficulty)])."""
    rng = random.Random(seed)
    state = vardiff.start(0.0, pool_difficulty)
    working = state.difficulty
    switch_at, switch_to = float("inf"), None
    next_tick = tick
    next_share = rng.expovariate(hashrate / (working * HASHES_PER_DIFF1))
    changes, shares = [], []
    now = 0.0
    while now < seconds:
        now = min(next_tick, next_share, switch_at)
        if now == switch_at:
            working, switch_at = switch_to, float("inf")
            next_share = now + rng.expovariate(hashrate / (working * HASHES_PER_DIFF1))
            continue
        if now == next_share:
            difficulty = working / (1.0 - rng.random())
            shares.append((now, difficulty))
            new = vardiff.share(state, now, difficulty, pool_difficulty)
            next_share = now + rng.expovariate(hashrate / (working * HASHES_PER_DIFF1))
        else:
            new = vardiff.tick(state, now, pool_difficulty)
            next_tick += tick
        if new is not None:
            changes.append((now, new))
            switch_at, switch_to = now + delay, new
    return state, changes, shares


def seconds_per_share(shares, difficulty, since):
    """Mean seconds between shares meeting `difficulty` after `since`."""
    times = [t for t, d in shares if t >= since and d >= difficulty]
    return (times[-1] - times[0]) / (len(times) - 1)


@pytest.mark.parametrize("seed", range(5))
def test_a_miner_starting_too_low_converges_within_a_few_retargets(seed):
    vardiff = Vardiff()
    state, changes, shares = simulate(vardiff, S19, 6 * 3600, HIGH_POOL, seed=seed)
    assert S19_AIMED / 2 <= changes[0][1] <= S19_AIMED * 2 and changes[0][0] < 90   # 60 shares at 14x come fast
    assert len(changes) <= 3 and S19_AIMED / 2 <= state.difficulty <= S19_AIMED * 2
    assert 5 <= seconds_per_share(shares, state.difficulty, changes[-1][0] + 10) <= 20


@pytest.mark.parametrize("seed", range(5))
def test_a_miner_starting_too_high_converges_within_a_few_retargets(seed):
    vardiff = Vardiff(start_difficulty=2.0 ** 30)  # 4600x too high: no share for minutes
    state, changes, shares = simulate(vardiff, S19, 6 * 3600, HIGH_POOL, seed=seed)
    reached = [n for n, (_, new) in enumerate(changes) if S19_AIMED / 2 <= new <= S19_AIMED * 2]
    assert reached[0] <= 3 and changes[reached[0]][0] <= 2400
    assert len(changes) <= 5 and S19_AIMED / 2 <= state.difficulty <= S19_AIMED * 2
    assert 5 <= seconds_per_share(shares, state.difficulty, changes[-1][0] + 10) <= 20


@pytest.mark.parametrize("seed", range(4))
def test_plain_floats_land_near_the_aimed_difficulty(seed):
    state, changes, _ = simulate(Vardiff(power_of_two=False), S19, 6 * 3600, HIGH_POOL, seed=seed)
    assert len(changes) == 1 and not state.difficulty.is_integer()
    assert S19_AIMED / 1.3 <= state.difficulty <= S19_AIMED * 1.3


def test_powers_of_two_by_default():
    state, changes, _ = simulate(Vardiff(), S19, 3600, HIGH_POOL, seed=4)
    assert changes and all(math.log2(new).is_integer() for _, new in changes)


def test_noise_within_the_band_changes_nothing():
    vardiff = Vardiff(start_difficulty=2.0 ** 18)
    for interval in (6.0, 10.0, 15.0):                     # steady, up to a factor 1.67 off the aim
        state = vardiff.start(0.0, HIGH_POOL)
        now = 0.0
        while now < 24 * 3600:
            now += interval
            assert vardiff.share(state, now, state.difficulty, HIGH_POOL) is None
    tuned = 2.0 ** 18 * HASHES_PER_DIFF1 / 10              # a Poisson miner exactly on the aim for a day
    state, changes, _ = simulate(vardiff, tuned, 24 * 3600, HIGH_POOL, seed=7)
    assert len(changes) <= 2 and state.difficulty in (2.0 ** 17, 2.0 ** 18, 2.0 ** 19)


def test_never_above_the_pool_difficulty():
    state, changes, _ = simulate(Vardiff(), S19, 3600, 65536.0)
    assert state.difficulty == 65536.0 and all(new <= 65536.0 for _, new in changes)
    vardiff = Vardiff()
    assert vardiff.start(0.0, 1000.0).difficulty == 1000.0
    state = vardiff.start(0.0, HIGH_POOL)
    assert vardiff.tick(state, 1.0, 4096.0) == 4096.0      # a pool that lowers its difficulty applies at once
    assert vardiff.share(state, 2.0, 1e9, 2048.0) == 2048.0
    assert (state.shares, state.since) == (0, 2.0)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 400), st.floats(2.0 ** -8, 2.0 ** 50), st.floats(1.0, 2.0 ** 40),
                          st.booleans()), max_size=80),
       st.floats(1.0, 2.0 ** 40))
def test_difficulty_stays_within_min_and_pool(events, start):
    vardiff = Vardiff(start_difficulty=start, min_difficulty=4.0)
    now = 0.0
    state = vardiff.start(now, HIGH_POOL)
    for step, share_difficulty, pool, is_share in events:
        now += step
        if is_share:
            new = vardiff.share(state, now, share_difficulty, pool)
        else:
            new = vardiff.tick(state, now, pool)
        assert state.difficulty <= pool
        assert new is None or new >= min(4.0, pool)


def test_only_shares_at_the_current_difficulty_count():
    vardiff = Vardiff(start_difficulty=1024.0)
    state = vardiff.start(0.0, HIGH_POOL)
    for n in range(100):
        assert vardiff.share(state, n * 0.01, 512.0, HIGH_POOL) is None   # in flight from a lower difficulty
    assert state.shares == 0
    for n in range(59):
        assert vardiff.share(state, 1 + n * 0.01, 1024.0, HIGH_POOL) is None
    assert vardiff.share(state, 1.6, 4096.0, HIGH_POOL) > 1024.0            # the 60th closes the window


def test_a_silent_miner_is_lowered_after_the_window():
    vardiff = Vardiff(start_difficulty=2.0 ** 20)
    state = vardiff.start(0.0, HIGH_POOL)
    assert vardiff.tick(state, 599.0, HIGH_POOL) is None
    assert vardiff.tick(state, 600.0, HIGH_POOL) == 2.0 ** 14   # as if one share: 2^20 * 10 / 600 -> 2^14
    assert vardiff.tick(state, 1200.0, HIGH_POOL) == 2.0 ** 8
    assert vardiff.tick(state, 1200.0 + 86400, HIGH_POOL) == 1.0  # the floor


def test_state_is_a_few_numbers():
    vardiff = Vardiff()
    assert not hasattr(vardiff.start(0.0, HIGH_POOL), "__dict__")
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    miners = [vardiff.start(float(n), HIGH_POOL) for n in range(10000)]
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert len(miners) == 10000 and used < 1_200_000          # about 100 bytes a miner


@pytest.mark.parametrize("bad", [{"share_interval": 0}, {"retarget_shares": 0}, {"retarget_seconds": -1},
                                 {"min_difficulty": 0}, {"start_difficulty": 0}, {"min_change": 0.5}])
def test_settings_are_checked(bad):
    with pytest.raises(ValueError):
        Vardiff(**bad)


def test_state_can_be_built_directly():
    state = MinerDifficulty(512.0, 10.0)
    assert (state.difficulty, state.shares, state.since) == (512.0, 0, 10.0)

"""Back-off: ceilings double up to the cap, each delay is drawn below its ceiling, a success resets it."""
from gagent.backoff import Backoff


def test_ceilings_double_up_to_the_cap_and_delays_stay_below_them():
    backoff = Backoff(0.5, 30.0, rand=lambda: 0.999)
    delays = [backoff.next_delay() for _ in range(10)]
    ceilings = [0.5, 1, 2, 4, 8, 16, 30, 30, 30, 30]
    assert [round(d / 0.999, 6) for d in delays] == ceilings


def test_full_jitter_spreads_retries_over_the_whole_interval():
    draws = iter([0.0, 0.5, 0.25])
    backoff = Backoff(1.0, 30.0, rand=lambda: next(draws))
    assert [backoff.next_delay() for _ in range(3)] == [0.0, 1.0, 1.0]  # 0×1, 0.5×2, 0.25×4


def test_a_success_starts_again_from_the_base():
    backoff = Backoff(0.5, 30.0, rand=lambda: 1.0)
    for _ in range(6):
        backoff.next_delay()
    backoff.reset()
    assert backoff.next_delay() == 0.5

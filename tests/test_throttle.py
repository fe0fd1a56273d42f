"""The rate limit for repeated reports: one per key per interval, and a count of the rest."""

from __future__ import annotations

from servletkit.throttle import Throttle


def test_one_report_per_key_per_interval_with_the_count_held_back() -> None:
    """The first report goes out; repeats within the interval are held back and counted;
    the next one after the interval goes out with that count; keys are independent."""
    now = [100.0]
    throttle = Throttle(5.0, clock=lambda: now[0])
    assert throttle.allow("a") == 0
    assert throttle.allow("a") is None
    now[0] += 4.9
    assert throttle.allow("a") is None
    assert throttle.allow("b") == 0
    now[0] += 0.1
    assert throttle.allow("a") == 2
    assert throttle.allow("a") is None
    now[0] += 5.0
    assert throttle.allow("a") == 1
    assert throttle.allow("b") == 0


def test_the_first_report_goes_out_however_young_the_clock() -> None:
    """A clock that starts at 0 (a fresh monotonic clock) does not hold back the first one."""
    throttle = Throttle(10.0, clock=lambda: 0.0)
    assert throttle.allow("check_event_allowed") == 0

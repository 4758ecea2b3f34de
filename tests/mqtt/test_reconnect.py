"""The one backoff every broker session uses, and the owners' rules for giving up: pure, the time is given."""

from __future__ import annotations

import math

import pytest

from ansible_worker.mqtt.reconnect import KEEP_TRYING, Backoff, Reconnect, keep_trying_within


def waits(backoff: Backoff, count: int, now: float = 0.0) -> list[float]:
    result = []
    for _ in range(count):
        wait = backoff.next_wait(now)
        assert wait is not None
        result.append(wait)
    return result


def test_the_wait_doubles_up_to_its_most_jittered_down_by_at_most_half() -> None:
    policy = Reconnect(first=0.5, most=30.0)
    for attempt, wait in enumerate(waits(Backoff(policy), 12)):
        bound = min(30.0, 0.5 * 2**attempt)
        assert bound / 2 <= wait <= bound


def test_a_session_waiting_a_day_for_its_broker_still_waits_at_most_its_most() -> None:
    # Thousands of attempts in a row: the exponent must not outgrow what a float holds.
    assert max(waits(Backoff(KEEP_TRYING), 5000)) <= KEEP_TRYING.most


def test_a_worker_never_waits_longer_than_a_quarter_of_lost_after() -> None:
    for lost_after, most in ((6.0, 1.5), (20.0, 5.0), (150.0, 30.0), (86_400.0, 30.0)):
        policy = keep_trying_within(lost_after)
        assert (policy.first, policy.most, policy.give_up_after) == (0.5, most, math.inf)
        assert max(waits(Backoff(policy), 100)) <= most


def test_only_a_steady_link_starts_the_count_afresh() -> None:
    backoff = Backoff(Reconnect(first=1.0, most=100.0, steady=2.0))
    waits(backoff, 4)
    backoff.link_up(10.0)
    # Dropped after a second: a broker that accepts and drops must not be tried at once again.
    short = backoff.next_wait(11.0)
    assert short is not None
    assert short >= 2**4 / 2
    backoff.link_up(20.0)
    steady = backoff.next_wait(22.0)
    assert steady is not None
    assert steady <= 1.0


def test_the_worker_resets_on_any_link_and_never_gives_up() -> None:
    backoff = Backoff(KEEP_TRYING)
    waits(backoff, 6)
    backoff.link_up(5.0)
    first = backoff.next_wait(5.0)
    assert first is not None
    assert first <= KEEP_TRYING.first
    # A year without a link: still another attempt.
    assert backoff.next_wait(365 * 86400.0) is not None
    assert KEEP_TRYING.give_up_after == math.inf


def test_a_client_gives_up_once_its_time_without_a_steady_link_has_passed() -> None:
    backoff = Backoff(Reconnect(first=0.1, most=2.0, steady=2.0, give_up_after=60.0))
    backoff.link_up(0.0)
    assert backoff.next_wait(100.0) is not None  # the loss: its clock starts here
    assert backoff.next_wait(159.0) is not None
    backoff.link_up(159.5)  # a link that drops within a second does not stop the clock
    assert backoff.next_wait(160.0) is None


@pytest.mark.parametrize("give_up_after", [0.0, -1.0])
def test_no_time_to_reconnect_gives_up_at_the_loss(give_up_after: float) -> None:
    backoff = Backoff(Reconnect(give_up_after=give_up_after))
    backoff.link_up(0.0)
    assert backoff.next_wait(10.0) is None

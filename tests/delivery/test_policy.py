"""The delivery policy on its own: what each send result does to its row, no database or server."""

from __future__ import annotations

import dataclasses
import random
from datetime import UTC, datetime, timedelta

import pytest
from shop_events.config import DeliverySettings
from shop_events.delivery.dispatcher import DispatchResult, Settled
from shop_events.delivery.policy import (
    AUTH_TEXT,
    PAUSE_REASON_MAX,
    THROTTLED_WAIT,
    Dead,
    Held,
    Outcome,
    Pause,
    Released,
    Result,
    Retry,
    Sent,
    backoff,
    circuit_trips,
    classify,
    decide,
    describe,
    gives_up,
    streak_after,
    unreachable,
)
from shop_events.storage.outbox import Claimed

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
SETTINGS = DeliverySettings(
    backoff_base=timedelta(seconds=30),
    backoff_max=timedelta(hours=1),
    max_attempts=5,
    give_up_after=timedelta(hours=48),
    auth_pause=timedelta(minutes=5),
)


@dataclasses.dataclass(frozen=True)
class Row:
    attempts: int = 0
    created_at: datetime = NOW - timedelta(minutes=1)


class Edge(random.Random):
    """A random source that always draws the low or the high end of the range."""

    def __init__(self, high: bool) -> None:
        super().__init__(0)
        self.high = high

    def uniform(self, a: float, b: float) -> float:
        return b if self.high else a


# ------------------------------------------------------------------------------ classify


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, Outcome.SENT),
        (201, Outcome.SENT),
        (204, Outcome.SENT),
        (299, Outcome.SENT),
        (302, Outcome.DEAD),
        (400, Outcome.DEAD),
        (401, Outcome.AUTH),
        (403, Outcome.AUTH),
        (404, Outcome.DEAD),
        (408, Outcome.RETRY),
        (409, Outcome.DEAD),
        (422, Outcome.DEAD),
        (425, Outcome.RETRY),
        (429, Outcome.THROTTLED),
        (500, Outcome.RETRY),
        (502, Outcome.RETRY),
        (503, Outcome.RETRY),
        (None, Outcome.RETRY),
    ],
)
def test_classify(status: int | None, outcome: Outcome) -> None:
    assert classify(status) is outcome


# ------------------------------------------------------------------------------ decide


def test_not_tried_is_released_without_an_attempt() -> None:
    assert decide(None, Row(attempts=3), SETTINGS, NOW) == Released()


@pytest.mark.parametrize("status", [200, 201, 204])
def test_2xx_is_sent_and_spends_one_attempt(status: int) -> None:
    result = Result(status, "ignored")
    assert decide(result, Row(attempts=2), SETTINGS, NOW) == Sent(attempts=3, status=status)


@pytest.mark.parametrize("status", [401, 403])
def test_auth_refusal_pauses_delivery_and_spends_no_attempt(status: int) -> None:
    decision = decide(Result(status, "Invalid key"), Row(attempts=2), SETTINGS, NOW)
    assert decision == Pause(
        until=NOW + timedelta(minutes=5), error=f"HTTP {status}: Invalid key", status=status
    )


def test_auth_refusal_without_text_names_the_key() -> None:
    decision = decide(Result(401, ""), Row(), SETTINGS, NOW)
    assert isinstance(decision, Pause)
    assert decision.error == f"HTTP 401: {AUTH_TEXT}"


def test_auth_refusal_at_the_last_attempt_still_pauses() -> None:
    old = Row(attempts=SETTINGS.max_attempts, created_at=NOW - timedelta(days=30))
    assert isinstance(decide(Result(403, "no"), old, SETTINGS, NOW), Pause)


def test_pause_reason_is_cut_but_the_row_keeps_the_whole_text() -> None:
    decision = decide(Result(401, "x" * 1500), Row(), SETTINGS, NOW)
    assert isinstance(decision, Pause)
    assert len(decision.error) == len("HTTP 401: ") + 1500
    assert decision.reason == decision.error[:PAUSE_REASON_MAX]
    assert len(decision.reason) == PAUSE_REASON_MAX


@pytest.mark.parametrize("status", [400, 404, 409, 422])
def test_other_4xx_is_dead_with_the_platforms_text(status: int) -> None:
    decision = decide(Result(status, "bad eventTypeKey"), Row(attempts=1), SETTINGS, NOW)
    assert decision == Dead(error=f"HTTP {status}: bad eventTypeKey", attempts=2, status=status)


def test_dead_without_text_names_the_status() -> None:
    assert decide(Result(404, ""), Row(), SETTINGS, NOW) == Dead(
        error="HTTP 404", attempts=1, status=404
    )


def test_a_refusal_on_the_last_attempt_is_not_a_give_up() -> None:
    last = Row(attempts=SETTINGS.max_attempts - 1)
    decision = decide(Result(400, "bad"), last, SETTINGS, NOW)
    assert decision == Dead(error="HTTP 400: bad", attempts=SETTINGS.max_attempts, status=400)


@pytest.mark.parametrize("status", [408, 425, 500, 503])
def test_transient_failures_retry_with_backoff(status: int) -> None:
    decision = decide(Result(status, "busy"), Row(attempts=2), SETTINGS, NOW, random.Random(7))
    assert isinstance(decision, Retry)
    assert decision.error == f"HTTP {status}: busy"
    assert decision.attempts == 3
    assert decision.status == status
    # third attempt: 30 s × 2² = 120 s, half of it fixed
    assert NOW + timedelta(seconds=60) <= decision.at <= NOW + timedelta(seconds=120)


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_is_a_floor(status: int) -> None:
    result = Result(status, "slow down", retry_after=timedelta(minutes=10))
    decision = decide(result, Row(), SETTINGS, NOW, Edge(high=True))
    assert isinstance(decision, Retry)
    assert decision.at == NOW + timedelta(minutes=10)


@pytest.mark.parametrize(
    ("retry_after", "wait"),
    [
        (timedelta(seconds=1), timedelta(seconds=1)),
        (None, THROTTLED_WAIT),
        (timedelta(seconds=0), THROTTLED_WAIT),
        (timedelta(hours=5), SETTINGS.backoff_max),
    ],
)
def test_a_429_goes_again_after_its_retry_after_without_spending_an_attempt(
    retry_after: timedelta | None, wait: timedelta
) -> None:
    result = Result(429, "Too Many Requests", retry_after=retry_after)
    decision = decide(result, Row(attempts=4), SETTINGS, NOW, Edge(high=True))
    # not the event backoff (30 s × 2⁴ here): the account was over its limit, not the event
    assert decision == Retry(
        at=NOW + wait, error="HTTP 429: Too Many Requests", attempts=4, status=429
    )


def test_429s_never_make_a_row_dead_before_give_up_after() -> None:
    row = Row(attempts=SETTINGS.max_attempts + 10)
    decision = decide(Result(429, ""), row, SETTINGS, NOW)
    assert isinstance(decision, Retry)
    old = Row(created_at=NOW - SETTINGS.give_up_after)
    decision = decide(Result(429, "slow"), old, SETTINGS, NOW)
    assert isinstance(decision, Dead)
    assert "give_up_after" in decision.error


def test_a_short_retry_after_does_not_shorten_the_backoff() -> None:
    result = Result(503, "", retry_after=timedelta(seconds=1))
    decision = decide(result, Row(attempts=3), SETTINGS, NOW, Edge(high=False))
    assert isinstance(decision, Retry)
    assert decision.at == NOW + timedelta(seconds=120)  # 30 s × 2³ = 240 s, its fixed half


def test_no_response_retries() -> None:
    result = Result(None, "ConnectionError: refused")
    decision = decide(result, Row(), SETTINGS, NOW, random.Random(1))
    assert isinstance(decision, Retry)
    assert decision.error == "no response: ConnectionError: refused"
    assert decision.status is None
    assert decision.attempts == 1


def test_no_response_without_text() -> None:
    assert describe(Result(None, "")) == "no response"


def test_reaching_max_attempts_gives_up() -> None:
    row = Row(attempts=SETTINGS.max_attempts - 1)
    decision = decide(Result(503, "down"), row, SETTINGS, NOW)
    assert decision == Dead(
        error=f"gave up after {SETTINGS.max_attempts} attempts: HTTP 503: down",
        attempts=SETTINGS.max_attempts,
        status=503,
    )


def test_one_attempt_short_of_the_maximum_still_retries() -> None:
    row = Row(attempts=SETTINGS.max_attempts - 2)
    assert isinstance(decide(Result(503, "down"), row, SETTINGS, NOW), Retry)


def test_age_past_give_up_after_gives_up() -> None:
    row = Row(attempts=0, created_at=NOW - SETTINGS.give_up_after)
    decision = decide(Result(None, "ReadTimeout: slow"), row, SETTINGS, NOW)
    assert decision == Dead(
        error="gave up after 1 attempts: no response: ReadTimeout: slow", attempts=1, status=None
    )


def test_younger_than_give_up_after_still_retries() -> None:
    row = Row(attempts=0, created_at=NOW - SETTINGS.give_up_after + timedelta(seconds=1))
    assert isinstance(decide(Result(500, ""), row, SETTINGS, NOW), Retry)


def test_a_claimed_row_is_a_policy_row() -> None:
    claimed = Claimed(
        id=1,
        token="t",
        event_type_key="abandoned_cart",
        key_value="ann@example.com",
        api_path="v1/event",
        body="{}",
        attempts=4,
        created_at=NOW,
        subject_type=None,
        subject_id=None,
        subject_version=None,
    )
    assert decide(Result(200, ""), claimed, SETTINGS, NOW) == Sent(attempts=5, status=200)


def test_the_same_seed_decides_the_same_time() -> None:
    result, row = Result(500, "x"), Row(attempts=4)
    first = decide(result, row, SETTINGS, NOW, random.Random(42))
    assert first == decide(result, row, SETTINGS, NOW, random.Random(42))


# ------------------------------------------------------------------------------ backoff


@pytest.mark.parametrize(("attempts", "full"), [(0, 30), (1, 30), (2, 60), (3, 120), (4, 240)])
def test_backoff_doubles_with_half_of_it_jitter(attempts: int, full: int) -> None:
    assert backoff(SETTINGS, attempts, rng=Edge(high=False)) == timedelta(seconds=full / 2)
    assert backoff(SETTINGS, attempts, rng=Edge(high=True)) == timedelta(seconds=full)


def test_backoff_jitter_stays_in_bounds_and_spreads() -> None:
    rng = random.Random(2026)
    delays = [backoff(SETTINGS, 3, rng=rng).total_seconds() for _ in range(500)]
    assert all(60 <= d <= 120 for d in delays)
    assert min(delays) < 66 and max(delays) > 114  # the whole random half is used


@pytest.mark.parametrize("attempts", [8, 9, 20, 1000])
def test_backoff_is_capped_at_backoff_max(attempts: int) -> None:
    cap = SETTINGS.backoff_max
    rng = random.Random(attempts)
    assert cap / 2 <= backoff(SETTINGS, attempts, rng=rng) <= cap
    assert backoff(SETTINGS, attempts, rng=Edge(high=True)) == cap


def test_retry_after_beyond_the_cap_waits_backoff_max() -> None:
    wait = SETTINGS.backoff_max + timedelta(hours=1)
    assert backoff(SETTINGS, 1, wait, Edge(high=False)) == SETTINGS.backoff_max


@pytest.mark.parametrize("wait", [timedelta(hours=48), timedelta(days=3650)])
def test_a_retry_after_past_give_up_after_is_dead_with_the_reason(wait: timedelta) -> None:
    result = Result(429, "slow down", retry_after=wait)
    decision = decide(result, Row(), SETTINGS, NOW, random.Random(1))
    assert isinstance(decision, Dead)
    assert decision.attempts == 1
    assert "Retry-After" in decision.error and "give_up_after" in decision.error
    assert decision.error.endswith("HTTP 429: slow down")


def test_a_retry_after_within_give_up_after_waits_at_most_backoff_max() -> None:
    result = Result(503, "", retry_after=timedelta(hours=5))
    decision = decide(result, Row(), SETTINGS, NOW, Edge(high=True))
    assert isinstance(decision, Retry)
    assert decision.at == NOW + SETTINGS.backoff_max


@pytest.mark.parametrize("status", [401, 403])
def test_auth_refusal_with_a_key_found_valid_is_dead_with_the_platforms_text(
    status: int,
) -> None:
    result = Result(status, "Forbidden: not your contact", key_valid=True)
    decision = decide(result, Row(attempts=2), SETTINGS, NOW)
    assert isinstance(decision, Dead)
    assert decision.attempts == 3
    assert decision.status == status
    assert decision.error.startswith(f"HTTP {status}: Forbidden: not your contact")
    assert "key is valid" in decision.error


@pytest.mark.parametrize("key_valid", [False, None])
def test_auth_refusal_without_a_good_key_check_pauses(key_valid: bool | None) -> None:
    result = Result(401, "wrong key", key_valid=key_valid)
    assert isinstance(decide(result, Row(), SETTINGS, NOW), Pause)


# ------------------------------------------------------------------------------ gives_up


@pytest.mark.parametrize(
    ("attempts", "age", "expected"),
    [
        (4, timedelta(hours=47), False),
        (5, timedelta(0), True),
        (6, timedelta(0), True),
        (1, timedelta(hours=48), True),
        (1, timedelta(hours=48) - timedelta(microseconds=1), False),
    ],
)
def test_gives_up(attempts: int, age: timedelta, expected: bool) -> None:
    assert gives_up(SETTINGS, attempts, NOW - age, NOW) is expected


# ------------------------------------------------------------------------------ counting


@pytest.mark.parametrize("settled", list(Settled))
def test_each_settled_kind_counts_in_its_own_field(settled: Settled) -> None:
    result = DispatchResult()
    result.count(settled)
    counts = {f: getattr(result, f) for f in Settled}
    assert counts == {f: int(f is settled) for f in Settled}


# ------------------------------------------------------------------------------ circuit


@pytest.mark.parametrize(
    ("status", "down"),
    [(None, True), (500, True), (503, True), (200, False), (429, False), (400, False)],
)
def test_only_no_response_and_5xx_say_the_api_is_down(status: int | None, down: bool) -> None:
    assert unreachable(Result(status, "")) is down


def test_the_circuit_trips_after_circuit_failures_in_a_row_with_no_answer_between() -> None:
    settings = dataclasses.replace(SETTINGS, circuit_failures=3)
    streak = 0
    for _ in range(2):
        streak = streak_after(streak, Result(None, "ConnectionError"))
    assert not circuit_trips(streak, settings)
    assert streak_after(streak, None) == 2  # a send not tried changes nothing
    assert circuit_trips(streak_after(streak, Result(503, "")), settings)


def test_one_answer_ends_the_streak_so_a_single_failure_backs_off_alone() -> None:
    settings = dataclasses.replace(SETTINGS, circuit_failures=3)
    streak = 0
    for status in (None, 503, 200, 500, 429, None, 500):
        streak = streak_after(streak, Result(status, ""))
        assert not circuit_trips(streak, settings)
    assert streak == 2


def test_while_the_circuit_is_open_an_unreachable_api_spends_no_attempt() -> None:
    decision = decide(Result(None, "ConnectionError"), Row(attempts=3), SETTINGS, NOW, None, True)
    assert decision == Held(error="no response: ConnectionError", status=None)
    assert decide(None, Row(), SETTINGS, NOW, circuit_open=True) == Held(error=None, status=None)
    assert isinstance(decide(Result(200, ""), Row(), SETTINGS, NOW, circuit_open=True), Sent)
    assert isinstance(decide(Result(400, "bad"), Row(), SETTINGS, NOW, circuit_open=True), Dead)
    assert isinstance(decide(Result(503, ""), Row(), SETTINGS, NOW), Retry)  # closed: per row

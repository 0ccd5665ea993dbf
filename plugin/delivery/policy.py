"""What one send attempt does to its row: the whole retry policy, pure.

No database, no HTTP, no clock reads: the time and the random source are arguments, so every
rule here is tested without a server. The transport reports what happened (:class:`Result`);
:func:`decide` turns it into a :data:`Decision`; the dispatcher applies that to storage.
"""

from __future__ import annotations

import dataclasses
import random
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Protocol

from ..config import DeliverySettings, format_duration

PAUSE_REASON_MAX = 500
"""The pause's reason is shown on the status page and in ``shop-events status``: one line."""

THROTTLED_WAIT = timedelta(seconds=1)
"""How long a 429 that named no ``Retry-After`` holds every sender off, and its row."""

AUTH_TEXT = "bad API key"
"""The error of a 401/403 that came without a reason."""


@dataclasses.dataclass(frozen=True)
class Result:
    """What one attempt got back: status code (None: no response), reason text, requested wait,
    and for a 401/403 whether a check of the key (without any event) then found it good."""

    status: int | None
    text: str
    retry_after: timedelta | None = None
    key_valid: bool | None = None


class Outcome(StrEnum):
    """What a response means for its row, before attempts and age are counted."""

    SENT = "sent"
    RETRY = "retry"
    """425, 408, 5xx, timeouts and connection errors: try again later."""
    THROTTLED = "throttled"
    """429: the account is over its rate limit. Not the event's failure: it goes again after
    the wait the platform named (``Retry-After``) and spends no attempt."""
    DEAD = "dead"
    """Any other status: the platform refused the event; retrying cannot help."""
    AUTH = "auth"
    """401/403: the key is wrong (pause delivery, spend no attempt), unless a check of the key
    finds it good: then the platform refused this one event, which is dead."""


def classify(status: int | None) -> Outcome:
    """Map an HTTP status (None: no response at all) to an :class:`Outcome`."""
    if status is None:
        return Outcome.RETRY
    if 200 <= status < 300:
        return Outcome.SENT
    if status in (401, 403):
        return Outcome.AUTH
    if status == 429:
        return Outcome.THROTTLED
    if status in (408, 425) or status >= 500:
        return Outcome.RETRY
    return Outcome.DEAD


def backoff(
    settings: DeliverySettings,
    attempts: int,
    retry_after: timedelta | None = None,
    rng: random.Random | None = None,
) -> timedelta:
    """Delay before the next try after ``attempts`` failed ones: exponential, capped, jittered.

    Half the delay is fixed and half random, so workers that failed together spread out; a
    ``Retry-After`` from the server is a floor up to ``backoff_max``, which nothing exceeds.
    """
    base = settings.backoff_base.total_seconds()
    cap = settings.backoff_max.total_seconds()
    delay = min(cap, base * 2 ** min(max(0, attempts - 1), 64))
    delay = delay / 2 + (rng or random).uniform(0, delay / 2)
    if retry_after is not None:
        delay = max(delay, min(cap, retry_after.total_seconds()))
    return timedelta(seconds=delay)


def gives_up(
    settings: DeliverySettings, attempts: int, created_at: datetime, now: datetime
) -> bool:
    """Whether a row that just failed transiently should go to the dead letters instead."""
    return attempts >= settings.max_attempts or now - created_at >= settings.give_up_after


class Row(Protocol):
    """What the policy reads of an outbox row (a claimed row satisfies it)."""

    @property
    def attempts(self) -> int:
        """Attempts spent before this one."""

    @property
    def created_at(self) -> datetime:
        """When the row was queued (or last replayed)."""


@dataclasses.dataclass(frozen=True)
class Sent:
    """The platform accepted the event."""

    attempts: int
    status: int | None


@dataclasses.dataclass(frozen=True)
class Retry:
    """A transient failure: try again at ``at``."""

    at: datetime
    error: str
    attempts: int
    status: int | None


@dataclasses.dataclass(frozen=True)
class Dead:
    """Refused, or out of attempts or time: the row becomes a dead letter with ``error``."""

    error: str
    attempts: int
    status: int | None


@dataclasses.dataclass(frozen=True)
class Pause:
    """The key was refused: pause all delivery until ``until``; the row goes back unspent."""

    until: datetime
    error: str
    status: int | None

    @property
    def reason(self) -> str:
        """The pause's reason as stored for operators."""
        return self.error[:PAUSE_REASON_MAX]


@dataclasses.dataclass(frozen=True)
class Released:
    """Not tried (shutdown, or the key was refused for another row): back unspent."""


@dataclasses.dataclass(frozen=True)
class Held:
    """The API is unreachable and the shared circuit is open: back unspent and due from its
    creation time, so the backlog goes again in creation order once a probe gets an answer."""

    error: str | None
    """The failure to record; None when the row was not tried (its last error stands)."""
    status: int | None


Decision = Sent | Retry | Dead | Pause | Released | Held
"""Everything a send can do to its row."""


def unreachable(result: Result) -> bool:
    """Whether an attempt says the API itself is down: no response (connection refused or
    reset, timeout) or a 5xx. Any other answer, a 429 or a 4xx included, means it is up."""
    return result.status is None or result.status >= 500


def streak_after(streak: int, result: Result | None) -> int:
    """The count of unreachable attempts in a row after ``result`` (None: not tried, which
    changes nothing); any answer from the API ends the streak."""
    if result is None:
        return streak
    return streak + 1 if unreachable(result) else 0


def circuit_trips(streak: int, settings: DeliverySettings) -> bool:
    """The circuit rule: it opens once ``delivery.circuit_failures`` attempts in a row, with
    no answer between them, got no response or a 5xx. A single failure among successes never
    reaches it, so it backs off alone."""
    return streak >= settings.circuit_failures


def decide(
    result: Result | None,
    row: Row,
    settings: DeliverySettings,
    now: datetime,
    rng: random.Random | None = None,
    circuit_open: bool = False,
) -> Decision:
    """What ``result`` (None: not tried) does to ``row`` at ``now``; while the circuit is
    open, an unreachable API spends no attempt (:class:`Held`)."""
    if result is None:
        return Held(error=None, status=None) if circuit_open else Released()
    if circuit_open and unreachable(result):
        return Held(error=describe(result), status=result.status)
    attempts = row.attempts + 1
    outcome = classify(result.status)
    if outcome is Outcome.SENT:
        return Sent(attempts=attempts, status=result.status)
    if outcome is Outcome.AUTH:
        if result.key_valid:
            error = f"{describe(result)} (the API key is valid: the platform refused this event)"
            return Dead(error=error, attempts=attempts, status=result.status)
        error = f"HTTP {result.status}: {result.text or AUTH_TEXT}"
        return Pause(until=now + settings.auth_pause, error=error, status=result.status)
    if outcome is Outcome.DEAD:
        return Dead(error=describe(result), attempts=attempts, status=result.status)
    if outcome is Outcome.THROTTLED:
        return throttled(result, row, settings, now)
    if gives_up(settings, attempts, row.created_at, now):
        error = f"gave up after {attempts} attempts: {describe(result)}"
        return Dead(error=error, attempts=attempts, status=result.status)
    wait = result.retry_after
    if wait is not None and now + wait > row.created_at + settings.give_up_after:
        return _waits_too_long(result, attempts, wait)
    at = now + backoff(settings, attempts, result.retry_after, rng)
    return Retry(at=at, error=describe(result), attempts=attempts, status=result.status)


def throttled(result: Result, row: Row, settings: DeliverySettings, now: datetime) -> Decision:
    """A 429: the row goes again after ``Retry-After`` (:data:`THROTTLED_WAIT` without one,
    at most ``backoff_max``) with its attempts as they were; dead only past ``give_up_after``."""
    wait = result.retry_after or THROTTLED_WAIT
    if now + wait > row.created_at + settings.give_up_after:
        return _waits_too_long(result, row.attempts + 1, wait)
    at = now + min(wait, settings.backoff_max)
    return Retry(at=at, error=describe(result), attempts=row.attempts, status=result.status)


def _waits_too_long(result: Result, attempts: int, wait: timedelta) -> Dead:
    error = (
        f"gave up: the platform asked to wait {format_duration(wait)} (Retry-After), "
        f"past delivery.give_up_after: {describe(result)}"
    )
    return Dead(error=error, attempts=attempts, status=result.status)


def key_verdict(check: Result | None) -> bool | None:
    """What a check of the key (a request without any event) says: True the key is good, False
    it is refused (401/403), None no verdict (not checked, no answer, any other status)."""
    if check is None or check.status is None:
        return None
    if 200 <= check.status < 300:
        return True
    if classify(check.status) is Outcome.AUTH:
        return False
    return None


def key_refused(check: Result, settings: DeliverySettings, now: datetime) -> Pause:
    """The pause after the key itself was refused, whatever event was waiting."""
    error = f"HTTP {check.status}: {check.text or AUTH_TEXT}"
    return Pause(until=now + settings.auth_pause, error=error, status=check.status)


def describe(result: Result) -> str:
    """A failed attempt as stored in ``last_error``: ``HTTP 503: text`` or ``no response: …``."""
    status = f"HTTP {result.status}" if result.status is not None else "no response"
    return f"{status}: {result.text}" if result.text else status

"""How many sends one process has in progress at once: adapted to latency and to 429s.

Reaching the account's rate takes as many requests in progress as the rate times the API's
latency (350/s at 300 ms: about 105). The number is not set by hand; it is found the way TCP
finds a window:

- it grows while it is what holds delivery back: a send that had waited for a free place while
  the account's rate had room (a run of slots taken meanwhile started at once, or a slot of
  this process went unused) adds one, so the number doubles each round trip at first, and
  grows by one per round trip after a 429; once the rate limit is what holds sends back, runs
  start later, every slot is used, and it stops growing;
- it halves on a 429 (once per round trip: the 429s of sends started before the cut count as
  one), because the account is over its limit whatever this process thinks;
- it never exceeds ``delivery.threads`` nor falls below one.
"""

from __future__ import annotations

import threading

from .. import metrics

INITIAL = 8
"""Where the number starts (at most ``delivery.threads``)."""


class AdaptiveConcurrency:
    """The places for sends in progress (thread-safe); see the module's description."""

    def __init__(self, maximum: int, initial: int = INITIAL) -> None:
        self._maximum = maximum
        self._limit = min(initial, maximum)
        self._threshold = maximum
        self._growth = 0
        """Sends that asked for more since the last step of additive increase."""
        self._in_use = 0
        self._started = 0
        self._cut_at = 0
        self._lock = threading.Lock()
        metrics.SEND_CONCURRENCY.set(self.limit)
        metrics.SEND_CONCURRENCY_MAX.set(maximum)

    @property
    def limit(self) -> int:
        """How many sends may be in progress now."""
        return self._limit

    @property
    def in_use(self) -> int:
        """How many places are held now."""
        return self._in_use

    def has_room(self) -> bool:
        """Whether another send may start."""
        with self._lock:
            return self._in_use < self.limit

    def take(self) -> int:
        """Hold a place for one send; its ticket (the order sends started in)."""
        with self._lock:
            self._in_use += 1
            self._started += 1
            return self._started

    def give_back(self) -> None:
        """A send is over: its place is free."""
        with self._lock:
            self._in_use -= 1

    def answered(self, ticket: int, *, queued: bool, slack: bool, throttled: bool) -> None:
        """Adapt to one answered send: ``queued`` it had waited for a place, ``slack`` the rate
        schedule had room while it was in progress, ``throttled`` a 429."""
        with self._lock:
            if throttled:
                if ticket <= self._cut_at:
                    return  # sent before the last cut: that round trip was already counted
                self._limit = self._threshold = max(1, self._limit // 2)
                self._cut_at = self._started
                self._growth = 0
            elif not queued or not slack or self._limit >= self._maximum:
                return
            elif self._limit < self._threshold:
                self._limit += 1
            else:
                self._growth += 1
                if self._growth < self._limit:
                    return
                self._growth = 0
                self._limit += 1
        metrics.SEND_CONCURRENCY.set(self.limit)

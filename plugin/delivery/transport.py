"""HTTP to the platform: session, auth, rate limit; reports what each request got back.

What a response means for its row is decided in :mod:`.policy`, not here. The session is
rebuilt after a fork, so a pre-forked server never shares sockets.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter

from ..clock import Clock, utcnow
from ..config import ApiSettings
from ..version import __version__
from .policy import Result

ERROR_TEXT_MAX = 2000
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def parse_retry_after(value: str | None, now: datetime) -> timedelta | None:
    """``Retry-After`` as seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return timedelta(seconds=int(value))
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(timedelta(0), when - now)


def _monotonic() -> float:
    return time.clock_gettime(time.CLOCK_MONOTONIC)


class RateLimiter:
    """Spaces requests to at most ``rate`` per second in this process (thread-safe).

    Real elapsed time, not the plugin's clock: it throttles the wire, which tests never fake.
    """

    def __init__(self, rate: float) -> None:
        self._interval = 1.0 / rate
        self._next = 0.0
        self._blocked_until = 0.0
        self._lock = threading.Lock()

    def acquire(self, stop: threading.Event | None = None) -> None:
        """Wait for this caller's slot, and past any :meth:`block`; returns early on ``stop``."""
        waiter = stop or threading.Event()
        while True:
            with self._lock:
                now = _monotonic()
                slot = max(now, self._blocked_until, self._next)
                self._next = slot + self._interval
            if slot > now and waiter.wait(slot - now):
                return
            with self._lock:
                if _monotonic() >= self._blocked_until:
                    return
            # a block began while this caller waited for its slot: queue again behind it

    def block(self, seconds: float) -> None:
        """Let no request start for ``seconds`` from now (a server's ``Retry-After``)."""
        with self._lock:
            self._blocked_until = max(self._blocked_until, _monotonic() + seconds)


class Transport:
    """Sends finished bodies to the platform; one per process, shared by the sending threads."""

    def __init__(self, api: ApiSettings, pool_size: int = 4, clock: Clock = utcnow) -> None:
        self._api = api
        self._pool_size = pool_size
        self._clock = clock
        self._limiter = RateLimiter(api.rate_limit)
        self._session: requests.Session | None = None
        self._pid = 0
        self._lock = threading.Lock()
        ref = weakref.ref(self)

        def after_fork() -> None:
            transport = ref()
            if transport is not None:
                transport._lock = threading.Lock()  # a parent thread may have held it

        os.register_at_fork(after_in_child=after_fork)

    def __repr__(self) -> str:
        return f"Transport(base_url={self._api.base_url!r}, version={self._api.version!r})"

    @property
    def ready(self) -> bool:
        """False when no API key is set for a remote API (a local receiver needs none)."""
        host = urlsplit(self._api.base_url).hostname or ""
        return bool(self._api.key) or host in LOOPBACK_HOSTS

    def session(self) -> requests.Session:
        """This process's session, created on first use and again after a fork."""
        with self._lock:
            if self._session is None or self._pid != os.getpid():
                session = requests.Session()
                adapter = HTTPAdapter(pool_connections=1, pool_maxsize=self._pool_size)
                session.mount("http://", adapter)
                session.mount("https://", adapter)
                session.auth = (self._api.username, self._api.key.reveal())
                session.headers.update(
                    {
                        "Content-Type": "application/json; charset=UTF-8",
                        "Accept": "application/json",
                        "User-Agent": f"shop-events/{__version__}",
                    }
                )
                self._session, self._pid = session, os.getpid()
            return self._session

    def send(self, api_path: str, body: bytes, stop: threading.Event | None = None) -> Result:
        """POST one body; network trouble is a result without a status, never an exception."""
        self._limiter.acquire(stop)
        try:
            response = self.session().post(
                self._api.endpoint(api_path),
                data=body,
                timeout=(
                    self._api.connect_timeout.total_seconds(),
                    self._api.timeout.total_seconds(),
                ),
                allow_redirects=False,
            )
        except requests.RequestException as exc:
            return Result(None, f"{type(exc).__name__}: {exc}"[:ERROR_TEXT_MAX])
        retry_after = parse_retry_after(response.headers.get("Retry-After"), self._clock())
        if retry_after is not None and response.status_code in (429, 503):
            # The whole process waits, not just this row: every request would be refused.
            # At most one read timeout, so rows claimed meanwhile keep their leases
            # (lease > 2 × (timeout + connect_timeout)); the row itself waits the full time.
            self._limiter.block(min(retry_after, self._api.timeout).total_seconds())
        text = response.text[:ERROR_TEXT_MAX].strip()
        return Result(response.status_code, text, retry_after)

    def close(self) -> None:
        """Close this process's connections."""
        with self._lock:
            if self._session is not None and self._pid == os.getpid():
                self._session.close()
            self._session = None

"""HTTP to the platform: session, auth, rate limits; reports what each request got back.

What a response means for its row is decided in :mod:`.policy`, not here. The session is
rebuilt after a fork, so a pre-forked server never shares sockets.

Whatever the API does, a request ends: ``api.timeout`` bounds each read, and the whole request
(connecting, sending, the answer) has a deadline of ``api.connect_timeout + api.timeout``, at
which its connection is cut, even while an answer trickles in byte by byte. Of any answer only
the first :data:`RESPONSE_BYTES_MAX` bytes are read.
"""

from __future__ import annotations

import contextlib
import dataclasses
import heapq
import itertools
import logging
import os
import re
import socket
import threading
import time
import weakref
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlencode, urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from ..clock import Clock, utcnow
from ..config import ApiSettings
from ..version import __version__
from .limiter import AccountLimiter, family_of
from .policy import THROTTLED_WAIT, Result

log = logging.getLogger(__name__)

ERROR_TEXT_MAX = 2000
RESPONSE_BYTES_MAX = 8192
"""How much of an answer is read: its reason text, never a flood."""
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
RETRY_AFTER_MAX = timedelta(days=3650)
"""Longer waits are read as this one: far past any ``give_up_after``, and still a valid date."""
_RETRY_AFTER_DIGITS_MAX = 12
_ASCII_DIGITS = re.compile(r"[0-9]+")


def parse_retry_after(value: str | None, now: datetime) -> timedelta | None:
    """``Retry-After`` as seconds (ASCII digits) or an HTTP date, at most :data:`RETRY_AFTER_MAX`;
    None when absent or unreadable. Never raises, whatever the server sent."""
    if not value:
        return None
    value = value.strip()
    if _ASCII_DIGITS.fullmatch(value):
        if len(value) > _RETRY_AFTER_DIGITS_MAX:
            return RETRY_AFTER_MAX
        return min(timedelta(seconds=int(value)), RETRY_AFTER_MAX)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, OverflowError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return min(max(timedelta(0), when - now), RETRY_AFTER_MAX)


def _deadline_clock() -> float:
    return time.clock_gettime(time.CLOCK_MONOTONIC)


class _Guard:
    """One request's deadline: when it passes, the request's socket is cut."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.expired = False
        self._sock: socket.socket | None = None
        self._finished = False
        self._lock = threading.Lock()

    def attach(self, connection: HTTPConnection) -> None:
        """The connection this request is sent on, once it has a socket (new or reused).

        The socket itself is kept: the answer goes on reading it after the connection let go.
        """
        sock = getattr(connection, "sock", None)
        if sock is None:
            return
        with self._lock:
            self._sock = sock
            if self.expired:
                _cut(sock)

    def expire(self) -> None:
        """The deadline passed: cut the socket, unless the request already finished."""
        with self._lock:
            if self._finished:
                return
            self.expired = True
            if self._sock is not None:
                _cut(self._sock)

    def finish(self) -> None:
        """The request is over: its connection may serve the next one untouched."""
        with self._lock:
            self._finished = True
            self._sock = None  # the watchdog keeps the guard until its deadline; not the socket


def _cut(sock: socket.socket) -> None:
    # shutdown, not close: it wakes the thread blocked reading, which then fails at once;
    # the plain socket's method, so a TLS socket is cut below its TLS layer
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


_current = threading.local()
"""The :class:`_Guard` of the request this thread is making, if any."""


def _attach(connection: HTTPConnection) -> None:
    guard: _Guard | None = getattr(_current, "guard", None)
    if guard is not None:
        guard.attach(connection)


class _GuardedHTTPConnection(HTTPConnection):
    def connect(self) -> None:
        super().connect()
        _attach(self)

    def request(self, *args: Any, **kwargs: Any) -> None:
        _attach(self)  # a reused connection: connect() is not called again
        super().request(*args, **kwargs)


class _GuardedHTTPSConnection(HTTPSConnection):
    def connect(self) -> None:
        super().connect()
        _attach(self)

    def request(self, *args: Any, **kwargs: Any) -> None:
        _attach(self)
        super().request(*args, **kwargs)


class _GuardedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _GuardedHTTPConnection


class _GuardedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _GuardedHTTPSConnection


class _GuardedAdapter(HTTPAdapter):
    """Connections that a request's :class:`_Guard` can cut."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {
            "http": _GuardedHTTPPool,
            "https": _GuardedHTTPSPool,
        }


class _Watchdog:
    """Expires the guards whose deadline passed: one daemon thread per process for every
    transport, started lazily (and again after a fork, which leaves the child without it)."""

    def __init__(self) -> None:
        self._reset()
        ref = weakref.ref(self)

        def after_fork() -> None:
            watchdog = ref()
            if watchdog is not None:
                watchdog._reset()  # the child has no thread, and maybe a lock a parent held

        os.register_at_fork(after_in_child=after_fork)

    def _reset(self) -> None:
        self._heap: list[tuple[float, int, _Guard]] = []
        self._order = itertools.count()
        self._cond = threading.Condition()
        self._start_lock = threading.Lock()
        self._pid = 0

    @contextlib.contextmanager
    def guard(self, seconds: float) -> Iterator[_Guard]:
        """A deadline ``seconds`` from now for the requests this thread makes meanwhile."""
        if self._pid != os.getpid():
            with self._start_lock:
                if self._pid != os.getpid():
                    thread = threading.Thread(
                        target=self._run, name="shop-events-deadlines", daemon=True
                    )
                    thread.start()
                    self._pid = os.getpid()
        guard = _Guard(_deadline_clock() + seconds)
        with self._cond:
            heapq.heappush(self._heap, (guard.deadline, next(self._order), guard))
            self._cond.notify()
        _current.guard = guard
        try:
            yield guard
        finally:
            _current.guard = None
            guard.finish()

    def _run(self) -> None:
        cond = self._cond
        while True:
            with cond:
                now = _deadline_clock()
                due = []
                while self._heap and self._heap[0][0] <= now:
                    due.append(heapq.heappop(self._heap)[2])
                if not due:
                    cond.wait(self._heap[0][0] - now if self._heap else None)
                    continue
            for guard in due:
                try:
                    guard.expire()
                except Exception:  # the watchdog must outlive anything one request does
                    log.exception("could not cut a request past its deadline")


_WATCHDOG = _Watchdog()


@dataclasses.dataclass(frozen=True)
class _Answer:
    status: int | None
    text: str
    headers: dict[str, str]


class Transport:
    """Sends finished bodies to the platform; one per process, shared by the sending threads."""

    def __init__(
        self,
        api: ApiSettings,
        pool_size: int = 4,
        clock: Clock = utcnow,
        limiter: AccountLimiter | None = None,
    ) -> None:
        self._api = api
        self._pool_size = pool_size
        self._clock = clock
        self.limiter = limiter or AccountLimiter(api)
        """Spaces requests to the account's limits (without one given: this process's own)."""
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

    @property
    def deadline(self) -> timedelta:
        """The longest one request may take, from connecting to the answer's last byte read."""
        return self._api.connect_timeout + self._api.timeout

    def session(self) -> requests.Session:
        """This process's session, created on first use and again after a fork."""
        with self._lock:
            if self._session is None or self._pid != os.getpid():
                session = requests.Session()
                adapter = _GuardedAdapter(pool_connections=1, pool_maxsize=self._pool_size)
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

    def wait_turn(self, api_path: str, stop: threading.Event | None = None) -> float | None:
        """Wait until the rate limit of ``api_path``'s family allows one more request; the
        seconds waited, or None if ``stop`` came first."""
        return self.limiter.acquire(family_of(api_path), stop)

    def send(self, api_path: str, body: bytes, stop: threading.Event | None = None) -> Result:
        """POST one body when the rate limit allows (:meth:`wait_turn`, then :meth:`post`)."""
        self.wait_turn(api_path, stop)
        return self.post(api_path, body)

    def post(self, api_path: str, body: bytes) -> Result:
        """POST one body now; network trouble is a result without a status, never an exception."""
        return self._result(api_path, self._request("POST", api_path, body))

    def delete(self, api_path: str, query: Mapping[str, str]) -> Result:
        """DELETE with a query (a contact erasure) now; read like :meth:`post`'s answer."""
        return self._result(api_path, self._request("DELETE", api_path, None, query))

    def _result(self, api_path: str, answer: _Answer) -> Result:
        """What a request got back; a 429 holds back the whole family of ``api_path``."""
        if answer.status is None:
            return Result(None, answer.text)
        retry_after = parse_retry_after(answer.headers.get("Retry-After"), self._clock())
        if answer.status == 429 or (answer.status == 503 and retry_after is not None):
            # The account is over its limit, not this event: every sender of the family holds
            # off. At most one read timeout, so rows claimed meanwhile keep their leases
            # (lease > 2 × (timeout + connect_timeout)); the row itself waits its own time.
            wait = min(retry_after or THROTTLED_WAIT, self._api.timeout)
            try:
                self.limiter.hold(family_of(api_path), wait.total_seconds())
            except Exception:  # the result still counts: the row goes again after its wait
                log.exception("could not share a 429's wait with the other senders")
        return Result(answer.status, answer.text, retry_after)

    def check_key(self, stop: threading.Event | None = None) -> Result | None:
        """Ask whether the platform accepts the key, without sending any event
        (``GET api.key_check_path``); None when no path is set or ``stop`` came first.
        :func:`.policy.key_verdict` reads the answer."""
        path = self._api.key_check_path
        if not path or self.wait_turn(path, stop) is None:
            return None
        answer = self._request("GET", path, None)
        return Result(answer.status, answer.text)

    def _request(
        self,
        method: str,
        api_path: str,
        body: bytes | None,
        query: Mapping[str, str] | None = None,
    ) -> _Answer:
        seconds = self.deadline.total_seconds()
        with _WATCHDOG.guard(seconds) as guard:
            try:
                response = self.session().request(
                    method,
                    self._api.endpoint(api_path),
                    params=query,
                    data=body,
                    timeout=(
                        self._api.connect_timeout.total_seconds(),
                        self._api.timeout.total_seconds(),
                    ),
                    allow_redirects=False,
                    stream=True,
                )
            except requests.RequestException as exc:
                if guard.expired:
                    return _Answer(None, _past_deadline(seconds), {})
                text = f"{type(exc).__name__}: {exc}"
                if query:  # the error quotes the URL; a query may name a contact
                    text = text.replace(urlencode(query), "<query>")
                return _Answer(None, text[:ERROR_TEXT_MAX], {})
            text = _read_text(response)
        return _Answer(response.status_code, text, dict(response.headers))

    def close(self) -> None:
        """Close this process's connections."""
        with self._lock:
            if self._session is not None and self._pid == os.getpid():
                self._session.close()
            self._session = None


def _past_deadline(seconds: float) -> str:
    return f"Timeout: no complete answer within {seconds:g}s (api.connect_timeout + api.timeout)"


def _read_text(response: requests.Response) -> str:
    """The start of the answer's body as text: what arrived of its first
    :data:`RESPONSE_BYTES_MAX` bytes before its end, the deadline or a broken connection.

    The connection goes back to the pool only when the whole answer was read; otherwise it is
    closed, never drained.
    """
    raw = response.raw
    received = bytearray()
    complete = False
    try:
        while len(received) <= RESPONSE_BYTES_MAX:
            chunk = raw.read1(4096)  # what has arrived: a trickle is kept up to the cut
            if not chunk:
                complete = True
                break
            received += chunk
    except (urllib3.exceptions.HTTPError, OSError):
        pass
    if complete:
        raw.release_conn()
    else:
        response.close()
    body = bytes(received[:RESPONSE_BYTES_MAX])
    try:
        text = body.decode(response.encoding or "utf-8", errors="replace")
    except LookupError:  # a charset Python does not know
        text = body.decode("utf-8", errors="replace")
    return text[:ERROR_TEXT_MAX].strip()

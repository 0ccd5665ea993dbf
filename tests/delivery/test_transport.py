"""Transport against the real local receiver: auth, classification, Retry-After, rate, fork."""

from __future__ import annotations

import base64
import json
import os
import select
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from shop_events.config import ApiSettings, Settings
from shop_events.delivery import limiter
from shop_events.delivery.policy import Outcome, Result, classify, key_verdict
from shop_events.delivery.transport import (
    ERROR_TEXT_MAX,
    RETRY_AFTER_MAX,
    Transport,
    parse_retry_after,
)
from shop_events.errors import ConfigError
from shop_events.testing import Receiver, Reply

from tests.support import VirtualTime

NOW = datetime(2026, 11, 26, 12, 0, 0, tzinfo=UTC)
BODY = json.dumps(
    {
        "eventTypeKey": "shop_events_test",
        "keyValue": "ann@example.com",
        "params": [{"name": "email", "value": "ann@example.com"}],
    }
).encode()


def api_for(receiver: Receiver, **values: object) -> ApiSettings:
    data = {"base_url": receiver.base_url, "key": receiver.api_key or "", **values}
    return Settings.load({"api": data}).api


@pytest.fixture
def transport(receiver: Receiver) -> Iterator[Transport]:
    made = Transport(api_for(receiver), clock=lambda: NOW)
    yield made
    made.close()


def test_basic_auth_carries_the_key_as_password(receiver: Receiver, transport: Transport) -> None:
    result = transport.send("v1/event", BODY)
    assert classify(result.status) is Outcome.SENT
    assert result.status == 200
    [request] = receiver.requests
    scheme, _, encoded = request.headers["Authorization"].partition(" ")
    assert scheme == "Basic"
    user, _, password = base64.b64decode(encoded).decode().partition(":")
    assert user == "shop-events"
    assert password == receiver.api_key
    assert request.headers["Content-Type"] == "application/json; charset=UTF-8"
    assert request.headers["User-Agent"].startswith("shop-events/")
    assert request.path == "/api/v1/event"
    assert request.raw == BODY
    assert receiver.events == [json.loads(BODY)]


def test_v2_path(receiver: Receiver) -> None:
    api = api_for(receiver, version="v2")
    transport = Transport(api)
    try:
        assert transport.send(api.event_path, BODY).status == 200
    finally:
        transport.close()
    assert receiver.requests[0].path == "/api/v2/event"


def test_wrong_key_is_auth(receiver: Receiver) -> None:
    transport = Transport(api_for(receiver, key="not-the-key"))
    try:
        result = transport.send("v1/event", BODY)
    finally:
        transport.close()
    assert classify(result.status) is Outcome.AUTH
    assert result.status == 401
    assert "not-the-key" not in result.text


def test_no_key_for_a_remote_api_is_not_ready() -> None:
    assert not Transport(ApiSettings()).ready
    assert Transport(Settings.load({"api": {"key": "k"}}).api).ready
    local = Settings.load({"api": {"base_url": "http://127.0.0.1:9/api"}}).api
    assert Transport(local).ready
    secret = "sk-Q81zz-secret"
    assert secret not in repr(Transport(Settings.load({"api": {"key": secret}}).api))


STATUSES = [
    (200, Outcome.SENT),
    (201, Outcome.SENT),
    (400, Outcome.DEAD),
    (401, Outcome.AUTH),
    (403, Outcome.AUTH),
    (404, Outcome.DEAD),
    (408, Outcome.RETRY),
    (429, Outcome.THROTTLED),
    (500, Outcome.RETRY),
    (503, Outcome.RETRY),
]


@pytest.mark.parametrize(("status", "outcome"), STATUSES)
def test_scripted_replies_are_classified(
    receiver: Receiver, transport: Transport, status: int, outcome: Outcome
) -> None:
    receiver.script(Reply(status, f"reason {status}"))
    result = transport.send("v1/event", BODY)
    assert classify(result.status) is outcome
    assert result.status == status
    assert result.text == f"reason {status}"


def test_dead_keeps_the_platforms_reason(receiver: Receiver, transport: Transport) -> None:
    body = json.dumps({"eventTypeKey": "bad?key", "keyValue": "a@b.c", "params": []}).encode()
    result = transport.send("v1/event", body)
    assert classify(result.status) is Outcome.DEAD
    assert result.status == 400
    assert "forbidden characters" in result.text


def test_unknown_path_is_dead(transport: Transport) -> None:
    result = transport.send("v9/nothing", BODY)
    assert classify(result.status) is Outcome.DEAD
    assert result.status == 404


def test_retry_after_seconds(receiver: Receiver, transport: Transport) -> None:
    receiver.script(Reply(429, "slow down", headers={"Retry-After": "120"}))
    result = transport.send("v1/event", BODY)
    assert classify(result.status) is Outcome.THROTTLED
    assert result.retry_after == timedelta(seconds=120)


def test_retry_after_http_date(receiver: Receiver, transport: Transport) -> None:
    when = format_datetime(NOW + timedelta(seconds=90), usegmt=True)
    receiver.script(Reply(503, "maintenance", headers={"Retry-After": when}))
    result = transport.send("v1/event", BODY)
    assert classify(result.status) is Outcome.RETRY
    assert result.retry_after == timedelta(seconds=90)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("", None),
        ("0", timedelta(0)),
        (" 30 ", timedelta(seconds=30)),
        ("soon", None),
        (format_datetime(NOW + timedelta(minutes=5), usegmt=True), timedelta(minutes=5)),
        (format_datetime(NOW - timedelta(minutes=5), usegmt=True), timedelta(0)),  # past: now
        ("Thu, 26 Nov 2026 12:01:00", timedelta(minutes=1)),  # no zone: taken as UTC
    ],
)
def test_parse_retry_after(header: str | None, expected: timedelta | None) -> None:
    assert parse_retry_after(header, NOW) == expected


def free_port() -> int:
    """A port nothing listens on: bound, read and closed again."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_connection_refused_is_retry() -> None:
    api = Settings.load(
        {"api": {"base_url": f"http://127.0.0.1:{free_port()}/api", "connect_timeout": "2s"}}
    ).api
    transport = Transport(api)
    try:
        result = transport.send("v1/event", BODY)
    finally:
        transport.close()
    assert classify(result.status) is Outcome.RETRY
    assert result.status is None
    assert "ConnectionError" in result.text


def test_read_timeout_is_retry(receiver: Receiver) -> None:
    receiver.script(Reply(200, "", delay=5.0))
    transport = Transport(api_for(receiver, timeout="200ms"))
    try:
        result = transport.send("v1/event", BODY)
    finally:
        transport.close()
    assert classify(result.status) is Outcome.RETRY
    assert result.status is None
    assert "Timeout" in result.text


def test_redirects_are_not_followed(receiver: Receiver, transport: Transport) -> None:
    receiver.script(Reply(302, "", headers={"Location": "http://127.0.0.1:9/elsewhere"}))
    result = transport.send("v1/event", BODY)
    assert result.status == 302
    assert classify(result.status) is Outcome.DEAD
    assert len(receiver.requests) == 1


# ------------------------------------------------------------------------------ rate limit


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> VirtualTime:
    """The limiter's monotonic clock, moved only by the waits it asks for."""
    made = VirtualTime()
    monkeypatch.setattr(limiter, "_monotonic", made)
    return made


def test_send_is_rate_limited(receiver: Receiver, clock: VirtualTime) -> None:
    transport = Transport(api_for(receiver, rate_limit=100))  # 10 ms apart
    try:
        for _ in range(6):
            assert transport.send("v1/event", BODY, stop=clock).status == 200
    finally:
        transport.close()
    assert clock.waits == pytest.approx([0.01] * 5)
    assert len(receiver.requests) == 6


# ------------------------------------------------------------------------------------ fork


def test_session_is_rebuilt_after_fork(transport: Transport) -> None:
    parent_session = transport.session()
    assert transport.session() is parent_session  # one per process
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, then leave without running pytest's teardown
        code = 1
        try:
            os.close(read_end)
            session = transport.session()
            report = {
                "pid": os.getpid(),
                "new_object": session is not parent_session,
                "stable": transport.session() is session,
                "auth_kept": session.auth == parent_session.auth,
            }
            os.write(write_end, json.dumps(report).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    try:
        ready, _, _ = select.select([read_end], [], [], 10.0)
        assert ready, "the child did not report within 10 s"
        data = os.read(read_end, 4096)
    finally:
        os.close(read_end)
        if not ready:
            os.kill(pid, 9)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    report = json.loads(data)
    assert report["pid"] != os.getpid()
    assert report["new_object"] is True
    assert report["stable"] is True
    assert report["auth_kept"] is True
    assert transport.session() is parent_session  # the parent's is untouched


# ------------------------------------------------------------------------------ hostile answers


@pytest.mark.parametrize(
    "header",
    [
        "99999999999999999999",
        "9999999999999",
        "Fri, 31 Dec 9999 23:59:59 GMT",
        "Sat, 01 Jan 99999 00:00:00 GMT",
    ],
)
def test_an_absurd_retry_after_is_read_as_very_long_and_never_raises(header: str) -> None:
    wait = parse_retry_after(header, NOW)
    assert wait == RETRY_AFTER_MAX or header.endswith("99999 00:00:00 GMT")
    assert wait is None or NOW + wait < datetime.max.replace(tzinfo=UTC)


@pytest.mark.parametrize("header", ["²", "1²", "١٢", "12 s", "-5", "+5", "1e3", "0x10"])
def test_retry_after_in_anything_but_ascii_digits_is_unreadable(header: str) -> None:
    assert parse_retry_after(header, NOW) is None


def run_bounded(send: Callable[[], Result], bound: float) -> Result | None:
    """``send()`` on a thread; its result, or None if it was still running after ``bound`` s."""
    results: list[Result] = []
    thread = threading.Thread(target=lambda: results.append(send()), daemon=True)
    thread.start()
    thread.join(bound)
    return results[0] if results else None


def test_an_answer_that_trickles_is_cut_at_the_request_deadline(receiver: Receiver) -> None:
    # one byte every 0.2 s for 1,000 bytes: 200 s; the deadline is timeout + connect_timeout
    receiver.script(Reply(200, "accepted " * 200, trickle=0.2, size=1000))
    transport = Transport(api_for(receiver, timeout="1s", connect_timeout="1s"))
    try:
        result = run_bounded(lambda: transport.send("v1/event", BODY), bound=2 + 5)
    finally:
        receiver.stop()  # ends the trickle
        transport.close()
    assert result is not None, "the send outlived its deadline"
    assert result.status == 200  # the status came in time; the text is what arrived by then
    assert classify(result.status) is Outcome.SENT
    assert 0 < len(result.text) < 1000


def test_a_status_line_that_never_comes_is_a_timeout(receiver: Receiver) -> None:
    receiver.hold()
    transport = Transport(api_for(receiver, timeout="1s", connect_timeout="1s"))
    try:
        result = run_bounded(lambda: transport.send("v1/event", BODY), bound=2 + 5)
    finally:
        receiver.release()
        transport.close()
    assert result is not None, "the send outlived its deadline"
    assert result.status is None
    assert classify(result.status) is Outcome.RETRY


GROWTH_SCRIPT = """
import resource, sys
from shop_events.config import Settings
from shop_events.delivery.transport import Transport
api = Settings.load({"api": {"base_url": sys.argv[1], "key": sys.argv[2]}}).api
transport = Transport(api)
transport.send("v1/event", b"{}")  # warm: the session, the connection pool, the imports
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
result = transport.send("v1/event", b"{}")
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
again = transport.send("v1/event", b"{}")
print(result.status, len(result.text), after - before, again.status)
"""


def test_a_huge_answer_is_read_only_as_far_as_its_first_kilobytes(receiver: Receiver) -> None:
    size = 64 * 1024 * 1024
    receiver.script(Reply(400, "warm"), Reply(400, "", size=size), Reply(200, ""))
    # a process of its own, so its peak memory is the sending side's alone
    done = subprocess.run(
        [sys.executable, "-c", GROWTH_SCRIPT, receiver.base_url, receiver.api_key or ""],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    status, length, growth_kib, again = (int(v) for v in done.stdout.split())
    assert status == 400
    assert length <= ERROR_TEXT_MAX
    assert growth_kib < 8 * 1024, f"{growth_kib >> 10} MiB more for a {size >> 20} MiB answer"
    assert again == 200  # the flooded connection was dropped, not drained: the next one works


def test_the_key_check_asks_the_account_and_sends_no_event(receiver: Receiver) -> None:
    good = Transport(api_for(receiver))
    bad = Transport(api_for(receiver, key="wrong"))
    try:
        assert key_verdict(good.check_key()) is True
        assert key_verdict(bad.check_key()) is False
    finally:
        good.close()
        bad.close()
    assert [(r.method, r.path) for r in receiver.requests] == [
        ("GET", "/api/v1/account/info"),
        ("GET", "/api/v1/account/info"),
    ]
    assert receiver.events == []


def test_a_key_check_that_gets_no_verdict_is_none(receiver: Receiver) -> None:
    receiver.script(Reply(503, "maintenance"))
    transport = Transport(api_for(receiver))
    unset = Transport(api_for(receiver, key_check_path=""))
    try:
        assert key_verdict(transport.check_key()) is None
        assert unset.check_key() is None
    finally:
        transport.close()
        unset.close()
    assert len(receiver.requests) == 1


@pytest.mark.parametrize("path", ["https://elsewhere.example/info", "../../admin", "v1/a b"])
def test_a_key_check_path_must_stay_under_base_url(path: str) -> None:
    with pytest.raises(ConfigError, match=r"^api\.key_check_path: must be a path under base_url"):
        Settings.load({"api": {"key_check_path": path}})

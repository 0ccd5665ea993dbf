"""A local stand-in for the platform's Generate event API, served on 127.0.0.1.

Tests and the demo need a real HTTP peer: :class:`Receiver` answers ``POST /api/v1/event``,
``POST /api/v2/event``, ``POST /api/v1/orders`` and ``POST /api/<v1|v2>/past_events`` with the
platform's rules (HTTP Basic auth with the API key as password, the body checks of
``API-NOTES.md``), ``DELETE /api/v1/contact?
externalCustomerId=…&erase=true`` (a contact erasure) and ``GET /api/v1/account/info``
(200 for a good key, 401 otherwise), records everything it receives, can be scripted to fail,
slow down, hang, trickle or flood an answer, or refuse chosen events, and shows an *Event
history* page at ``/``.

It checks bodies with its own code, not with the plugin's validation, so that a mistake in the
plugin's checks is caught here instead of being mirrored.
"""

from __future__ import annotations

import base64
import binascii
import collections
import contextlib
import dataclasses
import hmac
import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self

from flask import Flask, Response, jsonify, render_template, request
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from ..payload.items import item_rows

EVENT_TYPE_KEY_MAX = 100
KEY_VALUE_MAX = 300
PARAM_NAME_MAX = 100
MAX_BODY_BYTES = 20_000
MAX_ORDERS = 1000
MAX_PAST_EVENTS = 500
OCCURRED = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2})?")
"""A past event's time as the platform's notes show it: ``2023-03-22T14:30``."""
MAX_HOLD_SECONDS = 30.0
FORBIDDEN_KEY_CHARS = "\u2039;\u2019\\/|\"`'^?!,>"
KEY_PARAMS = ("contactId", "externalCustomerId", "email", "phone", "pushToken")
"""Params that identify the contact when ``keyValue`` is absent, in the platform's priority."""


@dataclasses.dataclass(frozen=True)
class Reply:
    """A scripted answer, used instead of the normal handling for one request.

    ``delay`` is how many seconds the handler waits before answering (``stop()`` cuts it short).
    ``trickle`` sends the body one byte at a time, this many seconds apart, after the status and
    headers; ``size`` replaces the body by that many bytes, made as they are sent (a huge answer
    without holding it). A scripted 2xx to an event path counts as accepted: the event is
    recorded in :attr:`Receiver.events` when its body is JSON, as the platform would after a
    slow success.
    """

    status: int = 500
    body: str = "oops"
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    delay: float = 0.0
    trickle: float = 0.0
    size: int = 0


@dataclasses.dataclass(frozen=True)
class Received:
    """One request as the receiver saw it, and the status it answered."""

    time: datetime
    method: str
    path: str
    headers: dict[str, str]
    raw: bytes
    json: Any
    status: int
    reply: str = ""
    """The response body (the reason text of a 4xx)."""
    arrived: datetime | None = None
    """When the request arrived, before any hold or latency (``time`` is when it was answered)."""


@dataclasses.dataclass(frozen=True)
class _Accepted:
    time: datetime
    version: str
    body: dict[str, Any]


class _Refused(Exception):
    """A request the platform would refuse; ``str()`` is the reason sent back."""

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.status = status


class Receiver:
    """The platform's event endpoints on a background thread; a context manager.

    ``api_key=None`` accepts any credentials (or none). Otherwise the request must carry HTTP
    Basic auth whose password is the key (any user name), or ``Bearer <key>``; else 401. The key
    can be changed while running (``receiver.api_key = "fixed"``).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str | None = None,
        *,
        clock: Callable[[], datetime] | None = None,
        on_event: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.host = host
        self.api_key = api_key
        self.latency = 0.0
        """Seconds added to every request before it is answered."""
        self.rate_limit: float | None = None
        """Requests per second above which the receiver answers 429 with ``Retry-After: 1``,
        as the platform does over its limit: a token bucket holding one second's worth."""
        self._tokens = 0.0
        self._tokens_at: float | None = None
        self.max_body_bytes = MAX_BODY_BYTES
        self._requested_port = port
        self._clock = clock or (lambda: datetime.now(UTC))
        self._on_event = on_event
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._stopping = threading.Event()
        self._held = False
        self._arrived = 0
        self._script: collections.deque[Reply] = collections.deque()
        self._rules: list[tuple[Callable[[Any], bool], Reply]] = []
        self._requests: list[Received] = []
        self._accepted: list[_Accepted] = []
        self._orders: list[dict[str, Any]] = []
        self._past_events: list[dict[str, Any]] = []
        self._erasures: list[dict[str, str]] = []
        self._connections: set[socket.socket] = set()
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None
        self.app = self._create_app()

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> Self:
        """Bind the port and serve in a daemon thread; returns ``self``."""
        if self._server is not None:
            raise RuntimeError("the receiver is already running")
        self._stopping.clear()
        server = make_server(
            self.host,
            self._requested_port,
            self.app,
            threaded=True,
            request_handler=self._handler_class(),
        )
        self._server = server
        self._thread = threading.Thread(
            # A short poll keeps stop() fast: shutdown() waits for the loop to notice.
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"receiver:{server.server_port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving: wakes held and delayed requests, closes open connections, joins."""
        server, thread = self._server, self._thread
        if server is None:
            return
        self._stopping.set()
        with self._cond:
            self._cond.notify_all()
            connections = list(self._connections)
        server.shutdown()
        # Werkzeug answers each request on its own thread; cut those still held or delayed.
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        server.server_close()
        if thread is not None:
            thread.join()
        self._server = None
        self._thread = None
        self._requested_port = server.server_port

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The bound port (the one asked for until started)."""
        return self._server.server_port if self._server is not None else self._requested_port

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>/api``: the plugin appends ``/v1/event`` or ``/v2/event``."""
        return f"http://{self.host}:{self.port}/api"

    @property
    def url(self) -> str:
        """The Event history page."""
        return f"http://{self.host}:{self.port}/"

    # ------------------------------------------------------------------ controls

    def script(self, *responses: Reply) -> None:
        """Queue answers for the next requests, in order, before auth and validation."""
        with self._lock:
            self._script.extend(responses)

    def rule(self, match: Callable[[Any], bool], reply: Reply) -> None:
        """Answer ``reply`` to every request whose JSON body ``match`` accepts, until
        :meth:`clear` (after scripted answers, before auth and validation)."""
        with self._lock:
            self._rules.append((match, reply))

    def hold(self) -> None:
        """Make new and waiting requests block until :meth:`release` (at most 30 s each)."""
        with self._cond:
            self._held = True

    def release(self) -> None:
        """Let held requests go on."""
        with self._cond:
            self._held = False
            self._cond.notify_all()

    def wait_for_arrivals(self, count: int, timeout: float = 5.0) -> bool:
        """Block until ``count`` requests have arrived (answered or not); False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._arrived >= count, timeout)

    def clear(self) -> None:
        """Forget recorded requests, events and orders, and any scripted answers."""
        with self._cond:
            self._requests.clear()
            self._accepted.clear()
            self._orders.clear()
            self._past_events.clear()
            self._erasures.clear()
            self._script.clear()
            self._rules.clear()
            self._arrived = 0
            self._tokens_at = None

    # ----------------------------------------------------------------- recordings

    @property
    def requests(self) -> list[Received]:
        """Every request to ``/api/...`` in the order answered (a copy)."""
        with self._lock:
            return list(self._requests)

    @property
    def events(self) -> list[dict[str, Any]]:
        """The accepted Generate event bodies, oldest first (a copy)."""
        with self._lock:
            return [a.body for a in self._accepted]

    @property
    def orders(self) -> list[dict[str, Any]]:
        """Every order received by ``/api/v1/orders``, oldest first (a copy)."""
        with self._lock:
            return list(self._orders)

    @property
    def erasures(self) -> list[dict[str, str]]:
        """The query of every contact erasure (``DELETE /api/v1/contact``) accepted, oldest
        first (a copy)."""
        with self._lock:
            return list(self._erasures)

    @property
    def past_events(self) -> list[dict[str, Any]]:
        """Every event received by ``/api/<version>/past_events``, oldest first (a copy)."""
        with self._lock:
            return list(self._past_events)

    @property
    def arrived(self) -> int:
        """How many requests have arrived, including those not answered yet."""
        with self._lock:
            return self._arrived

    @staticmethod
    def params(event: dict[str, Any]) -> dict[str, Any]:
        """An event's params as a ``{name: value}`` dict."""
        return {
            p["name"]: p.get("value")
            for p in event.get("params") or []
            if isinstance(p, dict) and isinstance(p.get("name"), str)
        }

    @staticmethod
    def items(event: dict[str, Any], name: str = "items") -> list[dict[str, Any]]:
        """The products of an event's ``items`` param, deserialized (v1 string or v2 object)."""
        value = Receiver.params(event).get(name)
        return item_rows(value) or []

    # ------------------------------------------------------------------- serving

    def _handler_class(self) -> type[WSGIRequestHandler]:
        receiver = self

        class Handler(WSGIRequestHandler):
            def setup(self) -> None:
                super().setup()
                with receiver._lock:
                    receiver._connections.add(self.connection)

            def finish(self) -> None:
                with receiver._lock:
                    receiver._connections.discard(self.connection)
                super().finish()

            def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
                """Quiet: the history page and ``requests`` are the log."""

        return Handler

    def _create_app(self) -> Flask:
        app = Flask(__name__)
        app.json.sort_keys = False  # type: ignore[attr-defined]

        @app.post("/api/<version>/event")
        def event(version: str) -> Response:
            return self._handle(version)

        @app.post("/api/v1/orders")
        def orders() -> Response:
            return self._handle("orders")

        @app.post("/api/<version>/past_events")
        def past_events(version: str) -> Response:
            return self._handle(f"past_{version}")

        @app.get("/api/v1/account/info")
        def account_info() -> Response:
            return self._handle("account")

        @app.delete("/api/v1/contact")
        def erase_contact() -> Response:
            return self._handle("contact")

        @app.route("/api/<path:rest>", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
        def unknown(rest: str) -> Response:
            return self._handle(None)

        @app.get("/")
        def history() -> str:
            with self._lock:
                accepted = list(reversed(self._accepted))
            return render_template(
                "receiver_history.html",
                entries=[_history_entry(a) for a in accepted],
                base_url=self.base_url,
                total=len(accepted),
                refresh=request.args.get("refresh", type=int),
            )

        @app.get("/events.json")
        def events_json() -> Response:
            return jsonify(self.events)

        return app

    def _handle(self, kind: str | None) -> Response:
        arrived = self._clock()
        with self._cond:
            self._arrived += 1
            self._cond.notify_all()
            within_rate = self._take_token()
        if not within_rate:
            raw = request.get_data(cache=True)
            headers = {"Retry-After": "1"}
            return self._record(raw, _parse_json(raw), arrived, 429, "Too Many Requests", headers)
        self._wait_while_held()
        if self.latency > 0:
            self._stopping.wait(self.latency)
        raw = request.get_data(cache=True)
        parsed = _parse_json(raw)
        with self._lock:
            scripted = self._script.popleft() if self._script else None
            if scripted is None:
                scripted = next((reply for match, reply in self._rules if match(parsed)), None)

        accepted: _Accepted | None = None
        if self._stopping.is_set():
            status, text, headers = 503, "the receiver is stopping", {}
        elif scripted is not None:
            if scripted.delay > 0:
                self._stopping.wait(scripted.delay)
            status, text, headers = scripted.status, scripted.body, dict(scripted.headers)
            if 200 <= status < 300 and kind in {"v1", "v2"} and isinstance(parsed, dict):
                accepted = _Accepted(self._clock(), kind, parsed)
            if scripted.trickle > 0 or scripted.size > 0:
                return self._streamed(raw, parsed, arrived, scripted, accepted)
        elif kind == "account":
            headers = {}
            try:
                self._check_auth()
                status, text = 200, json.dumps({"userName": "shop", "organisation": "Test shop"})
            except _Refused as refused:
                status, text = refused.status, str(refused)
                headers["WWW-Authenticate"] = 'Basic realm="api"'
        elif kind is None:
            status, text, headers = 404, f"no such method: {request.method} {request.path}", {}
        elif kind == "contact":
            headers = {}
            try:
                self._check_auth()
                query = dict(request.args.items())
                if not any(query.get(name) for name in KEY_PARAMS):
                    raise _Refused(f"the contact must be named by one of {', '.join(KEY_PARAMS)}")
                with self._lock:
                    self._erasures.append(query)
                status, text = 200, ""
            except _Refused as refused:
                status, text = refused.status, str(refused)
        elif kind not in {"v1", "v2", "orders", "past_v1", "past_v2"}:
            status, text, headers = 404, f"unknown API version {kind!r}", {}
        else:
            headers = {}
            try:
                self._check_auth()
                if kind == "orders":
                    orders = _check_orders(raw, parsed, self.max_body_bytes)
                    with self._lock:
                        self._orders.extend(orders)
                elif kind.startswith("past_"):
                    events = _check_past_events(raw, parsed, kind[5:], self.max_body_bytes)
                    with self._lock:
                        self._past_events.extend(events)
                else:
                    body = _check_event(raw, parsed, kind, self.max_body_bytes)
                    accepted = _Accepted(self._clock(), kind, body)
                status, text = 200, ""
            except _Refused as refused:
                status, text = refused.status, str(refused)
                if status == 401:
                    headers["WWW-Authenticate"] = 'Basic realm="api"'

        return self._record(raw, parsed, arrived, status, text, headers, accepted)

    def _record(
        self,
        raw: bytes,
        parsed: Any,
        arrived: datetime,
        status: int,
        text: str,
        headers: dict[str, str],
        accepted: _Accepted | None = None,
    ) -> Response:
        record = Received(
            time=self._clock(),
            method=request.method,
            path=request.path,
            headers=dict(request.headers.items()),
            raw=raw,
            json=parsed,
            status=status,
            reply=text,
            arrived=arrived,
        )
        with self._lock:
            self._requests.append(record)
            if accepted is not None:
                self._accepted.append(accepted)
        if accepted is not None and self._on_event is not None:
            self._on_event(accepted.body)
        return Response(text, status=status, headers=headers, mimetype="text/plain")

    def _streamed(
        self,
        raw: bytes,
        parsed: Any,
        arrived: datetime,
        reply: Reply,
        accepted: _Accepted | None,
    ) -> Response:
        """A scripted answer whose body is made while it is sent: trickled, or huge."""
        stopping = self._stopping
        body = reply.body.encode("utf-8")
        size = reply.size or len(body)

        def chunks() -> Iterator[bytes]:
            if reply.trickle > 0:
                for i in range(size):
                    yield body[i : i + 1] if i < len(body) else b"x"
                    if stopping.wait(reply.trickle):
                        return
                return
            block = b"x" * 65536
            left = size
            while left > 0 and not stopping.is_set():
                yield block[: min(left, len(block))]
                left -= len(block)

        self._record(raw, parsed, arrived, reply.status, f"<{size} bytes>", {}, accepted)
        headers = {**reply.headers, "Content-Length": str(size)}
        return Response(chunks(), status=reply.status, headers=headers, mimetype="text/plain")

    def _take_token(self) -> bool:
        """One token of the rate limit's bucket (call with the lock held); False when empty."""
        rate = self.rate_limit
        if not rate:
            return True
        now = time.monotonic()
        capacity = max(1.0, rate)
        if self._tokens_at is None:
            self._tokens = capacity
        else:
            self._tokens = min(capacity, self._tokens + (now - self._tokens_at) * rate)
        self._tokens_at = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True

    def _wait_while_held(self) -> None:
        with self._cond:
            self._cond.wait_for(
                lambda: not self._held or self._stopping.is_set(), timeout=MAX_HOLD_SECONDS
            )

    def _check_auth(self) -> None:
        key = self.api_key
        if key is None:
            return
        header = request.headers.get("Authorization", "")
        scheme, _, credentials = header.partition(" ")
        given: str | None = None
        if scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                raise _Refused("Unauthorized: malformed Basic credentials", 401) from None
            given = decoded.partition(":")[2]
        elif scheme.lower() == "bearer":
            given = credentials.strip()
        if given is None:
            raise _Refused("Unauthorized: HTTP Basic auth with the API key is required", 401)
        if not hmac.compare_digest(given.encode("utf-8"), key.encode("utf-8")):
            raise _Refused("Unauthorized: wrong API key", 401)


# ---------------------------------------------------------------------- platform rules


def _parse_json(raw: bytes) -> Any:
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None


def _check_common(raw: bytes, parsed: Any, max_bytes: int) -> dict[str, Any]:
    if len(raw) > max_bytes:
        raise _Refused(f"Request body is {len(raw)} bytes; the maximum is {max_bytes} bytes")
    mimetype = request.mimetype
    if mimetype != "application/json":
        raise _Refused(f"Wrong format: Content-Type must be application/json, got {mimetype!r}")
    if parsed is None and raw.strip() != b"null":
        raise _Refused("Wrong format: the body is not valid UTF-8 JSON")
    if not isinstance(parsed, dict):
        raise _Refused("Wrong format: the body must be a JSON object")
    return parsed


def _check_event(raw: bytes, parsed: Any, version: str, max_bytes: int) -> dict[str, Any]:
    return _check_event_fields(_check_common(raw, parsed, max_bytes), version)


def _check_event_fields(body: dict[str, Any], version: str) -> dict[str, Any]:
    key = body.get("eventTypeKey")
    if key is None:
        raise _Refused("eventTypeKey is required")
    if not isinstance(key, str) or not key.strip():
        raise _Refused("eventTypeKey must be a non-empty string")
    if len(key) > EVENT_TYPE_KEY_MAX:
        raise _Refused(
            f"eventTypeKey is {len(key)} characters long; the maximum is {EVENT_TYPE_KEY_MAX}"
        )
    bad = sorted({c for c in key if c in FORBIDDEN_KEY_CHARS})
    if bad:
        raise _Refused(f"eventTypeKey contains forbidden characters: {' '.join(bad)}")

    params = body.get("params", [])
    if not isinstance(params, list):
        raise _Refused("params must be an array of {name, value} objects")
    names: set[str] = set()
    for i, param in enumerate(params):
        if not isinstance(param, dict) or "name" not in param or "value" not in param:
            raise _Refused(f"params[{i}] must be an object with name and value")
        name = param["name"]
        if not isinstance(name, str) or not name:
            raise _Refused(f"params[{i}].name must be a non-empty string")
        if len(name) > PARAM_NAME_MAX:
            raise _Refused(
                f"param name {name[:40]!r}... is {len(name)} characters; the maximum is "
                f"{PARAM_NAME_MAX}"
            )
        if name in names:
            raise _Refused(f"Duplicate param name: {name!r}; param names must be unique")
        names.add(name)
        if version == "v1" and not isinstance(param["value"], str):
            raise _Refused(
                f"param {name!r}: value must be a string in v1 (serialize nested JSON), "
                f"got {type(param['value']).__name__}"
            )

    key_value = body.get("keyValue")
    if key_value is None:
        if not names & set(KEY_PARAMS):
            raise _Refused(f"The event should have the following params: [{', '.join(KEY_PARAMS)}]")
    elif not isinstance(key_value, str) or not key_value:
        raise _Refused("keyValue must be a non-empty string")
    elif len(key_value) > KEY_VALUE_MAX:
        raise _Refused(
            f"keyValue is {len(key_value)} characters long; the maximum is {KEY_VALUE_MAX}"
        )
    return body


def _check_past_events(
    raw: bytes, parsed: Any, version: str, max_bytes: int
) -> list[dict[str, Any]]:
    # Each event is bound by the event size limit, the request by the batch's.
    body = _check_common(raw, parsed, max(max_bytes, 10_000_000))
    events = body.get("events")
    if not isinstance(events, list) or not events:
        raise _Refused("events must be a non-empty array")
    if len(events) > MAX_PAST_EVENTS:
        raise _Refused(f"{len(events)} events in one request; the maximum is {MAX_PAST_EVENTS}")
    for i, event in enumerate(events):
        if not isinstance(event, dict):
            raise _Refused(f"events[{i}] must be an object")
        size = len(json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode())
        if size > max_bytes:
            raise _Refused(f"events[{i}] is {size} bytes; the maximum is {max_bytes} bytes")
        try:
            _check_event_fields(event, version)
        except _Refused as refused:
            raise _Refused(f"events[{i}]: {refused}") from None
        when = event.get("occurred")
        if not isinstance(when, str) or not OCCURRED.fullmatch(when):
            raise _Refused(f"events[{i}].occurred must be a time like 2023-03-22T14:30")
    return list(events)


def _check_orders(raw: bytes, parsed: Any, max_bytes: int) -> list[dict[str, Any]]:
    # Orders are not bound by the event size limit; a batch of 1000 is far larger.
    body = _check_common(raw, parsed, max(max_bytes, 10_000_000))
    orders = body.get("orders")
    if not isinstance(orders, list) or not orders:
        raise _Refused("orders must be a non-empty array")
    if len(orders) > MAX_ORDERS:
        raise _Refused(f"{len(orders)} orders in one request; the maximum is {MAX_ORDERS}")
    for i, order in enumerate(orders):
        if not isinstance(order, dict):
            raise _Refused(f"orders[{i}] must be an object")
        if order.get("externalOrderId") in (None, ""):
            raise _Refused(f"orders[{i}].externalOrderId is required")
    return list(orders)


# ------------------------------------------------------------------------- history page


def _columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    seen: dict[str, None] = {}
    for row in rows:
        for name in row:
            seen.setdefault(name, None)
    return list(seen)


def _cell(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _is_http_url(value: Any) -> bool:
    return isinstance(value, str) and value.lower().startswith(("http://", "https://"))


def _history_entry(accepted: _Accepted) -> dict[str, Any]:
    body = accepted.body
    tables = []
    others = []
    for name, value in Receiver.params(body).items():
        rows = item_rows(value) or None
        if rows is None:
            others.append((name, _cell(value)))
            continue
        columns = _columns(rows)
        tables.append(
            {
                "name": name,
                "columns": columns,
                "rows": [
                    [
                        {
                            "text": _cell(row[c]) if c in row else "",
                            "image": c.lower() in {"imageurl", "image", "image_url"}
                            and _is_http_url(row.get(c)),
                            "link": c.lower() == "url" and _is_http_url(row.get(c)),
                        }
                        for c in columns
                    ]
                    for row in rows
                ],
            }
        )
    return {
        "time": accepted.time.strftime("%Y-%m-%d %H:%M:%S UTC"),
        "version": accepted.version,
        "event_type_key": body.get("eventTypeKey"),
        "key_value": body.get("keyValue"),
        "params": others,
        "tables": tables,
        "pretty": json.dumps(body, indent=2, ensure_ascii=False),
    }

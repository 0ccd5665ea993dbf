"""Browser tracking: ``POST /shop-events/track``, fed by ``/shop-events/static/shop-events.js``.

Product views and ``identify`` from the shop's pages. JSON only, size-limited, rate-limited per
client address, from the shop's own hosts (``web.shop_hosts``, an allowed origin, or a token),
bots dropped; the visitor is known by a first-party ``se_vid`` cookie that this endpoint sets
(HttpOnly: the script never reads it).

Everything a browser sends is hostile until checked: URLs are read by the WHATWG rules that
browsers follow (``ada-url``), so a link cannot look like the shop's to this code and lead
elsewhere in a mail client; the trusted hosts come from the settings (or ``SERVER_NAME``), never
from the request's ``Host`` or ``Origin``; ``identify`` binds an address only when the server can
vouch for it (``web.identify``).
"""

from __future__ import annotations

import dataclasses
import functools
import hmac
import json
import logging
import math
import re
import secrets
import threading
from collections.abc import Iterable
from datetime import datetime
from fnmatch import fnmatchcase
from typing import Any, cast

import ada_url
from flask import Flask, Response, abort, current_app, jsonify, request
from flask.blueprints import BlueprintSetupState

from ...capture.bots import is_bot
from ...clock import Clock
from ...config import WebSettings
from ...errors import StorageError, ValidationError
from ...payload.validation import check_email
from .blueprint import WebState, blueprint, web_state

log = logging.getLogger(__name__)

TOKEN_HEADER = "X-Shop-Events-Token"
TRACK_TYPES = ("product_view", "identify")
MAX_CLIENTS = 10_000
LIMITER_KEY = "shop_events.rate_limiter"
_VISITOR_ID = re.compile(r"[A-Za-z0-9_-]{16,64}")
MAX_DEPTH = 3
"""Objects and lists nest at most this deep in a tracking call: the body, its item, the tags."""
MAX_DIGITS = 40
"""Longest JSON integer taken (a price is at most 1e30): longer ones are refused unread."""


class RateLimiter:
    """Token buckets by client address, in this process: ``rate`` per second, ``burst`` at once.

    Buckets that have filled up again are forgotten when the table grows past ``max_clients``,
    so a flood of addresses cannot grow it without bound.
    """

    def __init__(self, rate: float, burst: int, clock: Clock, max_clients: int = MAX_CLIENTS):
        self.rate = rate
        self.burst = float(burst)
        self._clock = clock
        self._max = max_clients
        self._buckets: dict[str, tuple[float, datetime]] = {}
        self._lock = threading.Lock()

    def take(self, key: str) -> float:
        """Spend one token of ``key``'s bucket: 0 if allowed, else seconds until one is free."""
        now = self._clock()
        with self._lock:
            tokens, at = self._buckets.get(key, (self.burst, now))
            tokens = min(self.burst, tokens + max(0.0, (now - at).total_seconds()) * self.rate)
            if tokens >= 1:
                self._buckets[key] = (tokens - 1, now)
                if len(self._buckets) > self._max:
                    self._forget_full(now)
                return 0.0
            self._buckets[key] = (tokens, now)
            return (1 - tokens) / self.rate

    def _forget_full(self, now: datetime) -> None:
        full = [
            k
            for k, (tokens, at) in self._buckets.items()
            if tokens + (now - at).total_seconds() * self.rate >= self.burst
        ]
        for key in full:
            del self._buckets[key]
        while len(self._buckets) > self._max:  # all busy: drop the oldest
            del self._buckets[next(iter(self._buckets))]


@blueprint.record_once
def _add_limiter(setup: BlueprintSetupState) -> None:
    """Each app gets its own limiter, from its tracker's ``[web]`` settings and clock."""
    tracker = web_state(cast(Flask, setup.app)).tracker
    web = tracker.settings.web
    setup.app.extensions[LIMITER_KEY] = RateLimiter(web.rate_limit, web.rate_burst, tracker.clock)


def limiter(app: Flask | None = None) -> RateLimiter:
    """The tracking endpoint's rate limiter of ``app`` (by default the current app)."""
    found: RateLimiter = (app or current_app).extensions[LIMITER_KEY]
    return found


# ------------------------------------------------------------------------- visitor identity


def visitor_id() -> str | None:
    """The current request's visitor id (the ``se_vid`` cookie the track endpoint set), if any."""
    value = request.cookies.get(web_state().settings.cookie_name)
    return value if value and _VISITOR_ID.fullmatch(value) else None


def identify(email: str, **bind: Any) -> bool:
    """Server-side ``identify`` for the current request (call it in the login view).

    Links the browser's visitor id to ``email`` so that products viewed anonymously follow the
    shopper; ``session=``/``connection=`` join the host's transaction. False when the browser
    has no visitor id yet (it never ran the tracking script).
    """
    visitor = visitor_id()
    if visitor is None:
        return False
    web_state().tracker.identify(visitor, email, **bind)
    return True


# ------------------------------------------------------------------------- the endpoint


class _Refused(Exception):
    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.field = field


@blueprint.route("/track", methods=["POST", "OPTIONS"])
def track() -> Response:
    """Record a product view or an identify from the shop's page (see ``shop-events.js``)."""
    state = web_state()
    settings = state.settings
    if not settings.track:
        abort(404)
    caller = _Caller(cross_origin=None, proven=False)
    try:
        caller = _check_origin(settings)
        if request.method == "OPTIONS":
            return _preflight(caller.cross_origin)
        wait = limiter().take(request.remote_addr or "-")
        if wait:
            response = _error(429, "too many tracking requests from this address; slow down")
            response.headers["Retry-After"] = str(max(1, math.ceil(wait)))
            return _with_cors(response, caller.cross_origin)
        payload = _payload(settings)
        response = _record(state, payload, caller)
    except _Refused as refused:
        response = _error(refused.status, str(refused), refused.field)
    return _with_cors(response, caller.cross_origin)


@dataclasses.dataclass(frozen=True)
class _Caller:
    """Who is posting, as far as the server can tell."""

    cross_origin: str | None
    """The page's origin, echoed in the CORS headers; None without an ``Origin`` header."""
    proven: bool
    """The request carried the right ``X-Shop-Events-Token`` (a server or app, not a page)."""


def _check_origin(settings: WebSettings) -> _Caller:
    """Refuse requests that do not come from the shop's own pages (or carry the token)."""
    token = settings.token.reveal()
    sent = request.headers.get(TOKEN_HEADER)
    if token and sent is not None:
        if hmac.compare_digest(sent.encode(), token.encode()):
            return _Caller(cross_origin=None, proven=True)
        raise _Refused(403, f"{TOKEN_HEADER}: wrong token", TOKEN_HEADER)
    origin = request.headers.get("Origin")
    has_origin = bool(origin) and origin != "null"
    field = "Origin" if has_origin else "Referer"
    source = origin if has_origin else request.headers.get("Referer")
    if not source:
        raise _Refused(
            403, "Origin: missing, and no Referer: cannot tell the page's site", "Origin"
        )
    # browsers send both in ASCII (IDNA, percent-encoded): anything else is not from one
    url = web_url(source) if source.isascii() else None
    if url is None or url.protocol not in ("http:", "https:"):
        raise _Refused(403, f"{field}: {source[:80]!r} is not an http(s) origin", field)
    if url.username or url.password:
        raise _Refused(403, f"{field}: must not carry a user name or password", field)
    found = str(url.origin)
    shop = shop_hosts(settings)
    allowed = {_origin_of(o) for o in settings.allowed_origins}
    if not host_matches(_host_of(url), shop) and found not in allowed:
        where = "web.shop_hosts or web.allowed_origins" if shop else _NO_SHOP_HOSTS
        raise _Refused(403, f"{field}: {found[:80]} may not post here ({where})", field)
    return _Caller(cross_origin=found if has_origin else None, proven=False)


def web_url(text: str) -> ada_url.URL | None:
    """``text`` parsed as browsers parse URLs (WHATWG), or None if a browser would not open it."""
    try:
        return ada_url.URL(text)
    except (ValueError, UnicodeError):  # not a URL; a lone surrogate
        return None


def shop_hosts(settings: WebSettings) -> tuple[str, ...]:
    """The shop's own host patterns: ``web.shop_hosts``, else the app's ``SERVER_NAME``.

    Never the request's ``Host`` header: a client can send any.
    """
    if settings.shop_hosts:
        return settings.shop_hosts
    name = current_app.config.get("SERVER_NAME")
    url = web_url(f"http://{name}") if isinstance(name, str) and name else None
    return (_host_of(url),) if url is not None and url.hostname else ()


def host_matches(host: str, patterns: Iterable[str]) -> bool:
    """Whether a WHATWG host (lower case, IDNA) is one of the host ``patterns`` (globs)."""
    return any(
        fnmatchcase(host, pattern) if _is_glob(pattern) else host == pattern
        for pattern in _canonical_patterns(tuple(patterns))
    )


@functools.lru_cache(maxsize=64)
def _canonical_patterns(patterns: tuple[str, ...]) -> tuple[str, ...]:
    # exact hosts in the serialization browsers use ("[0::1]" is "[::1]", "SHOP." is "shop")
    canonical = []
    for pattern in patterns:
        url = None if _is_glob(pattern) else web_url(f"http://{pattern}/")
        canonical.append(_host_of(url) if url is not None else pattern.lower().rstrip("."))
    return tuple(canonical)


def _is_glob(pattern: str) -> bool:
    return "*" in pattern or "?" in pattern


def _host_of(url: ada_url.URL) -> str:
    return str(url.hostname).rstrip(".")


def _origin_of(origin: str) -> str | None:
    url = web_url(origin)
    return str(url.origin) if url is not None else None


_NO_SHOP_HOSTS = (
    "no host is the shop's: web.shop_hosts is empty and the app has no SERVER_NAME; "
    "set web.shop_hosts"
)


def _preflight(cross_origin: str | None) -> Response:
    response = Response(status=204)
    response.headers["Access-Control-Allow-Methods"] = "POST"
    response.headers["Access-Control-Allow-Headers"] = f"Content-Type, {TOKEN_HEADER}"
    response.headers["Access-Control-Max-Age"] = "600"
    return _with_cors(response, cross_origin)


def _with_cors(response: Response, cross_origin: str | None) -> Response:
    response.headers["Cache-Control"] = "no-store"
    response.vary.add("Origin")
    if cross_origin:
        response.headers["Access-Control-Allow-Origin"] = cross_origin
        response.headers["Access-Control-Allow-Credentials"] = "true"
    return response


def _error(status: int, message: str, field: str | None = None) -> Response:
    body: dict[str, Any] = {"error": message}
    if field is not None:
        body["field"] = field
    response = jsonify(body)
    response.status_code = status
    return response


def _payload(settings: WebSettings) -> dict[str, Any]:
    if request.mimetype != "application/json":
        raise _Refused(415, "Content-Type: must be application/json", "Content-Type")
    limit = settings.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise _Refused(413, f"body: {request.content_length} bytes; at most {limit}", "body")
    raw = request.stream.read(limit + 1)
    if len(raw) > limit:
        raise _Refused(413, f"body: over {limit} bytes", "body")
    try:
        payload = json.loads(raw, parse_int=_parse_int, parse_constant=_Unreadable.constant)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise _Refused(400, f"body: not valid JSON ({str(exc)[:120]})", "body") from None
    if not isinstance(payload, dict):
        raise _Refused(400, "body: must be a JSON object", "body")
    _check_tree(payload)
    kind = payload.get("type")
    if kind not in TRACK_TYPES:
        raise _Refused(400, f"type: must be one of {', '.join(TRACK_TYPES)}, got {kind!r}", "type")
    allowed = {"type", "item"} if kind == "product_view" else {"type", "email"}
    unknown = sorted(set(payload) - allowed)
    if unknown:
        raise _Refused(400, f"{unknown[0]}: not a field of a {kind} call", unknown[0])
    return payload


class _Unreadable:
    """A JSON value parsed into a marker, to be refused naming its field: NaN, a huge integer."""

    def __init__(self, what: str) -> None:
        self.what = what

    @classmethod
    def constant(cls, name: str) -> _Unreadable:
        return cls(f"{name} is not a JSON number")


def _parse_int(text: str) -> int | _Unreadable:
    # int() of thousands of digits is slow or refused (sys.get_int_max_str_digits)
    digits = len(text.lstrip("-"))
    if digits > MAX_DIGITS:
        return _Unreadable(f"an integer of {digits} digits; at most {MAX_DIGITS}")
    return int(text)


def _check_tree(payload: dict[str, Any]) -> None:
    """Refuse, naming the field, what JSON allows but nothing here can use.

    Lone surrogates (``"\\ud800"``: valid JSON, not text: no database or email can store
    them), nesting deeper than :data:`MAX_DEPTH`, huge integers and NaN.
    """
    pending: list[tuple[str, Any, int]] = [("body", payload, 1)]
    while pending:
        path, value, depth = pending.pop()
        if isinstance(value, _Unreadable):
            raise _Refused(400, f"{path}: {value.what}", path)
        if isinstance(value, str) and not _is_text(value):
            raise _Refused(400, f"{path}: has a lone surrogate (not text)", path)
        if not isinstance(value, dict | list):
            continue
        if depth > MAX_DEPTH:
            raise _Refused(400, f"{path}: nested too deep (at most {MAX_DEPTH} levels)", path)
        pairs = value.items() if isinstance(value, dict) else enumerate(value)
        for key, child in reversed(list(pairs)):  # first field first
            if isinstance(key, int):
                name = f"{path}[{key}]"
            elif not _is_text(key):
                raise _Refused(400, f"{path}: a name has a lone surrogate (not text)", path)
            else:
                name = key[:40] if path == "body" else f"{path}.{key[:40]}"
            pending.append((name, child, depth + 1))


def _is_text(value: str) -> bool:
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _record(state: WebState, payload: dict[str, Any], caller: _Caller) -> Response:
    tracker = state.tracker
    agent = request.user_agent.string or None
    email = _current_email(state)
    visitor = visitor_id() or secrets.token_urlsafe(16)
    try:
        if payload["type"] == "product_view":
            item = payload.get("item")
            if not isinstance(item, dict):
                raise ValidationError("item", "must be an object with name and price")
            item = _checked_links(item, state.settings)
            tracker.product_viewed(item=item, visitor_id=visitor, email=email, user_agent=agent)
        else:
            address = _identified(state.settings, payload, caller, email)
            if is_bot(tracker.settings.bots, agent):
                return Response(status=204)
            tracker.identify(visitor, address)
    except ValidationError as exc:
        raise _Refused(400, str(exc), exc.field) from None
    except StorageError:
        log.warning("track: %s was not recorded", payload["type"])
        raise _Refused(503, "not recorded; try again later") from None
    if is_bot(tracker.settings.bots, agent):
        return Response(status=204)  # dropped by product_viewed; no cookie for crawlers
    response = Response(status=204)
    response.set_cookie(
        state.settings.cookie_name,
        visitor,
        max_age=int(state.settings.cookie_max_age.total_seconds()),
        path="/",
        secure=request.is_secure,
        httponly=True,
        samesite="Lax",
    )
    return response


def _current_email(state: WebState) -> str | None:
    if state.current_email is None:
        return None
    try:
        return state.current_email() or None
    except Exception:
        log.exception("track: the current_email callable failed; the call stays anonymous")
        return None


def _identified(
    settings: WebSettings, payload: dict[str, Any], caller: _Caller, signed_in: str | None
) -> str:
    """The address a browser's ``identify`` may bind, per ``web.identify``; else refused.

    An unproven address must never be bound: the views and carts of this browser would then
    make reminder emails go to whoever's address a visitor typed.
    """
    if settings.identify == "off":
        raise _Refused(403, "type: identify from the browser is off (web.identify)", "type")
    if payload.get("email") is None:
        raise ValidationError("email", "is required")
    address = check_email(payload["email"], "email")
    if settings.identify == "any" or caller.proven:
        return address
    if signed_in is None:
        raise _Refused(
            403,
            "email: nobody is signed in; with web.identify = 'signed-in' the browser may only "
            "identify the shopper that current_email names",
            "email",
        )
    if not _same_address(address, signed_in):
        raise _Refused(
            403,
            "email: is not the signed-in shopper's address (web.identify = 'signed-in')",
            "email",
        )
    return address


def _same_address(address: str, signed_in: str) -> bool:
    try:
        return check_email(signed_in, "current_email") == address
    except ValidationError:
        return False


def _checked_links(item: dict[str, Any], settings: WebSettings) -> dict[str, Any]:
    """The item with its links as browsers read them, if they point at the shop; else refused.

    A link is read by the WHATWG rules (``https://evil.test\\@shop.test/`` leads to evil.test)
    and stored in the form browsers serialize, so what was checked is what the email holds.
    """
    shop = shop_hosts(settings)
    hosts = (*shop, *settings.item_hosts)
    origins = (web_url(o) for o in settings.allowed_origins)
    hosts += tuple(_host_of(url) for url in origins if url is not None)
    checked = dict(item)
    for key in ("url", "imageurl"):
        value = item.get(key)
        if not isinstance(value, str):
            continue  # the tracker's checks name the problem
        field = f"item.{key}"
        url = web_url(value)
        if url is None or url.protocol not in ("http:", "https:"):
            raise ValidationError(field, f"must be an absolute http(s) URL, got {value[:80]!r}")
        if url.username or url.password:
            raise ValidationError(
                field, "must not carry a user name or password ('…@'): browsers go elsewhere"
            )
        host = _host_of(url)
        if not host_matches(host, hosts):
            raise ValidationError(
                field,
                f"host {host[:80]!r} is not the shop's "
                f"({'web.shop_hosts or web.item_hosts' if shop else _NO_SHOP_HOSTS})",
            )
        checked[key] = str(url.href)
    return checked

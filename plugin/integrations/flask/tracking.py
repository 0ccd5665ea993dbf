"""Browser tracking: ``POST /shop-events/track``, fed by ``/shop-events/static/shop-events.js``.

Product views and ``identify`` from the shop's pages. JSON only, size-limited, rate-limited per
client address, same-origin (or an allowed origin, or a token), bots dropped; the visitor is
known by a first-party ``se_vid`` cookie that this endpoint sets (HttpOnly: the script never
reads it).
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import re
import secrets
import threading
from collections.abc import Mapping
from datetime import datetime
from fnmatch import fnmatchcase
from typing import Any, cast
from urllib.parse import urlsplit

from flask import Flask, Response, abort, current_app, jsonify, request
from flask.blueprints import BlueprintSetupState

from ...capture.bots import is_bot
from ...clock import Clock
from ...config import WebSettings
from ...errors import StorageError, ValidationError
from .blueprint import WebState, blueprint, web_state

log = logging.getLogger(__name__)

TOKEN_HEADER = "X-Shop-Events-Token"
TRACK_TYPES = ("product_view", "identify")
MAX_CLIENTS = 10_000
LIMITER_KEY = "shop_events.rate_limiter"
_VISITOR_ID = re.compile(r"[A-Za-z0-9_-]{16,64}")


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
    cross_origin: str | None = None
    try:
        cross_origin = _check_origin(settings)
        if request.method == "OPTIONS":
            return _preflight(cross_origin)
        wait = limiter().take(request.remote_addr or "-")
        if wait:
            response = _error(429, "too many tracking requests from this address; slow down")
            response.headers["Retry-After"] = str(max(1, math.ceil(wait)))
            return _with_cors(response, cross_origin)
        payload = _payload(settings)
        response = _record(state, payload)
    except _Refused as refused:
        response = _error(refused.status, str(refused), refused.field)
    return _with_cors(response, cross_origin)


def _check_origin(settings: WebSettings) -> str | None:
    """Refuse requests from other sites; returns the allowed foreign origin for CORS, or None."""
    token = settings.token.reveal()
    sent = request.headers.get(TOKEN_HEADER)
    if token and sent is not None:
        if hmac.compare_digest(sent.encode(), token.encode()):
            return None
        raise _Refused(403, f"{TOKEN_HEADER}: wrong token", TOKEN_HEADER)
    origin = request.headers.get("Origin")
    source = origin if origin and origin != "null" else request.headers.get("Referer")
    if not source:
        raise _Refused(
            403, "Origin: missing, and no Referer: cannot tell the page's site", "Origin"
        )
    parts = urlsplit(source)
    if not parts.scheme or not parts.netloc:
        raise _Refused(403, f"Origin: {source[:100]!r} is not an origin", "Origin")
    if parts.netloc.lower() == request.host.lower():
        return None
    found = f"{parts.scheme}://{parts.netloc}".lower()
    if found in {o.rstrip("/").lower() for o in settings.allowed_origins}:
        return found
    raise _Refused(
        403,
        f"Origin: {found} may not post here; add it to web.allowed_origins if it is the shop's",
        "Origin",
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
        payload = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise _Refused(400, f"body: not valid JSON ({exc})", "body") from None
    if not isinstance(payload, dict):
        raise _Refused(400, "body: must be a JSON object", "body")
    kind = payload.get("type")
    if kind not in TRACK_TYPES:
        raise _Refused(400, f"type: must be one of {', '.join(TRACK_TYPES)}, got {kind!r}", "type")
    allowed = {"type", "item"} if kind == "product_view" else {"type", "email"}
    unknown = sorted(set(payload) - allowed)
    if unknown:
        raise _Refused(400, f"{unknown[0]}: not a field of a {kind} call", unknown[0])
    return payload


def _record(state: WebState, payload: dict[str, Any]) -> Response:
    tracker = state.tracker
    agent = request.user_agent.string or None
    email = _current_email(state)
    visitor = visitor_id() or secrets.token_urlsafe(16)
    try:
        if payload["type"] == "product_view":
            item = payload.get("item")
            if not isinstance(item, dict):
                raise ValidationError("item", "must be an object with name and price")
            _check_item_hosts(item, state.settings)
            tracker.product_viewed(item=item, visitor_id=visitor, email=email, user_agent=agent)
        else:
            if not state.settings.identify:
                raise _Refused(403, "type: identify from the browser is off (web.identify)", "type")
            address = payload.get("email")
            if address is None:
                raise ValidationError("email", "is required")
            if is_bot(tracker.settings.bots, agent):
                return Response(status=204)
            tracker.identify(visitor, cast(str, address))
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


def _check_item_hosts(item: Mapping[str, Any], settings: WebSettings) -> None:
    """Product links from the browser must point at the shop, not at someone else's site."""
    hosts = {(urlsplit(f"//{request.host}").hostname or "").lower()}
    hosts.update((urlsplit(o).hostname or "").lower() for o in settings.allowed_origins)
    for field in ("url", "imageurl"):
        value = item.get(field)
        if not isinstance(value, str):
            continue  # the tracker's checks name the problem
        host = (urlsplit(value.strip()).hostname or "").lower()
        if host in hosts or any(fnmatchcase(host, p.lower()) for p in settings.item_hosts):
            continue
        raise ValidationError(
            f"item.{field}", f"host {host!r} is not the shop's (add it to web.item_hosts)"
        )

"""The plugin's Flask blueprint (``/shop-events``): browser tracking and the operator pages.

- ``POST /shop-events/track`` with ``/shop-events/static/shop-events.js``: product views and
  ``identify`` from the shop's pages. JSON only, size-limited, rate-limited per client address,
  same-origin (or an allowed origin, or a token), bots dropped; the visitor is known by a
  first-party ``se_vid`` cookie that this endpoint sets (HttpOnly: the script never reads it).
- ``/shop-events/admin/…``: event history, one event (body, products, response, preview),
  health, dead letters with replay. Off (404) unless an access check is configured; every POST
  carries a per-session CSRF token; everything is rendered by autoescaping Jinja templates.

Like :mod:`shop_events.integrations.flask`, this module is Flask-only; the core never imports it.
"""

from __future__ import annotations

import dataclasses
import hmac
import importlib
import json
import logging
import math
import re
import secrets
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from fnmatch import fnmatchcase
from functools import wraps
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    Flask,
    Response,
    abort,
    current_app,
    flash,
    get_flashed_messages,
    jsonify,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from sqlalchemy import ColumnElement, func, select
from werkzeug.wrappers import Response as BaseResponse

from ...capture.bots import is_bot
from ...clock import Clock
from ...config import Settings, WebSettings, format_duration
from ...errors import ConfigError, StorageError, ValidationError
from ...payload.items import item_rows
from ...storage import outbox as outbox_ops
from ...storage import pause
from ...storage.enums import FlowState, OutboxStatus
from ...storage.tables import browses, carts, outbox, registrations
from ...tracker import Tracker

log = logging.getLogger(__name__)

URL_PREFIX = "/shop-events"
WEB_KEY = "shop_events.web"
TOKEN_HEADER = "X-Shop-Events-Token"
CSRF_KEY = "shop_events_csrf"
TRACK_TYPES = ("product_view", "identify")
MAX_TEMPLATE_CHARS = 200_000
MAX_CLIENTS = 10_000
_VISITOR_ID = re.compile(r"[A-Za-z0-9_-]{16,64}")

AdminAccess = Callable[[], bool]
"""Called in the request context of an operator page: True lets the request in."""
CurrentEmail = Callable[[], "str | None"]
"""Called in the request context of a tracking call: the signed-in shopper's email, or None."""
F = TypeVar("F", bound=Callable[..., Any])

blueprint = Blueprint(
    "shop_events",
    __name__,
    url_prefix=URL_PREFIX,
    static_folder="static",
    template_folder="templates",
)


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


@dataclasses.dataclass
class WebState:
    """What the blueprint needs of one app: its tracker, the hooks given to ShopEvents, limits."""

    tracker: Tracker
    admin_access: AdminAccess | None
    current_email: CurrentEmail | None
    limiter: RateLimiter

    @property
    def settings(self) -> WebSettings:
        return self.tracker.settings.web


def register(
    app: Flask,
    tracker: Tracker,
    *,
    admin_access: AdminAccess | None = None,
    current_email: CurrentEmail | None = None,
) -> WebState:
    """Install the blueprint on ``app`` (once; ``ShopEvents`` calls it)."""
    if WEB_KEY in app.extensions:
        raise RuntimeError("the shop-events blueprint is already registered on this app")
    web = tracker.settings.web
    if admin_access is None and web.admin_access:
        admin_access = _import_check(web.admin_access)
    state = WebState(
        tracker=tracker,
        admin_access=admin_access,
        current_email=current_email,
        limiter=RateLimiter(web.rate_limit, web.rate_burst, tracker.clock),
    )
    app.extensions[WEB_KEY] = state
    app.register_blueprint(blueprint)
    return state


def _import_check(path: str) -> AdminAccess:
    module, _, name = path.partition(":")
    try:
        found: Any = importlib.import_module(module)
        for part in name.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"web.admin_access: cannot import {path!r}: {exc}") from None
    if not callable(found):
        raise ConfigError(f"web.admin_access: {path!r} is not callable")
    return cast(AdminAccess, found)


def _state() -> WebState:
    state: WebState = current_app.extensions[WEB_KEY]
    return state


# ------------------------------------------------------------------------- visitor identity


def visitor_id() -> str | None:
    """The current request's visitor id (the ``se_vid`` cookie the track endpoint set), if any."""
    value = request.cookies.get(_state().settings.cookie_name)
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
    _state().tracker.identify(visitor, email, **bind)
    return True


# ------------------------------------------------------------------------- browser tracking


class _Refused(Exception):
    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.field = field


@blueprint.route("/track", methods=["POST", "OPTIONS"])
def track() -> Response:
    """Record a product view or an identify from the shop's page (see ``shop-events.js``)."""
    state = _state()
    settings = state.settings
    if not settings.track:
        abort(404)
    cross_origin: str | None = None
    try:
        cross_origin = _check_origin(settings)
        if request.method == "OPTIONS":
            return _preflight(cross_origin)
        wait = state.limiter.take(request.remote_addr or "-")
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


# ------------------------------------------------------------------------- operator pages


def _admin(view: F) -> F:
    """Operator pages: 404 while no access check is configured, 403 when it says no."""

    @wraps(view)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        check = _state().admin_access
        if check is None:
            abort(404)
        try:
            allowed = bool(check())
        except Exception:
            log.exception("admin: the admin_access check failed; access denied")
            allowed = False
        if not allowed:
            abort(403)
        if request.method == "POST":
            _check_csrf()
        response = current_app.make_response(view(*args, **kwargs))
        response.headers["Cache-Control"] = "no-store"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["Content-Security-Policy"] = (
            "default-src 'none'; img-src http: https: data:; style-src 'unsafe-inline'; "
            "frame-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
        )
        return response

    return cast(F, guarded)


def csrf_token() -> str | None:
    """This session's CSRF token for the operator pages' forms; None without ``secret_key``."""
    if not current_app.secret_key:
        return None
    token = session.get(CSRF_KEY)
    if not isinstance(token, str):
        token = secrets.token_urlsafe(32)
        session[CSRF_KEY] = token
    return token


def _check_csrf() -> None:
    if not current_app.secret_key:
        abort(400, "set app.secret_key: the operator pages' forms need a session for CSRF")
    expected = session.get(CSRF_KEY)
    sent = request.form.get("csrf_token", "")
    if not isinstance(expected, str) or not hmac.compare_digest(sent.encode(), expected.encode()):
        abort(400, "CSRF token missing or wrong: reload the page and try again")


def _render(template: str, **context: Any) -> str:
    state = _state()
    return render_template(
        f"shop_events/{template}",
        csrf_token=csrf_token(),
        messages=get_flashed_messages(with_categories=True),
        fmt_time=_fmt_time,
        fmt_age=_fmt_age,
        now=state.tracker.clock(),
        statuses=[s.value for s in OutboxStatus],
        **context,
    )


def _fmt_time(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if value else ""


def _fmt_age(delta: timedelta) -> str:
    """``1h 5m``, ``3d 2h``, ``42s``: the two largest units."""
    seconds = int(abs(delta.total_seconds()))
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size or (unit == "s" and not parts):
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return ("-" if delta < timedelta(0) else "") + " ".join(parts[:2])


def _parse_time(text: str, field: str) -> datetime:
    for layout in ("%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d"):
        try:
            return datetime.strptime(text.strip(), layout).replace(tzinfo=UTC)
        except ValueError:
            continue
    raise ValueError(f"{field}: {text!r} is not a date (YYYY-MM-DD) or time (YYYY-MM-DDTHH:MM)")


def _page_args() -> tuple[int | None, int | None]:
    def number(name: str) -> int | None:
        value = request.args.get(name, "")
        return int(value) if value.isdigit() else None

    return number("before"), number("after")


def _paged(
    conditions: list[ColumnElement[bool]], before: int | None, after: int | None, size: int
) -> tuple[list[Any], bool, bool]:
    """Rows newest first, ``size`` a page, by id (keyset): (rows, has_newer, has_older)."""
    query = select(outbox).where(*conditions)
    with _state().tracker.engine.connect() as conn:
        if after is not None:
            rows = list(
                conn.execute(
                    query.where(outbox.c.id > after).order_by(outbox.c.id.asc()).limit(size + 1)
                )
            )
            has_newer = len(rows) > size
            rows = list(reversed(rows[:size]))
            has_older = bool(rows) and _exists(conn, conditions, outbox.c.id < rows[-1].id)
            return rows, has_newer, has_older
        if before is not None:
            query = query.where(outbox.c.id < before)
        rows = list(conn.execute(query.order_by(outbox.c.id.desc()).limit(size + 1)))
        has_older = len(rows) > size
        rows = rows[:size]
        has_newer = bool(rows) and before is not None
        return rows, has_newer, has_older


def _exists(conn: Any, conditions: list[ColumnElement[bool]], extra: ColumnElement[bool]) -> bool:
    return conn.execute(select(outbox.c.id).where(*conditions, extra).limit(1)).first() is not None


def _items_of(body_text: str, param: str) -> list[dict[str, Any]] | None:
    """The products of an event body: its ``items`` param deserialized (v1 string or v2 JSON)."""
    try:
        body = json.loads(body_text)
    except ValueError:
        return None
    for entry in body.get("params") or []:
        if isinstance(entry, dict) and entry.get("name") == param:
            return item_rows(entry.get("value"))
    return None


def _is_http_url(value: Any) -> bool:
    return isinstance(value, str) and value.lower().startswith(("http://", "https://"))


def _table(rows: list[dict[str, Any]], names: Settings) -> dict[str, Any]:
    columns: dict[str, None] = {}
    for row in rows:
        for name in row:
            columns.setdefault(name, None)
    image, link = names.items.imageurl, names.items.url
    return {
        "columns": list(columns),
        "rows": [
            [
                {
                    "text": _text(row[c]) if c in row else "",
                    "image": c == image and _is_http_url(row.get(c)),
                    "link": c == link and _is_http_url(row.get(c)),
                }
                for c in columns
            ]
            for row in rows
        ],
    }


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


@blueprint.get("/admin/")
@_admin
def admin_events() -> str:
    """Event history: newest first, filtered by type, status, email and creation time."""
    state = _state()
    args = request.args
    conditions: list[ColumnElement[bool]] = []
    errors: list[str] = []
    kind = args.get("type", "").strip()
    status = args.get("status", "").strip()
    email = args.get("email", "").strip()
    if kind:
        conditions.append(outbox.c.event_type_key == kind)
    if status:
        conditions.append(outbox.c.status == status)
    if email:
        conditions.append(func.lower(outbox.c.key_value).contains(email.lower(), autoescape=True))
    for name in ("since", "until"):
        text = args.get(name, "").strip()
        if not text:
            continue
        try:
            moment = _parse_time(text, name)
        except ValueError as exc:
            errors.append(str(exc))
            continue
        created = outbox.c.created_at
        conditions.append(created >= moment if name == "since" else created < moment)
    before, after = _page_args()
    size = state.settings.admin_page_size
    rows, has_newer, has_older = _paged(conditions, before, after, size)
    with state.tracker.engine.connect() as conn:
        types = list(
            conn.execute(
                select(outbox.c.event_type_key).distinct().order_by(outbox.c.event_type_key)
            ).scalars()
        )
    param = state.tracker.settings.items.param
    entries = [{"row": row, "products": len(_items_of(row.body, param) or [])} for row in rows]
    filters = {k: args.get(k, "") for k in ("type", "status", "email", "since", "until")}
    return _render(
        "events.html",
        entries=entries,
        types=types,
        filters=filters,
        kept={k: v for k, v in filters.items() if v},
        errors=errors,
        newer=rows[0].id if has_newer and rows else None,
        older=rows[-1].id if has_older and rows else None,
    )


def _event_row(event_id: int) -> Any:
    with _state().tracker.engine.connect() as conn:
        row = conn.execute(select(outbox).where(outbox.c.id == event_id)).first()
    if row is None:
        abort(404)
    return row


def _event_page(event_id: int, **extra: Any) -> str:
    state = _state()
    settings = state.tracker.settings
    row = _event_row(event_id)
    params: list[tuple[str, str]] = []
    tables: list[dict[str, Any]] = []
    pretty = row.body
    try:
        body = json.loads(row.body)
        pretty = json.dumps(body, indent=2, ensure_ascii=False)
    except ValueError:
        body = {}
    for entry in body.get("params") or []:
        if not isinstance(entry, dict):
            continue
        name, value = str(entry.get("name")), entry.get("value")
        rows = item_rows(value) if name == settings.items.param else None
        if rows is not None:
            tables.append({"name": name, **_table(rows, settings)})
        else:
            params.append((name, _text(value)))
    extra.setdefault("template_text", "")
    extra.setdefault("json_param", settings.items.param)
    return _render("event.html", row=row, params=params, tables=tables, pretty=pretty, **extra)


@blueprint.get("/admin/events/<int:event_id>")
@_admin
def admin_event(event_id: int) -> str:
    """One event: what was sent, its products, the platform's answer, attempts."""
    return _event_page(event_id)


@blueprint.post("/admin/events/<int:event_id>/preview")
@_admin
def admin_preview(event_id: int) -> str:
    """Render an email template with this event, as the platform's email block would."""
    from ...preview import PreviewError, load_body, render

    row = _event_row(event_id)
    template = request.form.get("template", "")
    json_param = request.form.get("json_param", "").strip() or _state().tracker.settings.items.param
    if len(template) > MAX_TEMPLATE_CHARS:
        abort(413, f"template: at most {MAX_TEMPLATE_CHARS} characters")
    try:
        result = render(template, load_body(row.body), json_param)
        failure = None
    except PreviewError as exc:
        result, failure = None, str(exc)
    except ImportError:
        result, failure = None, "template preview needs airspeed: pip install airspeed"
    return _event_page(
        event_id, template_text=template, json_param=json_param, preview=result, failure=failure
    )


@blueprint.post("/admin/events/<int:event_id>/replay")
@_admin
def admin_replay_one(event_id: int) -> BaseResponse:
    """Requeue one dead event."""
    tracker = _state().tracker
    with tracker.engine.begin() as conn:
        count = outbox_ops.replay(conn, tracker.clock(), ids=[event_id])
    if count:
        log.info("admin: event %d requeued from the dead letters", event_id)
        flash(f"Event {event_id} requeued: it is sent with the next dispatch.", "ok")
    else:
        flash(f"Event {event_id} is not a dead letter; nothing requeued.", "error")
    return redirect(url_for(".admin_event", event_id=event_id))


@blueprint.get("/admin/dead")
@_admin
def admin_dead() -> str:
    """Dead letters, newest first, with replay."""
    state = _state()
    kind = request.args.get("type", "").strip()
    conditions: list[ColumnElement[bool]] = [outbox.c.status == OutboxStatus.DEAD.value]
    if kind:
        conditions.append(outbox.c.event_type_key == kind)
    before, after = _page_args()
    rows, has_newer, has_older = _paged(conditions, before, after, state.settings.admin_page_size)
    with state.tracker.engine.connect() as conn:
        total = conn.execute(
            select(func.count())
            .select_from(outbox)
            .where(outbox.c.status == OutboxStatus.DEAD.value)
        ).scalar_one()
    return _render(
        "dead.html",
        rows=rows,
        total=total,
        kind=kind,
        newer=rows[0].id if has_newer and rows else None,
        older=rows[-1].id if has_older and rows else None,
    )


@blueprint.post("/admin/dead/replay")
@_admin
def admin_replay() -> BaseResponse:
    """Requeue the selected dead events, or all of them."""
    tracker = _state().tracker
    replay_all = request.form.get("all") == "1"
    ids = [int(v) for v in request.form.getlist("id") if v.isdigit()]
    if not replay_all and not ids:
        flash("Select the dead events to replay.", "error")
        return redirect(url_for(".admin_dead"))
    with tracker.engine.begin() as conn:
        count = outbox_ops.replay(conn, tracker.clock(), ids=[] if replay_all else ids)
    log.info("admin: %d dead events requeued", count)
    flash(f"{count} dead event{'' if count == 1 else 's'} requeued.", "ok")
    return redirect(url_for(".admin_dead"))


@blueprint.get("/admin/health")
@_admin
def admin_health() -> str:
    """Counts by status, oldest pending age, pause, and carts waiting for their time."""
    state = _state()
    tracker = state.tracker
    settings = tracker.settings
    now = tracker.clock()
    summary = tracker.summary()
    after = settings.abandoned_cart.after
    with tracker.engine.connect() as conn:
        current = pause.current(conn)
        waiting = list(
            conn.execute(
                select(carts)
                .where(carts.c.state == FlowState.ACTIVE.value)
                .order_by(carts.c.last_activity_at.asc())
                .limit(settings.web.admin_page_size)
            )
        )
        active = {
            "carts": _count(conn, carts.c.state == FlowState.ACTIVE.value, carts),
            "browses": _count(conn, browses.c.state == FlowState.ACTIVE.value, browses),
            "registrations": _count(
                conn, registrations.c.state == FlowState.ACTIVE.value, registrations
            ),
        }
    waiting_carts = [
        {
            "row": row,
            "due": row.last_activity_at + after,
            "due_in": row.last_activity_at + after - now,
            "products": len(json.loads(row.items)),
        }
        for row in waiting
    ]
    return _render(
        "health.html",
        summary=summary,
        oldest_age=now - summary.oldest_pending if summary.oldest_pending else None,
        pause=current,
        paused=bool(current and current.active(now)),
        key_set=tracker.transport.ready,
        waiting=waiting_carts,
        active=active,
        after=format_duration(after),
        cart_flow_enabled=settings.abandoned_cart.enabled,
    )


def _count(conn: Any, condition: ColumnElement[bool], table: Any) -> int:
    return int(conn.execute(select(func.count()).select_from(table).where(condition)).scalar_one())

"""The operator pages, ``/shop-events/admin/…``: event history, one event (body, products,
response, template preview), health, dead letters with replay.

Off (404) unless an access check is configured; every POST carries a per-session CSRF token;
everything is rendered by autoescaping Jinja templates. The pages read and change the outbox
only through :mod:`shop_events.storage.outbox`, and show the health read model
(:mod:`shop_events.health`).
"""

from __future__ import annotations

import hmac
import json
import logging
import secrets
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import wraps
from typing import Any, TypeVar, cast

from flask import (
    abort,
    current_app,
    flash,
    get_flashed_messages,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from sqlalchemy.exc import DBAPIError
from werkzeug.wrappers import Response as BaseResponse

from ...config import Settings, format_duration
from ...payload.items import item_rows
from ...storage import outbox
from ...storage.enums import OutboxStatus, Subject
from ...storage.migrate import missing_tables
from .blueprint import blueprint, web_state

log = logging.getLogger(__name__)

CSRF_KEY = "shop_events_csrf"
EVENT_ID_MAX = 2**31 - 1
"""The largest event id: the outbox's id column is an ``Integer`` (32 bits on PostgreSQL), and
a database refuses to compare it with a larger number."""
MAX_TEMPLATE_CHARS = 200_000
F = TypeVar("F", bound=Callable[..., Any])


def operator_page(view: F) -> F:
    """Operator pages: 404 while no access check is configured, 403 when it says no."""

    @wraps(view)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        check = web_state().admin_access
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
        try:
            response = current_app.make_response(view(*args, **kwargs))
        except DBAPIError:
            missing = _missing_tables()
            if missing is None:
                raise
            response = current_app.make_response((missing, 503))
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


def _missing_tables() -> str | None:
    """The page saying the plugin's tables are missing (and how to create them), or None when
    they are there and the error was another one."""
    tracker = web_state().tracker
    try:
        why = missing_tables(tracker.engine)
    except DBAPIError:
        return None
    if why is None:
        return None
    tracker.check_tables()  # the log's one line, as at the first request
    return render_page("missing.html", database=tracker.database, why=why)


# ------------------------------------------------------------------------- rendering


def render_page(template: str, **context: Any) -> str:
    """Render an operator page's template with what base.html needs (CSRF token, messages,
    formatters, now)."""
    return render_template(
        f"shop_events/{template}",
        csrf_token=csrf_token(),
        messages=get_flashed_messages(with_categories=True),
        fmt_time=_fmt_time,
        fmt_age=_fmt_age,
        now=web_state().tracker.clock(),
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
    raise ValueError(
        f"{field}: {text[:80]!r} is not a date (YYYY-MM-DD) or time (YYYY-MM-DDTHH:MM)"
    )


def _event_id(text: str) -> int | None:
    """An event id from a request, or None when ``text`` cannot be one (not ASCII digits, or
    beyond what the id column holds: a database would refuse to compare with it)."""
    text = text.strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 10:
        return None
    number = int(text)
    return number if number <= EVENT_ID_MAX else None


def _page_args() -> tuple[int | None, int | None]:
    def number(name: str) -> int | None:
        text = request.args.get(name, "")
        if not text:
            return None
        value = _event_id(text)
        if value is None:
            abort(400, f"{name}: must be an event id, a whole number from 0 to {EVENT_ID_MAX}")
        return value

    return number("before"), number("after")


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


# ------------------------------------------------------------------------- the pages


@blueprint.get("/admin/")
@operator_page
def admin_events() -> str:
    """Event history: newest first, filtered by type, status, email and creation time."""
    state = web_state()
    args = request.args
    errors: list[str] = []
    times: dict[str, datetime] = {}
    for name in ("since", "until"):
        text = args.get(name, "").strip()
        if not text:
            continue
        try:
            times[name] = _parse_time(text, name)
        except ValueError as exc:
            errors.append(str(exc))
    before, after = _page_args()
    with state.tracker.engine.connect() as conn:
        page = outbox.history(
            conn,
            size=state.settings.admin_page_size,
            event_type_key=args.get("type", "").strip() or None,
            status=args.get("status", "").strip() or None,
            key_contains=args.get("email", "").strip() or None,
            since=times.get("since"),
            until=times.get("until"),
            before=before,
            after=after,
        )
        types = outbox.event_types(conn)
    rows = page.rows
    param = state.tracker.settings.items.param
    entries = [{"row": row, "products": len(_items_of(row.body, param) or [])} for row in rows]
    filters = {k: args.get(k, "") for k in ("type", "status", "email", "since", "until")}
    return render_page(
        "events.html",
        entries=entries,
        types=types,
        filters=filters,
        kept={k: v for k, v in filters.items() if v},
        errors=errors,
        newer=rows[0].id if page.has_newer and rows else None,
        older=rows[-1].id if page.has_older and rows else None,
    )


def _event_row(event_id: int) -> Any:
    if event_id > EVENT_ID_MAX:  # the route takes any digits; no row has such an id
        abort(404)
    with web_state().tracker.engine.connect() as conn:
        row = outbox.get(conn, event_id)
    if row is None:
        abort(404)
    return row


def _event_page(event_id: int, **extra: Any) -> str:
    settings = web_state().tracker.settings
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
    return render_page("event.html", row=row, params=params, tables=tables, pretty=pretty, **extra)


@blueprint.get("/admin/events/<int:event_id>")
@operator_page
def admin_event(event_id: int) -> str:
    """One event: what was sent, its products, the platform's answer, attempts."""
    return _event_page(event_id)


@blueprint.post("/admin/events/<int:event_id>/preview")
@operator_page
def admin_preview(event_id: int) -> str:
    """Render an email template with this event, as the platform's email block would."""
    from ...preview import PreviewError, load_body, render

    row = _event_row(event_id)
    template = request.form.get("template", "")
    json_param = (
        request.form.get("json_param", "").strip() or web_state().tracker.settings.items.param
    )
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
@operator_page
def admin_replay_one(event_id: int) -> BaseResponse:
    """Requeue one dead event."""
    tracker = web_state().tracker
    if event_id > EVENT_ID_MAX:
        abort(404)
    with tracker.engine.begin() as conn:
        count = outbox.replay(conn, tracker.clock(), ids=[event_id])
    if count:
        log.info("admin: event %d requeued from the dead letters", event_id)
        flash(f"Event {event_id} requeued: it is sent with the next dispatch.", "ok")
    else:
        flash(f"Event {event_id} is not a dead letter; nothing requeued.", "error")
    return redirect(url_for(".admin_event", event_id=event_id))


@blueprint.get("/admin/dead")
@operator_page
def admin_dead() -> str:
    """Dead letters, newest first, with replay."""
    state = web_state()
    kind = request.args.get("type", "").strip()
    before, after = _page_args()
    with state.tracker.engine.connect() as conn:
        page = outbox.history(
            conn,
            size=state.settings.admin_page_size,
            event_type_key=kind or None,
            status=OutboxStatus.DEAD.value,
            before=before,
            after=after,
        )
        total = outbox.count(conn, OutboxStatus.DEAD)
    rows = page.rows
    return render_page(
        "dead.html",
        rows=rows,
        total=total,
        kind=kind,
        newer=rows[0].id if page.has_newer and rows else None,
        older=rows[-1].id if page.has_older and rows else None,
    )


@blueprint.post("/admin/dead/replay")
@operator_page
def admin_replay() -> BaseResponse:
    """Requeue the selected dead events, or all of them."""
    tracker = web_state().tracker
    replay_all = request.form.get("all") == "1"
    ids = [i for i in map(_event_id, request.form.getlist("id")) if i is not None]
    if not replay_all and not ids:
        flash("Select the dead events to replay.", "error")
        return redirect(url_for(".admin_dead"))
    with tracker.engine.begin() as conn:
        count = outbox.replay(conn, tracker.clock(), ids=[] if replay_all else ids)
    log.info("admin: %d dead events requeued", count)
    flash(f"{count} dead event{'' if count == 1 else 's'} requeued.", "ok")
    return redirect(url_for(".admin_dead"))


@blueprint.get("/admin/health")
@operator_page
def admin_health() -> str:
    """Counts by status, oldest pending age, pause, and carts waiting for their time."""
    tracker = web_state().tracker
    settings = tracker.settings
    health = tracker.health()
    return render_page(
        "health.html",
        health=health,
        oldest_age=health.oldest_pending_age,
        pause=health.pause,
        paused=health.paused,
        key_set=tracker.transport.ready,
        waiting=health.waiting_carts,
        active={
            "carts": health.active[Subject.CART],
            "browses": health.active[Subject.BROWSE],
            "registrations": health.active[Subject.REGISTRATION],
        },
        after=format_duration(settings.abandoned_cart.after),
        cart_flow_enabled=settings.abandoned_cart.enabled,
    )

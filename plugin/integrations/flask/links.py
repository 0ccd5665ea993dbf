"""Recovery links, ``/shop-events/r/<token>``: count the click, restore the cart, lead on.

The link in a reminder email names the reminder, the cart and the step, signed with
``recovery.secret`` (:mod:`shop_events.payload.links`). Opening it counts a click
(:func:`shop_events.recovery.links.open_link`), then the shop's ``restore_cart(cart_id, items)``
callback puts the cart in the visitor's session and may answer itself; otherwise, or when it
fails, the visitor is redirected (303) to the cart's restore URL or the shop's home, with the
UTM parameters.

Anyone can reach this endpoint with anything, so: a token is refused unread past
:data:`MAX_TOKEN_CHARS`; a tampered, expired or unknown one gets a page (410) that says only that
the link is no longer valid and leads to the shop, while the reason goes to the log; requests
are rate-limited per client address with the tracking endpoint's limiter; mail scanners and
crawlers (``[bots]``) are redirected without counting a click or running the callback, as is a
``HEAD`` request. Every answer is kept out of caches, indexes and ``Referer`` headers, since
its URL carries the token. Without a ``recovery.secret`` (links never on) there is nothing to
check a token with, and the endpoint answers 404; links sent while they were on keep working
after ``recovery.links`` is turned off while ``recovery.secret`` stays set.
"""

from __future__ import annotations

import logging
import math

from flask import Response, abort, current_app, redirect, render_template, request
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.wrappers import Response as BaseResponse

from ...capture.bots import is_bot
from ...errors import StorageError
from ...payload.links import BadLink
from ...recovery.links import Opened, open_link
from .blueprint import WebState, blueprint, web_state
from .tracking import limiter

log = logging.getLogger(__name__)

MAX_TOKEN_CHARS = 2048
"""Longest token read: a real one is a few hundred characters; longer ones are refused unread."""
TEMPLATE = "shop_events/link.html"
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; img-src http: https: data:; style-src 'unsafe-inline'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
"""The operator pages' policy (no script at all), without frames, which these pages have none of."""


@blueprint.get("/r/<token>")
def recovery_link(token: str) -> BaseResponse:
    """Open a reminder's recovery link: count it, restore the cart, redirect on."""
    state = web_state()
    tracker = state.tracker
    if not tracker.settings.recovery.secret.reveal():
        abort(404)  # links were never on here: there is no key to check a token with
    wait = limiter().take(request.remote_addr or "-")
    if wait:
        response = _page("busy", 429)
        response.headers["Retry-After"] = str(max(1, math.ceil(wait)))
        return _private(response)
    if len(token) > MAX_TOKEN_CHARS:
        log.info(
            "recovery link refused: a token of %d characters (at most %d)",
            len(token),
            MAX_TOKEN_CHARS,
        )
        return _private(_page("gone", 410))
    # a scanner prefetching the link, or a HEAD, is not the shopper: no click, no restore
    visitor = request.method == "GET" and not is_bot(
        tracker.settings.bots, request.headers.get("User-Agent")
    )
    try:
        opened = open_link(tracker.engine, tracker.settings, token, tracker.clock(), count=visitor)
    except BadLink as exc:
        log.info("recovery link refused: %s", exc.reason)
        return _private(_page("gone", 410))
    except (SQLAlchemyError, StorageError) as exc:
        log.warning("recovery link not opened: the database failed: %s", exc)
        response = _page("unavailable", 503)
        response.headers["Retry-After"] = "60"
        return _private(response)
    if visitor and state.restore_cart is not None:
        restored = _restored(state, opened)
        if restored is not None:
            return _private(restored, own_page=True)
    return _private(redirect(opened.target, 303))


def _restored(state: WebState, opened: Opened) -> BaseResponse | None:
    """The shop's ``restore_cart`` answer, or None to redirect (also when it failed)."""
    assert state.restore_cart is not None
    try:
        answer = state.restore_cart(opened.cart_id, opened.items)
        if answer is None:
            return None
        return current_app.make_response(answer)
    except Exception:
        log.exception(
            "recovery link: the restore_cart callback failed for cart %r; the visitor is "
            "redirected to the link's target instead",
            opened.cart_id,
        )
        return None


def _page(kind: str, status: int) -> Response:
    """The visitor's page: ``gone`` (410), ``busy`` (429) or ``unavailable`` (503)."""
    recovery = web_state().tracker.settings.recovery
    home = f"{recovery.base_url.rstrip('/')}/" if recovery.base_url else "/"
    body = render_template(TEMPLATE, kind=kind, home=home)
    return Response(body, status=status, mimetype="text/html")


def _private(response: BaseResponse, *, own_page: bool = False) -> BaseResponse:
    """Keep the answer (whose URL holds the token) out of caches, indexes and ``Referer``.

    The shop's own page from ``restore_cart`` keeps its own Content-Security-Policy: ours allows
    no script and no external style sheet, and would break it.
    """
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Robots-Tag"] = "noindex, nofollow"
    if not own_page:
        response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        response.headers["X-Frame-Options"] = "DENY"
    return response

"""``/shop-events/metrics``: the plugin's Prometheus metrics, in the Prometheus text format.

Allowed when the ``admin_access`` check says yes, or when the request carries
``Authorization: Bearer <web.metrics_token>`` (a scraper has no operator session). Off (404)
while neither is configured; 403 when one is but the request is refused.
"""

from __future__ import annotations

import hmac
import logging

from flask import Response, abort, current_app, request
from prometheus_client import CollectorRegistry

from ...metrics import render
from .. import prometheus
from .blueprint import blueprint, web_state

log = logging.getLogger(__name__)

REGISTRY_KEY = "shop_events.metrics"
"""Where an app keeps its exposition registry (built on the first scrape)."""
_BEARER = "bearer "


def _token_allowed(token: str) -> bool:
    header = request.headers.get("Authorization", "")
    if not token or header[: len(_BEARER)].lower() != _BEARER:
        return False
    given = header[len(_BEARER) :].strip()
    return hmac.compare_digest(given.encode("utf-8"), token.encode("utf-8"))


def _admin_allowed() -> bool:
    check = web_state().admin_access
    if check is None:
        return False
    try:
        return bool(check())
    except Exception:
        log.exception("metrics: the admin_access check failed; access denied")
        return False


def _registry() -> CollectorRegistry:
    found = current_app.extensions.get(REGISTRY_KEY)
    if not isinstance(found, CollectorRegistry):
        found = prometheus.registry(web_state().tracker)
        current_app.extensions[REGISTRY_KEY] = found
    return found


@blueprint.route("/metrics", methods=["GET"])
def metrics() -> Response:
    """The metrics for a scraper with the token or an operator ``admin_access`` lets in."""
    state = web_state()
    token = state.settings.metrics_token.reveal()
    if not token and state.admin_access is None:
        abort(404)
    if not (_token_allowed(token) or _admin_allowed()):
        abort(403)
    body, content_type = render(_registry(), request.headers.get("Accept"))
    response = Response(body, status=200, content_type=content_type)
    response.headers["Cache-Control"] = "no-store"
    return response

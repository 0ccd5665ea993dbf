"""``/shop-events/healthz``: whether delivery runs, for load balancers and uptime checks.

No access check and no data: ``200 ok``, or ``503`` with one word saying why (``paused``,
``missing-tables``, ``stalled``), as :func:`shop_events.health.problems` decides. It answers
even while the operator pages are off.
"""

from __future__ import annotations

from flask import Response

from ...health import problems
from .blueprint import blueprint, web_state


@blueprint.route("/healthz", methods=["GET"])
def healthz() -> Response:
    """``200 ok`` while delivery runs; ``503`` and the first problem's one word otherwise."""
    tracker = web_state().tracker
    found = problems(tracker.engine, tracker.settings, tracker.clock())
    response = Response(found[0] if found else "ok", status=503 if found else 200)
    response.mimetype = "text/plain"
    response.headers["Cache-Control"] = "no-store"
    return response

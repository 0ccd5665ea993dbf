"""The past events format: events that happened before, as ``POST /v1/past_events`` takes them
(pure, no I/O).

A request is ``{"events": [...]}`` of at most :data:`PAST_EVENTS_MAX` events, each a Generate
event body with its ``occurred`` time. The platform's notes show ``occurred`` as a local time
to the minute without an offset (``"2023-03-22T14:30"``) and do not say which zone it is read
in: the zone is the ``backfill.timezone`` setting (UTC by default).
"""

from __future__ import annotations

from datetime import datetime, tzinfo

PAST_EVENTS_TYPE = "past_events"
"""The outbox's ``event_type_key`` of a row bound for the past events endpoint."""
PAST_EVENTS_MAX = 500
"""Events the platform takes in one past events request."""
OCCURRED_FORMAT = "%Y-%m-%dT%H:%M"


def occurred(moment: datetime, zone: tzinfo) -> str:
    """An aware time as a past event's ``occurred``: ``"2023-03-22T14:30"`` in ``zone``."""
    return moment.astimezone(zone).strftime(OCCURRED_FORMAT)

"""Prometheus metrics: what each stage counts as it works, and one registry to expose them.

The stages count at the place that knows: capture in its one write path, the outbox when it
inserts rows, the dispatcher when it settles them and around each request. Nothing here
touches the database: the gauges read from it at scrape time (pending rows, oldest pending
age, pause) are a collector of :mod:`shop_events.integrations.prometheus`, added to the
registry :func:`exposition_registry` builds.

Under gunicorn (or any set of processes) set ``PROMETHEUS_MULTIPROC_DIR`` to an empty
directory shared by the processes before they start: every process then writes its values to
files there and the exposition sums them (:class:`~prometheus_client.multiprocess.
MultiProcessCollector`). The two gauges of this module sum over live processes (``livesum``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from typing import ParamSpec, TypeVar

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
"""The environment variable that turns on prometheus_client's multiprocess mode."""

_TYPE = ["event_type"]

CAPTURED = Counter(
    "shop_events_events_captured",
    "Capture hook calls recorded, by hook (cart_updated, order_placed, ...).",
    _TYPE,
)
ENQUEUED = Counter(
    "shop_events_events_enqueued",
    "Events inserted into the outbox (duplicates of a queued dedupe key not counted).",
    _TYPE,
)
SENT = Counter("shop_events_events_sent", "Events the platform accepted.", _TYPE)
RETRIED = Counter(
    "shop_events_events_retried", "Failed sends that will be tried again later.", _TYPE
)
DEAD = Counter("shop_events_events_dead", "Events given up on (dead).", _TYPE)
SUPERSEDED = Counter(
    "shop_events_events_superseded",
    "Queued events no longer wanted when their turn came (an order, an opt-out, ...).",
    _TYPE,
)
CAPTURE_ERRORS = Counter(
    "shop_events_capture_errors",
    "Captures from the shop's models that failed, by mapping and field (a getter raised, a "
    "value was refused, the write failed).",
    ["mapping", "field"],
)
SEND_SECONDS = Histogram(
    "shop_events_send_seconds",
    "Duration of one request to the platform, answered or not.",
    buckets=(0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0),
)
CAPTURE_SECONDS = Histogram(
    "shop_events_capture_seconds",
    "Duration of one capture hook's write (until it commits, or joins the host's transaction).",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
IN_FLIGHT = Gauge(
    "shop_events_sends_in_flight",
    "Requests to the platform in progress now.",
    multiprocess_mode="livesum",
)
SEND_CONCURRENCY = Gauge(
    "shop_events_send_concurrency",
    "How many requests each process's dispatcher may have in progress at once now.",
    multiprocess_mode="livesum",
)
SEND_CONCURRENCY_MAX = Gauge(
    "shop_events_send_concurrency_max",
    "The most requests each process's dispatcher may ever have in progress (delivery.threads).",
    multiprocess_mode="livesum",
)

_SETTLED = {"sent": SENT, "retried": RETRIED, "dead": DEAD, "superseded": SUPERSEDED}

S = TypeVar("S", bound=str)
P = ParamSpec("P")
R = TypeVar("R")


def monotonic() -> float:
    """Real elapsed time on this host (unaffected by wall-clock changes and freezegun)."""
    return time.clock_gettime(time.CLOCK_MONOTONIC)


def captured(what: str, started: float) -> None:
    """Count one recorded capture hook call that began at ``started`` (:func:`monotonic`).

    ``what`` names the hook, maybe with its key in brackets (``cart_updated('c-1')``): the
    label is the hook's name only.
    """
    hook = what.split("(", 1)[0]
    counter = _CAPTURED_BY_HOOK.get(hook)
    if counter is None:
        counter = _CAPTURED_BY_HOOK.setdefault(hook, CAPTURED.labels(event_type=hook))
    counter.inc()
    CAPTURE_SECONDS.observe(monotonic() - started)


_CAPTURED_BY_HOOK: dict[str, Counter] = {}
"""``CAPTURED`` per hook, looked up once: it is counted in every captured commit of the host."""


def capture_failed(mapping: str, field: str) -> None:
    """Count one failed capture of ``mapping`` (``cart``, ``order`` …) at ``field``."""
    CAPTURE_ERRORS.labels(mapping=mapping, field=field).inc()


def enqueued(event_types: Iterable[str]) -> None:
    """Count the events inserted into the outbox, one event type per event."""
    for event_type in event_types:
        ENQUEUED.labels(event_type=event_type).inc()


def settled(event_type: str, outcome: S) -> S:
    """Count an outbox row that ended as ``outcome`` (sent, retried, dead, superseded; other
    outcomes are not counted); returns ``outcome``."""
    counter = _SETTLED.get(str(outcome))
    if counter is not None:
        counter.labels(event_type=event_type).inc()
    return outcome


def timed_send(post: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """Call ``post``: one request in flight for its duration, observed in the send latency."""
    IN_FLIGHT.inc()
    started = monotonic()
    try:
        return post(*args, **kwargs)
    finally:
        SEND_SECONDS.observe(monotonic() - started)
        IN_FLIGHT.dec()


class _Forward:
    """Another registry's metrics, as one collector."""

    def __init__(self, source: CollectorRegistry) -> None:
        self._source = source

    def collect(self) -> Iterable[Metric]:
        """The source registry's metrics now."""
        return self._source.collect()


def exposition_registry(*extra: Collector) -> CollectorRegistry:
    """A registry with this process's metrics (or, with ``PROMETHEUS_MULTIPROC_DIR`` set, all
    processes' summed) and the ``extra`` collectors."""
    registry = CollectorRegistry()
    if os.environ.get(MULTIPROC_ENV):
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        registry.register(_Forward(REGISTRY))
    for collector in extra:
        registry.register(collector)
    return registry


def render(registry: CollectorRegistry, accept: str | None = None) -> tuple[bytes, str]:
    """The registry in the format the ``Accept`` header asks for (by default the Prometheus text
    format 0.0.4, which every Prometheus reads), and its content type."""
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type

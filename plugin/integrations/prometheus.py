"""The Prometheus gauges read from the database at scrape time, and the registry that serves them.

:class:`HealthCollector` reads :func:`shop_events.health.read_health` once per scrape: rows
still to send, the oldest one's age and the delivery pause are facts of the database shared by
every process, so they are read, not counted. Both ``/shop-events/metrics`` and
``shop-events worker --metrics-port`` expose :func:`registry`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from sqlalchemy.exc import SQLAlchemyError

from .. import metrics
from ..health import read_health
from ..storage.enums import OutboxStatus
from ..tracker import Tracker

log = logging.getLogger(__name__)


class HealthCollector:
    """Gauges of the outbox, the pause and the circuit, read from the database at scrape time."""

    def __init__(self, tracker: Tracker) -> None:
        self._tracker = tracker

    def collect(self) -> Iterator[Metric]:
        """Pending rows, the oldest pending row's age, the pause and the circuit, as of now."""
        tracker = self._tracker
        readable = GaugeMetricFamily(
            "shop_events_database_readable",
            "1 when the scrape could read the plugin's tables, else 0 (the gauges read from "
            "the database are then missing).",
        )
        try:
            health = read_health(tracker.engine, tracker.settings, tracker.clock())
        except SQLAlchemyError as exc:
            log.warning("metrics: the database could not be read: %s", type(exc).__name__)
            readable.add_metric([], 0)
            yield readable
            return
        readable.add_metric([], 1)
        yield readable
        pending = health.by_status.get(OutboxStatus.PENDING.value, 0)
        pending += health.by_status.get(OutboxStatus.IN_FLIGHT.value, 0)
        yield GaugeMetricFamily(
            "shop_events_pending_events",
            "Outbox rows not yet settled (pending or in flight).",
            value=pending,
        )
        age = health.oldest_pending_age
        yield GaugeMetricFamily(
            "shop_events_oldest_pending_age_seconds",
            "Age of the oldest outbox row still pending or in flight; 0 when there is none.",
            value=0.0 if age is None else max(age.total_seconds(), 0.0),
        )
        yield GaugeMetricFamily(
            "shop_events_delivery_paused",
            "1 while delivery is paused (the platform refused the API key), else 0.",
            value=1 if health.paused else 0,
        )
        yield GaugeMetricFamily(
            "shop_events_delivery_circuit_open",
            "1 while the shared circuit is open (the API gave no answer or 5xx to many sends in "
            "a row; one probe per delivery.probe_interval), else 0.",
            value=0 if health.circuit is None else 1,
        )


def registry(tracker: Tracker) -> CollectorRegistry:
    """Every metric of the plugin: the counters of this process (all processes' with
    ``PROMETHEUS_MULTIPROC_DIR``) and the gauges read from the tracker's database."""
    return metrics.exposition_registry(HealthCollector(tracker))

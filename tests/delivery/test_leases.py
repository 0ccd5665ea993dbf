"""Leases are kept on the database's clock and renewed before each send.

Two trackers share one database and a slow receiver; one of them runs with its clock three
minutes ahead, as a host with a wrong clock would. It must not take over the other's leases.
"""

from __future__ import annotations

import threading
from datetime import timedelta

from shop_events import Tracker
from shop_events.clock import utcnow
from shop_events.testing import Receiver

from tests.support import SettingsFactory, add_events, figures, outbox_rows

EVENTS = 20
LATENCY = 0.2
SKEW = timedelta(minutes=3)
JOIN_TIMEOUT = 30.0


def test_a_worker_whose_clock_runs_three_minutes_ahead_takes_over_no_lease(
    make_settings: SettingsFactory, receiver: Receiver
) -> None:
    settings = make_settings(
        api={"timeout": "2s", "connect_timeout": "1s"},
        delivery={"threads": 2, "batch_size": EVENTS, "lease": "2m"},
    )
    honest = Tracker(settings)
    honest.migrate()
    ahead = Tracker(settings, clock=lambda: utcnow() + SKEW)
    add_events(honest, EVENTS)

    receiver.latency = LATENCY
    sending = threading.Thread(target=honest.dispatch)
    sending.start()
    assert receiver.wait_for_arrivals(1)
    taken = ahead.dispatch()
    sending.join(JOIN_TIMEOUT)
    receiver.latency = 0.0
    rows = outbox_rows(honest.engine)
    for tracker in (honest, ahead):
        tracker.shutdown()
        tracker.engine.dispose()

    result = figures(rows, receiver)
    result.extra.update(taken_over=taken.claimed)
    result.show("clock 3 minutes ahead")

    assert not sending.is_alive()
    assert taken.claimed == 0
    assert result.delivered == EVENTS
    assert result.delivered_twice == 0
    assert {r.status for r in rows} == {"sent"}

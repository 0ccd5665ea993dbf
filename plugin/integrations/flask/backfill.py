"""``backfill orders``: the shop's past orders to the platform, read from its own order model.

``flask shop-events backfill orders`` reads them through the app's ``OrderMapping``
(``capture_models(app, order=OrderMapping(..., created="created_at"))``). A shop without
Flask that captures its models with its own :class:`~..models.CaptureModels` runs
``shop-events backfill orders --capture MODULE:NAME`` instead, which reads them on the first
of that capture's ``engines``; without a mapping, ``tracker.backfill_orders(orders)`` takes the
orders from the shop's own code. The plain ``shop-events`` has no other way to know the shop's
models: a settings file cannot declare Python getters.

Each command is one call of a plain function: :func:`run_backfill` (read, check, queue) and
:func:`deliver` (send now and follow the delivery).
"""

from __future__ import annotations

import importlib
import math
import os
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import click
from sqlalchemy.orm import Session

from ...backfill.rows import KEY_PREFIX
from ...backfill.run import BackfillReport
from ...config import format_duration
from ...delivery.limiter import Family, rate_of
from ...errors import ValidationError
from ...storage import outbox
from ...storage.enums import OutboxStatus
from ...tracker import Tracker
from ..commands import tables_missing
from ..models import CaptureModels
from ..models.history import OrdersBackfill, Period

SKIPPED_SHOWN = 10
"""Skipped orders printed one by one after a run (all of them are logged)."""
WAIT_POLL = 0.5
"""Seconds between two looks at the delivery while nothing was due."""


@click.group()
def backfill() -> None:
    """Send the shop's history to the platform (past orders)."""


@backfill.command("orders")
@click.option("--since", type=click.DateTime(), help="Only orders placed at or after (UTC).")
@click.option("--until", type=click.DateTime(), help="Only orders placed before (UTC).")
@click.option(
    "--as-events",
    is_flag=True,
    help="As past events (orderCreated and the status's own event, occurred when placed) "
    "instead of Orders API orders.",
)
@click.option(
    "--page-size",
    type=click.IntRange(min=1),
    help="Orders read and queued per transaction and checkpoint (default backfill.page_size).",
)
@click.option(
    "--restart",
    is_flag=True,
    help="Start at the first order, not after the checkpoint of an interrupted run (nothing "
    "already queued is queued again either way).",
)
@click.option(
    "--wait",
    is_flag=True,
    help="Then send them from here and follow the delivery to its end (a running worker "
    "shares the work), instead of leaving them to the worker.",
)
@click.option(
    "--capture",
    "capture_path",
    metavar="MODULE:NAME",
    help="The shop's CaptureModels, for a shop without Flask (under Flask: the app's).",
)
def orders_command(
    since: datetime | None,
    until: datetime | None,
    as_events: bool,
    page_size: int | None,
    restart: bool,
    wait: bool,
    capture_path: str | None,
) -> None:
    """Queue the shop's past orders for the platform, read through the OrderMapping.

    Orders go to the Orders API (up to orders.api_batch a request, externalOrderId makes a
    re-send an update) or, with --as-events, as past events (up to backfill.events_batch a
    request); the worker sends them at the account's rate. No live flow starts: no cart is
    converted, no orderCreated event queued, no reminder superseded. An interrupted run
    continues after its checkpoint when run again the same way; an order is never queued twice.
    """
    capture, session = _capture(capture_path)
    tracker = capture.tracker
    _check_tables(tracker)
    period = Period(_utc(since), _utc(until))
    if period.since and period.until and period.since >= period.until:
        raise click.BadParameter("--since must be before --until", param_hint="--since/--until")
    try:
        job = OrdersBackfill(
            capture,
            session,
            period=period,
            as_events=as_events,
            page_size=page_size,
            restart=restart,
        )
    except ValidationError as exc:
        raise click.ClickException(str(exc)) from None
    report = run_backfill(job)
    for line in report_lines(report):
        click.echo(line)
    if not wait:
        click.echo(later_line(tracker, report, as_events))
        return
    if not deliver(tracker):
        raise SystemExit(1)


def run_backfill(job: OrdersBackfill) -> BackfillReport:
    """Read, check and queue every page of ``job`` behind a progress bar with an ETA; an
    interruption says where it stopped (the next run continues there)."""
    scope = job.run.scope
    total = job.remaining()
    start = "continuing after order key " + str(list(job.after)) if job.after else "from the start"
    click.echo(f"backfill of {scope}: {total} orders to read, {start}")
    try:
        with click.progressbar(
            length=total, label="reading orders", show_eta=True, show_pos=True
        ) as bar:
            for read in job.pages():
                bar.update(read)
    except KeyboardInterrupt:
        where = job.report.checkpoint or "the start"
        click.echo(
            f"\ninterrupted; what was queued stays queued (up to order key {where}): run the "
            "same command again to continue",
            err=True,
        )
        raise SystemExit(130) from None
    return job.report


def report_lines(report: BackfillReport) -> list[str]:
    """What a run did, as the command prints it."""
    lines = [
        f"read {report.read} orders: queued {report.queued} ({report.rows} outbox rows), "
        f"already queued by an earlier run {report.already}, captured live {report.live}, "
        f"skipped as invalid {report.invalid}"
    ]
    lines += [f"  skipped {order.error}" for order in report.skipped[:SKIPPED_SHOWN]]
    if report.invalid > SKIPPED_SHOWN:
        lines.append(f"  … and {report.invalid - SKIPPED_SHOWN} more (the first ones are logged)")
    return lines


def later_line(tracker: Tracker, report: BackfillReport, as_events: bool) -> str:
    """Who sends the queued rows, and about how long it takes at the account's rate."""
    if not report.rows:
        return "nothing new to send"
    settings = tracker.settings
    if as_events:
        batch, family, kind = settings.backfill.events_batch, Family.PAST_EVENTS, "past_events"
    else:
        batch, family, kind = settings.orders.api_batch, Family.ORDERS, "orders_api"
    per_request = min(batch, settings.delivery.batch_size)
    requests = math.ceil(report.rows / per_request)
    seconds = requests / rate_of(settings.api, family)
    return (
        f"the worker sends them ({kind}): about {requests} requests, at least "
        f"{format_duration(timedelta(seconds=max(1, math.ceil(seconds))))} at the account's "
        "rate; follow with `status`, or run again with --wait to send them from here"
    )


def deliver(tracker: Tracker) -> bool:
    """Send the backfill's rows from this process and follow them until none is due: a
    progress bar of the rows sent or dead. False when some went dead, delivery is paused, or
    rows wait for a retry (the worker sends them)."""
    if not tracker.transport.ready:
        click.echo("not sent: no api.key is set (SHOP_EVENTS_API_KEY); the worker sends them")
        return False
    counts = _counts(tracker)
    total = sum(counts.get(s.value, 0) for s in _TRACKED)
    done = sum(counts.get(s.value, 0) for s in _SETTLED)
    stop = threading.Event()
    last_progress = time.monotonic()
    patience = tracker.settings.delivery.lease.total_seconds()
    paused = False
    with click.progressbar(length=total, label="sending", show_eta=True, show_pos=True) as bar:
        bar.update(done)
        while total - done > 0:
            result = tracker.dispatch()
            counts = _counts(tracker)
            now_done = sum(counts.get(s.value, 0) for s in _SETTLED)
            if now_done > done:
                bar.update(now_done - done)
                done, last_progress = now_done, time.monotonic()
            if result.paused:
                paused = True
                break
            if time.monotonic() - last_progress > patience:
                break  # the rest wait for a retry, or for another worker's lease to end
            if not result.claimed:
                stop.wait(WAIT_POLL)
    dead = counts.get(OutboxStatus.DEAD.value, 0)
    left = total - done
    click.echo(f"sent {counts.get(OutboxStatus.SENT.value, 0)}, dead {dead}, not yet sent {left}")
    if paused:
        click.echo("delivery is paused (see `status`); the worker sends the rest when it resumes")
    elif left:
        click.echo("the rest wait for a retry: the worker sends them (see `status`)")
    if dead:
        click.echo("dead rows keep the platform's answer: see `status`, then `replay`")
    return not (dead or left)


_TRACKED = (
    OutboxStatus.PENDING,
    OutboxStatus.IN_FLIGHT,
    OutboxStatus.SENT,
    OutboxStatus.DEAD,
)
_SETTLED = (OutboxStatus.SENT, OutboxStatus.DEAD)


def _counts(tracker: Tracker) -> dict[str, int]:
    with tracker.engine.connect() as conn:
        return outbox.count_keyed(conn, KEY_PREFIX)


def _capture(path: str | None) -> tuple[CaptureModels, Session]:
    """The capture whose ``OrderMapping`` reads the orders, and a session on the shop's
    database: ``--capture``'s, or the Flask app's."""
    if path:
        return _named_capture(path)
    from flask import current_app, has_app_context

    from .extension import CAPTURE_KEY

    if not has_app_context():
        raise click.UsageError(
            "name the shop's CaptureModels with --capture MODULE:NAME, or run "
            "`flask shop-events backfill orders` in the app"
        )
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    capture = app.extensions.get(CAPTURE_KEY)
    if not isinstance(capture, CaptureModels):
        raise click.ClickException(
            f"{app.name} captures no models: call capture_models(app, order=OrderMapping(...))"
        )
    db = app.extensions.get("sqlalchemy")
    if db is not None:
        return capture, db.session()
    return capture, _session_of(capture, "capture_models(app, ..., engines=[engine])")


def _named_capture(path: str) -> tuple[CaptureModels, Session]:
    module_name, _, name = path.partition(":")
    if not module_name or not name:
        raise click.BadParameter(f"{path!r} is not MODULE:NAME", param_hint="--capture")
    if os.getcwd() not in sys.path:  # the shop's modules, as `flask` and `python -m` find them
        sys.path.insert(0, os.getcwd())
    try:
        found: Any = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as exc:
        raise click.BadParameter(f"{path}: {exc}", param_hint="--capture") from None
    if not isinstance(found, CaptureModels):
        raise click.BadParameter(
            f"{path} is a {type(found).__name__}, not a CaptureModels", param_hint="--capture"
        )
    return found, _session_of(found, "CaptureModels(..., engines=[engine])")


def _session_of(capture: CaptureModels, how: str) -> Session:
    if not capture.engines:
        raise click.ClickException(
            f"the capture does not say which engine reaches the shop's models: {how}"
        )
    return Session(bind=capture.engines[0])


def _check_tables(tracker: Tracker) -> None:
    why = tables_missing(tracker)
    if why is not None:
        raise click.ClickException(
            f"{tracker.database}: the plugin's tables are missing ({why}): run `migrate` first"
        )


def _utc(moment: datetime | None) -> datetime | None:
    """An option's time, naive meaning UTC."""
    if moment is None:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)

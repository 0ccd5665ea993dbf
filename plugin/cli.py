"""The ``shop-events`` command and the ``flask shop-events`` group: a thin layer over the tracker.

Every command works on a :class:`~shop_events.tracker.Tracker`: built from ``--config`` (or
``SHOP_EVENTS_CONFIG``) and the environment for ``shop-events``, taken from the app for
``flask shop-events``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import click
from flask.cli import AppGroup, with_appcontext

from .config import CONFIG_PATH_ENV, Settings, format_duration, parse_duration
from .errors import ConfigError, ValidationError
from .health import Health, problems
from .integrations.commands import tables_missing
from .integrations.flask.backfill import backfill
from .payload.validation import check_email
from .privacy.erasure import Forgotten
from .privacy.person import normalized
from .recovery.report import FlowReport, RecoveryReport
from .storage import consent, outbox, pause
from .tracker import Tracker

TrackerFactory = Callable[[], Tracker]
WORKER_WAKE = 1.0


def load_settings(config: str | None) -> Settings:
    """Settings from ``--config``, else ``SHOP_EVENTS_CONFIG``, else defaults; then environment."""
    path = config or os.environ.get(CONFIG_PATH_ENV)
    if path:
        return Settings.from_file(path)
    return Settings.load(env=os.environ)


def _tracker(*, tables: bool = False) -> Tracker:
    """The command's tracker; with ``tables``, stop with one line (no traceback, no empty SQLite
    file created) when the plugin's tables are not there."""
    factory = click.get_current_context().find_object(_Factory)
    assert factory is not None
    tracker = factory.get()
    if tables:
        why = _missing_tables(tracker)
        if why is not None:
            raise click.ClickException(f"{tracker.database}: {why}")
    return tracker


def _missing_tables(tracker: Tracker) -> str | None:
    """What is wrong with the plugin's tables and how to fix it, or None when they are ready.
    A database that cannot be read stops the command with one line."""
    why = tables_missing(tracker)
    if why is None:
        return None
    root = click.get_current_context().find_root().command
    command = "shop-events migrate" if root is cli else "flask shop-events migrate"
    return f"the plugin's tables are missing ({why}): run `{command}` first"


class _Factory:
    """Builds the tracker on first use, so ``--help`` needs no database."""

    def __init__(self, make: TrackerFactory) -> None:
        self._make = make
        self._tracker: Tracker | None = None

    def get(self) -> Tracker:
        if self._tracker is None:
            try:
                self._tracker = self._make()
            except ConfigError as exc:
                raise click.ClickException(f"configuration: {exc}") from None
        return self._tracker


@click.group()
@click.option("--config", "config", type=click.Path(dir_okay=False), help="TOML settings file.")
@click.option("-v", "--verbose", is_flag=True, help="Log at DEBUG level.")
@click.pass_context
def cli(ctx: click.Context, config: str | None, verbose: bool) -> None:
    """shop-events: shop activity → Generate event calls of the marketing platform."""
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("shop_events").setLevel(logging.DEBUG if verbose else logging.INFO)
    ctx.obj = _Factory(lambda: Tracker(load_settings(config)))


@click.command()
def migrate() -> None:
    """Create or upgrade the plugin's tables."""
    from .storage.migrate import current_revision

    tracker = _tracker()
    tracker.migrate()
    click.echo(f"database at revision {current_revision(tracker.engine)}: {tracker.database}")


@click.command()
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Serve Prometheus metrics over HTTP on this port (GET /metrics).",
)
@click.option(
    "--metrics-addr",
    default="127.0.0.1",
    show_default=True,
    help="The address --metrics-port listens on (0.0.0.0: every interface).",
)
def worker(metrics_port: int | None, metrics_addr: str) -> None:
    """Run scan and dispatch until SIGTERM or Ctrl-C; then finish sends and release the rest."""
    tracker = _tracker(tables=True)
    if metrics_port is not None:
        _serve_metrics(tracker, metrics_port, metrics_addr)
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        click.echo(f"{signal.Signals(signum).name}: finishing sends in progress", err=True)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    settings = tracker.settings
    click.echo(
        f"worker {os.getpid()}: scan every {format_duration(settings.scheduler.scan_interval)}, "
        f"dispatch every {format_duration(settings.scheduler.dispatch_interval)}, "
        f"carts abandoned after {format_duration(settings.abandoned_cart.after)}",
        err=True,
    )
    tracker.start()
    while not stop.wait(WORKER_WAKE):
        pass
    tracker.shutdown(wait=True)
    click.echo(f"worker {os.getpid()}: stopped", err=True)


def _serve_metrics(tracker: Tracker, port: int, addr: str) -> None:
    """Serve the worker's metrics (and the database's gauges) from a daemon thread."""
    from prometheus_client import start_http_server

    from .integrations.prometheus import registry

    try:
        start_http_server(port, addr=addr, registry=registry(tracker))
    except OSError as exc:
        message = f"--metrics-port: cannot listen on {addr}:{port}: {exc}"
        raise click.ClickException(message) from None
    click.echo(f"worker {os.getpid()}: metrics on http://{addr}:{port}/metrics", err=True)


@click.command()
def scan() -> None:
    """One abandonment scan now."""
    result = _tracker(tables=True).scan()
    click.echo(
        f"abandoned {result.abandoned}, suppressed {result.suppressed}, queued {result.enqueued}"
    )


@click.command()
def dispatch() -> None:
    """Deliver everything due now."""
    result = _tracker(tables=True).dispatch()
    click.echo(
        f"sent {result.sent}, retried {result.retried}, dead {result.dead}, "
        f"superseded {result.superseded}" + (" (delivery paused)" if result.paused else "")
    )


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option(
    "--check",
    is_flag=True,
    help="Print ok and exit 0 while delivery runs; else print why in one word "
    "(missing-tables, paused, circuit, stalled) and exit 1. For cron and Nagios.",
)
def status(as_json: bool, check: bool) -> None:
    """Counts by status and type, oldest pending age, pause and last error.

    It says which database it opened; when the plugin's tables are not there, it says so and
    exits 1 (``--check`` prints ``missing-tables``), creating nothing.
    """
    tracker = _tracker()
    missing = _missing_tables(tracker)
    if missing is not None:
        if check:
            click.echo("missing-tables")
        elif as_json:
            click.echo(json.dumps({"database": tracker.database, "missing_tables": missing}))
        else:
            click.echo(f"database: {tracker.database}")
            click.echo(missing)
        raise click.exceptions.Exit(1)
    if check:
        found = problems(tracker.engine, tracker.settings, tracker.clock())
        click.echo(found[0] if found else "ok")
        if found:
            raise click.exceptions.Exit(1)
        return
    health = tracker.health()
    current = health.pause
    oldest = health.oldest_pending_age
    age = oldest.total_seconds() if oldest is not None else None
    report: dict[str, Any] = {
        "database": tracker.database,
        "by_status": health.by_status,
        "by_type": health.by_type,
        "oldest_pending_age_seconds": age,
        "paused": health.paused,
        "pause_reason": current.reason if current else None,
        "paused_until": current.until.isoformat() if current else None,
        "circuit_open": health.circuit is not None,
        "circuit_since": health.circuit.since.isoformat() if health.circuit else None,
        "circuit_next_probe": health.circuit.until.isoformat() if health.circuit else None,
        "circuit_reason": health.circuit.reason if health.circuit else None,
        "last_error": health.last_error,
        "api_key_set": tracker.transport.ready,
        "suppressed": {str(k): dict(v) for k, v in health.suppressed.items()},
        "capture_errors_total": health.capture_errors_total,
        "capture_errors": [
            {
                "mapping": e.mapping,
                "field": e.field,
                "count": e.count,
                "first_at": e.first_at.isoformat(),
                "last_at": e.last_at.isoformat(),
                "last_subject": e.last_subject,
                "last_error": e.last_error,
            }
            for e in health.capture_errors
        ],
        "kept_captures_total": health.kept_total,
        "kept_captures": [
            {
                "subject": k.subject,
                "mapping": k.mapping,
                "field": k.last_field,
                "attempts": k.attempts,
                "first_at": k.first_at.isoformat(),
                "last_at": k.last_at.isoformat(),
                "last_error": k.last_error,
            }
            for k in health.kept
        ],
    }
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(f"database: {tracker.database}")
    click.echo("events by status: " + ", ".join(f"{k} {v}" for k, v in health.by_status.items()))
    for event_type, counts in sorted(health.by_type.items()):
        click.echo(f"  {event_type}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    click.echo(
        "oldest pending: "
        + (format_duration(timedelta(seconds=int(age))) + " old" if age is not None else "none")
    )
    if current:
        state = "paused" if health.paused else "probing after a pause"
        until = current.until.isoformat(timespec="seconds")
        click.echo(f"delivery {state} until {until}: {current.reason}")
    else:
        click.echo("delivery running" if tracker.transport.ready else "delivery waits: no api.key")
    if health.circuit:
        since = health.circuit.since.isoformat(timespec="seconds")
        probe = health.circuit.until.isoformat(timespec="seconds")
        click.echo(
            f"circuit open since {since} (the API does not answer; next probe {probe}): "
            f"{health.circuit.reason}"
        )
    if health.last_error:
        click.echo(f"last error: {health.last_error}")
    for subject, reasons in health.suppressed.items():
        listed = ", ".join(f"{reason} {n}" for reason, n in sorted(reasons.items()))
        click.echo(f"suppressed {subject.value}s (nothing sent): {listed}")
    _echo_capture_problems(health)


def _echo_capture_problems(health: Health, shown: int = 10) -> None:
    """The captures from the shop's models that failed, and those kept to be tried again."""
    if health.kept_total:
        click.echo(f"captures kept to try again at their next commit: {health.kept_total}")
        for kept in health.kept[:shown]:
            since = kept.first_at.isoformat(timespec="seconds")
            click.echo(
                f"  {kept.subject} since {since} ({kept.attempts} attempts): "
                f"{kept.mapping}.{kept.last_field}: {kept.last_error}"
            )
    if not health.capture_errors_total:
        click.echo("capture errors: none")
        return
    click.echo(f"capture errors: {health.capture_errors_total} (newest first)")
    for error in health.capture_errors[:shown]:
        at = error.last_at.isoformat(timespec="seconds")
        times = "once" if error.count == 1 else f"{error.count} times"
        about = f"; last {error.last_subject}" if error.last_subject else ""
        click.echo(f"  {at} {error.mapping}.{error.field}: {error.last_error} ({times}{about})")


@click.command("send-test")
@click.option("--email", required=True, help="The contact to send the test event for.")
@click.option("--event-type", default="shop_events_test", show_default=True)
def send_test(email: str, event_type: str) -> None:
    """Send one real event now, to check the key and see it in the platform's event history.

    The event is sent at once and only once, outside the outbox: whatever the answer, nothing is
    queued, retried or sent later, and a refused key does not pause delivery.
    """
    tracker = _tracker()
    if not tracker.transport.ready:
        raise click.ClickException("not sent: no api.key is set (SHOP_EVENTS_API_KEY)")
    try:
        result = tracker.send_test(email, event_type)
    except ValidationError as exc:
        raise click.BadParameter(str(exc), param_hint="--email/--event-type") from None
    if result.status is not None and 200 <= result.status < 300:
        click.echo(f"sent: HTTP {result.status}; look for '{event_type}' in Event history")
        return
    if result.status is None:
        raise click.ClickException(f"not sent: no answer from the API: {result.text}")
    why = f"HTTP {result.status}: {result.text}".rstrip(": ")
    if result.status in (401, 403):
        why += " (the platform refused the key: check api.key; delivery was not paused)"
    raise click.ClickException(f"not sent: {why}")


@click.command()
@click.option("--id", "ids", type=int, multiple=True, help="A dead event's id (repeatable).")
@click.option("--type", "event_type", help="Only dead events of this type.")
@click.option("--since", type=click.DateTime(), help="Created at or after (UTC).")
@click.option("--until", type=click.DateTime(), help="Created before (UTC).")
def replay(
    ids: tuple[int, ...], event_type: str | None, since: datetime | None, until: datetime | None
) -> None:
    """Requeue dead events (all of them, or those selected)."""
    from datetime import UTC

    tracker = _tracker(tables=True)
    with tracker.engine.begin() as conn:
        count = outbox.replay(
            conn,
            tracker.clock(),
            ids=ids,
            event_type_key=event_type,
            since=since.replace(tzinfo=UTC) if since else None,
            until=until.replace(tzinfo=UTC) if until else None,
        )
    click.echo(f"requeued {count} dead events")


@click.command()
@click.option(
    "--older-than",
    "older_than",
    metavar="AGE",
    help="Delete what is older than AGE, e.g. 30d (default: retention.days).",
)
@click.option("--dead", is_flag=True, help="Delete dead letters too (kept by default).")
def purge(older_than: str | None, dead: bool) -> None:
    """Delete sent and superseded events (and finished activity) older than AGE, in batches."""
    age = None
    if older_than is not None:
        try:
            age = parse_duration(older_than)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--older-than") from None
        if age <= timedelta(0):
            raise click.BadParameter("must be longer than 0s", param_hint="--older-than")
    tracker = _tracker(tables=True)
    if age is None:
        age = timedelta(days=tracker.settings.retention.days)
    counts = tracker.purge(older_than=age, dead_letters=dead)
    events = counts.pop(outbox.TABLE, 0)
    kinds = "sent, superseded, dead" if dead else "sent, superseded"
    others = ", ".join(f"{table} {count}" for table, count in counts.items() if count)
    click.echo(
        f"deleted {events} events ({kinds}) older than {format_duration(age)}"
        + (f"; also {others}" if others else "")
    )


@click.command()
def resume() -> None:
    """Lift a delivery pause now (after fixing the API key)."""
    tracker = _tracker(tables=True)
    with tracker.engine.begin() as conn:
        lifted = pause.resume(conn)
    click.echo("delivery resumed" if lifted else "delivery was not paused")


@click.command()
@click.option(
    "--template",
    "template_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="The email's Velocity template (e.g. email.vm).",
)
@click.option("--event", "event_id", type=int, help="The id of an event in the outbox.")
@click.option(
    "--event-file",
    type=click.Path(exists=True, dir_okay=False),
    help="A Generate event body saved as JSON (instead of --event).",
)
@click.option(
    "--json-param",
    default=None,
    help="The param the email's JSON block deserializes (default: items.param).",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, writable=True),
    help="Write the rendered template here instead of to standard output.",
)
def preview(
    template_path: str,
    event_id: int | None,
    event_file: str | None,
    json_param: str | None,
    output: str | None,
) -> None:
    """Render an email template with an event as the platform would, and report problems.

    Problems (syntax errors, references that resolve to nothing or only under another case,
    indexes past the array's end) go to standard error as FILE:LINE:COLUMN; the exit status
    is 1 when there are any.
    """
    from .preview import PreviewError, load_body, render

    try:
        import airspeed  # noqa: F401
    except ImportError:  # pragma: no cover - airspeed is an extra
        raise click.ClickException(
            "preview needs airspeed: pip install 'shop-events[preview]'"
        ) from None
    if (event_id is None) == (event_file is None):
        raise click.UsageError("give --event ID or --event-file FILE (one of them)")
    try:
        if event_id is None:
            with open(str(event_file), "rb") as file:
                body = load_body(file.read())
        else:
            tracker = _tracker(tables=True)
            with tracker.engine.connect() as conn:
                row = outbox.get(conn, event_id)
            if row is None:
                raise click.ClickException(f"no event {event_id} in the outbox")
            body = load_body(row.body)
    except PreviewError as exc:
        raise click.ClickException(str(exc)) from None
    with open(template_path, encoding="utf-8") as file:
        template = file.read()
    param = json_param or _tracker().settings.items.param
    result = render(template, body, param)
    if output is not None:
        with open(output, "w", encoding="utf-8") as file:
            file.write(result.output)
    else:
        click.echo(result.output, nl=False)
    for problem in result.problems:
        click.echo(
            f"{template_path}:{problem.line}:{problem.column}: {problem.kind}: {problem.message}",
            err=True,
        )
    if result.problems:
        count = len(result.problems)
        click.echo(f"{count} problem{'' if count == 1 else 's'} found", err=True)
        raise SystemExit(1)


_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
MOMENT_RULE = "an ISO date or date-time in UTC, e.g. '2024-05-01' or '2024-05-01T08:00'"
SINCE_RULE = f"a duration back from --until such as '30d' or '12h', or {MOMENT_RULE}"


def _moment(text: str) -> datetime | None:
    """``text`` as an aware UTC datetime when it is an ISO date or date-time (naive = UTC)."""
    if not _ISO_DATE.match(text):
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _until_option(_ctx: click.Context, _param: click.Parameter, value: str | None) -> Any:
    """``--until``: an ISO date or date-time (UTC), or None for now."""
    if value is None:
        return None
    moment = _moment(value.strip())
    if moment is None:
        raise click.BadParameter(f"{value!r} is not {MOMENT_RULE}")
    return moment


def _since_option(_ctx: click.Context, _param: click.Parameter, value: str) -> Any:
    """``--since``: a duration back from the period's end (``30d``), or when it starts."""
    text = value.strip()
    moment = _moment(text)
    if moment is not None:
        return moment
    if _ISO_DATE.match(text):
        raise click.BadParameter(f"{value!r} is not {MOMENT_RULE}")
    try:
        age = parse_duration(text)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not {SINCE_RULE}") from None
    if age <= timedelta(0):
        raise click.BadParameter(f"{value!r}: a duration must be longer than 0s")
    return age


@click.command()
@click.option(
    "--since",
    metavar="DURATION|DATE",
    default="30d",
    callback=_since_option,
    show_default=True,
    help="Where the period starts: a duration back from --until (30d, 12h) or an ISO date or "
    "date-time (UTC).",
)
@click.option(
    "--until",
    metavar="DATE",
    default=None,
    callback=_until_option,
    help="Where the period ends, not included: an ISO date or date-time (UTC). Default: now.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def report(since: datetime | timedelta, until: datetime | None, as_json: bool) -> None:
    """What the reminders brought back: per flow, sequences started, reminders delivered per
    step, clicks, recovered orders and their revenue per currency, the recovery rate; then the
    abandoned carts' days.

    ``--json`` prints the abandoned-cart flow's figures at the top level and every flow's under
    ``flows`` (revenue as decimal strings).
    """
    end = until if until is not None else _tracker().clock()
    start = end - since if isinstance(since, timedelta) else since
    if start >= end:
        raise click.BadParameter(
            f"the period must start before it ends ({start.isoformat()} is not before "
            f"{end.isoformat()})",
            param_hint="--since/--until",
        )
    tracker = _tracker(tables=True)
    result = tracker.recovery_report(since=start, until=end)
    if as_json:
        click.echo(json.dumps(result.as_json(), indent=2))
        return
    for line in report_lines(result, tracker.database):
        click.echo(line)


def report_lines(result: RecoveryReport, database: str) -> list[str]:
    """The recovery report as ``shop-events report`` prints it: a short table per flow, then
    the abandoned-cart flow's days."""
    stamp = "%Y-%m-%d %H:%M"
    lines = [
        f"recovery from {result.since.strftime(stamp)} to {result.until.strftime(stamp)} UTC "
        f"(database: {database})"
    ]
    for flow in result.flows.values():
        lines.extend(["", *_flow_lines(flow)])
    cart = result.cart
    lines.extend(["", f"{cart.name} by day (UTC)"])
    head = ("day", "started", "delivered", "clicks", "recovered", "revenue")
    rows = [
        (
            day.day.isoformat(),
            str(day.abandoned),
            str(day.reminders_delivered),
            str(day.clicks),
            str(day.recovered_orders),
            _money(day.recovered_revenue),
        )
        for day in cart.daily
    ]
    for row in (head, *rows):
        counts = "".join(f"{cell:>11}" for cell in row[1:5])
        lines.append(f"  {row[0]:<10}{counts}  {row[5]}")
    return lines


def _flow_lines(flow: FlowReport) -> list[str]:
    """One flow's figures, a label and a value per line."""
    delivered = ", ".join(
        f"step {step}: {count}" for step, count in sorted(flow.reminders_delivered.items())
    )
    recovered = str(flow.recovered_orders)
    if flow.recovered_orders:
        recovered += f" ({flow.recovered_clicked} after a click on the link)"
    figures = (
        ("sequences started", str(flow.abandoned)),
        ("reminders delivered", delivered or "none"),
        ("clicks", str(flow.clicks)),
        ("recovered orders", recovered),
        ("recovered revenue", _money(flow.recovered_revenue)),
        ("recovery rate", f"{flow.recovery_rate * 100:.1f}%"),
    )
    return [flow.name, *(f"  {label:<20} {value}" for label, value in figures)]


def _money(amounts: dict[str, Decimal]) -> str:
    """``EUR 12.50, USD 3.00``, or ``-`` for none."""
    return ", ".join(f"{currency} {amount}" for currency, amount in sorted(amounts.items())) or "-"


@click.command("consent")
@click.argument("email")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def consent_command(email: str, as_json: bool) -> None:
    """The contact's consent history, oldest first, and whether marketing may go to them under
    consent.mode (an address erased on request is suppressed until it opts in again)."""
    try:
        contact = check_email(email.strip())
    except ValidationError as exc:
        raise click.BadParameter(exc.rule, param_hint="EMAIL") from None
    tracker = _tracker(tables=True)
    with tracker.engine.connect() as conn:
        found = consent.status(conn, contact, tracker.settings.consent.mode)
    if as_json:
        click.echo(json.dumps(found.as_json(), indent=2))
        return
    for line in consent_lines(found):
        click.echo(line)


def consent_lines(found: consent.ConsentStatus) -> list[str]:
    """A contact's consent as ``shop-events consent`` prints it: an entry per line, then the
    decision."""
    lines = [f"consent of {found.email} (consent.mode = {found.mode})"]
    for entry in found.history:
        choice = "opted in " if entry["opted_in"] else "opted out"
        notes = [f"{name}: {entry[name]}" for name in ("source", "basis") if entry[name]]
        lines.append(f"  {entry['at']}  {choice}  {'; '.join(notes)}".rstrip())
    if not found.history:
        lines.append("  no opt-in or opt-out recorded")
    verdict = "allowed" if found.refusal is None else f"refused ({found.refusal})"
    lines.append(f"marketing: {verdict}")
    return lines


def _address(email: str) -> str:
    """The EMAIL argument as the tables hold it, or a usage error naming the rule."""
    try:
        return normalized(email)
    except ValidationError as exc:
        raise click.BadParameter(exc.rule, param_hint="EMAIL") from None


@click.command()
@click.argument("email")
@click.option(
    "--platform/--no-platform",
    default=None,
    help="Also queue the platform's contact erasure (default: privacy.erase_on_platform).",
)
@click.option("--yes", is_flag=True, help="Erase without asking for confirmation.")
def forget(email: str, platform: bool | None, yes: bool) -> None:
    """Erase everything the plugin holds about EMAIL (every table, queued and sent events with
    their bodies) and print the rows deleted per table. It cannot be undone: asks first, unless
    --yes. Exits 1 when SQLite's WAL could not be checkpointed (run it again later)."""
    address = _address(email)
    tracker = _tracker(tables=True)
    if not yes:
        click.confirm(f"Erase everything held about {address}? This cannot be undone", abort=True)
    result = tracker.forget(address, platform=platform)
    for line in forget_lines(address, result, tracker.settings):
        click.echo(line)
    if not result.complete:
        raise click.ClickException(
            "the rows are deleted, but SQLite's WAL could not be checkpointed (readers held it): "
            "their old pages stay in the -wal file until then; run forget again later"
        )


def forget_lines(address: str, result: Forgotten, settings: Settings) -> list[str]:
    """What ``shop-events forget`` prints: rows per table (tables without any left out), then
    the platform erasure and the suppression."""
    total = sum(result.values())
    rows = f"{total} row{'' if total == 1 else 's'}"
    lines = [f"forgot {address}: {rows}" if total else f"nothing was held about {address}"]
    shown = {table: count for table, count in result.items() if count}
    width = max(map(len, shown), default=0)
    lines += [f"  {table:<{width}}  {count}" for table, count in shown.items()]
    privacy = settings.privacy
    if result.platform_erasure:
        lines.append(
            f"platform erasure queued: DELETE {privacy.erasure_path}?{privacy.erasure_key}=…"
            f"&erase=true, due in {format_duration(settings.delivery.lease)}"
        )
    if privacy.suppress_after_forget:
        lines.append("marketing to this address is suppressed until it opts in again")
    return lines


@click.command()
@click.argument("email")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False),
    help="Write the document to FILE (readable by its owner only) instead of printing it.",
)
def export(email: str, output: str | None) -> None:
    """Everything the plugin holds about EMAIL as one JSON document: activity rows, events with
    their bodies, consent history, reminders and their clicks, recovered orders, caps."""
    address = _address(email)
    text = json.dumps(_tracker(tables=True).export(address), indent=2, ensure_ascii=False)
    if output is None:
        click.echo(text)
        return
    fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        file.write(text + "\n")
    click.echo(f"wrote what is held about {address} to {output}", err=True)


@click.command()
@click.option("--simulate", type=int, default=None, help="Run N scripted shoppers instead.")
@click.option("--port", type=int, default=5000, show_default=True, help="The shop's port.")
@click.option("--receiver-port", type=int, default=5001, show_default=True)
def demo(simulate: int | None, port: int, receiver_port: int) -> None:
    """A demo shop and a local event receiver (or a simulation of N shoppers)."""
    if simulate is not None:
        from .demo.simulate import simulate as run_simulation

        run_simulation(simulate)
        return
    from .demo.run import run_demo

    run_demo(shop_port=port, receiver_port=receiver_port)


COMMANDS = (
    migrate,
    worker,
    scan,
    dispatch,
    status,
    send_test,
    replay,
    purge,
    resume,
    preview,
    report,
    consent_command,
    forget,
    export,
    backfill,
    demo,
)
for _command in COMMANDS:
    cli.add_command(_command)


@click.group("shop-events", cls=AppGroup)
@click.pass_context
@with_appcontext
def flask_group(ctx: click.Context) -> None:
    """shop-events commands for the app's tracker (registered by ShopEvents(app))."""
    from flask import current_app

    from .integrations.flask.extension import EXTENSION_KEY, tracker_for

    app = current_app._get_current_object()  # type: ignore[attr-defined]
    if EXTENSION_KEY not in app.extensions:
        raise click.ClickException(
            f"{app.name} has no shop-events extension: call ShopEvents(app) in its factory"
        )
    ctx.obj = _Factory(lambda: tracker_for(app))


for _command in COMMANDS:
    if _command is not demo:
        flask_group.add_command(_command)


def main() -> None:
    """Entry point of the ``shop-events`` console script."""
    cli(prog_name="shop-events")

"""The capture API: the hooks a shop calls. Each call checks its input, then writes rows only.

Capture never touches the network. Given the host's SQLAlchemy ``session=`` or
``connection=``, it writes inside the host's transaction: if the order rolls back, no event
exists. Without one it writes in a short transaction of the plugin's own engine. The hooks live
in one module per area (carts, browse, orders, accounts); :class:`Tracker` puts them together
with the scanner, dispatcher and scheduler of this process.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine
from sqlalchemy.orm import Session

from .abandonment.coupons import Coupon
from .abandonment.scanner import Scanner, ScanResult
from .backfill.run import (
    CHECKPOINT_PREFIX,
    BackfillReport,
    Progress,
    backfill_orders,
    read_checkpoint,
)
from .capture.accounts import AccountHooks
from .capture.browse import BrowseHooks
from .capture.carts import CartHooks
from .capture.orders import OrderHooks
from .clock import Clock, utcnow
from .config import Settings
from .delivery.dispatcher import Dispatcher, DispatchResult
from .delivery.limiter import AccountLimiter, SharedSchedule
from .delivery.policy import Result
from .delivery.transport import Transport
from .errors import StorageError, ValidationError
from .health import Health, StallWatch, read_health
from .payload.events import build_body
from .payload.validation import (
    DEDUPE_KEY_MAX,
    check_email,
    check_event_size,
    check_text,
    encode_body,
)
from .privacy.erasure import Forgotten, erase
from .privacy.export import document
from .recovery.report import DEFAULT_PERIOD, RecoveryReport, recovery_report
from .retention import purge
from .scheduler import Scheduler
from .storage import caps, recoveries, reminders
from .storage.engines import (
    engine_label,
    jobs_lock_path,
    make_engine,
    resume_waiting,
    stop_waiting,
)
from .storage.enums import Subject
from .storage.outbox import Summary, summarize

log = logging.getLogger(__name__)

__all__ = ["StorageError", "Tracker"]


class Tracker(CartHooks, BrowseHooks, OrderHooks, AccountHooks):
    """Captures shop activity and owns the scanner, dispatcher and scheduler of one process.

    ``Tracker(Settings.from_file("config.toml"))``; under Flask, ``ShopEvents(app).tracker``.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        clock: Clock = utcnow,
        engine: Engine | None = None,
        coupon: Coupon | None = None,
    ) -> None:
        self.settings = settings if settings is not None else Settings.load(env=os.environ)
        self.engine = engine if engine is not None else make_engine(self.settings.database)
        self.clock = clock
        self.transport = Transport(
            self.settings.api,
            self.settings.delivery.threads,
            clock,
            AccountLimiter(self.settings.api, SharedSchedule(self.engine)),
        )
        self.scanner = Scanner(self.settings, self.engine, clock, coupon)
        self.dispatcher = Dispatcher(self.settings, self.engine, self.transport, clock)
        self.watch = StallWatch(self.engine, self.settings, clock)
        self.scheduler = Scheduler(
            self.settings.scheduler,
            self.scan,
            self.dispatcher.drain,
            {
                "retention": (self.purge, self.settings.retention.interval),
                "watch": (self.watch, self.settings.scheduler.dispatch_interval),
            },
            lock_path=jobs_lock_path(self.engine),
            ready=self.check_tables,
        )
        self.before_write = self.scheduler.ensure_running
        self._tables_missing = False
        self._tables_unreadable = False
        self._said_in_memory = False
        self._tables_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Tracker(database={self.engine.url!r}, api={self.transport!r})"

    # -- anything else ----------------------------------------------------------------------

    def custom_event(
        self,
        event_type_key: str,
        *,
        key_value: str,
        params: Mapping[str, Any] | None = None,
        dedupe_key: str | None = None,
        marketing: bool = False,
        session: Session | None = None,
        connection: Connection | None = None,
    ) -> str:
        """Queue any event for a workflow; returns its dedupe key.

        Param values are text, numbers, or dicts/lists (nested JSON, serialized for v1).
        Passing the same ``dedupe_key`` twice queues the event once. ``marketing=True`` events
        are not sent to contacts who opted out (with ``consent.mode = "opt-in"``: to contacts
        who did not opt in).
        """
        if dedupe_key is not None:
            check_text(dedupe_key, "dedupe_key", DEDUPE_KEY_MAX)
        if params is not None and not isinstance(params, Mapping):
            raise ValidationError(
                "params", f"must be a mapping of param name to value, got {type(params).__name__}"
            )
        event = self._immediate_event(
            event_type_key,
            key_value,
            list((params or {}).items()),
            dedupe_key=dedupe_key,
            subject_type=Subject.MARKETING if marketing else None,
        )
        self._queue(f"custom_event({event_type_key!r})", [event], session, connection)
        return event.dedupe_key

    # -- passes and lifecycle ----------------------------------------------------------------

    def scan(self) -> ScanResult:
        """One abandonment scan now (the scheduler calls this every ``scan_interval``)."""
        return self.scanner.scan()

    def dispatch(self) -> DispatchResult:
        """Deliver everything due now, in bounded batches."""
        return self.dispatcher.drain()

    def purge(
        self, older_than: timedelta | None = None, dead_letters: bool = False
    ) -> dict[str, int]:
        """Delete finished activity and sent events older than ``retention.days`` (or
        ``older_than``); dead letters only with ``dead_letters``. Returns counts by table.
        """
        flows = (
            self.settings.abandoned_cart,
            self.settings.abandoned_browse,
            self.settings.unfinished_registration,
        )
        counts = purge(
            self.engine,
            self.settings.retention,
            self.clock(),
            older_than=older_than,
            dead_letters=dead_letters,
            keep={
                caps.TABLE: max(flow.contact_interval for flow in flows),
                reminders.TABLE: self.settings.recovery.keep,
                recoveries.TABLE: self.settings.recovery.keep,
            },
        )
        if any(counts.values()):
            log.info("retention: deleted %s", {k: v for k, v in counts.items() if v})
        return counts

    # -- history ------------------------------------------------------------------------------

    def backfill_orders(
        self,
        orders: Iterable[object],
        *,
        as_events: bool = False,
        page_size: int | None = None,
        checkpoint: str | None = None,
        progress: Progress | None = None,
    ) -> BackfillReport:
        """Queue the shop's past orders for the platform: to the Orders API (batched up to
        ``orders.api_batch``), or with ``as_events`` as past events at their ``created`` time
        (batched up to ``backfill.events_batch``); the worker sends them at the account's rate.

        Each order is a mapping or an object with ``order_id``, ``email``, ``items`` (a list of
        :class:`Item`), ``created`` (an aware datetime) and optionally ``total``, ``currency``
        and ``status`` (see :mod:`shop_events.backfill.orders`). They are read ``page_size`` at
        a time (default ``backfill.page_size``) and each page is written in one transaction.
        No live flow starts: no cart is converted, no ``orderCreated`` event queued, no reminder
        superseded. An order already queued by a backfill is not queued again, and one captured
        live is left to its live events. An invalid order is skipped and described in the
        report (its place, id, field and rule); the others go on. With ``checkpoint`` (a name),
        the id of each page's last order is kept with the page: after an interruption,
        :meth:`backfill_checkpoint` says where to continue. ``progress(report)`` is called
        after each page.
        """
        return backfill_orders(
            self.engine,
            self.settings,
            self.clock,
            orders,
            as_events=as_events,
            page_size=page_size,
            checkpoint=checkpoint,
            progress=progress,
        )

    def backfill_checkpoint(self, name: str) -> str | None:
        """The id of the last order a :meth:`backfill_orders` run with ``checkpoint=name``
        wrote (pass the orders after it to continue), or None."""
        found = read_checkpoint(self.engine, CHECKPOINT_PREFIX + name)
        return None if found is None else found.after

    def recovery_report(
        self,
        since: datetime | timedelta | None = None,
        until: datetime | None = None,
    ) -> RecoveryReport:
        """What the reminders brought back in ``[since, until)`` (default: the last 30 days up
        to now; ``since`` may be a duration back from ``until``): per flow, sequences started,
        reminders delivered per step, clicks, recovered orders and revenue, a daily series."""
        end = until if until is not None else self.clock()
        if since is None:
            since = DEFAULT_PERIOD
        start = end - since if isinstance(since, timedelta) else since
        return recovery_report(self.engine, start, end)

    # -- privacy ------------------------------------------------------------------------------

    def forget(self, email: str, *, platform: bool | None = None) -> Forgotten:
        """Erase everything the plugin holds about ``email`` (case and surrounding spaces do
        not matter) in one transaction; returns the rows deleted per table (error messages and
        shared states quoting the address: rows redacted). Bad input raises
        :class:`ValidationError`.

        Gone: carts (also of visitors identified as the address), browses, registrations,
        orders, identity links, consent history, frequency caps, reminders and their clicks,
        recovered orders, and outbox rows of every status, bodies included. Events still queued
        are deleted: the erasure supersedes them. A send already in flight may still reach the
        platform; its row being gone, its settlement (filtered on the lease token) records
        nothing and it is never sent again. With ``platform=True`` (default
        ``privacy.erase_on_platform``) the platform's contact erasure is queued as well, due
        ``delivery.lease`` later so that it follows any such send; once delivered its row keeps
        no trace of the address. With ``privacy.suppress_after_forget`` a salted hash of the
        address blocks marketing to it until :meth:`opted_in`; transactional events still go.

        On SQLite deleted content is zeroed (``secure_delete``) and the WAL checkpointed: when
        the result's ``complete`` is true, no byte of the address is left in the database
        files. It is False when readers held the WAL back at every attempt; forgetting again
        later finishes it.
        """
        return erase(self.engine, self.settings, email, self.clock(), platform=platform)

    def export(self, email: str) -> dict[str, Any]:
        """Everything the plugin holds about ``email`` (case and surrounding spaces do not
        matter) as one JSON-ready document: activity rows, outbox events with their bodies,
        the consent history, reminders with their clicks, recovered orders, frequency caps and
        messages quoting the address (:func:`~shop_events.privacy.export.document`). Bad input
        raises :class:`ValidationError`."""
        return document(self.engine, email, self.clock())

    def summary(self) -> Summary:
        """Outbox counts by status and type, oldest pending row, last error."""
        with self.engine.connect() as conn:
            return summarize(conn)

    def stats(self) -> dict[str, int]:
        """Outbox counts by status."""
        return self.summary().by_status

    def health(self) -> Health:
        """What ``shop-events status`` and the operator health page show, as of now."""
        return read_health(self.engine, self.settings, self.clock())

    def migrate(self) -> None:
        """Create or upgrade the plugin's tables to the newest migration."""
        from .storage.migrate import upgrade

        upgrade(self.engine)

    def check_tables(self) -> bool:
        """Whether the plugin's tables are there, at the newest migration.

        When they are not, one ERROR line says so and how to create them; when they appear
        later, one INFO line. Asked again and again (the scheduler waits on it), it says each
        change once, never with a traceback. A database that cannot be read is False too.
        """
        from .storage.migrate import missing_tables

        try:
            why = missing_tables(self.engine)
        except Exception as exc:
            with self._tables_lock:
                said, self._tables_unreadable = self._tables_unreadable, True
            if not said:
                log.warning("cannot read the database %s (%s)", self.database, type(exc).__name__)
            return False
        with self._tables_lock:
            said, self._tables_missing = self._tables_missing, why is not None
            self._tables_unreadable = False
        if why is None:
            if said:
                log.info("the plugin's tables are ready in %s", self.database)
            return True
        if not said:
            log.error(
                "the plugin's tables are missing in %s: %s. Run `flask shop-events migrate` "
                "(or `shop-events migrate`); until then nothing is captured or sent",
                self.database,
                why,
            )
        return False

    @property
    def tables_missing(self) -> bool:
        """Whether the plugin's tables were missing when :meth:`check_tables` last looked."""
        return self._tables_missing

    @property
    def database(self) -> str:
        """The plugin's database for messages: its URL without the password, a SQLite file by
        its absolute path."""
        url = self.engine.url
        database = url.database or ""
        file = url.get_backend_name() == "sqlite" and database not in ("", ":memory:")
        if file and not database.startswith("file:"):
            url = url.set(database=os.path.abspath(database))
        return engine_label(url.render_as_string(hide_password=False))

    def send_test(self, email: str, event_type_key: str = "shop_events_test") -> Result:
        """Send one event for ``email`` to the platform now and return its answer, to check the
        key and the account.

        The event never enters the outbox and nothing is decided from the answer: a refused
        key does not pause delivery, and nothing is sent again later. Bad input raises
        :class:`ValidationError`.
        """
        contact = check_email(email)
        sent_at = self.clock().isoformat(timespec="seconds")
        body = build_body(
            event_type_key,
            contact,
            [("email", contact), ("sent_at", sent_at)],
            self.settings.api.version,
        )
        check_event_size(body, self.settings.api.max_event_bytes)
        return self.transport.post(self.settings.api.event_path, encode_body(body))

    def start(self) -> None:
        """Start the in-process scheduler (scan + dispatch jobs) in this process.

        Not on an in-memory SQLite database (a shop's tests on ``sqlite://``): its one
        connection is shared by every thread, so jobs on threads of their own would run inside
        the captures' transactions. There :meth:`scan` and :meth:`dispatch` are called instead.
        """
        url = self.engine.url
        if url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:"):
            if not self._said_in_memory:
                self._said_in_memory = True
                log.info("no jobs on the in-memory database %s: call scan() and dispatch()", url)
            return
        self.scheduler.start()

    def shutdown(self, wait: bool = True) -> None:
        """Stop the scheduler; sends in progress finish, claimed rows not yet sent are released.

        Meanwhile no single wait on the database lasts more than a short grace: a frozen
        database must not keep a stopping worker alive.
        """
        self.dispatcher.stopping.set()
        stop_waiting(self.engine)
        try:
            self.scheduler.shutdown(wait=wait)
            self.dispatcher.close()
        finally:
            resume_waiting(self.engine)

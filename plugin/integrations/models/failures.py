"""When a capture from the shop's models fails: which mapping field, and where it is counted.

Every getter runs through :func:`read`, so a failure names the field whose getter raised
(``cart.item: 'Product' object has no attribute 'name'``); a value the tracker refused names the
refused field (``order.email``). :class:`ErrorLog` counts each failure (a Prometheus counter at
once; the capture errors table once the shop's transaction is over, so a rollback does not
lose the count and the shop's SQLite write lock is not waited for).
"""

from __future__ import annotations

import dataclasses
import logging
import re
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from ... import metrics
from ...config import scrub
from ...errors import StorageError, ValidationError
from ...storage import capture_errors
from ...storage.capture_errors import CaptureError
from ...storage.engines import transaction
from ...tracker import Tracker

log = logging.getLogger(__name__)

T = TypeVar("T")

__all__ = ["ErrorLog", "Failure", "GetterError", "describe", "read"]

_INDEX = re.compile(r"\[\d+\]")
_PLAIN = (AttributeError, TypeError, ValueError)
"""Exceptions whose message says enough without the class name."""


class GetterError(Exception):
    """A mapping's getter raised: ``field`` is the mapping field (``item``, ``total`` …)."""

    def __init__(self, field: str, error: Exception) -> None:
        super().__init__(f"{field}: {error}")
        self.field = field
        self.error = error


def read(field: str, getter: Callable[[Any], T], row: Any) -> T:
    """``getter(row)``; what it raises comes out as :class:`GetterError` naming ``field``."""
    try:
        return getter(row)
    except GetterError:
        raise
    except Exception as exc:
        raise GetterError(field, exc) from exc


@dataclasses.dataclass(frozen=True)
class Failure:
    """A failed capture described for the operator."""

    field: str
    """The mapping field, or the refused value with list indexes left out (``items[].price``)."""
    message: str
    error: Exception
    """The exception the shop's ``on_error`` receives (a getter's own)."""
    detail: str
    """For the log: the field and the message, indexes kept."""


def describe(exc: Exception) -> Failure:
    """Which field failed and why."""
    if isinstance(exc, GetterError):
        message = message_of(exc.error)
        return Failure(exc.field, message, exc.error, f"{exc.field}: {message}")
    if isinstance(exc, ValidationError):
        return Failure(_INDEX.sub("[]", exc.field), exc.rule, exc, str(exc))
    if isinstance(exc, StorageError):
        return Failure("database", str(exc), exc, f"database: {exc}")
    message = message_of(exc)
    return Failure("capture", message, exc, f"capture: {message}")


def message_of(error: Exception) -> str:
    """The exception as one line: its message, with its class when the message is not enough."""
    text = " ".join(str(error).split())
    if isinstance(error, _PLAIN) and text:
        return text
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class ErrorLog:
    """Failed captures of one :class:`~.listeners.CaptureModels`, counted per mapping and field.

    :meth:`note` counts at once (the ``shop_events_capture_errors`` metric) and keeps the error
    in this process; :meth:`flush` adds what was kept to the capture errors table, outside the
    shop's transaction. What cannot be written yet stays kept (one row per mapping and field,
    so it never grows past the mappings) and goes with the next flush.
    """

    def __init__(self, tracker: Tracker) -> None:
        self._tracker = tracker
        self._lock = threading.Lock()
        self._kept: dict[tuple[str, str], CaptureError] = {}
        self._warned = False

    @property
    def waiting(self) -> bool:
        """Whether errors wait to be written."""
        return bool(self._kept)

    def note(self, mapping: str, field: str, subject: str | None, message: str) -> None:
        """Count one failure of ``mapping``'s ``field`` while capturing ``subject``."""
        metrics.capture_failed(mapping, field)
        now = self._tracker.clock()
        text = scrub(message, self._tracker.settings.database.url)
        error = CaptureError(mapping, field, 1, now, now, subject, text)
        with self._lock:
            self._merge(error)

    def _merge(self, error: CaptureError) -> None:
        key = (error.mapping, error.field)
        before = self._kept.get(key)
        if before is not None:
            newer = error if error.last_at >= before.last_at else before
            error = dataclasses.replace(
                newer,
                count=before.count + error.count,
                first_at=min(before.first_at, error.first_at),
            )
        self._kept[key] = error

    def flush(self) -> None:
        """Write the errors kept so far with the plugin's engine (its own short transaction)."""
        with self._lock:
            taken, self._kept = self._kept, {}
        if not taken:
            return
        try:
            with transaction(self._tracker.engine) as conn:
                capture_errors.record(conn, taken.values())
        except Exception as exc:
            with self._lock:
                for error in taken.values():
                    self._merge(error)
            if not self._warned and not self._tracker.tables_missing:  # else said once
                reason = scrub(message_of(exc), self._tracker.settings.database.url)
                log.warning(
                    "capture errors not written to the plugin's tables yet (%s); they are "
                    "counted in this process and written later",
                    reason,
                )
                self._warned = True
            return
        self._warned = False

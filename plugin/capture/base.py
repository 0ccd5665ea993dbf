"""What every capture hook shares: checks common to all, bots, and the one way rows are written.

Hooks only write rows, never touch the network, and join the host's transaction when given its
``session=`` or ``connection=``.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from .. import metrics
from ..clock import Clock
from ..config import Settings, scrub
from ..errors import StorageError, ValidationError
from ..payload.events import Param, build_body
from ..payload.items import Item
from ..payload.validation import check_event_size, encode_body, quoted
from ..storage.engines import transaction
from ..storage.outbox import NewEvent, enqueue
from .bots import is_bot

log = logging.getLogger(__name__)
T = TypeVar("T")
ItemsArg = Sequence[Item | dict[str, Any]]
_CURRENCY = re.compile(r"[A-Z]{3}")


ParamValue = str | int | Decimal | bool
HookParams = Mapping[str, ParamValue] | None
"""Extra params of an account hook: text, whole numbers, decimals or true/false."""


def check_params(params: HookParams) -> list[Param]:
    """A hook's extra params as ``(name, value)`` pairs; true/false are sent as text."""
    if params is None:
        return []
    if not isinstance(params, Mapping):
        raise ValidationError(
            "params", f"must be a mapping of param name to value, got {type(params).__name__}"
        )
    pairs: list[Param] = []
    for name, value in params.items():
        if not isinstance(name, str):
            raise ValidationError("params", f"param names must be text, got {quoted(name)}")
        if isinstance(value, bool):
            pairs.append((name, "true" if value else "false"))
        elif isinstance(value, str | int | Decimal):
            pairs.append((name, value))
        else:
            kind = type(value).__name__
            raise ValidationError(
                f"params[{quoted(name)}]",
                f"must be text, a whole number, a Decimal or true/false, got {kind}",
            )
    return pairs


def check_currency(value: object) -> str | None:
    """An optional ISO 4217 code such as ``EUR``."""
    if value is None:
        return None
    if not isinstance(value, str) or not _CURRENCY.fullmatch(value):
        raise ValidationError("currency", f"must be a 3-letter ISO 4217 code, got {quoted(value)}")
    return value


class Hooks:
    """Base of the capture mixins; :class:`shop_events.tracker.Tracker` puts them together."""

    settings: Settings
    engine: Engine
    clock: Clock
    before_write: Callable[[], None]
    """Called before each write: the tracker restarts its jobs in a forked child there."""

    @property
    def tables_missing(self) -> bool:
        """Whether the plugin's tables are known to be missing (the tracker looks, and says so
        once): a write failing meanwhile is logged at DEBUG only."""
        return False

    def _bot(self, what: str, user_agent: str | None = None, email: str | None = None) -> bool:
        """True (and logged at DEBUG) when the capture comes from a bot: it creates nothing."""
        if user_agent is not None and not isinstance(user_agent, str):
            raise ValidationError(
                "user_agent", f"must be a string, got {type(user_agent).__name__}"
            )
        if is_bot(self.settings.bots, user_agent, email):
            log.debug("%s ignored: bot traffic", what)
            return True
        return False

    def _immediate_event(
        self,
        event_type_key: str,
        key_value: str,
        params: Sequence[Param],
        *,
        dedupe_key: str | None = None,
        subject_type: str | None = None,
        subject_id: str | None = None,
    ) -> NewEvent:
        """A checked event for the outbox, built now (its body is what will be sent)."""
        body = build_body(event_type_key, key_value, params, self.settings.api.version)
        check_event_size(body, self.settings.api.max_event_bytes)
        return NewEvent(
            dedupe_key=dedupe_key or f"{event_type_key}:{uuid.uuid4()}",
            event_type_key=event_type_key,
            key_value=key_value,
            api_path=self.settings.api.event_path,
            body=encode_body(body).decode("utf-8"),
            subject_type=subject_type,
            subject_id=subject_id,
        )

    def _queue(
        self,
        what: str,
        events: Sequence[NewEvent],
        session: Session | None,
        connection: Connection | None,
    ) -> None:
        now = self.clock()
        self._write(what, session, connection, lambda conn: enqueue(conn, events, now))

    def _write(
        self,
        what: str,
        session: Session | None,
        connection: Connection | None,
        write: Callable[[Connection], T],
    ) -> T:
        if session is not None and connection is not None:
            raise ValidationError("session", "pass session= or connection=, not both")
        self.before_write()
        started = metrics.monotonic()
        try:
            with transaction(self.engine, session or connection) as conn:
                result = write(conn)
        except SQLAlchemyError as exc:
            level = logging.DEBUG if self.tables_missing else logging.ERROR
            log.log(level, "%s was not recorded: %s", what, exc.__class__.__name__)
            reason = scrub(str(getattr(exc, "orig", None) or exc), self.settings.database.url)
            raise StorageError(f"{what} was not recorded: {reason}") from exc
        # counted once the write is done: committed on the plugin's engine, or part of the
        # host's transaction (whose later rollback is not seen here)
        metrics.captured(what, started)
        return result

"""The check at start: every getter of a mapping run against one row of its model.

:meth:`~.capture.CaptureModels.check` calls these for the shop's start. A cart and an order with
lines are preferred, so that ``item`` runs too; nothing is captured, and each problem is logged,
counted in the capture errors and returned as ``mapping.field: message``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Mapper, Session

from ...payload.items import canonical_items
from .failures import ErrorLog, GetterError, describe, read
from .mappings import ItemGetter, Parent
from .rows import _label

log = logging.getLogger(__name__)

_CHECK_ROWS = 20
"""Rows a start check looks through for a cart or order that has lines."""
_CHECK_LINES = 3


def check_parent(
    session: Session,
    errors: ErrorLog,
    mapping: str,
    parent: Parent,
    getters: dict[str, Callable[[Any], Any]],
    item: ItemGetter,
) -> list[str]:
    """Problems of a cart or order mapping, read from a row with lines where one exists."""
    query = select(parent.mapper)
    if parent.lines is not None:
        query = query.where(parent.lines.class_attribute.any())
    try:
        rows = session.execute(query.limit(_CHECK_ROWS)).scalars().all()
    except SQLAlchemyError as exc:
        return _not_checked(session, mapping, exc)
    if not rows:
        return []
    row, lines = rows[0], []
    for candidate in rows:
        subject = _check_subject(parent.mapper, candidate)
        try:
            lines = list(read("lines", parent.read_lines, candidate))
        except GetterError as exc:
            return [_problem(errors, mapping, subject, exc)]
        row = candidate
        if lines:
            break
    subject = _check_subject(parent.mapper, row)
    problems = _check_getters(errors, mapping, subject, row, getters)
    for line in lines[:_CHECK_LINES]:
        try:
            made = read("item", item, line)
            canonical_items([made])
        except GetterError as exc:
            problems.append(_problem(errors, mapping, subject, exc))
            break
        except Exception as exc:
            problems.append(_problem(errors, mapping, subject, GetterError("item", exc)))
            break
    return problems


def check_row(
    session: Session,
    errors: ErrorLog,
    mapping: str,
    mapper: Mapper[Any],
    getters: dict[str, Callable[[Any], Any]],
) -> list[str]:
    """Problems of a mapping read from the first row of its model (the customer's)."""
    try:
        row = session.execute(select(mapper).limit(1)).scalars().first()
    except SQLAlchemyError as exc:
        return _not_checked(session, mapping, exc)
    if row is None:
        return []
    return _check_getters(errors, mapping, _check_subject(mapper, row), row, getters)


def _check_getters(
    errors: ErrorLog, mapping: str, subject: str, row: Any, getters: dict[str, Callable[[Any], Any]]
) -> list[str]:
    problems = []
    for name, getter in getters.items():
        try:
            read(name, getter, row)
        except GetterError as exc:
            problems.append(_problem(errors, mapping, subject, exc))
    return problems


def _check_subject(mapper: Mapper[Any], row: Any) -> str:
    key = tuple(mapper.primary_key_from_instance(row))
    return f"the check at start ({mapper.class_.__name__} {_label(key)})"


def _problem(errors: ErrorLog, mapping: str, subject: str, exc: GetterError) -> str:
    failure = describe(exc)
    errors.note(mapping, failure.field, subject, failure.message)
    text = f"{mapping}.{failure.field}: {failure.message}"
    log.error("%s (%s)", text, subject)
    return text


def _not_checked(session: Session, mapping: str, exc: Exception) -> list[str]:
    session.rollback()  # PostgreSQL refuses anything more in a failed transaction
    log.info("the %s mapping was not checked: its rows cannot be read (%s)", mapping, exc)
    return []

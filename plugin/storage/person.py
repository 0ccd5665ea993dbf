"""One person as erasure and export look for them: an address and the keys their rows carry.

Each table's owning module finds the person's rows by these keys (the address, the visitor ids
identified as it, the carts and orders it placed); tables holding free text (the outbox's
bodies, error messages) are searched with :func:`mentions` for every form of the address
(:func:`~shop_events.payload.address_forms.address_forms`), ignoring case: on SQLite ASCII
letters only (its ``lower()`` folds no others), on PostgreSQL and MariaDB every letter.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, false, func, or_

from ..payload.address_forms import address_forms


@dataclasses.dataclass(frozen=True)
class Person:
    """A normalised address (``payload.validation.check_email``) and its rows' keys."""

    email: str
    visitor_ids: tuple[str, ...] = ()
    """Anonymous visitors identified as this address (``shop_events_visitors``)."""
    cart_ids: tuple[str, ...] = ()
    """Carts of the address or of those visitors."""
    order_ids: tuple[str, ...] = ()
    """Orders placed by the address."""

    @property
    def forms(self) -> tuple[str, ...]:
        """The lower-case forms of the address stored text may hold."""
        return address_forms(self.email)


def mentions(columns: Sequence[Any], person: Person) -> ColumnElement[bool]:
    """Whether any of the text ``columns`` holds any form of the person's address, in any
    case (``LIKE`` with its wildcards escaped)."""
    found = [
        func.lower(column).contains(form, autoescape=True)
        for column in columns
        for form in person.forms
    ]
    return or_(false(), *found)

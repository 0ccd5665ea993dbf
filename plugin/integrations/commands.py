"""What the command-line commands share below ``shop_events.cli``: whether the plugin's tables
can be used."""

from __future__ import annotations

import click
from sqlalchemy.exc import SQLAlchemyError

from ..config import scrub
from ..storage.migrate import missing_tables
from ..tracker import Tracker


def tables_missing(tracker: Tracker) -> str | None:
    """What is missing of the plugin's tables (:func:`~shop_events.storage.migrate.missing_tables`),
    or None when they are ready. A database that cannot be read stops the command with one
    line naming it (:class:`click.ClickException`, the URL's password hidden)."""
    try:
        return missing_tables(tracker.engine)
    except SQLAlchemyError as exc:
        reason = scrub(str(exc).splitlines()[0], tracker.settings.database.url)
        message = f"{tracker.database}: cannot read the database: {reason}"
        raise click.ClickException(message) from None

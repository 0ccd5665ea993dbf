"""Schema migrations of the plugin's tables, run through Alembic with its own version table.

The migration scripts ship inside the package (``shop_events.migrations``), so ``shop-events
migrate`` works from any directory after a plain ``pip install``. Every table of the plugin,
its version table included, is named ``shop_events_*``: :func:`include_name` keeps them out of
the shop's own Alembic autogenerate, so the shop's migrations never drop them.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import resources
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

from .engines import server_unbounded, unbounded

TABLE_PREFIX = "shop_events_"
"""Every table of the plugin, its version table included, is named with this prefix."""
VERSION_TABLE = "shop_events_alembic_version"


def alembic_config(engine: Engine | None = None) -> Config:
    """An Alembic config pointing at the packaged scripts (and ``engine``'s URL, if given)."""
    config = Config()
    config.set_main_option("script_location", str(resources.files("shop_events.migrations")))
    if engine is not None:
        url = engine.url.render_as_string(hide_password=False).replace("%", "%%")
        config.set_main_option("sqlalchemy.url", url)
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the plugin's tables to ``revision`` (default: the newest)."""
    config = alembic_config()
    # rebuilding a large table may take long
    with unbounded(), engine.begin() as conn, server_unbounded(conn):
        config.attributes["connection"] = conn
        command.upgrade(config, revision)


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at, or None before the first migration."""
    with engine.connect() as conn:
        return MigrationContext.configure(
            conn, opts={"version_table": VERSION_TABLE}
        ).get_current_revision()


def head_revision() -> str | None:
    """The newest revision shipped with this version of the plugin."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def missing_tables(engine: Engine) -> str | None:
    """Why the plugin's tables in ``engine``'s database are not ready to use, or None when they
    are at the newest revision.

    A SQLite file that does not exist is reported as such and not created (connecting would
    create an empty one). A database that cannot be reached raises the driver's error.
    """
    database = engine.url.database
    if engine.dialect.name == "sqlite" and database and database != ":memory:":
        path = Path(database)
        if not database.startswith("file:") and not path.exists():
            return f"there is no database file {path.resolve()}"
    current, head = current_revision(engine), head_revision()
    if current is None:
        return "the database has none of the plugin's tables"
    if current != head:
        return f"the database is at revision {current}, this version of the plugin needs {head}"
    return None


def include_name(name: str | None, type_: str, parent_names: Mapping[str, str | None]) -> bool:
    """Alembic's ``include_name`` hook for the shop's own migrations: False for the plugin's
    tables (``shop_events_*``, its version table included), so the shop's autogenerate neither
    reads nor drops them. Under Flask-Migrate, ``ShopEvents(app)`` installs it by itself.
    """
    return not (type_ == "table" and name is not None and name.startswith(TABLE_PREFIX))

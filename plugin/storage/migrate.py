"""Schema migrations of the plugin's tables, run through Alembic with its own version table.

The migration scripts ship inside the package (``shop_events.migrations``), so ``shop-events
migrate`` works from any directory after a plain ``pip install``.
"""

from __future__ import annotations

from importlib import resources

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

from .engines import unbounded

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
    with unbounded(), engine.begin() as conn:
        if conn.dialect.name == "postgresql":  # rebuilding a large table may take long
            conn.exec_driver_sql("SET LOCAL statement_timeout = 0")
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

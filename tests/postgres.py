"""A throwaway PostgreSQL cluster for the tests: initdb + pg_ctl in a temp dir, unix socket only.

Missing binaries skip the PostgreSQL tests locally with a message, and fail them in CI
(``CI=true``), where ``.ci/run`` installs the ``postgresql`` package.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

BIN = Path(os.environ.get("SHOP_EVENTS_PG_BIN", "/usr/lib/postgresql/15/bin"))
START_TIMEOUT = 60
RAM_DIR = Path("/dev/shm")
RAM_DIR_MIN_FREE = 3 * 1024**3
"""Room a run needs: every test's database is a copy of the ~8 MB template, kept to the end."""


def _as_postgres(args: list[str]) -> list[str]:
    """``initdb`` refuses root: run the cluster as the ``postgres`` user when we are root."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *args]
    return args


def unavailable_reason() -> str | None:
    """Why a cluster cannot be started here, or None."""
    if not (BIN / "initdb").exists():
        return f"PostgreSQL binaries not found in {BIN} (apt-get install postgresql)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no postgres user to run initdb as"
    return None


def require() -> None:
    """Skip (locally) or fail (in CI) when PostgreSQL cannot be had."""
    reason = unavailable_reason()
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"PostgreSQL is required in CI: {reason}")
    pytest.skip(reason)


def _cluster_parent() -> Path | None:
    """tmpfs when it has room, else None (the temp directory): ``CREATE DATABASE``, run once per
    test, takes ~0.4 s on a virtual disk and ~0.02 s on tmpfs."""
    try:
        free = shutil.disk_usage(RAM_DIR).free
    except OSError:
        return None
    return RAM_DIR if free >= RAM_DIR_MIN_FREE else None


@contextmanager
def cluster(in_ram: bool = False, fsync: bool = False) -> Iterator[str]:
    """Start a cluster; yields a SQLAlchemy URL of its ``postgres`` database.

    ``in_ram`` puts its files on tmpfs when there is room (the tests); the benchmarks keep the
    default, a disk like a shop's. ``fsync`` makes commits durable as on a production server
    (off by default: the tests do not need it and run faster without).
    """
    parent = _cluster_parent() if in_ram else None
    root = Path(tempfile.mkdtemp(prefix="shop-events-pg-", dir=parent))
    data, sock = root / "data", root / "sock"
    data.mkdir()
    sock.mkdir()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(data, "postgres")
        shutil.chown(sock, "postgres")
    run = {"check": True, "capture_output": True, "timeout": START_TIMEOUT}
    subprocess.run(
        _as_postgres(
            [
                str(BIN / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
            ]
        ),
        **run,  # type: ignore[call-overload]
    )
    durable = "on" if fsync else "off"
    options = f"-k {sock} -c listen_addresses='' -c fsync={durable} -c max_connections=200"
    if parent is not None:
        options += " -c max_wal_size=256MB"  # each CREATE DATABASE logs its copy, in RAM too
    subprocess.run(
        _as_postgres(
            [
                str(BIN / "pg_ctl"),
                "-D",
                str(data),
                "-o",
                options,
                "-w",
                "-l",
                str(root / "log"),
                "start",
            ]
        ),
        **run,  # type: ignore[call-overload]
    )
    try:
        yield f"postgresql+psycopg://postgres@/postgres?host={sock}"
    finally:
        subprocess.run(
            _as_postgres([str(BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]),
            capture_output=True,
            timeout=START_TIMEOUT,
            check=False,
        )
        shutil.rmtree(root, ignore_errors=True)


def database_url(server_url: str, name: str) -> str:
    """The URL of database ``name`` on the cluster of ``server_url``."""
    return server_url.replace("/postgres?", f"/{name}?")


def new_database(server_url: str, template: str | None = None) -> str:
    """Create a database on the cluster, empty or a copy of ``template``; returns its URL."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    _create_database(server_url, name, template)
    return database_url(server_url, name)


def migrated_template(server_url: str) -> str:
    """Create a database migrated to the newest revision, for :func:`new_database` to copy;
    returns its name. Nothing stays connected to it: PostgreSQL copies only an idle database.
    """
    from tests.support import migrate_database

    name = f"template_{uuid.uuid4().hex[:12]}"
    _create_database(server_url, name)
    migrate_database(database_url(server_url, name))
    return name


def _create_database(server_url: str, name: str, template: str | None = None) -> None:
    from sqlalchemy import create_engine, text

    copy = f' TEMPLATE "{template}"' if template else ""
    engine = create_engine(server_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"{copy}'))
    engine.dispose()

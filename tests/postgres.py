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


@contextmanager
def cluster() -> Iterator[str]:
    """Start a cluster; yields a SQLAlchemy URL of its ``postgres`` database."""
    root = Path(tempfile.mkdtemp(prefix="shop-events-pg-"))
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
    options = f"-k {sock} -c listen_addresses='' -c fsync=off -c max_connections=200"
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


def new_database(server_url: str) -> str:
    """Create an empty database on the cluster; returns its URL."""
    from sqlalchemy import create_engine, text

    name = f"t_{uuid.uuid4().hex[:12]}"
    engine = create_engine(server_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return server_url.replace("/postgres?", f"/{name}?")

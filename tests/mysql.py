"""A throwaway MariaDB server for the tests: ``mariadb-install-db`` + ``mariadbd`` in a temp dir,
on a unix socket only (``--skip-networking``); no system service is used or needed.

A missing server fails the MariaDB tests (it never skips them): ``.ci/run`` installs the
``mariadb-server`` package, and ``apt-get install mariadb-server`` does it on a developer's
machine. The plugin's tables must not depend on the server's defaults, so the server keeps
its compiled-in ones (``latin1``, ``REPEATABLE READ``): the plugin sets what it needs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

SERVER = Path(os.environ.get("SHOP_EVENTS_MARIADBD", "/usr/sbin/mariadbd"))
INSTALL_DB = shutil.which("mariadb-install-db") or "/usr/bin/mariadb-install-db"
START_TIMEOUT = 60
RAM_DIR = Path("/dev/shm")
RAM_DIR_MIN_FREE = 3 * 1024**3
"""Room a run needs: every test's database is kept to the end of the run."""


def unavailable_reason() -> str | None:
    """Why a server cannot be started here, or None."""
    if not SERVER.exists():
        return f"MariaDB server not found at {SERVER} (apt-get install mariadb-server)"
    if not Path(INSTALL_DB).exists():
        return "mariadb-install-db not found (apt-get install mariadb-server)"
    return None


def require() -> None:
    """Fail (never skip) when MariaDB cannot be had: the MySQL engine must not go untested."""
    reason = unavailable_reason()
    if reason is not None:
        pytest.fail(f"MariaDB is required for the tests marked mysql: {reason}")


def _parent() -> Path | None:
    """tmpfs when it has room (each ``CREATE TABLE`` is a file operation), else the temp dir."""
    try:
        free = shutil.disk_usage(RAM_DIR).free
    except OSError:
        return None
    return RAM_DIR if free >= RAM_DIR_MIN_FREE else None


def _user_option() -> list[str]:
    """``mariadbd`` refuses to run as root unless told so; as anyone else it runs as itself."""
    return ["--user=root"] if os.geteuid() == 0 else []


@contextmanager
def server(in_ram: bool = False) -> Iterator[str]:
    """Start a server; yields a SQLAlchemy URL of its ``mysql`` system database, as ``root``
    without a password over the unix socket (:func:`new_database` makes the tests' own)."""
    parent = _parent() if in_ram else None
    root = Path(tempfile.mkdtemp(prefix="shop-events-mariadb-", dir=parent))
    data, sock_dir = root / "data", root / "sock"
    sock_dir.mkdir()
    sock = sock_dir / "mysqld.sock"
    log = root / "error.log"
    done = subprocess.run(
        [
            INSTALL_DB,
            "--no-defaults",
            f"--datadir={data}",
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
            "--skip-name-resolve",
            *_user_option(),
        ],
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT,
        check=False,
    )
    if done.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"mariadb-install-db failed:\n{done.stdout}\n{done.stderr}")
    process = subprocess.Popen(
        [
            str(SERVER),
            "--no-defaults",
            f"--datadir={data}",
            f"--socket={sock}",
            "--skip-networking",
            f"--pid-file={root / 'mariadbd.pid'}",
            f"--log-error={log}",
            "--skip-log-bin",
            "--max-connections=300",
            # a test server: durability is not wanted, speed is
            "--innodb-flush-log-at-trx-commit=0",
            "--innodb-doublewrite=0",
            "--innodb-buffer-pool-size=256M",
            "--innodb-log-file-size=64M",
            "--skip-innodb-file-per-table",
            *_user_option(),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"mysql+pymysql://root@/mysql?unix_socket={sock}&charset=utf8mb4"
    try:
        _wait_ready(process, sock, log)
        yield url
    finally:
        process.kill()
        process.wait(START_TIMEOUT)
        shutil.rmtree(root, ignore_errors=True)


def _wait_ready(process: subprocess.Popen[bytes], sock: Path, log: Path) -> None:
    import pymysql

    from tests.support import wait_until

    def ready() -> bool:
        if process.poll() is not None:
            text = log.read_text(errors="replace") if log.exists() else ""
            pytest.fail(f"mariadbd exited with {process.returncode}:\n{text[-4000:]}")
        if not sock.exists():
            return False
        try:
            pymysql.connect(unix_socket=str(sock), user="root", connect_timeout=5).close()
        except pymysql.err.OperationalError:
            return False
        return True

    if not wait_until(ready, START_TIMEOUT):
        pytest.fail(f"mariadbd did not accept connections within {START_TIMEOUT}s")


def server_pid(server_url: str) -> int:
    """The process id of the server of ``server_url`` (one process: freezing it freezes all)."""
    sock = Path(server_url.split("unix_socket=", 1)[1].split("&", 1)[0])
    return int((sock.parent.parent / "mariadbd.pid").read_text().split()[0])


def database_url(server_url: str, name: str) -> str:
    """The URL of database ``name`` on the server of ``server_url``."""
    return server_url.replace("/mysql?", f"/{name}?")


def new_database(server_url: str, template: str | None = None) -> str:
    """Create a database on the server, empty or with the tables of ``template`` (empty, at its
    migration revision); returns its URL."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    _create_database(server_url, name, template)
    return database_url(server_url, name)


def _create_database(server_url: str, name: str, template: str | None = None) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(server_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f"CREATE DATABASE `{name}`"))
        if template is not None:
            tables = conn.execute(
                text("SELECT table_name FROM information_schema.tables WHERE table_schema = :s"),
                {"s": template},
            ).scalars()
            for table in list(tables):
                conn.execute(text(f"CREATE TABLE `{name}`.`{table}` LIKE `{template}`.`{table}`"))
                conn.execute(
                    text(f"INSERT INTO `{name}`.`{table}` SELECT * FROM `{template}`.`{table}`")
                )
    engine.dispose()


def migrated_template(server_url: str) -> str:
    """Create a database migrated to the newest revision, for :func:`new_database` to copy;
    returns its name."""
    from tests.support import migrate_database

    name = f"template_{uuid.uuid4().hex[:12]}"
    _create_database(server_url, name)
    migrate_database(database_url(server_url, name))
    return name

"""Migrations match the models, go up and down, and ship in a plain (non-editable) install."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from shop_events.storage.migrate import (
    VERSION_TABLE,
    alembic_config,
    current_revision,
    head_revision,
    upgrade,
)
from shop_events.storage.tables import metadata
from sqlalchemy import Engine, create_engine, inspect, text

from tests.support import REPO

PLUGIN_TABLES = {t.name for t in metadata.sorted_tables}
SUBPROCESS_TIMEOUT = 120


@pytest.fixture
def engine(empty_database_url: str) -> Iterator[Engine]:
    """An empty database: a SQLite file in tmp_path, or a fresh PostgreSQL database."""
    made = create_engine(empty_database_url)
    yield made
    made.dispose()


def downgrade(engine: Engine, revision: str) -> None:
    config = alembic_config()
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, revision)


def test_head_matches_the_models(engine: Engine) -> None:
    assert current_revision(engine) is None
    upgrade(engine)
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"version_table": VERSION_TABLE, "compare_type": True}
        )
        diff = compare_metadata(context, metadata)
    assert diff == []
    assert set(inspect(engine).get_table_names()) == PLUGIN_TABLES | {VERSION_TABLE}


def test_current_revision_is_head_after_upgrade(engine: Engine) -> None:
    head = head_revision()
    assert head is not None
    upgrade(engine)
    assert current_revision(engine) == head
    upgrade(engine)  # a second run is a no-op
    assert current_revision(engine) == head


def test_downgrade_to_base_removes_the_tables(engine: Engine) -> None:
    upgrade(engine)
    downgrade(engine, "base")
    assert current_revision(engine) is None
    assert not set(inspect(engine).get_table_names()) & PLUGIN_TABLES
    upgrade(engine)  # and back up again
    assert set(inspect(engine).get_table_names()) >= PLUGIN_TABLES


def test_carts_already_reminded_before_steps_are_not_reminded_again(engine: Engine) -> None:
    """0005 adds the reminder step: a row abandoned before it has sent its one step."""
    upgrade(engine)
    downgrade(engine, "0004")
    now = "2026-11-20 10:00:00"
    with engine.begin() as conn:
        for cart_id, state in (("sent", "abandoned"), ("waiting", "active")):
            conn.execute(
                text(
                    "INSERT INTO shop_events_carts (cart_id, email, items, content_hash, version,"
                    " state, last_activity_at, created_at) VALUES (:id, 'a@example.com', '[]',"
                    " 'h', 1, :state, :now, :now)"
                ),
                {"id": cart_id, "state": state, "now": now},
            )
    upgrade(engine)
    with engine.connect() as conn:
        steps = dict(conn.execute(text("SELECT cart_id, step FROM shop_events_carts")).all())
    assert steps == {"sent": 1, "waiting": 0}


def test_own_version_table_leaves_the_hosts_alone(engine: Engine) -> None:
    """A shop with its own Alembic history keeps its ``alembic_version`` table untouched."""
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)")
        conn.exec_driver_sql("INSERT INTO alembic_version VALUES ('host_rev_42')")
    upgrade(engine)
    with engine.connect() as conn:
        rows = conn.exec_driver_sql("SELECT version_num FROM alembic_version").all()
    assert [r[0] for r in rows] == ["host_rev_42"]
    assert current_revision(engine) == head_revision()


# --------------------------------------------------------------------------------- packaging

COPY_IGNORE = shutil.ignore_patterns(
    ".git",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    ".pytest_cache",
    ".ruff_cache",
    ".mypy_cache",
    ".hypothesis",
    ".venv",
    "venv",
    "tests",
    "*.db",
    "*.db-*",
)


def clean_env() -> dict[str, str]:
    """The environment without anything that could point Python at the checkout."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PYTHON", "SHOP_EVENTS_", "PIP_", "VIRTUAL_ENV"))
    }


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        args,
        cwd=cwd,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, f"{args} failed:\n{done.stdout}\n{done.stderr}"
    return done


def venv_site_packages(venv: Path) -> Path:
    """The ``site-packages`` directory of a venv made by this interpreter."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    return venv / "lib" / version / "site-packages"


def build_backend_problem() -> str | None:
    """Why this environment cannot build the project without isolation, or None."""
    try:
        import setuptools
    except ImportError:
        return "setuptools is not installed"
    major, minor = (int(p) for p in setuptools.__version__.split(".")[:2])
    if (major, minor) < (68, 0):
        return f"setuptools {setuptools.__version__} is older than pyproject.toml's >=68"
    if (major, minor) < (70, 1) and importlib.util.find_spec("wheel") is None:
        return "the wheel package is not installed (setuptools < 70.1 needs it for bdist_wheel)"
    return None


@pytest.mark.slow
def test_plain_install_migrates_from_any_directory(tmp_path: Path) -> None:
    """``pip install`` (not editable) ships the migrations; a relative SQLite path follows the
    config file, not the working directory."""
    problem = build_backend_problem()
    assert problem is None, f"{problem}: pip install 'setuptools>=68' wheel"
    # Build from a copy: an in-tree build would leave build/ in the checkout. Build with the
    # interpreter running the tests: its environment has the build-system's requirements (the
    # test extra), where a new venv's, or the base interpreter's, may be too old.
    source = tmp_path / "source"
    shutil.copytree(REPO, source, ignore=COPY_IGNORE)
    dist = tmp_path / "dist"
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--disable-pip-version-check",
            "-q",
            "-w",
            str(dist),
            str(source),
        ],
        tmp_path,
    )
    [wheel] = dist.glob("shop_events-*.whl")
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path)
    python = venv / "bin" / "python"
    # The venv sees, after its own, the site directories of the environment running the tests
    # (pip and the dependencies): a venv's --system-site-packages would give the base
    # interpreter's instead, which may lack both.
    (venv_site_packages(venv) / "test_environment.pth").write_text(
        "\n".join(p for p in sys.path if Path(p).name in {"site-packages", "dist-packages"}),
        encoding="utf-8",
    )
    run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-index",
            "--ignore-installed",  # the checkout's own install is visible, and must stay
            "--disable-pip-version-check",
            "-q",
            str(wheel),
        ],
        tmp_path,
    )
    shutil.rmtree(source)  # the installed copy must not need its source

    site = run(
        [
            str(python),
            "-c",
            "import json, importlib.util as u, importlib.resources as r, shop_events.cli;"
            "from shop_events.storage import migrate;"
            "print(json.dumps({'plugin': shop_events.__file__,"
            " 'top_level_plugin': u.find_spec('plugin') is not None,"
            " 'migrations': str(r.files('shop_events.migrations')),"
            " 'head': migrate.head_revision()}))",
        ],
        tmp_path,
    )
    where = json.loads(site.stdout)
    venv_root = venv.resolve()
    assert Path(where["plugin"]).resolve().is_relative_to(venv_root), where
    assert Path(where["migrations"]).resolve().is_relative_to(venv_root), where
    assert not Path(where["plugin"]).resolve().is_relative_to(REPO)
    assert not where["top_level_plugin"], "the distribution must not install a 'plugin' module"
    assert where["head"] == head_revision()
    migrations = Path(where["migrations"])
    assert (migrations / "env.py").is_file()
    assert (migrations / "script.py.mako").is_file()
    assert list((migrations / "versions").glob("0001_*.py"))
    assert (Path(where["plugin"]).parent / "py.typed").is_file()

    script = venv / "bin" / "shop-events"
    assert script.is_file()
    assert script.read_text().splitlines()[0] == f"#!{python}"

    config_dir = tmp_path / "etc" / "shop"
    config_dir.mkdir(parents=True)
    config = config_dir / "cfg.toml"
    config.write_text('[database]\nurl = "sqlite:///events.db"\n', encoding="utf-8")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = run([str(script), "--config", "../etc/shop/cfg.toml", "migrate"], elsewhere)
    assert f"database at revision {head_revision()}" in done.stdout

    database = config_dir / "events.db"
    assert database.is_file()
    assert not (elsewhere / "events.db").exists()
    assert list(elsewhere.iterdir()) == []
    with sqlite3.connect(database) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        [(version,)] = conn.execute(f"SELECT version_num FROM {VERSION_TABLE}").fetchall()
    assert tables >= PLUGIN_TABLES | {VERSION_TABLE}
    assert version == head_revision()

    status = run([str(script), "--config", str(config), "status", "--json"], elsewhere)
    report = json.loads(status.stdout)
    assert report["by_status"]["pending"] == 0
    assert report["paused"] is False

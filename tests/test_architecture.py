"""The package's shape: forward-only imports (import-linter) and one owner per table."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "plugin"
REPO = PACKAGE.parent
SQL_BUILDERS = frozenset({"select", "insert", "update", "delete", "text", "exists", "func"})
LINT = (
    "import sys; from importlinter.cli import lint_imports; "
    "sys.exit(lint_imports(config_filename=sys.argv[1], no_cache=True, no_logo=True))"
)
COLUMN_TYPES = frozenset({"UTCDateTime"})
"""What ``storage.tables`` offers besides tables: a column type the demo's models share."""
HOST_SQL = {
    # these read and write the host's own models, never a plugin table
    "integrations/models/listeners.py",
    "integrations/models/loading.py",
    "integrations/models/mappings.py",
    "integrations/models/history.py",
    # the demo shop's own tables (prefix demo_)
    "demo/shop.py",
}


def modules_outside_storage() -> list[Path]:
    return [
        path
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.relative_to(PACKAGE).parts[0] != "storage"
    ]


def offences(path: Path) -> list[str]:
    """What in ``path`` touches a plugin table or builds SQL itself."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found = []
    relative = path.relative_to(PACKAGE).as_posix()
    for node in ast.walk(tree):
        if not isinstance(node, ast.ImportFrom) or node.module is None:
            continue
        module = node.module
        names = {alias.name for alias in node.names}
        tables = names - COLUMN_TYPES if module.endswith("storage.tables") else set()
        if tables or (module.endswith("storage") and "tables" in names):
            found.append(f"{relative}:{node.lineno}: imports the plugin's tables")
        if module == "sqlalchemy" and names & SQL_BUILDERS and relative not in HOST_SQL:
            built = ", ".join(sorted(names & SQL_BUILDERS))
            found.append(f"{relative}:{node.lineno}: builds SQL ({built})")
    return found


def test_no_module_outside_storage_touches_a_plugin_table() -> None:
    found = [line for path in modules_outside_storage() for line in offences(path)]
    assert found == []


def test_the_ownership_check_sees_a_statement_written_elsewhere(tmp_path: Path) -> None:
    stray = tmp_path / "stray.py"
    stray.write_text(
        "from sqlalchemy import select\nfrom ..storage.tables import carts\n", encoding="utf-8"
    )
    copied = PACKAGE / "capture" / "_stray_for_test.py"
    shutil.copy(stray, copied)
    try:
        assert len(offences(copied)) == 2
    finally:
        copied.unlink()


def test_imports_go_forward_only() -> None:
    # in a process of its own: import-linter reconfigures logging when it runs
    done = subprocess.run(
        [sys.executable, "-c", LINT, str(REPO / ".importlinter")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout and "3 kept" in done.stdout

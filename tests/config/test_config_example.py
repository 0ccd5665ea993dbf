"""``config.example.toml`` documents every setting with its default, and README names them."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

from shop_events import Settings

from tests.support import REPO


def test_example_lists_every_setting_with_its_default() -> None:
    example = tomllib.loads((REPO / "config.example.toml").read_text())
    defaults = Settings()
    for section in dataclasses.fields(Settings):
        names = {f.name for f in dataclasses.fields(getattr(defaults, section.name))}
        assert set(example.get(section.name, {})) == names, section.name
    loaded = Settings.load(example)
    # the example's relative SQLite path is resolved next to the file only by from_file
    assert loaded == defaults


def test_example_file_loads_as_a_config_file(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text((REPO / "config.example.toml").read_text())
    settings = Settings.from_file(config, env={})
    assert settings.database.url == f"sqlite:///{tmp_path / 'shop_events.db'}"


def test_readme_settings_table_names_real_settings() -> None:
    readme = (REPO / "README.md").read_text()
    table = readme.split("\n## Configuration\n")[1].split("\n## ")[0]
    defaults = Settings()
    named = 0
    for line in table.splitlines():
        if line.startswith("| `") and "." in line.split("`")[1]:
            section, _, name = line.split("`")[1].partition(".")
            assert hasattr(getattr(defaults, section), name), line
            named += 1
    assert named >= 10

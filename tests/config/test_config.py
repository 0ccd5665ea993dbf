"""Settings: TOML files, durations, environment overrides, validation and the secret API key."""

from __future__ import annotations

import dataclasses
import logging
import tomllib
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from shop_events import ConfigError, Settings, Tracker
from shop_events.config import Secret, format_duration, parse_duration
from shop_events.storage import pause
from shop_events.storage.tables import metadata
from shop_events.testing import Receiver, Reply
from sqlalchemy import select

from tests.support import REPO

SECRET = "sk-live-9Qz7Wv-do-not-leak"


def write_config(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- TOML files


def test_from_file_reads_every_section(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "shop.toml",
        """
        [api]
        base_url = "https://api.yespo.io/api"
        version = "v2"
        key = "file-key"
        rate_limit = 100
        [database]
        url = "sqlite:////var/lib/shop/events.db"
        [scheduler]
        enabled = false
        scan_interval = "30s"
        [delivery]
        batch_size = 20
        [abandoned_cart]
        after = "45m"
        event_type_key = "cart_left"
        [orders]
        event_type_key = "orderCreated"
        [items]
        imageurl = "ImageUrl"
        """,
    )
    settings = Settings.from_file(config, env={})
    assert settings.api.base_url == "https://api.yespo.io/api"
    assert settings.api.version == "v2"
    assert settings.api.event_path == "v2/event"
    assert settings.api.endpoint(settings.api.event_path) == "https://api.yespo.io/api/v2/event"
    assert settings.api.key.reveal() == "file-key"
    assert settings.api.rate_limit == 100.0
    assert settings.database.url == "sqlite:////var/lib/shop/events.db"
    assert settings.scheduler.enabled is False
    assert settings.scheduler.scan_interval == timedelta(seconds=30)
    assert settings.delivery.batch_size == 20
    assert settings.abandoned_cart.after == timedelta(minutes=45)
    assert settings.abandoned_cart.event_type_key == "cart_left"
    assert settings.items.imageurl == "ImageUrl"
    # untouched settings keep their defaults
    assert settings.delivery.lease == Settings().delivery.lease
    assert settings.items.name == "name"


def test_defaults_without_data() -> None:
    settings = Settings.load()
    assert settings == Settings()
    assert settings.api.base_url == "https://esputnik.com/api"
    assert settings.api.version == "v1"
    assert not settings.api.key
    assert settings.abandoned_cart.after == timedelta(hours=1)


def test_example_config_documents_the_defaults() -> None:
    """config.example.toml shows every setting with its default value."""
    example = REPO / "config.example.toml"
    settings = Settings.from_file(example, env={})
    beside = (example.parent / "shop_events.db").resolve()
    assert settings == Settings().override(database={"url": f"sqlite:///{beside}"})
    written = tomllib.loads(example.read_text(encoding="utf-8"))
    missing = [
        f"{section.name}.{key.name}"
        for section in dataclasses.fields(Settings)
        for key in dataclasses.fields(getattr(Settings(), section.name))
        if key.name not in written.get(section.name, {})
    ]
    assert missing == [], "settings missing from config.example.toml"


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        Settings.from_file(tmp_path / "nope.toml", env={})


def test_toml_syntax_error_is_a_config_error(tmp_path: Path) -> None:
    config = write_config(tmp_path / "bad.toml", '[api]\nkey = "x"\nversion = \n')
    with pytest.raises(ConfigError, match=r"bad\.toml"):
        Settings.from_file(config, env={})


# ------------------------------------------------------------------------------ durations


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("45m", timedelta(minutes=45)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("1h 30m", timedelta(hours=1, minutes=30)),
        ("500ms", timedelta(milliseconds=500)),
        (90, timedelta(seconds=90)),
        (1.5, timedelta(seconds=1.5)),
        ("90", timedelta(seconds=90)),
        ("2d", timedelta(days=2)),
        ("1w", timedelta(weeks=1)),
        ("90s", timedelta(seconds=90)),
        ("1H", timedelta(hours=1)),
    ],
)
def test_durations(raw: object, expected: timedelta) -> None:
    assert parse_duration(raw) == expected
    settings = Settings.load({"abandoned_cart": {"after": raw}})
    assert settings.abandoned_cart.after == expected


@pytest.mark.parametrize("raw", ["abc", "5x", "", "h", "1h-30m", "1.5.3h", "-5m", -5, True, [1]])
def test_bad_duration_names_the_key(raw: object) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.load({"abandoned_cart": {"after": raw}})
    assert str(caught.value).startswith("abandoned_cart.after:")


def test_bad_duration_in_a_file_names_the_key(tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.toml", '[abandoned_cart]\nafter = "soon"\n')
    with pytest.raises(ConfigError, match=r"^abandoned_cart\.after: 'soon' is not a duration"):
        Settings.from_file(config, env={})


@pytest.mark.parametrize(
    ("seconds", "text"), [(3600, "1h"), (90, "90s"), (2700, "45m"), (172800, "2d"), (0.5, "0.5s")]
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(timedelta(seconds=seconds)) == text
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("name", ["scan_interval", "dispatch_interval"])
def test_zero_interval_refused(name: str) -> None:
    with pytest.raises(ConfigError, match=rf"^scheduler\.{name}:"):
        Settings.load({"scheduler": {name: "0s"}})


# ------------------------------------------------------------------------ unknown names


def test_unknown_section_names_it() -> None:
    with pytest.raises(ConfigError, match=r"^abandoned_carts: unknown setting"):
        Settings.load({"abandoned_carts": {"after": "1h"}})


def test_unknown_key_names_it(tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.toml", '[abandoned_cart]\nafter = "1h"\ndelay = "2h"\n')
    with pytest.raises(ConfigError, match=r"^abandoned_cart\.delay: unknown setting"):
        Settings.from_file(config, env={})


def test_section_must_be_a_table() -> None:
    with pytest.raises(ConfigError, match=r"^api: must be a table"):
        Settings.load({"api": "https://esputnik.com/api"})


@pytest.mark.parametrize(
    ("section", "values", "key"),
    [
        ("api", {"version": "v3"}, "api.version"),
        ("api", {"rate_limit": "fast"}, "api.rate_limit"),
        ("api", {"rate_limit": 0}, "api.rate_limit"),
        ("api", {"max_event_bytes": 100}, "api.max_event_bytes"),
        ("delivery", {"batch_size": -1}, "delivery.batch_size"),
        ("delivery", {"max_attempts": 0}, "delivery.max_attempts"),
        ("scheduler", {"enabled": "maybe"}, "scheduler.enabled"),
        ("orders", {"event_type_key": 7}, "orders.event_type_key"),
    ],
)
def test_bad_values_name_their_key(section: str, values: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.load({section: values})
    assert key in str(caught.value)


# --------------------------------------------------------------------------- environment


def test_environment_wins_over_the_file(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "c.toml", '[api]\nkey = "file-key"\n[abandoned_cart]\nafter = "2h"\n'
    )
    env = {
        "SHOP_EVENTS_API_KEY": "env-key",
        "SHOP_EVENTS_ABANDONED_CART_AFTER": "45m",
        "SHOP_EVENTS_CONFIG": str(config),  # names the file; not a setting
        "PATH": "/usr/bin",  # not ours: ignored
    }
    settings = Settings.from_file(config, env=env)
    assert settings.api.key.reveal() == "env-key"
    assert settings.abandoned_cart.after == timedelta(minutes=45)


def test_from_file_reads_os_environ(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write_config(tmp_path / "c.toml", '[api]\nkey = "file-key"\n')
    monkeypatch.setenv("SHOP_EVENTS_API_KEY", "env-key")
    monkeypatch.setenv("SHOP_EVENTS_DELIVERY_BATCH_SIZE", "7")
    monkeypatch.setenv("SHOP_EVENTS_SCHEDULER_ENABLED", "false")
    settings = Settings.from_file(config)
    assert settings.api.key.reveal() == "env-key"
    assert settings.delivery.batch_size == 7
    assert settings.scheduler.enabled is False


def test_bad_environment_value_names_the_key(tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.toml", "")
    with pytest.raises(ConfigError, match=r"^abandoned_cart\.after:"):
        Settings.from_file(config, env={"SHOP_EVENTS_ABANDONED_CART_AFTER": "later"})


def test_unknown_environment_variable_names_it(tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.toml", "")
    with pytest.raises(ConfigError, match=r"^SHOP_EVENTS_FOO_BAR: unknown setting"):
        Settings.from_file(config, env={"SHOP_EVENTS_FOO_BAR": "1"})
    with pytest.raises(ConfigError, match=r"^api\.keyy: unknown setting"):
        Settings.from_file(config, env={"SHOP_EVENTS_API_KEYY": "1"})


def test_with_keys_takes_flask_style_values() -> None:
    base = Settings()
    changed = base.with_keys(
        {
            "SHOP_EVENTS_DELIVERY_BATCH_SIZE": 10,
            "SHOP_EVENTS_ABANDONED_CART_AFTER": "30m",
            "SHOP_EVENTS_API_KEY": "flask-key",
            "SECRET_KEY": "flask's own",
        }
    )
    assert changed.delivery.batch_size == 10
    assert changed.abandoned_cart.after == timedelta(minutes=30)
    assert changed.api.key.reveal() == "flask-key"
    assert base == Settings()  # frozen: the original is unchanged
    assert base.with_keys({"SECRET_KEY": "x"}) is base


def test_override() -> None:
    base = Settings()
    changed = base.override(api={"key": "k", "version": "v2"}, abandoned_cart={"after": "2h"})
    assert changed.api.key.reveal() == "k"
    assert changed.api.version == "v2"
    assert changed.abandoned_cart.after == timedelta(hours=2)
    assert changed.api.base_url == base.api.base_url
    assert not base.api.key
    with pytest.raises(ConfigError, match=r"^nope: unknown section"):
        base.override(nope={"x": 1})
    with pytest.raises(ConfigError, match=r"^api\.nope: unknown setting"):
        base.override(api={"nope": 1})
    with pytest.raises(ConfigError, match=r"^delivery\.lease:"):
        base.override(delivery={"lease": "1s"})


# ---------------------------------------------------------------------------- sqlite path


def test_relative_sqlite_path_is_next_to_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_config(
        tmp_path / "etc" / "shop.toml", '[database]\nurl = "sqlite:///data/events.db"\n'
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    settings = Settings.from_file(config, env={})
    expected = (tmp_path / "etc" / "data" / "events.db").resolve()
    assert settings.database.url == f"sqlite:///{expected}"


def test_default_sqlite_file_is_next_to_the_config_file(tmp_path: Path) -> None:
    config = write_config(tmp_path / "conf" / "shop.toml", "")
    settings = Settings.from_file(config, env={})
    expected = (tmp_path / "conf" / "shop_events.db").resolve()
    assert settings.database.url == f"sqlite:///{expected}"


@pytest.mark.parametrize(
    "url", ["sqlite:///:memory:", "sqlite://", "postgresql+psycopg://u@db/shop"]
)
def test_other_database_urls_are_kept(tmp_path: Path, url: str) -> None:
    config = write_config(tmp_path / "c.toml", f'[database]\nurl = "{url}"\n')
    assert Settings.from_file(config, env={}).database.url == url


def test_absolute_sqlite_path_is_kept(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'abs.db'}"
    config = write_config(tmp_path / "sub" / "c.toml", f'[database]\nurl = "{url}"\n')
    assert Settings.from_file(config, env={}).database.url == url


# ------------------------------------------------------------------------- value rules


def test_lease_must_outlast_two_requests() -> None:
    # 2 × (20s + 5s) = 50s: a 40s lease could expire while a slow send is still running
    with pytest.raises(ConfigError, match=r"^delivery\.lease: must be longer than twice") as caught:
        Settings.load({"api": {"timeout": "20s"}, "delivery": {"lease": "40s"}})
    assert "api.timeout" in str(caught.value)
    ok = Settings.load({"api": {"timeout": "20s"}, "delivery": {"lease": "51s"}})
    assert ok.delivery.lease == timedelta(seconds=51)
    with pytest.raises(ConfigError, match=r"^delivery\.lease:"):
        Settings.load({"api": {"timeout": "10m"}})  # the default 2m lease is now too short


def test_lease_has_a_floor() -> None:
    with pytest.raises(ConfigError, match=r"^delivery\.lease: must be at least 5s"):
        Settings.load(
            {"api": {"timeout": "1s", "connect_timeout": "1s"}, "delivery": {"lease": "4s"}}
        )


def test_base_url_with_credentials_refused() -> None:
    with pytest.raises(ConfigError, match=r"^api\.base_url: must not hold credentials") as caught:
        Settings.load({"api": {"base_url": f"https://user:{SECRET}@esputnik.com/api"}})
    assert SECRET not in str(caught.value)


@pytest.mark.parametrize("url", [f"ftp://user:{SECRET}@esputnik.com/api", f"user:{SECRET}@host"])
def test_base_url_credentials_never_echoed(url: str) -> None:
    with pytest.raises(ConfigError, match=r"^api\.base_url:") as caught:
        Settings.load({"api": {"base_url": url}})
    assert SECRET not in str(caught.value)


@pytest.mark.parametrize("url", ["esputnik.com/api", "ftp://esputnik.com/api", "https://"])
def test_base_url_must_be_http(url: str) -> None:
    with pytest.raises(ConfigError, match=r"^api\.base_url: must be an http\(s\) URL"):
        Settings.load({"api": {"base_url": url}})


@pytest.mark.parametrize("char", list("‹;’\\/|\"`'^?!,>"))
def test_event_type_key_with_forbidden_char_refused(char: str) -> None:
    with pytest.raises(ConfigError, match=r"^abandoned_cart\.event_type_key: must not contain"):
        Settings.load({"abandoned_cart": {"event_type_key": f"cart{char}left"}})


def test_event_type_key_rules_apply_to_orders_too() -> None:
    with pytest.raises(ConfigError, match=r"^orders\.event_type_key:"):
        Settings.load({"orders": {"event_type_key": "order?"}})
    with pytest.raises(ConfigError, match=r"^orders\.event_type_key: must be at most 100"):
        Settings.load({"orders": {"event_type_key": "o" * 101}})
    with pytest.raises(ConfigError, match=r"^abandoned_cart\.event_type_key: must not be empty"):
        Settings.load({"abandoned_cart": {"event_type_key": "  "}})


# -------------------------------------------------------------------------------- secret


def test_key_not_in_repr_or_str(tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.toml", f'[api]\nkey = "{SECRET}"\n')
    settings = Settings.from_file(config, env={})
    assert settings.api.key.reveal() == SECRET
    for text in (repr(settings), str(settings), repr(settings.api), str(settings.api.key)):
        assert SECRET not in text
    assert "********" in repr(settings.api)
    assert repr(Secret("")) == "Secret('')"
    assert f"{settings.api.key}" == "Secret('********')"


@pytest.mark.parametrize(
    "tail",
    [
        '[abandoned_cart]\nafter = "whenever"\n',  # a bad value elsewhere
        "[api]\nfoo = 1\n",  # an unknown key in the key's section
        '[delivery]\nlease = "1s"\n',  # a cross-field rule
        'version = "v3"\n',  # a bad value in the key's section
        "nonsense here\n",  # a TOML syntax error after the key
    ],
)
def test_key_not_in_config_errors(tmp_path: Path, tail: str) -> None:
    text = f'[api]\nkey = "{SECRET}"\n'
    if not tail.startswith("["):
        text += tail
    else:
        text += "\n" + tail
    config = write_config(tmp_path / "c.toml", text)
    with pytest.raises(ConfigError) as caught:
        Settings.from_file(config, env={})
    assert SECRET not in str(caught.value)
    assert SECRET not in repr(caught.value)


def test_key_not_in_config_errors_from_the_environment() -> None:
    for env in (
        {"SHOP_EVENTS_API_KEY": SECRET, "SHOP_EVENTS_API_VERSION": "v9"},
        {"SHOP_EVENTS_API_KEY": SECRET, "SHOP_EVENTS_NOPE": "x"},
        {"SHOP_EVENTS_API_KEYS": SECRET},
    ):
        with pytest.raises(ConfigError) as caught:
            Settings.load(env=env)
        assert SECRET not in str(caught.value)


def _stored(tracker: Tracker, folder: Path) -> bytes:
    """Everything the database holds: on SQLite the file and its WAL/SHM companions as stored on
    disk, on PostgreSQL the text of every row of every plugin table."""
    if tracker.engine.dialect.name == "sqlite":
        tracker.engine.dispose()
        files = b"".join(p.read_bytes() for p in sorted(folder.glob("shop_events.db*")))
        assert files, "the SQLite file was not found"
        return files
    rows = []
    with tracker.engine.connect() as conn:
        for table in metadata.sorted_tables:
            rows += [repr(tuple(row)) for row in conn.execute(select(table))]
    tracker.engine.dispose()
    return "\n".join(rows).encode()


def test_key_not_logged_nor_stored_by_a_send(
    make_settings: Callable[..., Settings],
    receiver: Receiver,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="shop_events")  # the CLI sets it to INFO when it runs
    api_key = receiver.api_key
    assert api_key
    tracker = Tracker(make_settings())
    tracker.migrate()
    tracker.custom_event("shop_events_test", key_value="ann@example.com", params={"n": 1})
    assert tracker.dispatch().sent == 1
    # a refused key: logged as a pause, stored as the row's last error
    receiver.api_key = "a-different-key"
    tracker.custom_event("shop_events_test", key_value="bob@example.com", params={"n": 2})
    tracker.dispatch()
    assert "401" in (tracker.summary().last_error or "")
    # a refused event: dead letter with the platform's text
    receiver.api_key = api_key
    with tracker.engine.begin() as conn:
        pause.resume(conn)
    receiver.script(Reply(400, "The event should have the following params: [email]"))
    tracker.custom_event("shop_events_test", key_value="cy@example.com", params={"n": 3})
    tracker.dispatch()
    tracker.shutdown()
    stored = _stored(tracker, tmp_path)

    assert len(receiver.requests) >= 3
    assert "401" in caplog.text  # the pause was logged…
    assert api_key not in caplog.text  # …without the key
    for record in caplog.records:
        assert api_key not in record.getMessage()
    assert b"shop_events_test" in stored  # the rows are really in these bytes
    assert api_key.encode() not in stored


def test_key_not_stored_with_a_wrong_key(
    make_settings: Callable[..., Settings],
    receiver: Receiver,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="shop_events")  # the CLI sets it to INFO when it runs
    wrong = "wrong-key-Zx81"
    tracker = Tracker(make_settings(api={"key": wrong}))
    tracker.migrate()
    tracker.custom_event("shop_events_test", key_value="ann@example.com", params={"n": 1})
    tracker.dispatch()
    summary = tracker.summary()
    tracker.shutdown()
    stored = _stored(tracker, tmp_path)
    assert receiver.requests[0].status == 401
    assert summary.by_status["pending"] == 1  # not lost, not dead: waits for a good key
    assert wrong not in caplog.text
    assert wrong not in repr(tracker)
    assert b"shop_events_test" in stored
    assert wrong.encode() not in stored

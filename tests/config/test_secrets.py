"""Secrets never show: the database password and the API key stay out of every ``repr``, ``str``
and error message, and a key that an HTTP header cannot carry stops the plugin at start."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from shop_events import ConfigError, Settings, Tracker
from shop_events.config import ApiSettings, DatabaseSettings, mask_url, scrub
from shop_events.errors import StorageError
from shop_events.storage.engines import make_engine

PASSWORD = "Pa55-w0rd-do-not-leak"
KEY = "sk-live-9Qz7Wv-do-not-leak"
PG_URL = f"postgresql://shop:{PASSWORD}@db.example:5432/shop"


def shown(value: object) -> str:
    return f"{value!r}\n{value}"


def test_settings_and_every_section_hide_the_database_password() -> None:
    """Before: ``repr(settings)`` and ``repr(settings.database)`` showed the URL whole."""
    settings = Settings.load({"database": {"url": PG_URL}, "api": {"key": KEY}})
    for value in (settings, *(getattr(settings, f.name) for f in dataclasses.fields(settings))):
        assert PASSWORD not in shown(value) and KEY not in shown(value), type(value).__name__
    assert "postgresql://shop:***@db.example:5432/shop" in repr(settings.database)
    assert settings.database.url == PG_URL  # the value itself is untouched


def test_an_api_section_built_directly_hides_credentials_in_its_url() -> None:
    api = ApiSettings(base_url=f"https://user:{KEY}@api.example/api")
    assert KEY not in shown(api) and "https://***@api.example/api" in repr(api)


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        (PG_URL, "postgresql://shop:***@db.example:5432/shop"),
        (f"postgresql+psycopg://shop:{PASSWORD}@[::1/x", "postgresql+psycopg://shop:***@[::1/x"),
        (f"postgresql://shop:a/{PASSWORD}@db/x", "postgresql://shop:***@db/x"),
        (f"postgresql://a@b:{PASSWORD}@db/x", "postgresql://a@b:***@db/x"),
        ("postgresql://shop@db/x", "postgresql://shop@db/x"),
        ("sqlite:///shop_events.db", "sqlite:///shop_events.db"),
        ("https://shop.example/a@b", "https://shop.example/a@b"),
        (f"shop:{PASSWORD}@db/x", "shop:***@db/x"),
    ],
)
def test_mask_url_hides_the_password_as_sqlalchemy_reads_it(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_scrub_removes_the_password_written_and_decoded() -> None:
    url = "postgresql://shop:p%40ss-word@db/x"
    text = f"failed for {url}: bad password p@ss-word or p%40ss-word"
    assert scrub(text, url) == "failed for postgresql://shop:***@db/x: bad password *** or ***"


@pytest.mark.parametrize(
    "url",
    [
        f"https:/u:{KEY}@esputnik.com/api",  # before: echoed whole, "must be an http(s) URL"
        f"https://u:{KEY}@[esputnik.com",  # before: a bare ValueError "Invalid IPv6 URL"
        f"https://esputnik.com/x:{KEY}@",  # before: accepted
        f"htps://u:{KEY}@esputnik.com",
        f"u:{KEY}@esputnik.com",
    ],
)
def test_a_malformed_base_url_with_credentials_names_the_key_and_echoes_nothing(
    url: str,
) -> None:
    with pytest.raises(ConfigError, match=r"^api\.base_url: must not hold credentials") as caught:
        Settings.load({"api": {"base_url": url}})
    assert KEY not in str(caught.value)


@pytest.mark.parametrize(
    ("url", "rule"),
    [
        ("https://[esputnik.com/api", "is not a valid URL"),
        ("https://esputnik.com:port/api", "is not a valid URL"),
        ("https://:443/api", "must be an http(s) URL"),
    ],
)
def test_a_malformed_base_url_is_a_config_error(url: str, rule: str) -> None:
    """Before: ``ValueError`` from ``urlsplit`` for the first two; the third was accepted."""
    with pytest.raises(ConfigError, match=rf"^api\.base_url: {re.escape(rule)}"):
        Settings.load({"api": {"base_url": url}})


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://shop:{PASSWORD}@db.example:notaport/shop",
        f"nosuchdb://shop:{PASSWORD}@db.example/shop",
        f"postgresql+nosuchdriver://shop:{PASSWORD}@db.example/shop",
        f"shop:{PASSWORD}@db.example/shop",
    ],
)
def test_a_bad_database_url_never_shows_its_password(url: str) -> None:
    with pytest.raises(ConfigError, match=r"^database\.url: ") as caught:
        make_engine(DatabaseSettings(url=url))
    assert PASSWORD not in str(caught.value)


def test_a_failed_capture_never_shows_the_database_password(tmp_path: Path) -> None:
    """A database that refuses connections: the StorageError says why, without the password."""
    url = f"postgresql+psycopg://shop:{PASSWORD}@127.0.0.1:1/shop"
    tracker = Tracker(Settings.load({"database": {"url": url}, "scheduler": {"enabled": False}}))
    try:
        with pytest.raises(StorageError) as caught:
            tracker.opted_in("ann@example.com")
    finally:
        tracker.shutdown()
        tracker.engine.dispose()
    assert "opted_in was not recorded" in str(caught.value)
    assert PASSWORD not in str(caught.value)


@pytest.mark.parametrize(
    ("key", "char"),
    [
        ("test\u200bkey", "U+200B"),  # a zero-width space, pasted by accident
        ("test\nkey", "U+000A"),
        ("test\x7fkey", "U+007F"),
        ("test\x85key", "U+0085"),
        ("ключ-test", "U+043A"),
    ],
)
def test_a_key_a_header_cannot_carry_fails_at_start(key: str, char: str) -> None:
    """Before: accepted; each send then raised UnicodeEncodeError in the HTTP client and left
    its row ``in_flight`` with 0 attempts, resent after every lease."""
    with pytest.raises(ConfigError, match=r"^api\.key: must hold only characters an HTTP header"):
        Settings.load({"api": {"key": key}})
    with pytest.raises(ConfigError) as caught:
        Settings.load({"api": {"key": key}})
    assert char in str(caught.value)
    assert "test" not in str(caught.value) and "ключ" not in str(caught.value)


def test_a_user_name_a_header_cannot_carry_fails_at_start() -> None:
    with pytest.raises(ConfigError, match=r"^api\.username: .*U\+200B"):
        Settings.load({"api": {"username": "shop\u200bevents"}})


def test_latin1_keys_and_user_names_are_accepted() -> None:
    settings = Settings.load({"api": {"key": "Kéy-123_~!", "username": "café shop"}})
    assert settings.api.key.reveal() == "Kéy-123_~!"


@pytest.mark.slow
def test_a_worker_with_a_zero_width_space_in_its_key_exits_with_the_message(
    tmp_path: Path,
) -> None:
    """A real ``shop-events worker`` process, configured by the environment."""
    key = "test\u200b-key-do-not-leak"
    env = {
        **os.environ,
        "SHOP_EVENTS_API_KEY": key,
        "SHOP_EVENTS_API_BASE_URL": "http://127.0.0.1:9/api",
        "SHOP_EVENTS_DATABASE_URL": f"sqlite:///{tmp_path / 'shop_events.db'}",
        "PYTHONIOENCODING": "utf-8",
    }
    env.pop("SHOP_EVENTS_CONFIG", None)
    code = "from shop_events.cli import main; main()"
    done = subprocess.run(
        [sys.executable, "-c", code, "worker"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert "api.key: must hold only characters an HTTP header can carry" in done.stderr
    assert "U+200B" in done.stderr
    assert "do-not-leak" not in done.stderr + done.stdout
    assert not (tmp_path / "shop_events.db").exists()  # stopped before touching anything

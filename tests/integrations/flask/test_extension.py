"""``ShopEvents(app)``: registration, configuration from the app, scheduler, CLI group."""

from __future__ import annotations

from pathlib import Path

import pytest
from flask import Flask
from shop_events import Settings, ShopEvents, Tracker
from shop_events.errors import ConfigError
from shop_events.integrations.flask.extension import tracker_for

from tests.support import SettingsFactory


def make_app(**config: object) -> Flask:
    app = Flask("shop")
    app.config.update(config)
    return app


def test_registered_once_and_reachable(settings: Settings) -> None:
    app = make_app()
    ext = ShopEvents(app, settings=settings)
    tracker = tracker_for(app)
    assert isinstance(tracker, Tracker)
    with app.app_context():
        assert ext.tracker is tracker
    with pytest.raises(RuntimeError, match="already registered"):
        ShopEvents(app, settings=settings)
    tracker.engine.dispose()


def test_app_config_keys_override_settings(settings: Settings) -> None:
    app = make_app(SHOP_EVENTS_ABANDONED_CART_AFTER="45m", SHOP_EVENTS_API_VERSION="v2")
    ShopEvents(app, settings=settings)
    tracker = tracker_for(app)
    assert tracker.settings.abandoned_cart.after.total_seconds() == 45 * 60
    assert tracker.settings.api.version == "v2"
    assert tracker.settings.database == settings.database
    tracker.engine.dispose()


def test_bad_app_config_stops_start_up_naming_the_key(settings: Settings) -> None:
    with pytest.raises(ConfigError, match=r"abandoned_cart\.after"):
        ShopEvents(make_app(SHOP_EVENTS_ABANDONED_CART_AFTER="soon"), settings=settings)
    with pytest.raises(ConfigError, match="SHOP_EVENTS_NOPE_X"):
        ShopEvents(make_app(SHOP_EVENTS_NOPE_X="1"), settings=settings)


def test_config_file_from_app_config(tmp_path: Path) -> None:
    config = tmp_path / "shop.toml"
    config.write_text('[database]\nurl = "sqlite:///events.db"\n[scheduler]\nenabled = false\n')
    app = make_app(SHOP_EVENTS_CONFIG=str(config))
    ShopEvents(app)
    tracker = tracker_for(app)
    assert tracker.settings.database.url == f"sqlite:///{tmp_path / 'events.db'}"
    assert not tracker.scheduler.running
    tracker.engine.dispose()


def test_scheduler_starts_at_the_first_request_served_not_with_the_app(
    make_settings: SettingsFactory,
) -> None:
    settings = make_settings(scheduler={"enabled": True, "scan_interval": "1h"})
    Tracker(settings).migrate()
    app = make_app()
    ShopEvents(app, settings=settings)
    tracker = tracker_for(app)
    try:
        assert not tracker.scheduler.running  # an app built by a command or a script: no jobs
        app.test_client().get("/shop-events/healthz").close()
        assert tracker.scheduler.running
    finally:
        tracker.shutdown()
    assert not tracker.scheduler.running
    tracker.engine.dispose()


def test_flask_cli_group_uses_the_apps_tracker(settings: Settings) -> None:
    """``flask shop-events …`` comes from the package's ``flask.commands`` entry point."""
    from click.testing import CliRunner
    from flask.cli import FlaskGroup, ScriptInfo

    app = make_app()
    ShopEvents(app, settings=settings)
    flask = FlaskGroup(create_app=lambda: app)
    runner = CliRunner()
    info = ScriptInfo(create_app=lambda: app)
    result = runner.invoke(flask, ["shop-events", "migrate"], obj=info)
    assert result.exit_code == 0, result.output
    result = runner.invoke(flask, ["shop-events", "status", "--json"], obj=info)
    assert result.exit_code == 0, result.output
    assert '"pending": 0' in result.output
    tracker_for(app).engine.dispose()


def test_the_flask_commands_on_an_app_without_the_extension_say_so_in_one_line() -> None:
    from shop_events.cli import flask_group

    bare = Flask("bare_shop")
    result = bare.test_cli_runner().invoke(flask_group, ["status"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "Error: bare_shop has no shop-events extension: call ShopEvents(app) in its factory"
    ]
    assert result.exception is None or isinstance(result.exception, SystemExit)

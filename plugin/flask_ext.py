"""``ShopEvents(app)``: the plugin as a Flask extension.

Settings come from ``SHOP_EVENTS_CONFIG`` (a TOML file) or the ``settings=`` argument, then
from ``SHOP_EVENTS_<SECTION>_<KEY>`` environment variables, then from the app's config keys of
the same names. The tracker lives in ``app.extensions["shop_events"]``.
"""

from __future__ import annotations

import os
from typing import Any

from flask import Flask, current_app

from plugin.config import CONFIG_PATH_ENV, ENV_PREFIX, Settings
from plugin.tracker import Tracker

EXTENSION_KEY = "shop_events"


class ShopEvents:
    """Installs the plugin into a Flask app: ``ShopEvents(app)`` or ``ext.init_app(app)``."""

    def __init__(
        self,
        app: Flask | None = None,
        *,
        settings: Settings | None = None,
        tracker: Tracker | None = None,
    ) -> None:
        self._settings = settings
        self._tracker = tracker
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Register on ``app``; a second registration on the same app is an error."""
        if EXTENSION_KEY in app.extensions:
            raise RuntimeError(
                "shop-events is already registered on this app; call ShopEvents(app) once"
            )
        tracker = self._tracker or Tracker(settings_for_app(app, self._settings))
        app.extensions[EXTENSION_KEY] = tracker
        if tracker.settings.scheduler.enabled and _is_serving_process(app):
            tracker.start()
            app.before_request(tracker.scheduler.ensure_running)

    @property
    def tracker(self) -> Tracker:
        """The tracker of the current app (or of the app this extension was built with)."""
        if self._tracker is not None:
            return self._tracker
        found: Tracker = current_app.extensions[EXTENSION_KEY]
        return found


def settings_for_app(app: Flask, base: Settings | None = None) -> Settings:
    """Settings for ``app``: file or ``base``, then environment, then ``SHOP_EVENTS_*`` config."""
    path = app.config.get(CONFIG_PATH_ENV) or os.environ.get(CONFIG_PATH_ENV)
    keys: dict[str, Any] = {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIX)}
    keys.update({k: v for k, v in app.config.items() if k.startswith(ENV_PREFIX)})
    keys.pop(CONFIG_PATH_ENV, None)
    if base is not None:
        return base.with_keys(keys)
    if path:
        return Settings.from_file(path, env=keys)
    return Settings.load(env=keys)


def _is_serving_process(app: Flask) -> bool:
    # Under the reloader, the parent only watches files; the child (WERKZEUG_RUN_MAIN) serves.
    reloader_parent = bool(os.environ.get("FLASK_RUN_FROM_CLI")) and not os.environ.get(
        "WERKZEUG_RUN_MAIN"
    )
    return not (app.debug and reloader_parent)


def tracker_for(app: Flask) -> Tracker:
    """The tracker registered on ``app``."""
    try:
        found: Tracker = app.extensions[EXTENSION_KEY]
    except KeyError:
        raise RuntimeError(
            "shop-events is not registered on this app; call ShopEvents(app)"
        ) from None
    return found

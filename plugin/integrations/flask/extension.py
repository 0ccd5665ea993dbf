"""``ShopEvents(app)``: the plugin as a Flask extension.

Settings come from ``SHOP_EVENTS_CONFIG`` (a TOML file) or the ``settings=`` argument, then
from ``SHOP_EVENTS_<SECTION>_<KEY>`` environment variables, then from the app's config keys of
the same names. The tracker lives in ``app.extensions["shop_events"]``; the blueprint
(``/shop-events``: browser tracking, operator pages) is registered with it.
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import Any

from flask import Flask, current_app

from ...config import CONFIG_PATH_ENV, ENV_PREFIX, Settings
from ...tracker import Tracker
from ..models import CaptureModels, CartMapping, CustomerMapping, OrderMapping
from . import admin, healthz, metrics, tracking  # noqa: F401  (importing them attaches views)
from .blueprint import AdminAccess, CurrentEmail, register

EXTENSION_KEY = "shop_events"

_schedulers: list[weakref.ref[Tracker]] = []
_schedulers_lock = threading.Lock()


class ShopEvents:
    """Installs the plugin into a Flask app: ``ShopEvents(app)`` or ``ext.init_app(app)``."""

    def __init__(
        self,
        app: Flask | None = None,
        *,
        settings: Settings | None = None,
        tracker: Tracker | None = None,
        admin_access: AdminAccess | None = None,
        current_email: CurrentEmail | None = None,
    ) -> None:
        """``admin_access()`` is called for each operator page request and must return True to
        let it in (without it, and without ``web.admin_access``, the pages answer 404);
        ``current_email()`` returns the signed-in shopper's email for a tracking request.
        """
        self._settings = settings
        self._tracker = tracker
        self._admin_access = admin_access
        self._current_email = current_email
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
        register(app, tracker, admin_access=self._admin_access, current_email=self._current_email)
        if tracker.settings.scheduler.enabled and _is_serving_process(app):
            runner = _scheduler_owner(tracker)
            runner.start()
            app.before_request(runner.scheduler.ensure_running)

    def identify(self, email: str, **bind: Any) -> bool:
        """Link the current request's browser (its ``se_vid`` cookie) to ``email``: call it at
        login. ``session=``/``connection=`` join the host's transaction. False when the browser
        has no visitor id yet.
        """
        return tracking.identify(email, **bind)

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


def _scheduler_owner(tracker: Tracker) -> Tracker:
    """The tracker whose scheduler serves ``tracker``'s settings in this process.

    Several apps in one process (an app factory called twice, tests) each get a tracker; when
    one with the same settings already runs its scheduler here, that one keeps serving them all,
    so the jobs never run twice in one process.
    """
    with _schedulers_lock:
        alive = [ref for ref in _schedulers if ref() is not None]
        _schedulers[:] = alive
        for ref in alive:
            other = ref()
            if (
                other is not None
                and other is not tracker
                and other.scheduler.running
                and other.settings == tracker.settings
            ):
                return other
        if not any(ref() is tracker for ref in alive):
            _schedulers.append(weakref.ref(tracker))
        return tracker


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


CAPTURE_KEY = "shop_events_capture"


def capture_models(
    app: Flask,
    *,
    cart: CartMapping[Any] | None = None,
    order: OrderMapping[Any] | None = None,
    customer: CustomerMapping[Any] | None = None,
    capture_outside_requests: bool = True,
    **options: Any,
) -> CaptureModels:
    """Capture carts, orders and customers from the app's own models (``integrations.models``).

    With Flask-SQLAlchemy (``db.init_app(app)`` first), only sessions on this app's engines are
    watched, and when the plugin's tables are in that database the captures are written inside
    ``db.session``'s transaction: a request that rolls back leaves no event.
    ``capture_outside_requests=False`` ignores work done outside a request (seed scripts, CLI
    commands). ``options`` go to :class:`~.CaptureModels` (``engines=``,
    ``on_error=`` …). The capture is kept in ``app.extensions["shop_events_capture"]``.
    """
    from flask import has_request_context

    db = app.extensions.get("sqlalchemy")
    if db is not None and "engines" not in options:
        with app.app_context():
            options["engines"] = list(db.engines.values())
    capture = CaptureModels(
        tracker_for(app),
        cart=cart,
        order=order,
        customer=customer,
        capture_outside_requests=capture_outside_requests,
        in_request=has_request_context,
        **options,
    )
    app.extensions[CAPTURE_KEY] = capture
    return capture

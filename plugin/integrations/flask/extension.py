"""``ShopEvents(app)``: the plugin as a Flask extension.

Settings come from ``SHOP_EVENTS_CONFIG`` (a TOML file) or the ``settings=`` argument, then
from ``SHOP_EVENTS_<SECTION>_<KEY>`` environment variables, then from the app's config keys of
the same names. The tracker lives in ``app.extensions["shop_events"]``; the blueprint
(``/shop-events``: browser tracking, operator pages) is registered with it.

What the extension does in the shop's process, and when:

- the jobs (scan, dispatch, retention) start at the first request the process serves, once
  the plugin's tables exist; never while a ``flask`` command other than ``flask run`` runs
  (``flask db upgrade``, ``flask shell``, the shop's own commands). ``shop-events worker``
  runs them without a web server;
- under Flask-Migrate, the shop's ``flask db migrate`` leaves the plugin's tables alone
  (:func:`~shop_events.storage.migrate.include_name` is added to its Alembic options);
- under Flask-WTF's ``CSRFProtect``, the plugin's views are exempt from it: the operator pages
  check their own CSRF token, and the tracking endpoint its callers' origin;
- the database URL of a relative SQLite path that is the shop's own Flask-SQLAlchemy URI is
  taken from the shop's engine, so both open the same file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import logging
import os
import sys
import threading
import weakref
from collections.abc import Callable, Mapping
from typing import Any

import click
from flask import Flask, appcontext_pushed, current_app

from ...abandonment.coupons import Coupon
from ...config import CONFIG_PATH_ENV, ENV_PREFIX, Secret, Settings
from ...errors import ConfigError
from ...storage.migrate import include_name
from ...tracker import Tracker
from ..models import CaptureModels, CartMapping, CustomerMapping, OrderMapping
from . import (  # noqa: F401  (importing them attaches views)
    admin,
    healthz,
    links,
    metrics,
    recovery_page,
    tracking,
)
from .blueprint import AdminAccess, CurrentEmail, RestoreCart, blueprint, register

log = logging.getLogger(__name__)

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
        restore_cart: RestoreCart | None = None,
        coupon: Coupon | None = None,
    ) -> None:
        """``admin_access()`` is called for each operator page request and must return True to
        let it in (without it, and without ``web.admin_access``, the pages answer 404);
        ``current_email()`` returns the signed-in shopper's email for a tracking request;
        ``restore_cart(cart_id, items)`` puts a cart back in the visitor's session when a
        recovery link is opened (and returns a response, or None for the default redirect);
        ``coupon(cart_id, email, step)`` gives a reminder's coupon code (``recovery.coupon``).
        """
        self._settings = settings
        self._tracker = tracker
        self._admin_access = admin_access
        self._current_email = current_email
        self._restore_cart = restore_cart
        self._coupon = coupon
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Register on ``app``; a second registration on the same app is an error."""
        if EXTENSION_KEY in app.extensions:
            raise RuntimeError(
                "shop-events is already registered on this app; call ShopEvents(app) once"
            )
        tracker = self._tracker or Tracker(
            with_link_secret(app, settings_for_app(app, self._settings)), coupon=self._coupon
        )
        app.extensions[EXTENSION_KEY] = tracker
        register(
            app,
            tracker,
            admin_access=self._admin_access,
            current_email=self._current_email,
            restore_cart=self._restore_cart,
        )
        _leave_plugin_tables_alone(app)
        appcontext_pushed.connect(_on_app_context, app)
        _exempt_from_csrf(app)
        app.before_request(_Serving(tracker))

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
    """Settings for ``app``: file or ``base``, then environment, then ``SHOP_EVENTS_*`` config.

    A ``database.url`` that is the same relative SQLite path as the shop's Flask-SQLAlchemy
    database is taken from the shop's engine (see :func:`shop_database`).
    """
    path = app.config.get(CONFIG_PATH_ENV) or os.environ.get(CONFIG_PATH_ENV)
    keys: dict[str, Any] = {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIX)}
    keys.update({k: v for k, v in app.config.items() if k.startswith(ENV_PREFIX)})
    keys.pop(CONFIG_PATH_ENV, None)
    if base is not None:
        settings = base.with_keys(keys)
    elif path:
        settings = Settings.from_file(path, env=keys)
    else:
        settings = Settings.load(env=keys)
    url = shop_database(app, settings.database.url)
    if url == settings.database.url:
        return settings
    return dataclasses.replace(settings, database=dataclasses.replace(settings.database, url=url))


LINK_KEY_LABEL = b"shop-events recovery links"


def with_link_secret(app: Flask, settings: Settings) -> Settings:
    """``settings``, with recovery links on and no ``recovery.secret``: a key derived from the
    app's ``secret_key`` (HMAC-SHA256 with a label of its own, so the links' key never equals
    the session's). Without a ``secret_key`` either: :class:`ConfigError` naming the key."""
    recovery = settings.recovery
    if not recovery.links or recovery.secret.reveal():
        return settings
    key = app.secret_key
    if not key:
        raise ConfigError(
            "recovery.secret: required with recovery.links (set SHOP_EVENTS_RECOVERY_SECRET, "
            "or the app's secret_key to derive it from)"
        )
    raw = key.encode("utf-8") if isinstance(key, str) else bytes(key)
    derived = hmac.new(raw, LINK_KEY_LABEL, hashlib.sha256).hexdigest()
    return settings.override(recovery={"secret": Secret(derived)})


def shop_database(app: Flask, url: str) -> str:
    """``url``, or the URL of the shop's Flask-SQLAlchemy engine when ``url`` is the same
    relative SQLite path as that engine's configured URI.

    Flask-SQLAlchemy opens a relative SQLite path in the app's instance folder (older versions:
    its root folder), not in the working directory: the plugin takes the file from the engine,
    so both open the same one and captures join the shop's transactions. When the shop imports
    Flask-SQLAlchemy but has not set it up on ``app`` yet, nobody knows where that file will
    be: :class:`ConfigError`.
    """
    if not _relative_sqlite(url):
        return url
    binds = [key for key, uri in _shop_uris(app).items() if uri == url]
    if not binds:
        return url
    db = app.extensions.get("sqlalchemy")
    if db is None:
        if "flask_sqlalchemy" not in sys.modules:
            return url  # the shop opens it with plain SQLAlchemy: from the working directory
        raise ConfigError(
            f"database.url: {url!r} is the shop's Flask-SQLAlchemy database, a relative path "
            "Flask-SQLAlchemy resolves itself: call ShopEvents(app) after db.init_app(app), "
            "or give an absolute path"
        )
    with app.app_context():
        engines: Mapping[str | None, Any] | None = getattr(db, "engines", None)
        engine = engines.get(binds[0]) if engines is not None else db.get_engine(app, binds[0])
    if engine is None:
        return url
    found: str = engine.url.render_as_string(hide_password=False)
    return found


def _relative_sqlite(url: str) -> bool:
    prefix = "sqlite:///"
    if not url.startswith(prefix):
        return False
    path = url[len(prefix) :].partition("?")[0]
    return bool(path) and path != ":memory:" and not os.path.isabs(path)


def _shop_uris(app: Flask) -> dict[str | None, str]:
    """Flask-SQLAlchemy's database URIs by bind key (None: ``SQLALCHEMY_DATABASE_URI``)."""
    uris: dict[str | None, str] = {}
    main = app.config.get("SQLALCHEMY_DATABASE_URI")
    if isinstance(main, str):
        uris[None] = main
    binds = app.config.get("SQLALCHEMY_BINDS") or {}
    if isinstance(binds, Mapping):
        for key, value in binds.items():
            uri = value.get("url") if isinstance(value, Mapping) else value
            if isinstance(uri, str):
                uris[key] = uri
    return uris


# -- the process: jobs at the first request served, never in a command -----------------------


def in_flask_command() -> bool:
    """Whether this thread runs a ``flask`` command other than ``flask run``: ``flask db
    upgrade``, ``flask shell``, ``flask shop-events migrate``, the shop's own commands.

    ``flask run`` serves: its requests count as served ones.
    """
    from flask.cli import ScriptInfo, run_command

    ctx = click.get_current_context(silent=True)
    if ctx is None or ctx.find_object(ScriptInfo) is None:
        return False  # a WSGI server, a plain script, or another program's command line
    return ctx.command is not run_command


class _Serving:
    """Runs before each request: the first one this process serves checks the plugin's tables
    (one loud line when they are missing) and starts the jobs, once per process (again in a
    forked child, whose parent's threads did not come along)."""

    def __init__(self, tracker: Tracker) -> None:
        self._tracker = tracker
        self._pid = 0
        self._lock = threading.Lock()

    def __call__(self) -> None:
        _exempt_from_csrf(current_app)  # CSRFProtect set up after ShopEvents: before its check
        if self._pid == os.getpid() or in_flask_command():
            return
        with self._lock:
            if self._pid == os.getpid():
                return
            self._pid = os.getpid()
        tracker = self._tracker
        tracker.check_tables()
        if tracker.settings.scheduler.enabled:
            _scheduler_owner(tracker).start()


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


# -- other extensions of the shop --------------------------------------------------------------


class _IncludeName:
    """The shop's Alembic ``include_name`` hook (if any), leaving the plugin's tables out."""

    def __init__(self, theirs: Callable[..., bool] | None) -> None:
        self.theirs = theirs

    def __call__(self, name: str | None, type_: str, parent_names: Mapping[str, Any]) -> bool:
        if not include_name(name, type_, parent_names):
            return False
        return self.theirs is None or bool(self.theirs(name, type_, parent_names))


def _leave_plugin_tables_alone(app: Flask) -> None:
    """Under Flask-Migrate: its Alembic options get :func:`include_name`, so the shop's
    autogenerate neither reads nor drops the plugin's tables. Flask-Migrate's ``env.py`` passes
    these options (``app.extensions["migrate"].configure_args``) to Alembic."""
    options = getattr(app.extensions.get("migrate"), "configure_args", None)
    if not isinstance(options, dict):
        return
    theirs = options.get("include_name")
    if not isinstance(theirs, _IncludeName):
        options["include_name"] = _IncludeName(theirs)


def _on_app_context(app: Flask, **_: Any) -> None:
    # Flask-Migrate set up after ShopEvents: its commands push an app context before env.py.
    _leave_plugin_tables_alone(app)


def _exempt_from_csrf(app: Flask) -> None:
    """Under Flask-WTF's ``CSRFProtect``: exempt the plugin's views, which have their own
    checks (the operator pages' CSRF token; the tracking endpoint's origin and token)."""
    csrf = app.extensions.get("csrf")
    exempt = getattr(csrf, "exempt", None)
    if exempt is not None:
        exempt(blueprint)


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
    capture_commands: bool = False,
    check: bool = True,
    **options: Any,
) -> CaptureModels:
    """Capture carts, orders and customers from the app's own models (``integrations.models``).

    With Flask-SQLAlchemy (``db.init_app(app)`` first), only sessions on this app's engines are
    watched, and when the plugin's tables are in that database the captures are written inside
    ``db.session``'s transaction: a request that rolls back leaves no event.

    Work done while a ``flask`` command runs (``flask seed``, ``flask shell``; anything but
    ``flask run``) is not captured unless ``capture_commands=True``.
    ``capture_outside_requests=False`` also ignores work done outside a request elsewhere (a
    plain script, a task queue's worker). ``options`` go to :class:`~.CaptureModels`
    (``engines=``, ``on_error=`` …). The capture is kept in
    ``app.extensions["shop_events_capture"]`` and closed when the app is garbage collected, so
    an app factory called per test leaves no capture behind.

    With ``check`` (the default; not in ``flask`` commands) every getter runs once now against
    one row of its model, where one exists (:meth:`~.CaptureModels.check`): a mapping that does
    not fit the shop's data is logged and shown among the capture errors at start.
    """
    from flask import has_request_context

    db = app.extensions.get("sqlalchemy")
    own_engines = "engines" in options
    if db is not None and not own_engines:
        with app.app_context():
            options["engines"] = list(db.engines.values())

    def wanted() -> bool:
        if not capture_commands and in_flask_command():
            return False
        return capture_outside_requests or has_request_context()

    capture = CaptureModels(
        tracker_for(app),
        cart=cart,
        order=order,
        customer=customer,
        capture_outside_requests=False,
        in_request=wanted,
        **options,
    )
    app.extensions[CAPTURE_KEY] = capture
    weakref.finalize(app, capture.close)
    if check and not in_flask_command():
        _check_at_start(app, capture, None if own_engines else db)
    return capture


def _check_at_start(app: Flask, capture: CaptureModels, db: Any) -> None:
    """The mappings' dry run; never stops the app from starting."""
    try:
        if db is not None:
            with app.app_context():
                try:
                    capture.check(db.session)
                finally:
                    db.session.remove()
        elif capture.engines:
            capture.check()
    except Exception as exc:
        log.warning("the capture mappings were not checked at start: %s", exc)

"""The plugin's Flask blueprint (``/shop-events``), what it knows of each app, and installing it.

The views attach themselves to :data:`blueprint` when their modules are imported: browser
tracking in :mod:`.tracking`, the operator pages in :mod:`.admin` and :mod:`.recovery_page`,
recovery links in :mod:`.links`. :func:`register` installs the blueprint on an app with the
app's tracker and hooks (``ShopEvents`` calls it).

Like the rest of :mod:`shop_events.integrations.flask`, this is Flask-only; the core never
imports it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, cast

from flask import Blueprint, Flask, current_app
from flask.typing import ResponseReturnValue

from ...config import WebSettings
from ...config.references import import_callable
from ...tracker import Tracker

URL_PREFIX = "/shop-events"
WEB_KEY = "shop_events.web"

AdminAccess = Callable[[], bool]
"""Called in the request context of an operator page: True lets the request in."""
CurrentEmail = Callable[[], "str | None"]
"""Called in the request context of a tracking call: the signed-in shopper's email, or None."""
RestoreCart = Callable[[str, list[dict[str, Any]]], "ResponseReturnValue | None"]
"""Called in the request context of an opened recovery link with the cart's id and its items as
the reminder showed them: puts the cart in the visitor's session (or rebuilds it from the items
on another device); returns a response, or None for the default redirect."""

blueprint = Blueprint(
    "shop_events",
    __name__,
    url_prefix=URL_PREFIX,
    static_folder="static",
    template_folder="templates",
)


@dataclasses.dataclass
class WebState:
    """What the blueprint needs of one app: its tracker and the hooks given to ShopEvents."""

    tracker: Tracker
    admin_access: AdminAccess | None
    current_email: CurrentEmail | None
    restore_cart: RestoreCart | None = None

    @property
    def settings(self) -> WebSettings:
        """The ``[web]`` settings of this app's tracker."""
        return self.tracker.settings.web


def register(
    app: Flask,
    tracker: Tracker,
    *,
    admin_access: AdminAccess | None = None,
    current_email: CurrentEmail | None = None,
    restore_cart: RestoreCart | None = None,
) -> WebState:
    """Install the blueprint on ``app`` (once; ``ShopEvents`` calls it)."""
    if WEB_KEY in app.extensions:
        raise RuntimeError("the shop-events blueprint is already registered on this app")
    web = tracker.settings.web
    if admin_access is None and web.admin_access:
        admin_access = _import_check(web.admin_access)
    state = WebState(
        tracker=tracker,
        admin_access=admin_access,
        current_email=current_email,
        restore_cart=restore_cart,
    )
    app.extensions[WEB_KEY] = state
    app.register_blueprint(blueprint)
    return state


def web_state(app: Flask | None = None) -> WebState:
    """The blueprint's state of ``app`` (by default the current app)."""
    state: WebState = (app or current_app).extensions[WEB_KEY]
    return state


def _import_check(path: str) -> AdminAccess:
    return cast(AdminAccess, import_callable(path, "web.admin_access"))

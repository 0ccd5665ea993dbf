"""The demo shop: a small Flask app that calls the plugin the way a real shop would.

Every cart change sends the whole cart to :meth:`Tracker.cart_updated` (or
:meth:`Tracker.cart_cleared` when it becomes empty), and checkout calls
:meth:`Tracker.order_placed`. Carts live in memory, keyed by a cart id kept in the Flask session
cookie; the cart page asks for an email early ("email me my cart") so an idle cart can be
abandoned with a contact.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import threading
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from flask import (
    Flask,
    Response,
    abort,
    current_app,
    flash,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from sqlalchemy import select
from werkzeug.wrappers import Response as BaseResponse

from plugin.config import Settings, format_duration
from plugin.demo import catalog
from plugin.flask_ext import ShopEvents, tracker_for
from plugin.models import carts, outbox
from plugin.tracker import StorageError, Tracker
from plugin.validation import ValidationError, check_email

log = logging.getLogger(__name__)

MAX_QUANTITY = 99
STATUS_ROWS = 50


@dataclasses.dataclass
class Cart:
    """One shopper's cart: product id → quantity (in the order added), and the email if given."""

    lines: dict[int, int] = dataclasses.field(default_factory=dict)
    email: str | None = None

    def rows(self) -> list[tuple[catalog.Product, int, Decimal]]:
        """``(product, quantity, line total)`` for each line whose product exists."""
        out = []
        for product_id, quantity in self.lines.items():
            product = catalog.get(product_id)
            if product is not None:
                out.append((product, quantity, product.decimal_price * quantity))
        return out

    def total(self) -> Decimal:
        """Sum of the line totals."""
        return sum((line for _, _, line in self.rows()), Decimal("0"))

    def count(self) -> int:
        """Number of pieces in the cart."""
        return sum(self.lines.values())


class CartStore:
    """Carts in memory, keyed by cart id; safe for a threaded server."""

    def __init__(self) -> None:
        self._carts: dict[str, Cart] = {}
        self._lock = threading.Lock()

    def get(self, cart_id: str) -> Cart:
        """A copy of the cart (an empty one if unknown)."""
        with self._lock:
            cart = self._carts.get(cart_id, Cart())
            return Cart(dict(cart.lines), cart.email)

    def save(self, cart_id: str, cart: Cart) -> None:
        """Store the cart."""
        with self._lock:
            self._carts[cart_id] = Cart(dict(cart.lines), cart.email)

    def drop(self, cart_id: str) -> None:
        """Forget the cart (after checkout)."""
        with self._lock:
            self._carts.pop(cart_id, None)

    def exists(self, cart_id: str) -> bool:
        """Whether a cart with this id is stored."""
        with self._lock:
            return cart_id in self._carts


@dataclasses.dataclass
class ShopState:
    """What the shop keeps in ``app.extensions["demo_shop"]``."""

    store: CartStore
    settings: Settings
    public_url: str | None
    receiver_url: str | None
    currency: str


def create_shop(
    settings: Settings,
    *,
    public_url: str | None = None,
    receiver_url: str | None = None,
    secret_key: str | None = None,
    currency: str = "EUR",
    tracker: Tracker | None = None,
) -> Flask:
    """The demo shop as a Flask app, with :class:`~plugin.flask_ext.ShopEvents` installed.

    The tracker is built from ``settings`` exactly (or given): ``SHOP_EVENTS_*`` environment
    variables are not applied, so a key or URL meant for production never reaches the demo.
    ``public_url`` is the shop's root as shoppers reach it (``http://127.0.0.1:5000``); product
    and cart URLs in events are built on it, or on the request's own root when it is None.
    ``receiver_url`` is linked from every page so the events can be watched arriving.
    """
    app = Flask(__name__)
    app.secret_key = secret_key or secrets.token_hex(16)
    app.config["SESSION_COOKIE_NAME"] = "demo_shop"
    tracker = tracker or Tracker(settings)
    ShopEvents(app, tracker=tracker)
    app.extensions["demo_shop"] = ShopState(
        store=CartStore(),
        settings=tracker.settings,
        public_url=public_url.rstrip("/") if public_url else None,
        receiver_url=receiver_url,
        currency=currency,
    )
    _register_routes(app)
    return app


def tracker_of(app: Flask) -> Tracker:
    """The shop's tracker (the one the ``ShopEvents`` extension made)."""
    return tracker_for(app)


def shop_state(app: Flask) -> ShopState:
    """The shop's state (cart store, settings, URLs)."""
    return _state(app)


def _state(app: Flask | None = None) -> ShopState:
    state = (app or current_app).extensions["demo_shop"]
    assert isinstance(state, ShopState)
    return state


def _root() -> str:
    return _state().public_url or request.url_root.rstrip("/")


def _cart_id(create: bool = True) -> str | None:
    cart_id = session.get("cart_id")
    if isinstance(cart_id, str):
        return cart_id
    if not create:
        return None
    cart_id = f"c-{secrets.token_hex(6)}"
    session["cart_id"] = cart_id
    return cart_id


def _current_cart() -> tuple[str | None, Cart]:
    cart_id = _cart_id(create=False)
    return cart_id, (_state().store.get(cart_id) if cart_id else Cart())


def _track(what: str, call: Callable[[], None]) -> bool:
    """Call the tracker; the shop keeps working if the plugin refuses or cannot write."""
    try:
        call()
    except (ValidationError, StorageError) as exc:
        log.warning("shop-events did not record %s: %s", what, exc)
        flash(f"The shop-events plugin did not record {what}: {exc}", "error")
        return False
    return True


def _sync(cart_id: str, cart: Cart) -> None:
    """Tell the plugin about the cart as it is now: the whole cart, or that it is empty."""
    tracker = tracker_of(current_app)
    state = _state()
    if not cart.lines:
        _track("the emptied cart", lambda: tracker.cart_cleared(cart_id))
        return
    root = _root()
    items = [catalog.item(p, root, quantity) for p, quantity, _ in cart.rows()]
    _track(
        "the cart change",
        lambda: tracker.cart_updated(
            cart_id,
            email=cart.email,
            items=items,
            currency=state.currency,
            restore_url=f"{root}/cart/restore/{cart_id}",
        ),
    )


def _quantity(raw: Any, default: int = 1) -> int:
    try:
        value = int(raw)
    except (TypeError, ValueError):
        return default
    return max(0, min(MAX_QUANTITY, value))


def _register_routes(app: Flask) -> None:
    @app.context_processor
    def common() -> dict[str, Any]:
        _, cart = _current_cart()
        state = _state()
        return {
            "cart_count": cart.count(),
            "receiver_url": state.receiver_url,
            "abandon_after": format_duration(state.settings.abandoned_cart.after),
            "currency": state.currency,
        }

    @app.get("/")
    def index() -> str:
        return render_template("shop_index.html", products=catalog.PRODUCTS)

    @app.get("/p/<int:product_id>")
    def product(product_id: int) -> str:
        found = catalog.get(product_id)
        if found is None:
            abort(404)
        return render_template("shop_product.html", product=found)

    @app.get("/img/<int:product_id>.svg")
    def image(product_id: int) -> Response:
        found = catalog.get(product_id)
        if found is None:
            abort(404)
        response = Response(catalog.svg(found), mimetype="image/svg+xml")
        response.cache_control.max_age = 3600
        return response

    @app.get("/cart")
    def cart_page() -> str:
        cart_id, cart = _current_cart()
        return render_template("shop_cart.html", cart=cart, cart_id=cart_id)

    @app.post("/cart/add")
    def cart_add() -> BaseResponse:
        found = catalog.get(_quantity(request.form.get("product_id"), 0))
        if found is None:
            abort(400)
        quantity = _quantity(request.form.get("quantity")) or 1
        cart_id = _cart_id()
        assert cart_id is not None
        cart = _state().store.get(cart_id)
        cart.lines[found.id] = min(MAX_QUANTITY, cart.lines.get(found.id, 0) + quantity)
        _state().store.save(cart_id, cart)
        _sync(cart_id, cart)
        flash(f"{found.name} is in your cart.", "ok")
        return redirect(url_for("cart_page"))

    @app.post("/cart/update")
    def cart_update() -> BaseResponse:
        cart_id, cart = _current_cart()
        if cart_id is None:
            return redirect(url_for("cart_page"))
        for product_id in list(cart.lines):
            field = f"qty_{product_id}"
            if field in request.form:
                quantity = _quantity(request.form[field], cart.lines[product_id])
                if quantity:
                    cart.lines[product_id] = quantity
                else:
                    del cart.lines[product_id]
        _state().store.save(cart_id, cart)
        _sync(cart_id, cart)
        return redirect(url_for("cart_page"))

    @app.post("/cart/remove/<int:product_id>")
    def cart_remove(product_id: int) -> BaseResponse:
        cart_id, cart = _current_cart()
        if cart_id is not None and cart.lines.pop(product_id, None) is not None:
            _state().store.save(cart_id, cart)
            _sync(cart_id, cart)
        return redirect(url_for("cart_page"))

    @app.post("/cart/clear")
    def cart_clear() -> BaseResponse:
        cart_id, cart = _current_cart()
        if cart_id is not None and cart.lines:
            cart.lines.clear()
            _state().store.save(cart_id, cart)
            _sync(cart_id, cart)
        return redirect(url_for("cart_page"))

    @app.post("/cart/email")
    def cart_email() -> BaseResponse:
        try:
            email = check_email(request.form.get("email", "").strip())
        except ValidationError as exc:
            flash(f"Please check the email address: {exc.rule}", "error")
            return redirect(url_for("cart_page"))
        cart_id = _cart_id()
        assert cart_id is not None
        cart = _state().store.get(cart_id)
        cart.email = email
        _state().store.save(cart_id, cart)
        if cart.lines:
            _sync(cart_id, cart)
        flash(f"We'll email your cart to {email} if you leave it for a while.", "ok")
        return redirect(url_for("cart_page"))

    @app.get("/cart/restore/<cart_id>")
    def cart_restore(cart_id: str) -> BaseResponse:
        # The link in the reminder email: it brings the shopper back to that very cart.
        if _state().store.exists(cart_id):
            session["cart_id"] = cart_id
            flash("Welcome back! Here is your cart.", "ok")
        else:
            flash("That cart is no longer available.", "error")
        return redirect(url_for("cart_page"))

    @app.route("/checkout", methods=["GET", "POST"])
    def checkout() -> BaseResponse | str:
        cart_id, cart = _current_cart()
        if cart_id is None or not cart.lines:
            flash("Your cart is empty.", "error")
            return redirect(url_for("cart_page"))
        if request.method == "GET":
            return render_template("shop_checkout.html", cart=cart)
        try:
            email = check_email(request.form.get("email", "").strip())
        except ValidationError as exc:
            flash(f"Please check the email address: {exc.rule}", "error")
            return render_template("shop_checkout.html", cart=cart)
        order_id = f"o-{secrets.token_hex(5)}"
        root = _root()
        items = [catalog.item(p, root, quantity) for p, quantity, _ in cart.rows()]
        total = cart.total()
        tracker = tracker_of(current_app)
        _track(
            "the order",
            lambda: tracker.order_placed(
                order_id,
                email=email,
                items=items,
                total=total,
                currency=_state().currency,
                cart_id=cart_id,
            ),
        )
        _state().store.drop(cart_id)
        session.pop("cart_id", None)
        return render_template(
            "shop_done.html", order_id=order_id, email=email, rows=cart.rows(), total=total
        )

    @app.get("/status")
    def status() -> str:
        tracker = tracker_of(current_app)
        with tracker.engine.connect() as conn:
            cart_rows = conn.execute(
                select(carts).order_by(carts.c.last_activity_at.desc()).limit(STATUS_ROWS)
            ).all()
            outbox_rows = conn.execute(
                select(
                    outbox.c.id,
                    outbox.c.event_type_key,
                    outbox.c.key_value,
                    outbox.c.subject_id,
                    outbox.c.subject_version,
                    outbox.c.status,
                    outbox.c.attempts,
                    outbox.c.last_error,
                    outbox.c.created_at,
                    outbox.c.sent_at,
                )
                .order_by(outbox.c.id.desc())
                .limit(STATUS_ROWS)
            ).all()
        return render_template(
            "shop_status.html",
            carts=cart_rows,
            events=outbox_rows,
            stats=tracker.stats(),
            my_cart=_cart_id(create=False),
            now=tracker.clock(),
        )

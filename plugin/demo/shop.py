"""The demo shop: a small Flask app with its own SQLAlchemy models, installed the automatic way.

Customers, carts with their lines, and orders with their lines are rows of the demo's own tables
(prefix ``demo_``) in the plugin's SQLite file. The views only change those rows; nothing in them
calls the tracker: ``capture_models`` declares how a cart, an order
and a customer read, and the plugin captures every commit itself, inside the request's
transaction. The cart's id is kept in the Flask session cookie; the cart page asks for an email
early ("email me my cart") so an idle cart can be abandoned with a contact.

Reminders carry recovery links (``recovery.links``, signed with a key derived from the app's
``secret_key``): the link opens the cart in any browser (:func:`restore_cart`). The operator
pages (history, health, dead letters, recovery) are open to the local visitor only: a request
from 127.0.0.1 or ::1 that came through no proxy.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from flask import (
    Flask,
    Response,
    abort,
    current_app,
    flash,
    has_request_context,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from sqlalchemy import Engine, ForeignKey, MetaData, String, delete, select
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    relationship,
    scoped_session,
    sessionmaker,
)
from werkzeug.wrappers import Response as BaseResponse

from ..config import Settings, format_duration
from ..errors import ValidationError
from ..integrations.flask.blueprint import URL_PREFIX
from ..integrations.flask.extension import (
    ShopEvents,
    capture_models,
    tracker_for,
    with_link_secret,
)
from ..integrations.models import CaptureModels, CartMapping, CustomerMapping, OrderMapping
from ..payload.items import Item
from ..payload.validation import check_email
from ..storage import activity, outbox
from ..storage.enums import Subject
from ..storage.tables import UTCDateTime
from ..tracker import Tracker
from . import catalog

log = logging.getLogger(__name__)

MAX_QUANTITY = 99
STATUS_ROWS = 50
DEFAULT_ROOT = "http://127.0.0.1:5000"
LOCAL_ADDRESSES = frozenset({"127.0.0.1", "::1"})
PROXY_HEADERS = ("X-Forwarded-For", "Forwarded", "X-Real-IP")
OPERATOR_PAGES = (
    ("History", f"{URL_PREFIX}/admin/"),
    ("Health", f"{URL_PREFIX}/admin/health"),
    ("Dead letters", f"{URL_PREFIX}/admin/dead"),
    ("Recovery", f"{URL_PREFIX}/admin/recovery"),
)
"""The plugin's operator pages the header links to, for the local visitor."""
_BY_SKU = {catalog.item(p, DEFAULT_ROOT).sku: p for p in catalog.PRODUCTS}
"""The catalog by the SKU its items carry: a reminder's products name them so."""

# -- the shop's own models --------------------------------------------------------------------


class Base(DeclarativeBase):
    """The demo's tables, on their own metadata (the plugin's tables have theirs)."""

    metadata = MetaData()


def _now() -> datetime:
    return datetime.now(UTC)


class Customer(Base):
    """A signed-up shopper."""

    __tablename__ = "demo_customers"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(254), unique=True)
    first_name: Mapped[str | None] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=_now)


class Cart(Base):
    """One shopper's cart; ``ordered`` once checked out."""

    __tablename__ = "demo_carts"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    email: Mapped[str | None] = mapped_column(String(254))
    customer_id: Mapped[int | None] = mapped_column(ForeignKey("demo_customers.id"))
    customer: Mapped[Customer | None] = relationship()
    status: Mapped[str] = mapped_column(String(16), default="open")
    lines: Mapped[list[CartLine]] = relationship(
        back_populates="cart", cascade="all, delete-orphan", order_by="CartLine.id"
    )

    @property
    def contact(self) -> str | None:
        """The customer's email, else the one given on the cart page."""
        return self.customer.email if self.customer is not None else self.email

    def rows(self) -> list[tuple[catalog.Product, int, Decimal]]:
        """``(product, quantity, line total)`` for each line whose product exists."""
        out = []
        for line in self.lines:
            product = catalog.get(line.product_id)
            if product is not None:
                out.append((product, line.quantity, product.decimal_price * line.quantity))
        return out

    def total(self) -> Decimal:
        """Sum of the line totals."""
        return sum((line for _, _, line in self.rows()), Decimal("0"))

    def count(self) -> int:
        """Number of pieces in the cart."""
        return sum(line.quantity for line in self.lines)

    def line(self, product_id: int) -> CartLine | None:
        """The line of this product, if any."""
        return next((x for x in self.lines if x.product_id == product_id), None)


class CartLine(Base):
    """A product in a cart."""

    __tablename__ = "demo_cart_lines"
    id: Mapped[int] = mapped_column(primary_key=True)
    cart_id: Mapped[str] = mapped_column(ForeignKey("demo_carts.id"))
    cart: Mapped[Cart] = relationship(back_populates="lines")
    product_id: Mapped[int]
    quantity: Mapped[int]


class Order(Base):
    """A placed order."""

    __tablename__ = "demo_orders"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    cart_id: Mapped[str | None] = mapped_column(String(32))
    email: Mapped[str] = mapped_column(String(254))
    total: Mapped[str] = mapped_column(String(20))
    currency: Mapped[str] = mapped_column(String(3))
    status: Mapped[str] = mapped_column(String(16), default="INITIALIZED")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=_now)
    lines: Mapped[list[OrderLine]] = relationship(
        cascade="all, delete-orphan", order_by="OrderLine.id"
    )


class OrderLine(Base):
    """A product in an order, at the price paid."""

    __tablename__ = "demo_order_lines"
    id: Mapped[int] = mapped_column(primary_key=True)
    order_id: Mapped[str] = mapped_column(ForeignKey("demo_orders.id"))
    product_id: Mapped[int]
    quantity: Mapped[int]
    price: Mapped[str] = mapped_column(String(20))


# -- the app ----------------------------------------------------------------------------------


@dataclasses.dataclass
class ShopState:
    """What the shop keeps in ``app.extensions["demo_shop"]``."""

    db: scoped_session[Session]
    capture: CaptureModels
    settings: Settings
    public_url: str | None
    receiver_url: str | None
    currency: str

    def close(self) -> None:
        """Stop capturing and close the sessions (the tracker is its owner's to shut down)."""
        self.capture.close()
        self.db.remove()


def create_shop(
    settings: Settings,
    *,
    public_url: str | None = None,
    receiver_url: str | None = None,
    secret_key: str | None = None,
    currency: str = "EUR",
    tracker: Tracker | None = None,
) -> Flask:
    """The demo shop as a Flask app, with ``ShopEvents`` installed.

    The tracker is built from ``settings`` exactly (or given): ``SHOP_EVENTS_*`` environment
    variables are not applied, so a key or URL meant for production never reaches the demo.
    The shop's tables are created in the tracker's database. ``public_url`` is the shop's root
    as shoppers reach it (``http://127.0.0.1:5000``); product and cart URLs in events are built
    on it, or on the request's own root when it is None. ``receiver_url`` is linked from every
    page so the events can be watched arriving.

    A tracker built here sends recovery links (unless ``settings`` already do, to the shop's
    root: ``public_url``, else :data:`DEFAULT_ROOT`), signed with a key derived from the app's
    ``secret_key``.
    """
    app = Flask(__name__)
    app.secret_key = secret_key or secrets.token_hex(32)
    app.config["SESSION_COOKIE_NAME"] = "demo_shop"
    tracker = tracker or Tracker(with_link_secret(app, with_links(settings, public_url)))
    ShopEvents(app, tracker=tracker, admin_access=local_visitor, restore_cart=restore_cart)
    Base.metadata.create_all(tracker.engine)
    db = scoped_session(sessionmaker(tracker.engine, expire_on_commit=False))
    app.extensions["demo_shop"] = ShopState(
        db=db,
        capture=_capture(app, tracker.engine),
        settings=tracker.settings,
        public_url=public_url.rstrip("/") if public_url else None,
        receiver_url=receiver_url,
        currency=currency,
    )
    app.teardown_appcontext(lambda _exc: db.remove())
    _register_routes(app)
    return app


def with_links(settings: Settings, public_url: str | None) -> Settings:
    """``settings`` with recovery links on, to ``public_url`` (unless they are on already)."""
    if settings.recovery.links:
        return settings
    root = (public_url or DEFAULT_ROOT).rstrip("/")
    return settings.override(recovery={"links": True, "base_url": root})


def local_visitor() -> bool:
    """Whether the request comes from this machine, directly: the operator pages' access check.

    A proxy on this machine would make every visitor look local; a request that names another
    client in a proxy header is therefore not let in.
    """
    if request.remote_addr not in LOCAL_ADDRESSES:
        return False
    return not any(name in request.headers for name in PROXY_HEADERS)


def restore_cart(cart_id: str, items: list[dict[str, Any]]) -> BaseResponse:
    """``restore_cart`` for the plugin's recovery links: the reminder's cart in this session.

    The cart itself when it is still open (in any browser: it is a row of the shop's table);
    otherwise (bought, emptied, or gone) a new cart rebuilt from the products the reminder
    showed, for the same contact.
    """
    db = _db()
    cart = db.get(Cart, cart_id)
    if cart is not None and cart.status == "open" and cart.lines:
        session["cart_id"] = cart.id
        flash("Welcome back! Here is your cart.", "ok")
        return redirect(url_for("cart_page"), 303)
    lines = _lines_of(items)
    if not lines:
        flash("That cart is no longer available.", "error")
        return redirect(url_for("cart_page"), 303)
    rebuilt = Cart(
        id=f"c-{secrets.token_hex(6)}",
        email=cart.contact if cart is not None else None,
        customer=_customer(),
        lines=lines,
    )
    db.add(rebuilt)
    db.commit()
    session["cart_id"] = rebuilt.id
    flash("Welcome back! We put the products of your cart back in it.", "ok")
    return redirect(url_for("cart_page"), 303)


def _lines_of(items: list[dict[str, Any]]) -> list[CartLine]:
    """Cart lines for the catalog's products among ``items`` (found by SKU), one per product."""
    quantities: dict[int, int] = {}
    for item in items:
        product = _BY_SKU.get(item.get("sku")) if isinstance(item, dict) else None
        if product is not None:
            wanted = quantities.get(product.id, 0) + (_quantity(item.get("quantity")) or 1)
            quantities[product.id] = min(MAX_QUANTITY, wanted)
    return [CartLine(product_id=pid, quantity=qty) for pid, qty in quantities.items()]


def _capture(app: Flask, engine: Engine) -> CaptureModels:
    """The whole installation: how the plugin reads this shop's carts, orders and customers."""

    def item(line: CartLine | OrderLine) -> Item:
        product = catalog.get(line.product_id)
        if product is None:
            raise ValidationError("product_id", f"{line.product_id} is not in the catalog")
        return catalog.item(product, _root(app), line.quantity)

    return capture_models(
        app,
        engines=[engine],
        on_error=_not_captured,
        cart=CartMapping(
            Cart,
            item=item,
            email="contact",
            currency=lambda cart: _state(app).currency,
            restore_url=lambda cart: f"{_root(app)}/cart/restore/{cart.id}",
        ),
        order=OrderMapping(
            Order,
            item=item,
            total="total",
            currency="currency",
            cart_id="cart_id",
            status="status",
        ),
        customer=CustomerMapping(Customer, first_name="first_name", upsert_contact=True),
    )


def _not_captured(what: str, exc: Exception) -> None:
    # The shop keeps working when the plugin refuses something; the shopper is told why.
    log.warning("shop-events did not record %s: %s", what, exc)
    if has_request_context():
        flash(f"The shop-events plugin did not record {what}: {exc}", "error")


def tracker_of(app: Flask) -> Tracker:
    """The shop's tracker (the one the ``ShopEvents`` extension made)."""
    return tracker_for(app)


def shop_state(app: Flask) -> ShopState:
    """The shop's state (sessions, capture, settings, URLs)."""
    return _state(app)


def _state(app: Flask | None = None) -> ShopState:
    state = (app or current_app).extensions["demo_shop"]
    assert isinstance(state, ShopState)
    return state


def _db() -> Session:
    return _state().db()


def _root(app: Flask | None = None) -> str:
    public = _state(app).public_url
    if public:
        return public
    return request.url_root.rstrip("/") if has_request_context() else DEFAULT_ROOT


def _cart(create: bool = False) -> Cart | None:
    """The shopper's open cart (made when ``create``)."""
    cart_id = session.get("cart_id")
    cart = _db().get(Cart, cart_id) if isinstance(cart_id, str) else None
    if cart is not None and cart.status == "open":
        return cart
    if not create:
        return None
    cart = Cart(id=f"c-{secrets.token_hex(6)}", customer=_customer())
    _db().add(cart)
    session["cart_id"] = cart.id
    return cart


def _customer() -> Customer | None:
    customer_id = session.get("customer_id")
    return _db().get(Customer, customer_id) if isinstance(customer_id, int) else None


def _quantity(raw: Any, default: int = 1) -> int:
    try:
        value = int(raw)
    except (TypeError, ValueError):
        return default
    return max(0, min(MAX_QUANTITY, value))


def _checked_email(form_field: str = "email") -> str | None:
    try:
        return check_email(request.form.get(form_field, "").strip())
    except ValidationError as exc:
        flash(f"Please check the email address: {exc.rule}", "error")
        return None


def _register_routes(app: Flask) -> None:
    @app.context_processor
    def common() -> dict[str, Any]:
        cart = _cart()
        state = _state()
        return {
            "cart_count": cart.count() if cart else 0,
            "customer": _customer(),
            "receiver_url": state.receiver_url,
            "abandon_after": format_duration(state.settings.abandoned_cart.after),
            "currency": state.currency,
            "operator_pages": OPERATOR_PAGES if local_visitor() else (),
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

    @app.route("/account", methods=["GET", "POST"])
    def account() -> BaseResponse | str:
        if request.method == "GET":
            return render_template("shop_account.html")
        email = _checked_email()
        if email is None:
            return redirect(url_for("account"))
        db = _db()
        customer = db.scalars(select(Customer).where(Customer.email == email)).first()
        if customer is None:
            first_name = request.form.get("first_name", "").strip() or None
            customer = Customer(email=email, first_name=first_name)
            db.add(customer)
            flash(f"Welcome, {first_name or email}! Your account is created.", "ok")
        else:
            flash(f"Welcome back, {customer.first_name or email}.", "ok")
        cart = _cart()
        if cart is not None:
            cart.customer = customer
        db.commit()
        session["customer_id"] = customer.id
        return redirect(url_for("cart_page"))

    @app.post("/account/leave")
    def sign_out() -> BaseResponse:
        session.pop("customer_id", None)
        return redirect(url_for("index"))

    @app.get("/cart")
    def cart_page() -> str:
        cart = _cart() or Cart()
        return render_template("shop_cart.html", cart=cart, cart_id=cart.id)

    @app.post("/cart/add")
    def cart_add() -> BaseResponse:
        found = catalog.get(_quantity(request.form.get("product_id"), 0))
        if found is None:
            abort(400)
        quantity = _quantity(request.form.get("quantity")) or 1
        cart = _cart(create=True)
        assert cart is not None
        line = cart.line(found.id)
        if line is None:
            cart.lines.append(CartLine(product_id=found.id, quantity=quantity))
        else:
            line.quantity = min(MAX_QUANTITY, line.quantity + quantity)
        _db().commit()
        flash(f"{found.name} is in your cart.", "ok")
        return redirect(url_for("cart_page"))

    @app.post("/cart/update")
    def cart_update() -> BaseResponse:
        cart = _cart()
        if cart is None:
            return redirect(url_for("cart_page"))
        for line in list(cart.lines):
            field = f"qty_{line.product_id}"
            if field in request.form:
                quantity = _quantity(request.form[field], line.quantity)
                if quantity:
                    line.quantity = quantity
                else:
                    cart.lines.remove(line)
        _db().commit()
        return redirect(url_for("cart_page"))

    @app.post("/cart/remove/<int:product_id>")
    def cart_remove(product_id: int) -> BaseResponse:
        cart = _cart()
        line = cart.line(product_id) if cart is not None else None
        if line is not None:
            _db().delete(line)
            _db().commit()
        return redirect(url_for("cart_page"))

    @app.post("/cart/clear")
    def cart_clear() -> BaseResponse:
        cart = _cart()
        if cart is not None and cart.lines:
            # one statement for all lines: the plugin sees bulk deletes too
            _db().execute(delete(CartLine).where(CartLine.cart_id == cart.id))
            _db().commit()
        return redirect(url_for("cart_page"))

    @app.post("/cart/email")
    def cart_email() -> BaseResponse:
        email = _checked_email()
        if email is None:
            return redirect(url_for("cart_page"))
        cart = _cart(create=True)
        assert cart is not None
        cart.email = email
        _db().commit()
        flash(f"We'll email your cart to {email} if you leave it for a while.", "ok")
        return redirect(url_for("cart_page"))

    @app.get("/cart/restore/<cart_id>")
    def cart_restore(cart_id: str) -> BaseResponse:
        # The link in the reminder email: it brings the shopper back to that very cart.
        cart = _db().get(Cart, cart_id)
        if cart is not None and cart.status == "open":
            session["cart_id"] = cart_id
            flash("Welcome back! Here is your cart.", "ok")
        else:
            flash("That cart is no longer available.", "error")
        return redirect(url_for("cart_page"))

    @app.route("/checkout", methods=["GET", "POST"])
    def checkout() -> BaseResponse | str:
        cart = _cart()
        if cart is None or not cart.lines:
            flash("Your cart is empty.", "error")
            return redirect(url_for("cart_page"))
        if request.method == "GET":
            return render_template("shop_checkout.html", cart=cart)
        email = _checked_email()
        if email is None:
            return render_template("shop_checkout.html", cart=cart)
        rows, total = cart.rows(), cart.total()
        order = Order(
            id=f"o-{secrets.token_hex(5)}",
            cart_id=cart.id,
            email=email,
            total=str(total),
            currency=_state().currency,
            lines=[
                OrderLine(product_id=p.id, quantity=quantity, price=p.price)
                for p, quantity, _ in rows
            ],
        )
        _db().add(order)
        cart.status = "ordered"
        _db().commit()
        session.pop("cart_id", None)
        return render_template(
            "shop_done.html", order_id=order.id, email=email, rows=rows, total=total
        )

    @app.get("/status")
    def status() -> str:
        tracker = tracker_of(current_app)
        # read on the request's own connection: SQLite has one writer, and this request's
        # transaction may already hold the lock
        conn = _db().connection()
        cart_rows = activity.recent(conn, Subject.CART, STATUS_ROWS)
        outbox_rows = outbox.history(conn, size=STATUS_ROWS).rows
        return render_template(
            "shop_status.html",
            carts=cart_rows,
            events=outbox_rows,
            stats=outbox.summarize(conn).by_status,
            my_cart=session.get("cart_id"),
            now=tracker.clock(),
        )

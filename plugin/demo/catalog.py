"""The demo shop's products, and the small SVG pictures it serves for them.

Prices are decimal strings, as a shop would keep them; :func:`item` turns a product into the
plugin's :class:`~shop_events.payload.items.Item` with absolute URLs of the running shop.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from decimal import Decimal
from xml.sax.saxutils import escape

from ..payload.items import Item


@dataclasses.dataclass(frozen=True)
class Product:
    """One product of the demo catalog."""

    id: int
    name: str
    price: str
    brand: str
    description: str
    color: str
    """Background colour of its picture."""
    tags: Mapping[str, str] = dataclasses.field(default_factory=dict)

    @property
    def decimal_price(self) -> Decimal:
        """The price as a ``Decimal``."""
        return Decimal(self.price)

    @property
    def initials(self) -> str:
        """Up to two letters drawn on the picture."""
        words = [w for w in self.name.replace("-", " ").split() if w[:1].isalpha()]
        return "".join(w[0] for w in words[:2]).upper()


PRODUCTS: tuple[Product, ...] = (
    Product(1, "Hair styler", "341.00", "Le Petit Olivier",
            "A compact ceramic styler with three heat settings.", "#e9a6a6",
            {"weight": "200", "oldprice": "467.00"}),
    Product(2, "Magnolia Nobile", "2341.00", "Acqua Di Parma",
            "Eau de parfum with magnolia, bergamot and sandalwood.", "#d9c3e8",
            {"weight": "100", "oldprice": "4467.00"}),
    Product(3, "Bond shampoo", "28.50", "Olaplex",
            "Bond-maintenance shampoo for every hair type.", "#b9dcf2",
            {"weight": "250", "oldprice": "32.00"}),
    Product(4, "Argan hair oil", "19.90", "Moroccan Grove",
            "Cold-pressed argan oil for shine without weight.", "#f3d9a4",
            {"weight": "50", "oldprice": "24.90"}),
    Product(5, "Silk pillowcase", "64.00", "Slip & Sleep",
            "Mulberry silk, 22 momme, in oyster white.", "#f1ece2",
            {"weight": "180", "oldprice": "79.00"}),
    Product(6, "Bamboo brush", "12.75", "Green Comb",
            "Paddle brush with bamboo pins and a cushioned base.", "#c9e4be",
            {"weight": "120", "oldprice": "15.00"}),
    Product(7, "Vitamin C serum", "42.00", "Lumière Lab",
            "15% ascorbic acid serum for a brighter complexion.", "#ffd59e",
            {"weight": "30", "oldprice": "49.00"}),
    Product(8, "Night cream", "55.20", "Lumière Lab",
            "Rich overnight cream with ceramides and peptides.", "#b7c4e8",
            {"weight": "50", "oldprice": "61.00"}),
    Product(9, "Clay mask", "23.40", "Terra Pura",
            "French green clay mask that calms and clarifies.", "#a9d1c0",
            {"weight": "75", "oldprice": "26.00"}),
    Product(10, "Rose water mist", "16.00", "Damask Garden",
            "Hydrating mist distilled from Bulgarian roses.", "#f6c1d0",
            {"weight": "100", "oldprice": "18.50"}),
    Product(11, "Travel hair dryer", "89.99", "Le Petit Olivier",
            "Foldable 1200 W dryer with a diffuser.", "#d6d6d6",
            {"weight": "450", "oldprice": "109.00"}),
    Product(12, "Lip balm trio", "9.60", "Honey & Co",
            "Beeswax balms in honey, mint and vanilla.", "#f7e27c",
            {"weight": "15", "oldprice": "12.00"}),
)  # fmt: skip

_BY_ID = {p.id: p for p in PRODUCTS}


def get(product_id: int) -> Product | None:
    """The product with this id, or None."""
    return _BY_ID.get(product_id)


def item(product: Product, base_url: str, quantity: int = 1) -> Item:
    """The plugin's :class:`Item` for a product, with URLs under ``base_url`` (the shop's root)."""
    root = base_url.rstrip("/")
    return Item(
        name=product.name,
        price=product.price,
        url=f"{root}/p/{product.id}",
        imageurl=f"{root}/img/{product.id}.svg",
        brand=product.brand,
        quantity=quantity,
        sku=f"SKU-{product.id:04d}",
        tags=dict(product.tags),
    )


def svg(product: Product, size: int = 240) -> str:
    """A simple square picture: a coloured tile, a bottle-ish shape and the initials."""
    s = size
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{s}" height="{s}" '
        f'viewBox="0 0 240 240" role="img" aria-label="{escape(product.name)}">'
        f'<rect width="240" height="240" rx="18" fill="{escape(product.color)}"/>'
        '<rect x="88" y="46" width="64" height="22" rx="6" fill="#ffffff" opacity=".75"/>'
        '<rect x="70" y="66" width="100" height="130" rx="22" fill="#ffffff" opacity=".9"/>'
        '<text x="120" y="146" font-family="Georgia, serif" font-size="40" text-anchor="middle" '
        f'fill="#33404d">{escape(product.initials)}</text>'
        '<text x="120" y="222" font-family="system-ui, sans-serif" font-size="15" '
        f'text-anchor="middle" fill="#33404d">{escape(product.brand)}</text>'
        "</svg>"
    )

"""shop-events: shop activity → abandoned carts, orders and contacts → Generate event API calls."""

from __future__ import annotations

__version__ = "0.1.0"

from plugin.config import ConfigError, Settings
from plugin.items import Item
from plugin.orm import CaptureModels, CartMapping, CustomerMapping, OrderMapping
from plugin.tracker import StorageError, Tracker
from plugin.validation import ValidationError

__all__ = [
    "CaptureModels",
    "CartMapping",
    "ConfigError",
    "CustomerMapping",
    "Item",
    "OrderMapping",
    "Settings",
    "ShopEvents",
    "StorageError",
    "Tracker",
    "ValidationError",
    "__version__",
]


def __getattr__(name: str) -> object:
    # ShopEvents imports Flask; only Flask shops pay for that import.
    if name == "ShopEvents":
        from plugin.flask_ext import ShopEvents

        return ShopEvents
    raise AttributeError(f"module 'plugin' has no attribute {name!r}")

"""shop-events: shop activity → abandoned carts, orders and contacts → Generate event API calls.

The one import line a shop writes::

    from shop_events import ShopEvents, capture_models, CartMapping, OrderMapping, \
        CustomerMapping, Item, Tracker, Settings, ValidationError

``ShopEvents`` and ``capture_models`` import Flask, so they load on first use: ``import
shop_events`` alone never imports Flask.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .config import Settings
from .errors import ConfigError, StorageError, ValidationError
from .integrations.models import CaptureModels, CartMapping, CustomerMapping, OrderMapping
from .payload.items import Item
from .tracker import Tracker
from .version import __version__

if TYPE_CHECKING:
    from .integrations.flask import ShopEvents, capture_models

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
    "capture_models",
]

_FLASK_NAMES = frozenset({"ShopEvents", "capture_models"})


def __getattr__(name: str) -> Any:
    # Only Flask shops pay for importing Flask.
    if name in _FLASK_NAMES:
        from .integrations import flask

        return getattr(flask, name)
    raise AttributeError(f"module 'shop_events' has no attribute {name!r}")

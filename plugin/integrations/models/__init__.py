"""Capture from the host's own SQLAlchemy models: the mappings and the session listeners."""

from .listeners import CaptureModels
from .mappings import CartMapping, CustomerMapping, OrderMapping

__all__ = ["CaptureModels", "CartMapping", "CustomerMapping", "OrderMapping"]

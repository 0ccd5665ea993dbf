"""Capture from the host's own SQLAlchemy models: mappings and the session listeners."""

from .capture import CaptureModels, CartMapping, CustomerMapping, OrderMapping

__all__ = ["CaptureModels", "CartMapping", "CustomerMapping", "OrderMapping"]

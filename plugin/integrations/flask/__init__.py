"""The Flask integration: extension, tracking endpoint, operator pages, CLI group."""

from .extension import ShopEvents, capture_models, tracker_for

__all__ = ["ShopEvents", "capture_models", "tracker_for"]

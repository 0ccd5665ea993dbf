"""The three errors a shop may see from the plugin, each naming what is wrong."""

from __future__ import annotations


class ValidationError(ValueError):
    """Input the platform would refuse (or silently ignore); names the field and the rule."""

    def __init__(self, field: str, rule: str) -> None:
        super().__init__(f"{field}: {rule}")
        self.field = field
        self.rule = rule


class ConfigError(ValueError):
    """A setting is unknown or has a bad value; the message names the key."""


class StorageError(RuntimeError):
    """The plugin could not write a captured event; the message says which and why."""

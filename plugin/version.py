"""The installed distribution's version, read once from its metadata."""

from __future__ import annotations

from importlib import metadata

try:
    __version__ = metadata.version("shop-events")
except metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

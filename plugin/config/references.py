"""Settings that name a function of the shop's code as ``module:function``."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from ..errors import ConfigError


def import_callable(path: str, key: str) -> Callable[..., Any]:
    """The callable ``path`` (``module:function``, the function may be dotted) names.

    A module or name that cannot be imported, or is not callable, is a :class:`ConfigError`
    naming ``key``, the setting that holds ``path``.
    """
    module, _, name = path.partition(":")
    try:
        found: Any = importlib.import_module(module)
        for part in name.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"{key}: cannot import {path!r}: {exc}") from None
    if not callable(found):
        raise ConfigError(f"{key}: {path!r} is not callable")
    return found  # type: ignore[no-any-return]

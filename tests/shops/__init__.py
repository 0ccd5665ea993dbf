"""Test shops written the way shops are found, each a small package with its own models, app
factory, migrations and test suite, and the plugin installed by the README's steps."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator


@contextlib.contextmanager
def logging_restored() -> Iterator[None]:
    """A Flask-Migrate ``env.py`` runs ``logging.config.fileConfig``, which disables every
    logger it does not name (the plugin's among them): put them back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    loggers = {
        name: (logger.disabled, logger.level)
        for name, logger in logging.Logger.manager.loggerDict.items()
        if isinstance(logger, logging.Logger)
    }
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        for name, logger in logging.Logger.manager.loggerDict.items():
            if isinstance(logger, logging.Logger):
                logger.disabled, logger.level = loggers.get(name, (False, logging.NOTSET))

"""Settings: one object built from defaults, a TOML file, the environment and Flask config.

Every setting lives in a section (``[api]``, ``[abandoned_cart]`` …). The same setting can be
given as ``SHOP_EVENTS_<SECTION>_<KEY>`` in the environment or in a Flask app's config, e.g.
``SHOP_EVENTS_API_KEY`` or ``SHOP_EVENTS_ABANDONED_CART_AFTER``. Unknown keys and bad values
raise :class:`ConfigError` naming the key.

- :mod:`.sections`: one frozen dataclass per section, each with its own ``check``;
- :mod:`.settings`: :class:`Settings`, all sections together and the rules across them;
- :mod:`.loading`: the generic TOML / environment / Flask-config loader;
- :mod:`.durations` and :mod:`.secret`: the two value types a settings file adds, and URLs
  with their password masked for messages.
"""

from __future__ import annotations

from ..errors import ConfigError
from .durations import format_duration, parse_duration
from .loading import CONFIG_PATH_ENV, ENV_PREFIX
from .secret import Secret, mask_url, scrub
from .sections import (
    DEFAULT_BOT_AGENTS,
    FIELD_TYPES,
    AbandonedBrowseSettings,
    AbandonedCartSettings,
    ApiSettings,
    BackfillSettings,
    BotsSettings,
    ConsentSettings,
    ContactsSettings,
    DatabaseSettings,
    DeliverySettings,
    EventsSettings,
    FlowSettings,
    ItemsSettings,
    OrdersSettings,
    PrivacySettings,
    RecoverySettings,
    RetentionSettings,
    SchedulerSettings,
    UnfinishedRegistrationSettings,
    WebSettings,
)
from .settings import Settings

__all__ = [
    "CONFIG_PATH_ENV",
    "DEFAULT_BOT_AGENTS",
    "ENV_PREFIX",
    "FIELD_TYPES",
    "AbandonedBrowseSettings",
    "AbandonedCartSettings",
    "ApiSettings",
    "BackfillSettings",
    "BotsSettings",
    "ConfigError",
    "ConsentSettings",
    "ContactsSettings",
    "DatabaseSettings",
    "DeliverySettings",
    "EventsSettings",
    "FlowSettings",
    "ItemsSettings",
    "OrdersSettings",
    "PrivacySettings",
    "RecoverySettings",
    "RetentionSettings",
    "SchedulerSettings",
    "Secret",
    "Settings",
    "UnfinishedRegistrationSettings",
    "WebSettings",
    "format_duration",
    "mask_url",
    "parse_duration",
    "scrub",
]

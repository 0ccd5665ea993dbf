"""``Settings``: every section in one frozen object, and the rules that span sections."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .durations import format_duration
from .loading import build, flat_keys, read_toml
from .sections import (
    AbandonedBrowseSettings,
    AbandonedCartSettings,
    AlertsSettings,
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
    Section,
    UnfinishedRegistrationSettings,
    WebSettings,
)


@dataclasses.dataclass(frozen=True)
class Settings(Section):
    """Every setting of the plugin, one frozen object; see ``config.example.toml``."""

    api: ApiSettings = dataclasses.field(default_factory=ApiSettings)
    database: DatabaseSettings = dataclasses.field(default_factory=DatabaseSettings)
    scheduler: SchedulerSettings = dataclasses.field(default_factory=SchedulerSettings)
    delivery: DeliverySettings = dataclasses.field(default_factory=DeliverySettings)
    abandoned_cart: AbandonedCartSettings = dataclasses.field(default_factory=AbandonedCartSettings)
    abandoned_browse: AbandonedBrowseSettings = dataclasses.field(
        default_factory=AbandonedBrowseSettings
    )
    unfinished_registration: UnfinishedRegistrationSettings = dataclasses.field(
        default_factory=UnfinishedRegistrationSettings
    )
    orders: OrdersSettings = dataclasses.field(default_factory=OrdersSettings)
    events: EventsSettings = dataclasses.field(default_factory=EventsSettings)
    contacts: ContactsSettings = dataclasses.field(default_factory=ContactsSettings)
    bots: BotsSettings = dataclasses.field(default_factory=BotsSettings)
    consent: ConsentSettings = dataclasses.field(default_factory=ConsentSettings)
    privacy: PrivacySettings = dataclasses.field(default_factory=PrivacySettings)
    retention: RetentionSettings = dataclasses.field(default_factory=RetentionSettings)
    alerts: AlertsSettings = dataclasses.field(default_factory=AlertsSettings)
    items: ItemsSettings = dataclasses.field(default_factory=ItemsSettings)
    web: WebSettings = dataclasses.field(default_factory=WebSettings)
    recovery: RecoverySettings = dataclasses.field(default_factory=RecoverySettings)
    backfill: BackfillSettings = dataclasses.field(default_factory=BackfillSettings)

    @classmethod
    def from_file(
        cls, path: str | os.PathLike[str], env: Mapping[str, str] | None = None
    ) -> Settings:
        """Read a TOML file, then apply ``SHOP_EVENTS_*`` environment variables."""
        file = Path(path)
        data = read_toml(file)
        return cls.load(data, env=os.environ if env is None else env, base_dir=file.parent)

    @classmethod
    def load(
        cls,
        data: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
        base_dir: Path | None = None,
    ) -> Settings:
        """Build settings from nested ``data`` (as in the TOML file) and flat ``env`` keys.

        ``env`` holds ``SHOP_EVENTS_<SECTION>_<KEY>`` names (the environment, or a Flask
        config); they win over ``data``. A relative SQLite path is taken relative to
        ``base_dir`` (the config file's folder).
        """
        settings = build(cls, data or {}, "").with_keys(env or {})
        return settings._resolved(base_dir)

    def with_keys(self, keys: Mapping[str, Any]) -> Settings:
        """A copy with ``SHOP_EVENTS_<SECTION>_<KEY>`` names (environment, Flask config) applied."""
        changed: dict[str, dict[str, Any]] = {}
        for section, key, value in flat_keys(Settings, keys):
            changed.setdefault(section, {})[key] = value
        return self.override(**changed) if changed else self

    def override(self, **sections: Mapping[str, Any]) -> Settings:
        """A copy with some settings changed: ``s.override(api={"key": "k"})``."""
        # only what was set, so that a key excluding another is not taken as written with it
        data: dict[str, dict[str, Any]] = {
            f.name: getattr(self, f.name).written() for f in dataclasses.fields(self)
        }
        for section, values in sections.items():
            if section not in data:
                raise ConfigError(f"{section}: unknown section")
            data[section].update(values)
        return build(Settings, data, "")

    def check(self, path: str) -> None:
        """Rules across sections: a delivery lease outlasts two slow requests; retention keeps
        a reminded cart (browse, registration) until its last step."""
        request_time = self.api.timeout + self.api.connect_timeout
        if self.delivery.lease <= request_time * 2:
            raise ConfigError(
                "delivery.lease: must be longer than twice api.timeout + api.connect_timeout "
                f"({format_duration(request_time * 2)}), or a slow send loses its lease"
            )
        kept = timedelta(days=self.retention.days)
        for name in ("abandoned_cart", "abandoned_browse", "unfinished_registration"):
            flow: FlowSettings = getattr(self, name)
            if flow.steps and flow.steps[-1] >= kept:
                raise ConfigError(
                    f"{name}.steps: the last step ({format_duration(flow.steps[-1])}) must come "
                    f"before retention.days ({self.retention.days}) deletes the "
                    f"{name.split('_')[-1]} it is about"
                )

    def _resolved(self, base_dir: Path | None) -> Settings:
        if base_dir is None:
            return self
        database = self.database.resolved(base_dir)
        if database is self.database:
            return self
        return dataclasses.replace(self, database=database)

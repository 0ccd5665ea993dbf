"""Settings: one object built from defaults, a TOML file, the environment and Flask config.

Every setting lives in a section (``[api]``, ``[abandoned_cart]`` …). The same setting can be
given as ``SHOP_EVENTS_<SECTION>_<KEY>`` in the environment or in a Flask app's config, e.g.
``SHOP_EVENTS_API_KEY`` or ``SHOP_EVENTS_ABANDONED_CART_AFTER``. Unknown keys and bad values
raise :class:`ConfigError` naming the key.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal, get_args, get_origin
from urllib.parse import urlsplit

from ..errors import ConfigError, ValidationError
from ..payload.validation import check_event_type_key

ENV_PREFIX = "SHOP_EVENTS_"
CONFIG_PATH_ENV = "SHOP_EVENTS_CONFIG"


class Secret:
    """A string that never shows itself in ``repr``, ``str``, logs or exceptions."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """Return the secret text, for the one place that must send it."""
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return "Secret('********')" if self._value else "Secret('')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: object) -> timedelta:
    """Parse ``"45m"``, ``"1h30m"``, ``"500ms"``, ``"2d"`` or a number of seconds."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool):
        raise ValueError("must be a duration such as '45m', '1h' or a number of seconds")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        if re.fullmatch(r"\d+(?:\.\d+)?", text):
            seconds = float(text)
        elif text and _DURATION_PART.sub("", text) == "":
            seconds = sum(float(n) * _UNITS[u] for n, u in _DURATION_PART.findall(text))
        else:
            raise ValueError(f"{value!r} is not a duration; write e.g. '90s', '45m', '1h', '2d'")
    else:
        raise ValueError("must be a duration such as '45m', '1h' or a number of seconds")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return timedelta(seconds=seconds)


def format_duration(value: timedelta) -> str:
    """Render a duration the way the settings file writes it (``"1h"``, ``"90s"``)."""
    seconds = value.total_seconds()
    for unit in ("w", "d", "h", "m", "s"):
        size = _UNITS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


@dataclasses.dataclass(frozen=True)
class ApiSettings:
    """``[api]``: where and how events are sent."""

    base_url: str = "https://esputnik.com/api"
    version: Literal["v1", "v2"] = "v1"
    key: Secret = dataclasses.field(default_factory=lambda: Secret(""))
    username: str = "shop-events"
    timeout: timedelta = timedelta(seconds=10)
    connect_timeout: timedelta = timedelta(seconds=5)
    rate_limit: float = 350.0
    max_event_bytes: int = 20_000

    def endpoint(self, path: str) -> str:
        """Full URL of an API path such as ``"v1/event"``."""
        return f"{self.base_url.rstrip('/')}/{path.lstrip('/')}"

    @property
    def event_path(self) -> str:
        """The Generate event path for the configured version."""
        return f"{self.version}/event"


@dataclasses.dataclass(frozen=True)
class DatabaseSettings:
    """``[database]``: where the plugin keeps its tables."""

    url: str = "sqlite:///shop_events.db"
    echo: bool = False


@dataclasses.dataclass(frozen=True)
class SchedulerSettings:
    """``[scheduler]``: the in-process jobs."""

    enabled: bool = True
    scan_interval: timedelta = timedelta(minutes=1)
    dispatch_interval: timedelta = timedelta(seconds=5)


@dataclasses.dataclass(frozen=True)
class DeliverySettings:
    """``[delivery]``: claiming, retrying and giving up."""

    batch_size: int = 100
    threads: int = 4
    lease: timedelta = timedelta(minutes=2)
    backoff_base: timedelta = timedelta(seconds=30)
    backoff_max: timedelta = timedelta(hours=1)
    max_attempts: int = 25
    give_up_after: timedelta = timedelta(hours=48)
    auth_pause: timedelta = timedelta(minutes=5)


@dataclasses.dataclass(frozen=True)
class FlowSettings:
    """What the abandonment flows share: when, which event, how often per contact."""

    enabled: bool = True
    after: timedelta = timedelta(hours=1)
    event_type_key: str = ""
    contact_interval: timedelta = timedelta(hours=24)
    scan_batch: int = 500
    marketing: bool = True
    """Marketing flows skip contacts who opted out; transactional ones do not."""


@dataclasses.dataclass(frozen=True)
class AbandonedCartSettings(FlowSettings):
    """``[abandoned_cart]``: when an idle cart becomes an ``abandoned_cart`` event."""

    event_type_key: str = "abandoned_cart"


@dataclasses.dataclass(frozen=True)
class AbandonedBrowseSettings(FlowSettings):
    """``[abandoned_browse]``: products viewed, then neither carted nor ordered."""

    event_type_key: str = "abandoned_browse"
    max_items: int = 10


@dataclasses.dataclass(frozen=True)
class UnfinishedRegistrationSettings(FlowSettings):
    """``[unfinished_registration]``: a sign-up started and not completed."""

    after: timedelta = timedelta(hours=24)
    event_type_key: str = "unfinished_registration"


def _default_status_events() -> dict[str, str]:
    return {"DELIVERED": "orderDelivered", "CANCELLED": "orderCancelled"}


@dataclasses.dataclass(frozen=True)
class OrdersSettings:
    """``[orders]``: the events an order raises, and the optional Orders API."""

    event_type_key: str = "orderCreated"
    updated_event_type_key: str = "orderUpdated"
    status_events: dict[str, str] = dataclasses.field(default_factory=_default_status_events)
    """Order status → event type key; other statuses raise ``updated_event_type_key``."""
    api: bool = False
    """Also send orders to the Orders API (``{base_url}/v1/orders``), batched."""
    api_batch: int = 1000


@dataclasses.dataclass(frozen=True)
class EventsSettings:
    """``[events]``: keys of the immediate events (transactional: sent even after opt-out)."""

    login: str = "login"
    password_change: str = "password_change"
    password_reset: str = "password_reset"
    create_contact: str = "create_contact"
    update_contact: str = "update_contact"


@dataclasses.dataclass(frozen=True)
class ContactsSettings:
    """``[contacts]``: the checks on contact data, which the platform drops silently if wrong."""

    name_max: int = 40
    default_region: str = ""
    """Region for phone numbers written without ``+`` (e.g. ``"UA"``); empty: ``+`` required."""
    fields: dict[str, str] = dataclasses.field(default_factory=dict)
    """Additional contact field id → ``date``, ``number``, ``text`` or ``bool``."""


DEFAULT_BOT_AGENTS = (
    "bot",
    "spider",
    "crawl",
    "slurp",
    "headless",
    "phantomjs",
    "selenium",
    "puppeteer",
    "playwright",
    "lighthouse",
    "pagespeed",
    "python-requests",
    "curl/",
    "wget/",
    "facebookexternalhit",
    "mediapartners-google",
    "adsbot",
    "google-inspectiontool",
    "storebot-google",
    "bingpreview",
    "yandex",
    "baiduspider",
    "semrush",
    "ahrefs",
)


@dataclasses.dataclass(frozen=True)
class BotsSettings:
    """``[bots]``: traffic that creates nothing."""

    enabled: bool = True
    user_agents: tuple[str, ...] = DEFAULT_BOT_AGENTS
    """Case-insensitive substrings of a User-Agent that mark a bot."""
    emails: tuple[str, ...] = ()
    """Glob patterns of addresses that crawlers and test orders use (``*@merchant-test.*``)."""


@dataclasses.dataclass(frozen=True)
class RetentionSettings:
    """``[retention]``: how long finished activity and sent events are kept."""

    days: int = 30
    interval: timedelta = timedelta(hours=1)
    batch: int = 1000


@dataclasses.dataclass(frozen=True)
class ItemsSettings:
    """``[items]``: the field names of one product in the ``items`` param (case is kept)."""

    param: str = "items"
    dropped_param: str = "items_dropped"
    name: str = "name"
    price: str = "price"
    url: str = "url"
    imageurl: str = "imageurl"
    brand: str = "brand"
    quantity: str = "quantity"
    sku: str = "sku"
    tag_prefix: str = "tags_"


@dataclasses.dataclass(frozen=True)
class WebSettings:
    """``[web]``: browser tracking (``POST /shop-events/track``) and the operator pages (Flask)."""

    track: bool = True
    """Serve ``POST /shop-events/track`` and ``/shop-events/static/shop-events.js``."""
    allowed_origins: tuple[str, ...] = ()
    """Origins besides the request's own host that may post (``https://www.shop.example``)."""
    token: Secret = dataclasses.field(default_factory=lambda: Secret(""))
    """When set, requests carrying ``X-Shop-Events-Token: <token>`` skip the origin check."""
    max_body_bytes: int = 4096
    rate_limit: float = 2.0
    """Sustained requests per second per client address."""
    rate_burst: int = 20
    """Requests a client address may make at once before the rate limit applies."""
    identify: bool = True
    """Accept ``shopEvents.identify(email)`` from the browser."""
    item_hosts: tuple[str, ...] = ()
    """Hosts (globs) besides the shop's own that product ``url``/``imageurl`` may point at."""
    cookie_name: str = "se_vid"
    cookie_max_age: timedelta = timedelta(days=365)
    admin_access: str = ""
    """``module:function`` returning True when the current request may see the operator pages;
    empty: the pages are off (404) unless ``ShopEvents(app, admin_access=...)`` is given."""
    admin_page_size: int = 50


@dataclasses.dataclass(frozen=True)
class Settings:
    """Every setting of the plugin, one frozen object; see ``config.example.toml``."""

    api: ApiSettings = ApiSettings()
    database: DatabaseSettings = DatabaseSettings()
    scheduler: SchedulerSettings = SchedulerSettings()
    delivery: DeliverySettings = DeliverySettings()
    abandoned_cart: AbandonedCartSettings = AbandonedCartSettings()
    abandoned_browse: AbandonedBrowseSettings = AbandonedBrowseSettings()
    unfinished_registration: UnfinishedRegistrationSettings = UnfinishedRegistrationSettings()
    orders: OrdersSettings = dataclasses.field(default_factory=OrdersSettings)
    events: EventsSettings = EventsSettings()
    contacts: ContactsSettings = dataclasses.field(default_factory=ContactsSettings)
    bots: BotsSettings = BotsSettings()
    retention: RetentionSettings = RetentionSettings()
    items: ItemsSettings = ItemsSettings()
    web: WebSettings = WebSettings()

    @classmethod
    def from_file(
        cls, path: str | os.PathLike[str], env: Mapping[str, str] | None = None
    ) -> Settings:
        """Read a TOML file, then apply ``SHOP_EVENTS_*`` environment variables."""
        file = Path(path)
        try:
            data = tomllib.loads(file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {file} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {file}: {exc}") from None
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
        settings: Settings = _build(cls, data or {}, "").with_keys(env or {})
        return settings._resolved(base_dir)

    def with_keys(self, keys: Mapping[str, Any]) -> Settings:
        """A copy with ``SHOP_EVENTS_<SECTION>_<KEY>`` names (environment, Flask config) applied."""
        changed: dict[str, dict[str, Any]] = {}
        for section, key, value in _flat_keys(keys):
            changed.setdefault(section, {})[key] = value
        return self.override(**changed) if changed else self

    def override(self, **sections: Mapping[str, Any]) -> Settings:
        """A copy with some settings changed: ``s.override(api={"key": "k"})``."""
        data: dict[str, dict[str, Any]] = {
            f.name: {
                g.name: getattr(getattr(self, f.name), g.name)
                for g in dataclasses.fields(getattr(self, f.name))
            }
            for f in dataclasses.fields(self)
        }
        for section, values in sections.items():
            if section not in data:
                raise ConfigError(f"{section}: unknown section")
            data[section].update(values)
        built: Settings = _build(Settings, data, "")
        return built

    def _resolved(self, base_dir: Path | None) -> Settings:
        url = self.database.url
        prefix = "sqlite:///"
        if base_dir is not None and url.startswith(prefix):
            path = url[len(prefix) :]
            if path and path != ":memory:" and not Path(path).is_absolute():
                url = prefix + str((base_dir / path).resolve())
                return dataclasses.replace(
                    self, database=dataclasses.replace(self.database, url=url)
                )
        return self


def _flat_keys(env: Mapping[str, Any]) -> list[tuple[str, str, Any]]:
    """Split ``SHOP_EVENTS_ABANDONED_CART_AFTER`` into ``("abandoned_cart", "after", value)``."""
    sections = sorted((f.name for f in dataclasses.fields(Settings)), key=len, reverse=True)
    found = []
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or name == CONFIG_PATH_ENV:
            continue
        rest = name[len(ENV_PREFIX) :].lower()
        for section in sections:
            if rest.startswith(section + "_"):
                found.append((section, rest[len(section) + 1 :], value))
                break
        else:
            raise ConfigError(f"{name}: unknown setting (no section matches)")
    return found


def _build(cls: type[Any], data: Mapping[str, Any], path: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            raise ConfigError(f"{path}{key}: unknown setting")
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        if field.name not in data:
            continue
        key = f"{path}{field.name}"
        hint = hints[field.name]
        if dataclasses.is_dataclass(hint):
            raw = data[field.name]
            if not isinstance(raw, Mapping):
                raise ConfigError(f"{key}: must be a table of settings")
            values[field.name] = _build(typing.cast(type, hint), raw, f"{key}.")
        else:
            try:
                values[field.name] = _coerce(hint, data[field.name])
            except ValueError as exc:
                raise ConfigError(f"{key}: {exc}") from None
    built = cls(**values)
    _check(built, path)
    return built


def _coerce(hint: Any, raw: Any) -> Any:
    if get_origin(hint) is dict:
        if not isinstance(raw, Mapping):
            raise ValueError("must be a table of names to text, like [section.name]")
        return {str(k): _coerce(str, v) for k, v in raw.items()}
    if get_origin(hint) is tuple:
        if isinstance(raw, str):  # from the environment: comma-separated
            raw = [part.strip() for part in raw.split(",") if part.strip()]
        if not isinstance(raw, list | tuple):
            raise ValueError("must be a list of strings")
        return tuple(_coerce(str, v) for v in raw)
    if hint is timedelta:
        return parse_duration(raw)
    if hint is Secret:
        if isinstance(raw, Secret):
            return raw
        if not isinstance(raw, str):
            raise ValueError("must be a string")
        return Secret(raw.strip())
    if hint is bool:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.strip().lower() in {"1", "true", "yes", "on"}:
            return True
        if isinstance(raw, str) and raw.strip().lower() in {"0", "false", "no", "off"}:
            return False
        raise ValueError(f"{raw!r} is not a boolean (true or false)")
    if hint is int or hint is float:
        if isinstance(raw, bool):
            raise ValueError(f"{raw!r} is not a number")
        try:
            number = hint(raw)
        except (TypeError, ValueError):
            raise ValueError(
                f"{raw!r} is not a{'n integer' if hint is int else ' number'}"
            ) from None
        if number < 0:
            raise ValueError("must not be negative")
        return number
    if hint is str:
        if not isinstance(raw, str):
            raise ValueError(f"{raw!r} is not a string")
        return raw
    if get_origin(hint) is Literal:
        choices = get_args(hint)
        if raw not in choices:
            raise ValueError(f"{raw!r} is not one of {', '.join(map(repr, choices))}")
        return raw
    if isinstance(hint, types.UnionType):  # pragma: no cover - no such settings yet
        raise ValueError("unsupported setting type")
    raise ValueError(f"unsupported setting type {hint!r}")  # pragma: no cover


def _check(section: Any, path: str) -> None:
    """Rules that involve one section's values; each error names its key."""
    if isinstance(section, ApiSettings):
        parts = urlsplit(section.base_url)
        authority = section.base_url.split("://", 1)[-1].split("/", 1)[0]
        if "@" in authority:  # checked first: the URL is echoed below
            raise ConfigError(f"{path}base_url: must not hold credentials; set {path}key instead")
        if parts.scheme not in {"http", "https"} or not parts.netloc:
            raise ConfigError(f"{path}base_url: must be an http(s) URL, got {section.base_url!r}")
        if section.rate_limit <= 0:
            raise ConfigError(f"{path}rate_limit: must be greater than 0 requests per second")
        if section.max_event_bytes < 1024:
            raise ConfigError(f"{path}max_event_bytes: must be at least 1024")
    elif isinstance(section, DeliverySettings):
        if section.batch_size < 1 or section.threads < 1:
            raise ConfigError(f"{path}batch_size, {path}threads: must be at least 1")
        if section.max_attempts < 1:
            raise ConfigError(f"{path}max_attempts: must be at least 1")
        if section.lease < timedelta(seconds=5):
            raise ConfigError(f"{path}lease: must be at least 5s")
    elif isinstance(section, SchedulerSettings):
        for name in ("scan_interval", "dispatch_interval"):
            if getattr(section, name) <= timedelta(0):
                raise ConfigError(f"{path}{name}: must be longer than 0s")
    elif isinstance(section, ContactsSettings):
        _check_contacts(section, path)
    elif isinstance(section, WebSettings):
        _check_web(section, path)
    elif isinstance(section, Settings):
        request_time = section.api.timeout + section.api.connect_timeout
        if section.delivery.lease <= request_time * 2:
            raise ConfigError(
                "delivery.lease: must be longer than twice api.timeout + api.connect_timeout "
                f"({format_duration(request_time * 2)}), or a slow send loses its lease"
            )
    for name, value in _event_type_keys(section).items():
        try:
            check_event_type_key(value)
        except ValidationError as exc:
            raise ConfigError(f"{path}{name}: {exc.rule}") from None


def _event_type_keys(section: Any) -> dict[str, str]:
    """The event type keys a section names, by setting name."""
    if isinstance(section, FlowSettings):
        return {"event_type_key": section.event_type_key}
    if isinstance(section, OrdersSettings):
        return {
            "event_type_key": section.event_type_key,
            "updated_event_type_key": section.updated_event_type_key,
            **{f"status_events.{k}": v for k, v in section.status_events.items()},
        }
    if isinstance(section, EventsSettings):
        return dataclasses.asdict(section)
    return {}


FIELD_TYPES = ("date", "number", "text", "bool")


def _check_contacts(section: ContactsSettings, path: str) -> None:
    import phonenumbers

    if section.default_region and section.default_region not in phonenumbers.SUPPORTED_REGIONS:
        raise ConfigError(
            f"{path}default_region: {section.default_region!r} is not a region code such as 'UA'"
        )
    for field_id, kind in section.fields.items():
        if not field_id.isdigit():
            raise ConfigError(f"{path}fields.{field_id}: a field id is a number, like 10001")
        if kind not in FIELD_TYPES:
            raise ConfigError(
                f"{path}fields.{field_id}: {kind!r} is not one of {', '.join(FIELD_TYPES)}"
            )
    if section.name_max < 1:
        raise ConfigError(f"{path}name_max: must be at least 1")


_COOKIE_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_ADMIN_ACCESS = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")


def _check_web(section: WebSettings, path: str) -> None:
    for origin in section.allowed_origins:
        parts = urlsplit(origin)
        if parts.scheme not in {"http", "https"} or not parts.netloc or parts.path not in ("", "/"):
            raise ConfigError(
                f"{path}allowed_origins: {origin!r} is not an origin like 'https://shop.example'"
            )
    if section.max_body_bytes < 256:
        raise ConfigError(f"{path}max_body_bytes: must be at least 256")
    if section.rate_limit <= 0:
        raise ConfigError(f"{path}rate_limit: must be greater than 0 requests per second")
    if section.rate_burst < 1:
        raise ConfigError(f"{path}rate_burst: must be at least 1")
    if not _COOKIE_NAME.fullmatch(section.cookie_name):
        raise ConfigError(f"{path}cookie_name: letters, digits, '_' and '-' only, at most 64")
    if section.cookie_max_age <= timedelta(0):
        raise ConfigError(f"{path}cookie_max_age: must be longer than 0s")
    if section.admin_access and not _ADMIN_ACCESS.fullmatch(section.admin_access):
        raise ConfigError(f"{path}admin_access: {section.admin_access!r} is not 'module:function'")
    if section.admin_page_size < 1:
        raise ConfigError(f"{path}admin_page_size: must be at least 1")

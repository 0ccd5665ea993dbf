"""One frozen dataclass per settings section (``[api]``, ``[delivery]`` …), each with its rules.

A section's fields are its keys, with their types and defaults; its ``check`` method holds the
rules that the types alone do not say and raises :class:`ConfigError` naming the key.
"""

from __future__ import annotations

import dataclasses
import re
import zoneinfo
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

import ada_url

from ..errors import ConfigError, ValidationError
from ..payload.past_events import PAST_EVENTS_MAX
from ..payload.validation import check_event_type_key
from .secret import Secret, mask_url


class Section:
    """What every section shares: ``check``, run by the loader once the values are typed."""

    def check(self, path: str) -> None:
        """Raise :class:`ConfigError` naming the first key (prefixed by ``path``) that is wrong.

        ``path`` is the section's place in the file followed by a dot (``"api."``). A section
        without rules beyond its field types keeps this default, which accepts everything.
        """

    def check_given(self, path: str, given: frozenset[str]) -> None:
        """Raise :class:`ConfigError` when keys written together (``given``) exclude each other.

        Only the keys written count (a default is never in ``given``); the default accepts any.
        """

    def written(self) -> dict[str, object]:
        """The fields whose values differ from their defaults, by name: what was set."""
        changed: dict[str, object] = {}
        for field in dataclasses.fields(self):  # type: ignore[arg-type]
            if field.default is not dataclasses.MISSING:
                default = field.default
            elif field.default_factory is not dataclasses.MISSING:
                default = field.default_factory()
            else:
                default = dataclasses.MISSING
            value = getattr(self, field.name)
            if value != default:
                changed[field.name] = value
        return changed


def _masked_repr(section: object, masked: Mapping[str, str]) -> str:
    """The dataclass ``repr`` of ``section`` with some fields' text replaced (no password)."""
    fields = (
        f"{f.name}={masked[f.name] if f.name in masked else repr(getattr(section, f.name))}"
        for f in dataclasses.fields(section)  # type: ignore[arg-type]
        if f.repr
    )
    return f"{type(section).__qualname__}({', '.join(fields)})"


def _header_problem(text: str) -> str | None:
    """Why ``text`` cannot travel in an HTTP header (Latin-1 only, no control character), naming
    the character by position and code point, never quoting the text; None when it can."""
    for position, char in enumerate(text, 1):
        code = ord(char)
        if code > 0xFF or code < 0x20 or 0x7F <= code <= 0x9F:
            kind = "a control character" if code <= 0x9F else "not Latin-1"
            return (
                "must hold only characters an HTTP header can carry (Latin-1, no control "
                f"characters); character {position} is U+{code:04X} ({kind}): was it pasted "
                "with an invisible character?"
            )
    return None


def _check_event_type_keys(path: str, keys: Mapping[str, str]) -> None:
    """Each event type key must be one the platform accepts; the error names its setting."""
    for name, value in keys.items():
        try:
            check_event_type_key(value)
        except ValidationError as exc:
            raise ConfigError(f"{path}{name}: {exc.rule}") from None


_API_PATH = re.compile(r"[A-Za-z0-9._~/-]+")


@dataclasses.dataclass(frozen=True)
class ApiSettings(Section):
    """``[api]``: where and how events are sent."""

    base_url: str = "https://esputnik.com/api"
    version: Literal["v1", "v2"] = "v1"
    key: Secret = dataclasses.field(default_factory=lambda: Secret(""))
    username: str = "shop-events"
    timeout: timedelta = timedelta(seconds=10)
    """Longest wait for each read of an answer; a whole request, from connecting to the
    answer's end, may take at most ``connect_timeout + timeout``."""
    connect_timeout: timedelta = timedelta(seconds=5)
    rate_limit: float = 350.0
    """Generate event requests per second, for the whole account: every process and host on
    one database together (the platform's limit for ``event``)."""
    orders_rate_limit: float = 200.0
    """Orders, contacts and every other method together, per second, for the whole account."""
    past_events_rate_limit: float = 100.0
    """Past events requests per second, for the whole account."""
    max_event_bytes: int = 20_000
    key_check_path: str = "v1/account/info"
    """``GET`` here checks the key without sending an event, after a 401/403: a good key
    means the platform refused that one event. Empty: no check; the next event probes."""

    def endpoint(self, path: str) -> str:
        """Full URL of an API path such as ``"v1/event"``."""
        return f"{self.base_url.rstrip('/')}/{path.lstrip('/')}"

    @property
    def event_path(self) -> str:
        """The Generate event path for the configured version."""
        return f"{self.version}/event"

    @property
    def past_events_path(self) -> str:
        """The past events path for the configured version (backfill)."""
        return f"{self.version}/past_events"

    def __repr__(self) -> str:
        return _masked_repr(self, {"base_url": repr(mask_url(self.base_url, user=False))})

    def check(self, path: str) -> None:
        """An http(s) URL without credentials, a key and user name a header can carry, a
        positive rate, room for one event. The URL is never echoed when it holds an ``@``."""
        url = self.base_url
        if "@" in url:  # anywhere: a malformed URL may hide credentials where urlsplit won't look
            raise ConfigError(
                f"{path}base_url: must not hold credentials (no '@'); set {path}key instead"
            )
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - raises ValueError for a port that is not a number
        except ValueError as exc:
            raise ConfigError(f"{path}base_url: is not a valid URL ({exc})") from None
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise ConfigError(f"{path}base_url: must be an http(s) URL, got {url[:80]!r}")
        for name, value in (("key", self.key.reveal()), ("username", self.username)):
            problem = _header_problem(value)
            if problem:
                raise ConfigError(f"{path}{name}: {problem}")
        for name in ("rate_limit", "orders_rate_limit", "past_events_rate_limit"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{path}{name}: must be greater than 0 requests per second")
        if self.max_event_bytes < 1024:
            raise ConfigError(f"{path}max_event_bytes: must be at least 1024")
        check = self.key_check_path
        if check and (not _API_PATH.fullmatch(check) or ".." in check.split("/")):
            raise ConfigError(
                f"{path}key_check_path: must be a path under base_url like 'v1/account/info', "
                f"got {check[:80]!r}"
            )


@dataclasses.dataclass(frozen=True)
class DatabaseSettings(Section):
    """``[database]``: where the plugin keeps its tables."""

    url: str = "sqlite:///shop_events.db"
    echo: bool = False
    connect_timeout: timedelta = timedelta(seconds=5)
    """PostgreSQL and MySQL: how long opening a connection may take (PostgreSQL's libpq counts
    whole seconds, at least 2)."""
    statement_timeout: timedelta = timedelta(seconds=30)
    """Longest one statement of the jobs and commands may run (PostgreSQL and MariaDB: also
    enforced by the server; MySQL: for reads, and for row lock waits in whole seconds); on
    SQLite, how long a job waits for the write lock."""
    capture_timeout: timedelta = timedelta(seconds=2)
    """Longest a capture on the plugin's own engine may hold the host's request: pool checkout,
    connecting and every statement together. It then fails with ``StorageError``."""
    write_lock_budget: timedelta = timedelta(milliseconds=50)
    """SQLite: the longest one write transaction of the scan and retention jobs should hold the
    database's write lock; their batches are sized to fit, and the job pauses between them."""

    def __repr__(self) -> str:
        return _masked_repr(self, {"url": repr(mask_url(self.url))})

    def resolved(self, base_dir: Path) -> DatabaseSettings:
        """These settings with a relative SQLite path taken relative to ``base_dir``.

        Returns ``self`` when there is nothing to resolve (another database, an absolute path,
        ``:memory:``).
        """
        prefix = "sqlite:///"
        if self.url.startswith(prefix):
            path = self.url[len(prefix) :]
            if path and path != ":memory:" and not Path(path).is_absolute():
                return dataclasses.replace(self, url=prefix + str((base_dir / path).resolve()))
        return self

    def check(self, path: str) -> None:
        """Every timeout is longer than zero; a connection may take at least 1s; a MySQL or
        MariaDB URL names PyMySQL as its driver, or none (PyMySQL is then used)."""
        for name in ("statement_timeout", "capture_timeout", "write_lock_budget"):
            if getattr(self, name) <= timedelta(0):
                raise ConfigError(f"{path}{name}: must be longer than 0s")
        if self.connect_timeout < timedelta(seconds=1):
            raise ConfigError(f"{path}connect_timeout: must be at least 1s")
        backend, _, driver = self.url.split(":", 1)[0].lower().partition("+")
        if backend in ("mysql", "mariadb") and driver not in ("", "pymysql"):
            raise ConfigError(
                f"{path}url: the MySQL driver {driver} is not supported; write"
                f" {backend}+pymysql://… (pip install 'shop-events[mysql]')"
            )


@dataclasses.dataclass(frozen=True)
class SchedulerSettings(Section):
    """``[scheduler]``: the in-process jobs."""

    enabled: bool = True
    scan_interval: timedelta = timedelta(minutes=1)
    dispatch_interval: timedelta = timedelta(seconds=5)

    def check(self, path: str) -> None:
        """Both intervals are longer than zero."""
        for name in ("scan_interval", "dispatch_interval"):
            if getattr(self, name) <= timedelta(0):
                raise ConfigError(f"{path}{name}: must be longer than 0s")


THREADS_MAX = 1024
STEPS_MAX = 10


@dataclasses.dataclass(frozen=True)
class DeliverySettings(Section):
    """``[delivery]``: claiming, retrying and giving up."""

    batch_size: int = 100
    threads: int = 128
    """The most sends one process has in progress at once. Below it the number adapts: it
    grows while events wait and the rate limit has room (a slow API needs many at once to
    reach the limit), and halves on a 429."""
    lease: timedelta = timedelta(minutes=2)
    backoff_base: timedelta = timedelta(seconds=30)
    backoff_max: timedelta = timedelta(hours=1)
    max_attempts: int = 25
    give_up_after: timedelta = timedelta(hours=48)
    auth_pause: timedelta = timedelta(minutes=5)
    circuit_failures: int = 5
    """Sends in a row with no response or a 5xx that open the shared circuit."""
    probe_interval: timedelta = timedelta(seconds=10)
    """While the circuit is open, one event probes the API this often."""

    def check(self, path: str) -> None:
        """At least one row, thread, attempt and circuit failure, at most 1024 threads; a lease
        of at least 5s; a probe interval of at least 1s.

        The lease against the API timeouts is a rule of :class:`Settings`, which sees both.
        """
        if self.batch_size < 1 or self.threads < 1:
            raise ConfigError(f"{path}batch_size, {path}threads: must be at least 1")
        if self.threads > THREADS_MAX:
            raise ConfigError(f"{path}threads: must be at most {THREADS_MAX}")
        if self.max_attempts < 1:
            raise ConfigError(f"{path}max_attempts: must be at least 1")
        if self.lease < timedelta(seconds=5):
            raise ConfigError(f"{path}lease: must be at least 5s")
        if self.circuit_failures < 2:
            raise ConfigError(
                f"{path}circuit_failures: must be at least 2 (one failure backs off alone)"
            )
        if self.probe_interval < timedelta(seconds=1):
            raise ConfigError(f"{path}probe_interval: must be at least 1s")


@dataclasses.dataclass(frozen=True)
class FlowSettings(Section):
    """What the abandonment flows share: when, which event, how often per contact."""

    enabled: bool = True
    after: timedelta = timedelta(hours=1)
    """How long idle before the one reminder (one step); see ``steps`` for several."""
    steps: tuple[timedelta, ...] = ()
    """Several reminders, each this long after the last activity (``["1h", "24h", "72h"]``);
    each is checked again when it is due and at send time, and none follows a purchase."""
    event_type_key: str = ""
    contact_interval: timedelta = timedelta(hours=24)
    """At most one sequence of reminders of this flow per contact this often (not per step)."""
    scan_batch: int = 500
    marketing: bool = True
    """Marketing flows skip contacts who opted out; transactional ones do not."""

    @property
    def delays(self) -> tuple[timedelta, ...]:
        """Each step's delay after the last activity: ``steps``, or ``after`` as the one step."""
        return self.steps or (self.after,)

    def check_given(self, path: str, given: frozenset[str]) -> None:
        """``steps`` and ``after`` say the same thing: one of them (an empty ``steps`` is none)."""
        if {"steps", "after"} <= given and self.steps:
            raise ConfigError(
                f"{path}steps, {path}after: set one of them (after = one step; "
                f'steps = several, e.g. ["1h", "24h", "72h"])'
            )

    def check(self, path: str) -> None:
        """The event type key is one the platform accepts; steps grow, from above zero."""
        _check_event_type_keys(path, {"event_type_key": self.event_type_key})
        if len(self.steps) > STEPS_MAX:
            raise ConfigError(f"{path}steps: at most {STEPS_MAX} steps")
        previous = timedelta(0)
        for number, delay in enumerate(self.delays, 1):
            if delay <= previous:
                name = "steps" if self.steps else "after"
                rule = "longer than 0s" if number == 1 else "longer than the step before it"
                raise ConfigError(f"{path}{name}: step {number} must be {rule}")
            previous = delay


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
    return {
        "DELIVERED": "orderDelivered",
        "CANCELLED": "orderCancelled",
        "CANCELED": "orderCancelled",
    }


def status_key(status: str) -> str:
    """An order status as ``status_events`` compares it: upper-case, spaces and hyphens read
    as underscores (``Canceled``, ``in transit`` → ``CANCELED``, ``IN_TRANSIT``)."""
    return "_".join(status.replace("-", " ").upper().split())


@dataclasses.dataclass(frozen=True)
class OrdersSettings(Section):
    """``[orders]``: the events an order raises, and the optional Orders API."""

    event_type_key: str = "orderCreated"
    updated_event_type_key: str = "orderUpdated"
    status_events: dict[str, str] = dataclasses.field(default_factory=_default_status_events)
    """Order status → event type key; other statuses raise ``updated_event_type_key``. Statuses
    are compared without case, spaces and hyphens read as underscores (:func:`status_key`)."""
    api: bool = False
    """Also send orders to the Orders API (``{base_url}/v1/orders``), batched."""
    api_batch: int = 1000

    def check(self, path: str) -> None:
        """Every event type key, including each status's, is one the platform accepts."""
        _check_event_type_keys(
            path,
            {
                "event_type_key": self.event_type_key,
                "updated_event_type_key": self.updated_event_type_key,
                **{f"status_events.{k}": v for k, v in self.status_events.items()},
            },
        )
        seen: dict[str, str] = {}
        for status, event_type in self.status_events.items():
            key = status_key(status)
            if not key:
                raise ConfigError(f"{path}status_events: a status must not be empty")
            if key in seen and seen[key] != event_type:
                raise ConfigError(
                    f"{path}status_events.{status}: the same status as {key!r} with another "
                    f"event type ({event_type!r}, not {seen[key]!r})"
                )
            seen[key] = event_type

    def event_for(self, status: str) -> str:
        """The event type key an order's new ``status`` raises."""
        key = status_key(status)
        for name, event_type in self.status_events.items():
            if status_key(name) == key:
                return event_type
        return self.updated_event_type_key


@dataclasses.dataclass(frozen=True)
class EventsSettings(Section):
    """``[events]``: keys of the immediate events (transactional: sent even after opt-out)."""

    login: str = "login"
    password_change: str = "password_change"
    password_reset: str = "password_reset"
    create_contact: str = "create_contact"
    update_contact: str = "update_contact"

    def check(self, path: str) -> None:
        """Every key is an event type key the platform accepts."""
        _check_event_type_keys(path, dataclasses.asdict(self))


FIELD_TYPES = ("date", "number", "text", "bool")
"""The kinds an additional contact field may have (``[contacts] fields``)."""


@dataclasses.dataclass(frozen=True)
class ContactsSettings(Section):
    """``[contacts]``: the checks on contact data, which the platform drops silently if wrong."""

    name_max: int = 40
    default_region: str = ""
    """Region for phone numbers written without ``+`` (e.g. ``"UA"``); empty: ``+`` required."""
    fields: dict[str, str] = dataclasses.field(default_factory=dict)
    """Additional contact field id → ``date``, ``number``, ``text`` or ``bool``."""

    def check(self, path: str) -> None:
        """A known region code, numeric field ids of a known kind, names of at least 1."""
        import phonenumbers

        if self.default_region and self.default_region not in phonenumbers.SUPPORTED_REGIONS:
            raise ConfigError(
                f"{path}default_region: {self.default_region!r} is not a region code such as 'UA'"
            )
        for field_id, kind in self.fields.items():
            if not field_id.isdigit():
                raise ConfigError(f"{path}fields.{field_id}: a field id is a number, like 10001")
            if kind not in FIELD_TYPES:
                raise ConfigError(
                    f"{path}fields.{field_id}: {kind!r} is not one of {', '.join(FIELD_TYPES)}"
                )
        if self.name_max < 1:
            raise ConfigError(f"{path}name_max: must be at least 1")


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
class BotsSettings(Section):
    """``[bots]``: traffic that creates nothing."""

    enabled: bool = True
    user_agents: tuple[str, ...] = DEFAULT_BOT_AGENTS
    """Case-insensitive substrings of a User-Agent that mark a bot."""
    emails: tuple[str, ...] = ()
    """Glob patterns of addresses that crawlers and test orders use (``*@merchant-test.*``)."""


ConsentMode = Literal["opt-out", "opt-in"]


@dataclasses.dataclass(frozen=True)
class ConsentSettings(Section):
    """``[consent]``: who may get marketing events (transactional ones go to everyone)."""

    mode: ConsentMode = "opt-out"
    """``opt-out``: every contact, except one whose latest consent entry is an opt-out;
    ``opt-in``: only a contact whose latest entry is an opt-in (``tracker.opted_in``). In both,
    an address erased on request gets none until it opts in again."""


_QUERY_KEY = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")


@dataclasses.dataclass(frozen=True)
class PrivacySettings(Section):
    """``[privacy]``: what an erasure request (``tracker.forget``, ``shop-events forget``) does
    besides deleting every row of the address."""

    erase_on_platform: bool = False
    """Also queue the platform's contact erasure (``DELETE {api.base_url}/{erasure_path}?
    {erasure_key}=<address>&erase=true``), delivered like events; ``forget --platform``
    asks for it once."""
    erasure_path: str = "v1/contact"
    erasure_key: str = "externalCustomerId"
    """The query parameter naming the contact: the Orders API rows set ``externalCustomerId``
    to the email, so it names the contacts they made."""
    suppress_after_forget: bool = True
    """Keep a salted hash of the erased address that blocks marketing to it until it opts in
    again (transactional events still go)."""

    def check(self, path: str) -> None:
        """A path under ``api.base_url`` and a plain query parameter name."""
        erasure = self.erasure_path
        if not _API_PATH.fullmatch(erasure) or ".." in erasure.split("/"):
            raise ConfigError(
                f"{path}erasure_path: must be a path under api.base_url like 'v1/contact', "
                f"got {erasure[:80]!r}"
            )
        if not _QUERY_KEY.fullmatch(self.erasure_key):
            raise ConfigError(
                f"{path}erasure_key: must be a query parameter name like 'externalCustomerId' "
                f"(letters, digits, '_'), got {self.erasure_key[:80]!r}"
            )


@dataclasses.dataclass(frozen=True)
class RetentionSettings(Section):
    """``[retention]``: how long finished activity and sent events are kept."""

    days: int = 30
    interval: timedelta = timedelta(hours=1)
    batch: int = 1000


@dataclasses.dataclass(frozen=True)
class AlertsSettings(Section):
    """``[alerts]``: when delivery counts as unhealthy for health checks and the log."""

    stall_after: timedelta = timedelta(minutes=15)
    """Delivery is stalled once the oldest pending event has waited longer than this."""

    def check(self, path: str) -> None:
        """The stall threshold is longer than zero."""
        if self.stall_after <= timedelta(0):
            raise ConfigError(f"{path}stall_after: must be longer than 0s")


@dataclasses.dataclass(frozen=True)
class ItemsSettings(Section):
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


_COOKIE_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_ADMIN_ACCESS = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")
# ASCII names (IDNA hosts in their xn-- form), IPv4, bracketed IPv6; '*' and '?' as in globs
_HOST_GLOB = re.compile(r"[A-Za-z0-9*?_.-]+|\[[0-9A-Fa-f:.]+\]")


def _web_origin(text: str) -> str | None:
    """``text``'s origin as browsers serialize it, if it is an http(s) origin and nothing more."""
    try:
        url = ada_url.URL(text)
    except (ValueError, UnicodeError):  # not a URL; a lone surrogate
        return None
    plain = not (url.username or url.password or url.search or url.hash)
    if url.protocol not in ("http:", "https:") or url.pathname != "/" or not plain:
        return None
    return str(url.origin)


@dataclasses.dataclass(frozen=True)
class WebSettings(Section):
    """``[web]``: browser tracking (``POST /shop-events/track``) and the operator pages (Flask)."""

    track: bool = True
    """Serve ``POST /shop-events/track`` and ``/shop-events/static/shop-events.js``."""
    shop_hosts: tuple[str, ...] = ()
    """The shop's own hosts (globs: ``shop.example``, ``*.shop.example``): pages there may post,
    product links may point there. Empty: the Flask app's ``SERVER_NAME``, if set; the
    request's ``Host`` header is never trusted for this."""
    allowed_origins: tuple[str, ...] = ()
    """Further origins that may post, with CORS headers (``https://www.shop.example``)."""
    token: Secret = dataclasses.field(default_factory=lambda: Secret(""))
    """When set, requests carrying ``X-Shop-Events-Token: <token>`` skip the origin check."""
    max_body_bytes: int = 4096
    rate_limit: float = 2.0
    """Sustained requests per second per client address."""
    rate_burst: int = 20
    """Requests a client address may make at once before the rate limit applies."""
    identify: Literal["signed-in", "any", "off"] = "signed-in"
    """What ``shopEvents.identify(email)`` from the browser may bind: ``signed-in`` only the
    address of the signed-in shopper (``current_email``) or any address on a request with the
    token; ``any`` any address (anyone can then get marketing email sent to a stranger);
    ``off`` nothing."""
    item_hosts: tuple[str, ...] = ()
    """Hosts (globs) besides the shop's own that product ``url``/``imageurl`` may point at."""
    cookie_name: str = "se_vid"
    cookie_max_age: timedelta = timedelta(days=365)
    admin_access: str = ""
    """``module:function`` returning True when the current request may see the operator pages;
    empty: the pages are off (404) unless ``ShopEvents(app, admin_access=...)`` is given."""
    admin_page_size: int = 50
    metrics_token: Secret = dataclasses.field(default_factory=lambda: Secret(""))
    """When set, ``/shop-events/metrics`` also answers requests carrying
    ``Authorization: Bearer <metrics_token>`` (a Prometheus scraper), besides ``admin_access``."""

    def check(self, path: str) -> None:
        """Real origins and hosts, sane sizes and rates, a valid cookie, ``module:function``."""
        for key in ("shop_hosts", "item_hosts"):
            for pattern in getattr(self, key):
                if not _HOST_GLOB.fullmatch(pattern):
                    raise ConfigError(
                        f"{path}{key}: {pattern[:80]!r} is not a host or a host glob like "
                        "'shop.example' or '*.shop.example' (no scheme, port or path; "
                        "international names in their xn-- form)"
                    )
        for origin in self.allowed_origins:
            if _web_origin(origin) is None:
                shown = "a URL with a user name or password" if "@" in origin else repr(origin[:80])
                raise ConfigError(
                    f"{path}allowed_origins: {shown} is not an origin like 'https://shop.example'"
                )
        if self.max_body_bytes < 256:
            raise ConfigError(f"{path}max_body_bytes: must be at least 256")
        if self.rate_limit <= 0:
            raise ConfigError(f"{path}rate_limit: must be greater than 0 requests per second")
        if self.rate_burst < 1:
            raise ConfigError(f"{path}rate_burst: must be at least 1")
        if not _COOKIE_NAME.fullmatch(self.cookie_name):
            raise ConfigError(f"{path}cookie_name: letters, digits, '_' and '-' only, at most 64")
        if self.cookie_max_age <= timedelta(0):
            raise ConfigError(f"{path}cookie_max_age: must be longer than 0s")
        if self.admin_access and not _ADMIN_ACCESS.fullmatch(self.admin_access):
            raise ConfigError(f"{path}admin_access: {self.admin_access!r} is not 'module:function'")
        if self.admin_page_size < 1:
            raise ConfigError(f"{path}admin_page_size: must be at least 1")


@dataclasses.dataclass(frozen=True)
class RecoverySettings(Section):
    """``[recovery]``: links in reminders that bring the cart back, coupons, attribution."""

    links: bool = False
    """``cart_url`` becomes a signed link served by the plugin (``/shop-events/r/<token>``):
    opening it records a click and restores the cart, on any device."""
    base_url: str = ""
    """The shop's public URL (``https://shop.example``); required with ``links``."""
    link_ttl: timedelta = timedelta(days=30)
    attribution_window: timedelta = timedelta(days=7)
    """An order this soon after a delivered reminder of the same contact or cart is recovered."""
    utm: bool = True
    """Add ``utm_source=shop-events&utm_medium=email&utm_campaign=<event type>&utm_content=
    step-<n>`` to where a recovery link leads (the cart's restore URL, or the shop's home)."""
    secret: Secret = dataclasses.field(default_factory=lambda: Secret(""))
    """Signs the links (better: ``SHOP_EVENTS_RECOVERY_SECRET``). Under Flask, empty: a key
    derived from the app's ``secret_key``; a standalone worker with links needs it."""
    coupon: str = ""
    """``module:function`` called as ``fn(cart_id, email, step)`` for ``coupon_steps``; its
    code goes as the ``coupon`` param (or ``ShopEvents(app, coupon=fn)``)."""
    coupon_steps: tuple[int, ...] = ()
    keep: timedelta = timedelta(days=400)
    """How long reminders, their clicks and the orders they recovered are kept for the report
    (at least ``retention.days``)."""

    def check(self, path: str) -> None:
        """A public http(s) URL with links, durations above zero, steps from 1, a long secret."""
        if self.links and not self.base_url:
            raise ConfigError(
                f"{path}base_url: required with {path}links (the shop's public URL, e.g. "
                "'https://shop.example')"
            )
        if self.base_url:
            parts = urlsplit(self.base_url)
            plain = not (parts.username or parts.password or parts.query or parts.fragment)
            if parts.scheme not in ("http", "https") or not parts.hostname or not plain:
                raise ConfigError(
                    f"{path}base_url: must be an http(s) URL like 'https://shop.example', got "
                    f"{mask_url(self.base_url, user=False)[:80]!r}"
                )
        for name in ("link_ttl", "attribution_window", "keep"):
            if getattr(self, name) <= timedelta(0):
                raise ConfigError(f"{path}{name}: must be longer than 0s")
        secret = self.secret.reveal()
        if secret and len(secret) < SECRET_MIN:
            raise ConfigError(f"{path}secret: must be at least {SECRET_MIN} characters")
        if self.coupon and not _ADMIN_ACCESS.fullmatch(self.coupon):
            raise ConfigError(f"{path}coupon: {self.coupon!r} is not 'module:function'")
        if any(step < 1 for step in self.coupon_steps):
            raise ConfigError(f"{path}coupon_steps: steps are numbered from 1")


@dataclasses.dataclass(frozen=True)
class BackfillSettings(Section):
    """``[backfill]``: sending the shop's past orders (``flask shop-events backfill orders``)."""

    page_size: int = 1000
    """Orders read, queued and checkpointed per transaction: memory follows it, not the shop's
    number of orders."""
    events_batch: int = PAST_EVENTS_MAX
    """Past events per request (the platform takes at most 500)."""
    timezone: str = "UTC"
    """The zone a past event's ``occurred`` is written in (an IANA name such as
    ``Europe/Kyiv``): the platform's format has no offset."""

    def check(self, path: str) -> None:
        """A page of at least one order, 1–500 events a request, a zone the system knows."""
        if self.page_size < 1:
            raise ConfigError(f"{path}page_size: must be at least 1")
        if not 1 <= self.events_batch <= PAST_EVENTS_MAX:
            raise ConfigError(f"{path}events_batch: must be 1 to {PAST_EVENTS_MAX}")
        try:
            zoneinfo.ZoneInfo(self.timezone)
        except (ValueError, zoneinfo.ZoneInfoNotFoundError):
            raise ConfigError(
                f"{path}timezone: {self.timezone[:80]!r} is not a time zone such as 'UTC' or "
                "'Europe/Kyiv'"
            ) from None

    @property
    def zone(self) -> zoneinfo.ZoneInfo:
        """``timezone`` as a zone."""
        return zoneinfo.ZoneInfo(self.timezone)


SECRET_MIN = 16

"""The platform's rules for events, checked before anything is queued.

Every error is a :class:`ValidationError` that names the field and the rule it broke, so the
host's developer sees at once what to fix.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable
from typing import Any

from email_validator import EmailNotValidError, validate_email

from ..errors import ValidationError

EVENT_TYPE_KEY_MAX = 100
KEY_VALUE_MAX = 300
PARAM_NAME_MAX = 100
FORBIDDEN_KEY_CHARS = frozenset("‹;’\\/|\"`'^?!,>")
FORBIDDEN_LIST = " ".join(sorted(FORBIDDEN_KEY_CHARS))
HOST_ID_MAX = 255
DEDUPE_KEY_MAX = 500
_SPACE = re.compile(r"\s")
_HTTP_URL = re.compile(r"https?://[^/?#\s]+", re.IGNORECASE)
_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
URL_MAX = 2048


def check_event_type_key(value: object, field: str = "event_type_key") -> str:
    """An event type key: 1–100 characters, none of ``‹ ; ’ \\ / | " ` ' ^ ? ! , >``."""
    text = check_text(value, field, EVENT_TYPE_KEY_MAX)
    bad = sorted(set(text) & FORBIDDEN_KEY_CHARS)
    if bad:
        raise ValidationError(
            field,
            f"must not contain {' '.join(bad)} (forbidden: {FORBIDDEN_LIST})",
        )
    return text


def check_key_value(value: object, field: str = "key_value") -> str:
    """An event key (the contact's email, usually): 1–300 characters."""
    return check_text(value, field, KEY_VALUE_MAX)


def check_text(value: object, field: str, max_length: int, *, required: bool = True) -> str:
    """A non-empty string of at most ``max_length`` characters, without NUL."""
    if not isinstance(value, str):
        raise ValidationError(field, f"must be a string, got {type(value).__name__}")
    if required and not value.strip():
        raise ValidationError(field, "must not be empty")
    if len(value) > max_length:
        raise ValidationError(field, f"must be at most {max_length} characters, got {len(value)}")
    if "\x00" in value:
        raise ValidationError(field, "must not contain the NUL character")
    return value


def check_host_id(value: object, field: str) -> str:
    """An id that comes from the host shop (cart id, order id): 1–255 characters."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    return check_text(value, field, HOST_ID_MAX).strip()


def check_email(value: object, field: str = "email") -> str:
    """A syntactically valid email address, lower-cased (so carts and orders of one shopper
    match whatever case they typed); no DNS look-up.
    """
    text = check_text(value, field, 254)
    normalized = _normalized_email(text)
    if normalized is None:
        try:
            validate_email(text, check_deliverability=False)
        except EmailNotValidError as exc:
            raise ValidationError(field, f"is not a valid email address ({exc})") from None
    return str(normalized)


@functools.lru_cache(maxsize=4096)
def _normalized_email(text: str) -> str | None:
    # The same shopper's address comes with every cart change: parse it once.
    try:
        return str(validate_email(text, check_deliverability=False).normalized).lower()
    except EmailNotValidError:
        return None


def check_url(value: object, field: str) -> str:
    """An absolute http(s) URL of at most 2048 characters."""
    text = check_text(value, field, URL_MAX).strip()
    if not _HTTP_URL.match(text):
        raise ValidationError(field, f"must be an absolute http(s) URL, got {text[:80]!r}")
    if _SPACE.search(text):
        raise ValidationError(field, "must not contain spaces")
    return text


def check_param_names(names: Iterable[str], field: str = "params") -> None:
    """Param names: 1–100 characters each, unique within one event."""
    seen: set[str] = set()
    for name in names:
        check_text(name, f"{field}[{name!r}]", PARAM_NAME_MAX)
        if name in seen:
            raise ValidationError(f"{field}[{name!r}]", "param names must be unique in one event")
        seen.add(name)


def check_event_size(body: dict[str, Any], max_bytes: int) -> int:
    """The event's JSON size in bytes, which must not exceed ``max_bytes``."""
    size = body_size(body)
    if size > max_bytes:
        raise ValidationError("event", f"is {size} bytes; the platform accepts at most {max_bytes}")
    return size


def body_size(body: dict[str, Any]) -> int:
    """Size in bytes of the body exactly as it is sent."""
    return len(encode_body(body))


def encode_body(body: dict[str, Any]) -> bytes:
    """The one encoding of a request body used for storing, sizing and sending."""
    return dump_json(body).encode("utf-8")


def dump_json(value: Any) -> str:
    """Compact JSON, non-ASCII kept as is: the one JSON text form of the plugin."""
    return _JSON.encode(value)

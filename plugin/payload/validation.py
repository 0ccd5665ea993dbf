"""The platform's rules for events, checked before anything is queued.

Every error is a :class:`ValidationError` that names the field and the rule it broke, so the
host's developer sees at once what to fix.
"""

from __future__ import annotations

import functools
import json
import math
import re
import reprlib
from collections.abc import Iterable
from decimal import Decimal, InvalidOperation
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
QUOTE_MAX = 80
"""At most this many characters of a bad value are quoted in an error."""
NUMBER_TEXT_MAX = 100
"""A number given as text is refused beyond this length, before any arithmetic on it."""
NUMBER_MAX_EXPONENT = 30
NUMBER_MIN_EXPONENT = -30
JSON_DEPTH_MAX = 32
JSON_NODES_MAX = 200_000
INT_DIGITS_MAX = 1000
"""A whole-number param or nested JSON number may have at most this many digits."""


class _Short(reprlib.Repr):
    """``repr`` cut short, for any value: huge whole numbers (which Python refuses to write out
    beyond 4300 digits) are described by their size, deep or big containers are elided."""

    def __init__(self) -> None:
        super().__init__()
        self.maxstring = QUOTE_MAX
        self.maxother = QUOTE_MAX
        self.maxlong = QUOTE_MAX
        self.maxlevel = 3

    def repr_str(self, x: str, level: int) -> str:
        if len(x) <= self.maxstring:
            return repr(x)
        return repr(x[: self.maxstring]) + "…"

    def repr_int(self, x: int, level: int) -> str:
        if x.bit_length() > 4 * QUOTE_MAX:
            return f"<a whole number of about {approx_digits(x)} digits>"
        return super().repr_int(x, level)


_SHORT = _Short()


def quoted(value: object, limit: int = QUOTE_MAX) -> str:
    """``repr(value)`` for an error message: at most about ``limit`` characters, for any value.

    Never raises: a value whose ``repr`` fails is named by its type.
    """
    if isinstance(value, str) and len(value) > limit:  # the start of the text, marked as cut
        shown = repr(value[:limit])  # escapes may make it several times longer
        room = limit + 2  # the quotes
        return (shown if len(shown) <= room else shown[:room]) + "…"
    try:
        text = _SHORT.repr(value)
    except Exception:
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def label(value: object, limit: int = 40) -> str:
    """A piece of a field name taken from input (a dict key, a field id): text as is, cut to
    ``limit`` characters, lone surrogates escaped; anything else as :func:`quoted`."""
    if isinstance(value, str):
        return value[:limit].encode("utf-8", "backslashreplace").decode("utf-8")
    return quoted(value, limit)


def approx_digits(number: int) -> int:
    """How many decimal digits ``number`` has, give or take one, without writing it out."""
    return max(1, int(abs(number).bit_length() * math.log10(2)) + 1)


def int_text(value: int, field: str, max_digits: int) -> str:
    """A whole number as text, refused (before it is written out) beyond ``max_digits`` digits.

    Python refuses to turn a whole number of more than 4300 digits into text; this check keeps
    that a :class:`ValidationError`.
    """
    # 4 bits per digit is more than enough: a number over the bound is never written out
    text = str(value) if abs(value).bit_length() <= 4 * max_digits else ""
    if not text or len(text.lstrip("-")) > max_digits:
        raise ValidationError(
            field,
            f"must be at most {max_digits} digits, got a whole number of about "
            f"{approx_digits(value)} digits",
        )
    return text


def decimal_text(value: object, field: str, *, negative: bool = False) -> str:
    """A finite decimal number written out in full (``"23.50"``, ``"341"``), within bounds.

    Accepts a ``Decimal``, ``int``, ``float`` or text. Text longer than 100 characters and
    numbers beyond 1e30 (or, unless zero, below 1e-30) are refused before they are expanded:
    ``"1e999999999"`` would otherwise take gigabytes of digits.
    """
    if isinstance(value, bool) or value is None:
        raise ValidationError(field, f"must be a number, got {quoted(value)}")
    bounds = f"1e{NUMBER_MIN_EXPONENT} and 1e{NUMBER_MAX_EXPONENT}"
    try:
        if isinstance(value, float):
            number = Decimal(repr(value))
        elif isinstance(value, int):
            if value.bit_length() > 4 * NUMBER_MAX_EXPONENT:
                raise ValidationError(
                    field, f"must be between {bounds} in size, got {quoted(value)}"
                )
            number = Decimal(value)
        elif isinstance(value, Decimal):
            number = value
        elif isinstance(value, str):
            if len(value) > NUMBER_TEXT_MAX:
                raise ValidationError(
                    field, f"must be a number of at most {NUMBER_TEXT_MAX} characters"
                )
            number = Decimal(value.strip())
        else:
            raise ValidationError(field, f"must be a number, got {type(value).__name__}")
    except InvalidOperation:
        raise ValidationError(field, f"must be a number, got {quoted(value)}") from None
    if not number.is_finite():
        raise ValidationError(field, f"must be a finite number, got {quoted(value)}")
    if number < 0 and not negative:
        raise ValidationError(field, f"must not be negative, got {quoted(value)}")
    if number and not NUMBER_MIN_EXPONENT <= number.adjusted() <= NUMBER_MAX_EXPONENT:
        raise ValidationError(field, f"must be between {bounds} in size, got {quoted(value)}")
    text = format(number, "f")
    if len(text) > NUMBER_TEXT_MAX:
        raise ValidationError(
            field, f"must be at most {NUMBER_TEXT_MAX} characters written out, got {len(text)}"
        )
    return text


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
    check_unicode(value, field)
    return value


def check_unicode(value: str, field: str) -> None:
    """Text that can be written as UTF-8: no lone surrogate (U+D800–U+DFFF)."""
    if value.isascii():
        return
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValidationError(
            field,
            f"must be valid Unicode text: a lone surrogate U+{ord(value[exc.start]):04X} at "
            f"position {exc.start} cannot be encoded",
        ) from None


def check_json(value: object, field: str) -> None:
    """Nested JSON a body can carry: at most 32 levels and 200,000 values, text that encodes as
    UTF-8, whole numbers of at most 1000 digits. Other types are left to the JSON encoder.
    """
    stack: list[tuple[object, int]] = [(value, 1)]
    seen = 0
    while stack:
        item, depth = stack.pop()
        seen += 1
        if seen > JSON_NODES_MAX:
            raise ValidationError(field, f"must hold at most {JSON_NODES_MAX} values")
        if isinstance(item, str):
            check_unicode(item, field)
        elif isinstance(item, int) and not isinstance(item, bool):
            int_text(item, field, INT_DIGITS_MAX)
        elif isinstance(item, dict | list):
            if depth > JSON_DEPTH_MAX:
                raise ValidationError(field, f"must not nest deeper than {JSON_DEPTH_MAX} levels")
            if isinstance(item, dict):
                for key, inner in item.items():
                    stack.append((key, depth))
                    stack.append((inner, depth + 1))
            else:
                stack.extend((inner, depth + 1) for inner in item)


def check_host_id(value: object, field: str) -> str:
    """An id that comes from the host shop (cart id, order id): 1–255 characters."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = int_text(value, field, HOST_ID_MAX)
    return check_text(value, field, HOST_ID_MAX).strip()


EMAIL_REASON_MAX = 200
"""The longest reason of the email validator quoted in an error (it may list many characters)."""


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
            reason = str(exc)
            if len(reason) > EMAIL_REASON_MAX:  # it lists every bad character: a long list
                reason = reason[: EMAIL_REASON_MAX - 1] + "…"
            raise ValidationError(field, f"is not a valid email address ({reason})") from None
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
        raise ValidationError(field, f"must be an absolute http(s) URL, got {quoted(text, 80)}")
    if _SPACE.search(text):
        raise ValidationError(field, "must not contain spaces")
    return text


def check_param_names(names: Iterable[str], field: str = "params") -> None:
    """Param names: 1–100 characters each, unique within one event."""
    seen: set[str] = set()
    for name in names:
        label = f"{field}[{quoted(name)}]"
        check_text(name, label, PARAM_NAME_MAX)
        if name in seen:
            raise ValidationError(label, "param names must be unique in one event")
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

"""Generate event bodies: params in the API's v1 (nested JSON as strings) or v2 (real JSON) form.

Also the one rule for events too big for the platform: products are cut from the end until the
body fits, and the body says how many were dropped.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from ..errors import ValidationError
from .items import CanonicalItem, items_param
from .validation import (
    INT_DIGITS_MAX,
    body_size,
    check_event_type_key,
    check_json,
    check_key_value,
    check_param_names,
    check_unicode,
    encode_body,
    int_text,
    quoted,
)

if TYPE_CHECKING:  # settings are passed in; payload never loads them
    from ..config import Settings

Body = dict[str, Any]
STEP_PARAM = "step"
"""The param a reminder carries its step number in (``"1"``, ``"2"`` …)."""

Param = tuple[str, Any]
"""A param as ``(name, value)``; a dict or list value is nested JSON."""


def encode_value(value: Any, version: Literal["v1", "v2"], field: str = "params") -> Any:
    """A param value as the API version wants it: v1 serializes nested JSON into a string."""
    if isinstance(value, str):
        check_unicode(value, field)
        return value
    if isinstance(value, dict | list):
        check_json(value, field)
        try:
            text = _STRICT_JSON.encode(value)
        except (TypeError, ValueError) as exc:
            raise ValidationError(
                field,
                "a nested value must be JSON: text, finite numbers, true/false/null, lists "
                f"and objects with text keys ({exc})",
            ) from None
        return text if version == "v1" else value
    if value is None or isinstance(value, bool):
        raise ValidationError(
            "params", f"a param value must be text, a number or JSON, got {quoted(value)}"
        )
    if isinstance(value, int):
        return int_text(value, field, INT_DIGITS_MAX)
    return str(value)


_STRICT_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def build_body(
    event_type_key: str,
    key_value: str,
    params: Sequence[Param],
    version: Literal["v1", "v2"],
) -> Body:
    """The Generate event body, checked against the platform's rules on keys and names."""
    check_event_type_key(event_type_key)
    check_key_value(key_value)
    check_param_names(name for name, _ in params)
    return {
        "eventTypeKey": event_type_key,
        "keyValue": key_value,
        "params": [
            {"name": name, "value": encode_value(value, version, f"params[{quoted(name)}]")}
            for name, value in params
        ],
    }


def fit_items(
    make: Callable[[Sequence[CanonicalItem], int], Body],
    items: Sequence[CanonicalItem],
    max_bytes: int,
) -> tuple[Body, int]:
    """The body with as many leading products as fit in ``max_bytes``, and the drop count.

    ``make(kept, dropped)`` builds the body. Order is kept: products are dropped from the end.
    """
    body = make(items, 0)
    if body_size(body) <= max_bytes:
        return body, 0
    low, high = 0, len(items) - 1  # the largest kept count that fits lies in [low, high]
    if body_size(make(items[:0], len(items))) > max_bytes:
        raise ValidationError(
            "event", f"is over {max_bytes} bytes even without products; shorten the other params"
        )
    while low < high:
        mid = (low + high + 1) // 2
        if body_size(make(items[:mid], len(items) - mid)) <= max_bytes:
            low = mid
        else:
            high = mid - 1
    return make(items[:low], len(items) - low), len(items) - low


def build_items_event(
    event_type_key: str,
    key_value: str,
    head: Sequence[Param],
    items: Sequence[CanonicalItem],
    tail: Sequence[Param],
    settings: Settings,
    fields: Mapping[str, str] | None = None,
) -> tuple[str, int]:
    """A body with ``head`` params, the ``items`` param, then ``tail``; cut to fit the size limit.

    ``fields`` go into the body beside the params (a past event's ``occurred``) and count
    toward its size. Returns the encoded body text and how many products were dropped (also
    sent as the ``items_dropped`` param when not zero).
    """
    names = settings.items

    def make(kept: Sequence[CanonicalItem], dropped: int) -> Body:
        params: list[Param] = [*head, (names.param, items_param(kept, names))]
        if dropped:
            params.append((names.dropped_param, str(dropped)))
        body = build_body(event_type_key, key_value, [*params, *tail], settings.api.version)
        return {**body, **fields} if fields else body

    body, dropped = fit_items(make, items, settings.api.max_event_bytes)
    return encode_body(body).decode("utf-8"), dropped

"""Contact data, checked the way the platform needs it: it ignores a whole contact silently
when one value is wrong, so every value is checked here and refused with its field and rule.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import phonenumbers

from ..errors import ValidationError
from .validation import check_text, decimal_text, int_text, label, quoted

if TYPE_CHECKING:  # settings are passed in; payload never loads them
    from ..config import ContactsSettings

TEXT_FIELD_MAX = 2000


def check_name(value: object, field: str, settings: ContactsSettings) -> str:
    """A first or last name of at most ``contacts.name_max`` characters, spaces trimmed."""
    if isinstance(value, str):
        value = value.strip()
    return check_text(value, field, settings.name_max)


def check_phone(value: object, settings: ContactsSettings, field: str = "phone") -> str:
    """A phone number in international form, sent as digits without ``+`` (``380955547708``).

    Numbers without ``+`` are read in ``contacts.default_region``; with no region set they are
    refused, since guessing a country would message a stranger.
    """
    text = check_text(value, field, 40)
    region = settings.default_region or None
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException as exc:
        hint = "" if region else " (write it with +country code, or set contacts.default_region)"
        raise ValidationError(field, f"is not a phone number: {exc._msg}{hint}") from None
    if not phonenumbers.is_valid_number(number):
        raise ValidationError(field, f"{quoted(text)} is not a valid phone number for its country")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164).lstrip("+")


def profile_inputs(
    fields: Mapping[int | str, Any], settings: ContactsSettings
) -> list[dict[str, Any]]:
    """Additional contact fields as the API's ``profileInputs``, each typed by ``contacts.fields``.

    With no schema configured, values are sent as text; with one, an unknown field id is refused.
    """
    if not isinstance(fields, Mapping):
        raise ValidationError("fields", "must be a mapping of field id to value")
    out = []
    for raw_id, value in fields.items():
        field_id = _field_id(raw_id)
        name = f"fields[{field_id}]"
        if not (field_id.isascii() and field_id.isdigit()) or isinstance(raw_id, bool):
            raise ValidationError(name, "a field id is a whole number, like 10001")
        kind = settings.fields.get(field_id)
        if settings.fields and kind is None:
            raise ValidationError(name, "is not declared in contacts.fields")
        out.append(
            {"profileInputId": int(field_id), "value": _field_value(value, kind or "text", name)}
        )
    return out


FIELD_ID_MAX = 20


def _field_id(raw_id: object) -> str:
    """A field id as text, for the checks and the error's field name; one longer than 20
    characters is refused here, named by its start."""
    if isinstance(raw_id, int) and not isinstance(raw_id, bool):
        text = quoted(raw_id, FIELD_ID_MAX + 1)  # a huge number is not written out
    elif isinstance(raw_id, str):
        text = raw_id.strip()
    else:
        try:
            text = str(raw_id).strip()
        except Exception:
            text = quoted(raw_id, FIELD_ID_MAX + 1)
    if len(text) > FIELD_ID_MAX:
        raise ValidationError(
            f"fields[{label(text, FIELD_ID_MAX)}…]",
            f"a field id is a whole number of at most {FIELD_ID_MAX} digits, like 10001",
        )
    return label(text, FIELD_ID_MAX)


def _field_value(value: Any, kind: str, field: str) -> str:
    if kind == "date":
        if isinstance(value, dt.datetime):
            raise ValidationError(
                field, "is a date field: pass a date or 'YYYY-MM-DD', not a datetime"
            )
        if isinstance(value, dt.date):
            return value.isoformat()
        if isinstance(value, str):
            try:
                return dt.date.fromisoformat(value.strip()).isoformat()
            except ValueError:
                pass
        raise ValidationError(field, f"is a date field: expected YYYY-MM-DD, got {quoted(value)}")
    if kind == "number":
        if isinstance(value, bool) or not isinstance(value, int | str | Decimal):
            raise ValidationError(field, f"is a number field, got {quoted(value)}")
        try:  # bounded like prices: "1e999999999" is refused before it is written out
            return decimal_text(value, field, negative=True)
        except ValidationError as exc:
            raise ValidationError(field, f"is a number field: {exc.rule}") from None
    if kind == "bool":
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, str) and value.strip().lower() in {"true", "false"}:
            return value.strip().lower()
        raise ValidationError(
            field, f"is a yes/no field: expected true or false, got {quoted(value)}"
        )
    if isinstance(value, bool) or not isinstance(value, str | int | Decimal):
        raise ValidationError(field, f"is a text field: expected text, got {type(value).__name__}")
    if isinstance(value, int):
        value = int_text(value, field, TEXT_FIELD_MAX)
    return check_text(str(value), field, TEXT_FIELD_MAX, required=False)

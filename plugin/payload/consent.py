"""What a consent entry says besides the address: where it was given and on what basis."""

from __future__ import annotations

import difflib

from ..errors import ValidationError
from .validation import check_text, quoted

SOURCE_MAX = 200

LAWFUL_BASES = (
    "consent",
    "contract",
    "legal_obligation",
    "vital_interests",
    "public_task",
    "legitimate_interests",
)
"""The six lawful bases of GDPR Art. 6(1)(a)–(f), in its order: the values ``basis`` takes."""


def check_source(value: object) -> str | None:
    """Where the decision was taken (``"checkout checkbox"``, ``"unsubscribe link"``): short
    text on one line, surrounding spaces dropped; None when not given."""
    if value is None:
        return None
    text = check_text(value, "source", SOURCE_MAX).strip()
    if any(ord(char) < 0x20 or 0x7F <= ord(char) <= 0x9F for char in text):
        raise ValidationError("source", "must be one line of text, without control characters")
    return text


def check_basis(value: object) -> str | None:
    """The lawful basis of the marketing: one of :data:`LAWFUL_BASES`, or None when not given.
    A near miss names the basis meant."""
    if value is None:
        return None
    text = check_text(value, "basis", 64).strip()
    if text in LAWFUL_BASES:
        return text
    close = difflib.get_close_matches(text.lower().replace(" ", "_"), LAWFUL_BASES, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ValidationError(
        "basis",
        f"must be one of {', '.join(LAWFUL_BASES)} (GDPR Art. 6(1)), got {quoted(text)}{hint}",
    )

"""The forms an email address takes in stored text, and text with them blanked out (pure).

An address reaches the tables as the shopper's normalised address, but also inside event bodies
(JSON, where a v1 param holding nested JSON escapes it twice), in URLs (percent-encoded), and
in whatever a shop passed to a custom event, in any case. Erasure and export look for every one
of these forms, ignoring case.
"""

from __future__ import annotations

import json
import re
from urllib.parse import quote

from email_validator import EmailNotValidError, validate_email

REDACTED = "[erased]"
"""What stands in a redacted text where the address was."""


def address_forms(email: str) -> tuple[str, ...]:
    """The lower-case forms of ``email`` (a normalised address) as stored text may hold it: as
    is, JSON-escaped once and twice (non-ASCII as ``\\uXXXX``), percent-encoded, and with an
    international domain in its ASCII (``xn--``) form."""
    address = email.lower()
    forms = [address]
    try:
        ascii_email = validate_email(address, check_deliverability=False).ascii_email
    except EmailNotValidError:
        ascii_email = None
    if ascii_email:
        forms.append(ascii_email.lower())
    for form in list(forms):
        once = json.dumps(form)[1:-1]
        forms += [once, json.dumps(once)[1:-1], quote(form, safe="").lower()]
    return tuple(dict.fromkeys(form.lower() for form in forms))


def redact(text: str, forms: tuple[str, ...]) -> str:
    """``text`` with every one of ``forms`` replaced by :data:`REDACTED`, ignoring case."""
    longest_first = sorted(forms, key=len, reverse=True)
    pattern = "|".join(re.escape(form) for form in longest_first)
    return re.sub(pattern, REDACTED, text, flags=re.IGNORECASE)

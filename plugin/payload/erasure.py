"""The platform's contact erasure call, as an outbox row holds it (pure, no I/O).

The platform's API reference (https://docs.esputnik.com/reference, section Contacts) lists two
``DELETE`` methods for a contact: "Delete contact by externalCustomerId" and "Delete contact"
(by the platform's own contact id, which the plugin never learns); no method deleting by email
or phone is listed. Its official WooCommerce plugin (Yespo CDP, its README's "User deletion")
calls ``DELETE https://yespo.io/api/v1/contact?externalCustomerId={ID}&erase=true`` for a GDPR
erasure and ``…&erase=false`` for a plain deletion. So ``externalCustomerId`` is the default
key, and the one that fits: the plugin's Orders API rows set it to the email
(:mod:`.orders_api`), so it names the contacts those rows made. Path and key are settings
(``privacy.erasure_path``, ``privacy.erasure_key``) for an account keyed otherwise.

The row holds only the query (``{key: address, "erase": "true"}``) as its body and the address
as its key; once delivered both are replaced by :data:`REDACTED_ROW`.
"""

from __future__ import annotations

import json
from typing import Any

from .validation import dump_json

ERASURE_TYPE = "privacy/contact-erasure"
"""The outbox's ``event_type_key`` of a contact erasure: sent as a ``DELETE`` with its body as
the query. The ``/`` is a character no event type key may hold, so no event is ever taken for
one."""
REDACTED_ROW: dict[str, Any] = {"key_value": "", "body": "{}"}
"""The columns of a delivered erasure row once the address is gone from them."""


def erasure_query(key: str, email: str) -> dict[str, str]:
    """The query of the erasure of the contact ``email`` keyed by ``key``."""
    return {key: email, "erase": "true"}


def erasure_body(key: str, email: str) -> str:
    """The stored body of an erasure row: its query as JSON."""
    return dump_json(erasure_query(key, email))


def stored_query(body: str) -> dict[str, str]:
    """The query an erasure row's body holds; ``ValueError`` when it is not a JSON object of
    text values (the row is then dead with the reason)."""
    query = json.loads(body)
    if not isinstance(query, dict) or not query:
        raise ValueError("an erasure's query is a non-empty JSON object")
    if not all(isinstance(value, str) for value in query.values()):
        raise ValueError("an erasure's query values are text")
    return query

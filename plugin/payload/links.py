"""Recovery links: the signed token in a reminder's ``cart_url``, and the UTM parameters.

A token names the reminder (its outbox ``dedupe_key``), the cart and the step, and carries its
expiry; it is signed with ``recovery.secret`` (HMAC-SHA1 by :mod:`itsdangerous`, the library
Flask signs its sessions with), so that a link cannot be forged or pointed at another cart.
Expiry is checked against the caller's clock, not the machine's.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from itsdangerous import BadData, URLSafeSerializer

LINK_PATH = "/shop-events/r/"
"""Where the Flask integration serves the links, under the shop's ``recovery.base_url``."""
SALT = "shop-events.recovery-link"
UTM_SOURCE = "shop-events"


class BadLink(Exception):
    """A token that is not one of ours (tampered, malformed) or has expired; ``reason`` says
    which, for the log only: the visitor is told nothing more than that the link is gone."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class Link:
    """What a valid token names."""

    reminder: str
    """The reminder's outbox ``dedupe_key``."""
    cart_id: str
    step: int
    expires_at: datetime


def _serializer(secret: str) -> URLSafeSerializer:
    return URLSafeSerializer(secret, salt=SALT)


def sign(secret: str, link: Link) -> str:
    """The URL-safe token of ``link``."""
    expires = int(link.expires_at.timestamp())
    token: str = _serializer(secret).dumps([link.reminder, link.cart_id, link.step, expires])
    return token


def read(secret: str, token: str, now: datetime) -> Link:
    """The link ``token`` names, if its signature holds and it has not expired at ``now``;
    else :class:`BadLink`."""
    try:
        data = _serializer(secret).loads(token)
    except BadData:
        raise BadLink("the signature does not match (tampered, or another secret)") from None
    shape_ok = (
        isinstance(data, list)
        and len(data) == 4
        and isinstance(data[0], str)
        and isinstance(data[1], str)
        and isinstance(data[2], int)
        and isinstance(data[3], int)
    )
    if not shape_ok:
        raise BadLink("a signed value that is not a link")
    reminder, cart_id, step, expires = data
    expires_at = datetime.fromtimestamp(expires, UTC)
    if now >= expires_at:
        raise BadLink(f"expired at {expires_at.isoformat()}")
    return Link(reminder=reminder, cart_id=cart_id, step=step, expires_at=expires_at)


def link_url(base_url: str, token: str) -> str:
    """The public URL of a token: ``{base_url}/shop-events/r/<token>``."""
    return f"{base_url.rstrip('/')}{LINK_PATH}{token}"


def with_utm(url: str, event_type_key: str, step: int) -> str:
    """``url`` with ``utm_source=shop-events&utm_medium=email&utm_campaign=<event type>&
    utm_content=step-<n>`` (replacing any of those it had; its other parameters kept)."""
    parts = urlsplit(url)
    utm = {
        "utm_source": UTM_SOURCE,
        "utm_medium": "email",
        "utm_campaign": event_type_key,
        "utm_content": f"step-{step}",
    }
    kept = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in utm]
    return urlunsplit(parts._replace(query=urlencode([*kept, *utm.items()])))

"""``Secret``: a setting whose text must never reach a log, a page or an exception; and
URLs with their password masked, for the same places."""

from __future__ import annotations

import re
from urllib.parse import unquote

# As SQLAlchemy reads a URL: the user runs to ':' or '/', the password to the first '@'.
_USERINFO = re.compile(r"(?P<head>[\w+.-]+://)(?P<user>[^:/]*)(?::(?P<password>[^@]*))?@")
_BARE_USERINFO = re.compile(r"(?P<head>)(?P<user>[^:/]*)(?::(?P<password>[^@]*))?@")
"""A URL written without its scheme (``user:password@host/db``): still masked."""


def _userinfo(url: str) -> re.Match[str] | None:
    return (_USERINFO if "://" in url else _BARE_USERINFO).match(url)


MASK = "***"


def mask_url(url: str, *, user: bool = True) -> str:
    """``url`` with the password in ``scheme://user:password@host`` shown as ``***``.

    With ``user=False`` the whole userinfo is masked (an API URL has no user to show: the part
    before ``@`` may be a key). Never raises: a malformed URL is masked the same way.
    """
    match = _userinfo(url)
    if match is None:
        return url
    password = match.group("password")
    if not user:
        shown = MASK
    elif password is None:
        return url
    else:
        shown = f"{match.group('user')}:{MASK}"
    return f"{match.group('head')}{shown}@{url[match.end() :]}"


def scrub(text: str, url: str) -> str:
    """``text`` (an error message about ``url``) with the URL's password replaced by ``***``,
    as written and percent-decoded."""
    match = _userinfo(url)
    password = match.group("password") if match else None
    if password:
        for form in sorted({password, unquote(password)}, key=len, reverse=True):
            text = text.replace(form, MASK)
    return text.replace(url, mask_url(url))


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

"""Turning a TOML file, environment variables and a Flask config into typed settings.

The loader knows sections only as dataclasses: their fields name the keys and give the types
(``str``, ``bool``, ``int``, ``float``, ``timedelta``, :class:`Secret`, a ``Literal``, a tuple or
a dict of strings); their ``check`` method holds the rules. Every error names the key.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol, TypeVar, get_args, get_origin

from ..errors import ConfigError
from .durations import parse_duration
from .secret import Secret

ENV_PREFIX = "SHOP_EVENTS_"
CONFIG_PATH_ENV = "SHOP_EVENTS_CONFIG"


class Checked(Protocol):
    """A frozen dataclass of settings whose ``check`` raises :class:`ConfigError` on a bad value."""

    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]

    def check(self, path: str) -> None:
        """Raise :class:`ConfigError` naming the key (prefixed by ``path``) that is wrong."""

    def check_given(self, path: str, given: frozenset[str]) -> None:
        """Raise :class:`ConfigError` when the keys written (``given``) cannot go together."""


SettingsT = TypeVar("SettingsT", bound=Checked)


def read_toml(file: Path) -> dict[str, Any]:
    """The parsed TOML file; a missing or malformed file is a :class:`ConfigError`."""
    try:
        return tomllib.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {file} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {file}: {exc}") from None


def flat_keys(root: type[Checked], env: Mapping[str, Any]) -> list[tuple[str, str, Any]]:
    """Split ``SHOP_EVENTS_ABANDONED_CART_AFTER`` into ``("abandoned_cart", "after", value)``.

    ``root`` is the dataclass whose fields are the sections. Names without the prefix, and
    :data:`CONFIG_PATH_ENV`, are not settings and are left out.
    """
    # longest first, so a section whose name begins with another section's name still matches
    sections = sorted((f.name for f in dataclasses.fields(root)), key=len, reverse=True)
    found = []
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or name == CONFIG_PATH_ENV:
            continue
        rest = name[len(ENV_PREFIX) :].lower()
        for section in sections:
            if rest.startswith(section + "_"):
                found.append((section, rest[len(section) + 1 :], value))
                break
        else:
            raise ConfigError(f"{name}: unknown setting (no section matches)")
    return found


def build(cls: type[SettingsT], data: Mapping[str, Any], path: str) -> SettingsT:
    """An instance of ``cls`` from nested ``data``, typed per field and checked.

    Fields missing from ``data`` keep their defaults; a field whose type is a dataclass is built
    from a nested table. ``path`` prefixes the keys in errors (``"api."``).
    """
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            raise ConfigError(f"{path}{key}: unknown setting")
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        if field.name not in data:
            continue
        key = f"{path}{field.name}"
        hint = hints[field.name]
        if dataclasses.is_dataclass(hint):
            raw = data[field.name]
            if not isinstance(raw, Mapping):
                raise ConfigError(f"{key}: must be a table of settings")
            values[field.name] = build(typing.cast(type[Checked], hint), raw, f"{key}.")
        else:
            try:
                values[field.name] = coerce(hint, data[field.name])
            except ValueError as exc:
                raise ConfigError(f"{key}: {exc}") from None
    built = cls(**values)
    built.check_given(path, frozenset(data))
    built.check(path)
    return built


_KINDS = {str: "strings", int: "integers", float: "numbers", timedelta: "durations"}


def coerce(hint: Any, raw: Any) -> Any:
    """``raw`` (from TOML, the environment or Python) as the type ``hint``; ValueError if not."""
    if get_origin(hint) is dict:
        if not isinstance(raw, Mapping):
            raise ValueError("must be a table of names to text, like [section.name]")
        return {str(k): coerce(str, v) for k, v in raw.items()}
    if get_origin(hint) is tuple:
        element = get_args(hint)[0]
        if isinstance(raw, str):  # from the environment: comma-separated
            raw = [part.strip() for part in raw.split(",") if part.strip()]
        if not isinstance(raw, list | tuple):
            raise ValueError(f"must be a list of {_KINDS.get(element, 'values')}")
        return tuple(coerce(element, v) for v in raw)
    if hint is timedelta:
        return parse_duration(raw)
    if hint is Secret:
        if isinstance(raw, Secret):
            return raw
        if not isinstance(raw, str):
            raise ValueError("must be a string")
        return Secret(raw.strip())
    if hint is bool:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.strip().lower() in {"1", "true", "yes", "on"}:
            return True
        if isinstance(raw, str) and raw.strip().lower() in {"0", "false", "no", "off"}:
            return False
        raise ValueError(f"{raw!r} is not a boolean (true or false)")
    if hint is int or hint is float:
        if isinstance(raw, bool):
            raise ValueError(f"{raw!r} is not a number")
        try:
            number = hint(raw)
        except (TypeError, ValueError):
            raise ValueError(
                f"{raw!r} is not a{'n integer' if hint is int else ' number'}"
            ) from None
        if number < 0:
            raise ValueError("must not be negative")
        return number
    if hint is str:
        if not isinstance(raw, str):
            raise ValueError(f"{raw!r} is not a string")
        return raw
    if get_origin(hint) is Literal:
        choices = get_args(hint)
        if raw not in choices:
            raise ValueError(f"{raw!r} is not one of {', '.join(map(repr, choices))}")
        return raw
    if isinstance(hint, types.UnionType):  # pragma: no cover - no such settings yet
        raise ValueError("unsupported setting type")
    raise ValueError(f"unsupported setting type {hint!r}")  # pragma: no cover

"""The one mechanism every concern's typed settings are parsed by.

A settings class is a frozen dataclass whose fields are declared with :func:`setting`:
the environment variable, the default shown to operators, the description and the
parser of a value. :func:`from_env` builds any such class from the merged configuration
(variable -> text, :mod:`scp.config`), :func:`registry` lists the variables of several
classes (:data:`scp.variables.VARIABLES`, which the README's configuration table is
checked against, is collected from them, so it cannot drift from what is parsed).
Cross-field checks are each class's ``__post_init__``.

Why not ``pydantic-settings`` (the issue names it; tried with 2.14): its errors are
multi-line reports naming model fields (``1 validation error for S``, then ``port``,
then ``Input should be less than or equal to 65535 [type=...]``), not the variable or
file key the operator wrote, and ``extra="forbid"`` does not refuse an unknown
``SCP2FHIR_*`` variable (``SCP2FHIR_QUIET_SECOND`` passes silently). One line naming
``SCP2FHIR_PORT`` or the file's ``port`` would mean rewriting every validation error,
and its file sources would go unused (:mod:`scp.config` already merges file keys into
variables). These ~100 lines keep the messages exact, need no new dependency, and let
the file value of a variable be named by its file key
(:meth:`scp.config.Configuration.explain`).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

#: A parser: (variable, its value stripped and not empty) -> the typed value.
Parser = Callable[[str, str], Any]
_T = TypeVar("_T")

_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # DICOM AE VR: no backslash, no control


class ConfigError(ValueError):
    """A configuration value is invalid; the message is one line for the operator."""


@dataclass(frozen=True)
class Setting:
    """What a field declares: its variable, the default shown to operators, its meaning
    and how a value is parsed."""

    variable: str
    shown_default: str
    description: str
    parse: Parser


def setting(
    variable: str,
    shown_default: str,
    description: str,
    parse: Parser,
    *,
    default: Any = MISSING,
    default_factory: Callable[[], Any] | Any = MISSING,
    secret: bool = False,
) -> Any:
    """A dataclass field read from ``variable`` (unset or empty: the field's default)."""
    meta = {"setting": Setting(variable, shown_default, description, parse)}
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=meta, repr=not secret)
    return field(default=default, metadata=meta, repr=not secret)


def declared(cls: type) -> list[tuple[str, Setting]]:
    """(field name, its declaration) of each field of ``cls`` read from a variable."""
    return [(f.name, f.metadata["setting"]) for f in fields(cls) if "setting" in f.metadata]


def from_env(cls: type[_T], env: Mapping[str, str]) -> _T:
    """``cls`` built from ``env``; :class:`ConfigError` (one line) on the first bad value."""
    values: dict[str, Any] = {}
    for name, decl in declared(cls):
        raw = env.get(decl.variable, "").strip()
        if raw:
            values[name] = decl.parse(decl.variable, raw)
    return cls(**values)


def registry(*classes: type) -> dict[str, tuple[str, str]]:
    """Variable -> (default shown to operators, description) of every field of ``classes``."""
    return {
        decl.variable: (decl.shown_default, decl.description)
        for cls in classes
        for _, decl in declared(cls)
    }


# --- parsers (their messages are what operators see; tests check some) -------------------


def text(name: str, raw: str) -> str:
    return raw


def lower(name: str, raw: str) -> str:
    return raw.lower()


def path(name: str, raw: str) -> Path:
    return Path(raw)


def integer(low: int, high: int) -> Parser:
    def parse(name: str, raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(f"{name}={raw!r} is not a whole number") from None
        if not low <= value <= high:
            raise ConfigError(f"{name}={value} is out of range {low}..{high}")
        return value

    return parse


def seconds(name: str, raw: str) -> float:
    """A number above 0 and at most a week."""
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None
    if not 0 < value <= 86400 * 7:
        raise ConfigError(f"{name}={value} must be above 0 and at most a week")
    return value


def choice(allowed: Iterable[str], message: str | None = None, upper: bool = False) -> Parser:
    """One of ``allowed`` (case-insensitive); ``message``: the end of the error instead of
    ``must be one of ...``."""
    options = tuple(allowed)

    def parse(name: str, raw: str) -> str:
        value = raw.upper() if upper else raw.lower()
        if value not in options:
            raise ConfigError(
                f"{name}={value!r} {message or 'must be one of ' + ', '.join(options)}"
            )
        return value

    return parse


def flag(name: str, raw: str) -> bool:
    value = raw.lower()
    if value in ("0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    raise ConfigError(f"{name}={value!r} must be 1 or 0")


def existing_file(name: str, raw: str) -> Path:
    if not Path(raw).is_file():
        raise ConfigError(f"{name}={raw} is not a readable file")
    return Path(raw)


def ae_title(name: str, raw: str) -> str:
    if not _AE_TITLE.match(raw):
        raise ConfigError(
            f"{name}={raw!r} is not a DICOM AE title (1-16 printable characters, no backslash)"
        )
    return raw


def is_ae_title(value: str) -> bool:
    return bool(_AE_TITLE.match(value))


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False

"""One configuration from two sources: a TOML file and ``SCP2FHIR_*`` environment variables.

The rule, for every setting: **a command-line flag wins over its environment variable,
an environment variable over the configuration file, the file over the default.** An
environment variable set to the empty string counts as not set.

The file (``SCP2FHIR_CONFIG`` or ``--config``) holds

* every variable of :data:`scp.variables.VARIABLES` at its top level, under its name
  without ``SCP2FHIR_`` in lower case: ``SCP2FHIR_QUIET_SECONDS`` is ``quiet_seconds``;
  values are TOML strings, numbers, booleans or (for comma-separated variables) lists;
* ``[[destinations]]`` tables (:mod:`workers.delivery.settings`), which no environment
  variable can express.

A key the file does not know and an ``SCP2FHIR_*`` variable the registry does not know
are errors, with the nearest known name as a hint, so a typo never goes unnoticed. The
registry is :data:`scp.variables.VARIABLES` (which holds :data:`CONFIG_VARIABLE`); names starting
with ``SCP2FHIR_TEST_`` and :data:`TEST_SUITE_VARIABLES` belong to the test suite and are
let through (the product never reads them).

:func:`load` reads both sources once, in ``main()``. Each concern's typed settings are then
built from it by :func:`settings` (:func:`scp.typed_settings.from_env`), the destinations
through a :class:`Reader`, which gives typed values of nested tables and one-line
:class:`~scp.typed_settings.ConfigError` messages naming the key as its source spells it
(``SCP2FHIR_FHIR_TIMEOUT_SECONDS`` or ``scp2fhir.toml: destinations[1].timeout_seconds``)
and remembers where each value came from (``scp2fhir config check`` prints it).
"""

from __future__ import annotations

import difflib
import re
import tomllib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, ParamSpec, TypeVar

from scp.typed_settings import ConfigError, from_env

PREFIX = "SCP2FHIR_"
#: The variable naming the configuration file (also ``--config``).
CONFIG_VARIABLE = "SCP2FHIR_CONFIG"
#: The file's one key that is no variable: the list of delivery destinations.
DESTINATIONS_KEY = "destinations"
#: Variables of the test suite (never read by the product): let through, not errors.
TEST_SUITE_VARIABLES = frozenset({"SCP2FHIR_UPDATE_GOLDEN", "SCP2FHIR_FUZZ_EXAMPLES"})
TEST_SUITE_PREFIX = "SCP2FHIR_TEST_"
#: A variable whose name ends so holds a credential: ``config check`` masks it.
SECRET_SUFFIXES = ("_PASSWORD", "_TOKEN", "_SECRET")

Kind = Literal["default", "file", "environment", "flag"]
_P = ParamSpec("_P")
_T = TypeVar("_T")


@dataclass(frozen=True)
class Origin:
    """Where a value came from: its source and the name it has there."""

    kind: Kind
    name: str = ""
    file: Path | None = None

    def __str__(self) -> str:
        if self.kind == "default":
            return "default"
        if self.kind == "file":
            return f"file {self.file}: {self.name}"
        return f"{self.kind} {self.name}"


DEFAULT = Origin("default")


def file_key(variable: str) -> str:
    """The file key of a variable: ``SCP2FHIR_QUIET_SECONDS`` -> ``quiet_seconds``."""
    return variable.removeprefix(PREFIX).lower()


def known_variables() -> dict[str, str]:
    """Every variable scp2fhir reads -> its file key (:data:`scp.variables.VARIABLES`)."""
    # Imported here: the registry imports every settings module, the delivery settings
    # among them, which import this module.
    from scp.variables import VARIABLES

    return {name: file_key(name) for name in VARIABLES}


@dataclass(frozen=True)
class Configuration:
    """Both sources, merged by the precedence rule; nothing parsed beyond TOML yet."""

    #: The configuration file, if one was given.
    file: Path | None = None
    #: Variable -> value in environment form (file values converted), the winning source.
    values: dict[str, str] = field(default_factory=dict)
    #: Variable -> where its value came from (absent: default).
    origins: dict[str, Origin] = field(default_factory=dict)
    #: The file's ``[[destinations]]`` tables, as TOML read them.
    destinations: tuple[dict[str, Any], ...] = ()

    def origin(self, variable: str) -> Origin:
        return self.origins.get(variable, DEFAULT)

    def explain(self, error: ConfigError) -> ConfigError:
        """``error`` (raised by a parser that names environment variables) with the
        variables whose value came from the file named by their file key instead, and
        the file named first."""
        message = str(error)
        from_file = False

        def rename(match: re.Match[str]) -> str:
            nonlocal from_file
            origin = self.origins.get(match.group(0))
            if origin is not None and origin.kind == "file":
                from_file = True
                return origin.name
            return match.group(0)

        renamed = _VARIABLE.sub(rename, message)
        if not from_file:
            return error
        return ConfigError(f"{self.file}: {renamed}")


_VARIABLE = re.compile(r"SCP2FHIR_[A-Z0-9_]*[A-Z0-9]")


def load(
    environ: Mapping[str, str],
    flags: Mapping[str, str] | None = None,
    flag_names: Mapping[str, str] | None = None,
) -> Configuration:
    """Read the file (``flags[CONFIG_VARIABLE]`` or ``environ[CONFIG_VARIABLE]``) and the
    environment, check both for unknown names, and merge them with the flags (variable ->
    value, set by the command line; ``flag_names``: variable -> the flag, for messages).
    Raises :class:`ConfigError` (one line)."""
    flags = dict(flags or {})
    flag_names = flag_names or {}
    known = known_variables()
    _check_environment(environ, known)
    flagged = flags.pop(CONFIG_VARIABLE, None)
    path_text = flagged or environ.get(CONFIG_VARIABLE, "").strip()
    values: dict[str, str] = {}
    origins: dict[str, Origin] = {}
    destinations: tuple[dict[str, Any], ...] = ()
    path: Path | None = None
    if path_text:
        origins[CONFIG_VARIABLE] = (
            Origin("flag", flag_names.get(CONFIG_VARIABLE, "--config"))
            if flagged
            else Origin("environment", CONFIG_VARIABLE)
        )
        path = Path(path_text).expanduser()
        document = read_file(path)
        by_key = {key: name for name, key in known.items()}
        for key, value in document.items():
            if key == DESTINATIONS_KEY:
                destinations = _destination_tables(path, value)
                continue
            name = by_key.get(key)
            if name == CONFIG_VARIABLE:
                raise ConfigError(f"{path}: {key} names the file itself: not a key of it")
            if name is None:
                raise ConfigError(f"{path}: unknown key {key!r}{_hint(key, by_key)}")
            values[name] = _as_environment(path, key, value)
            origins[name] = Origin("file", key, path)
    for name, value in environ.items():
        if name in known and name != CONFIG_VARIABLE and value.strip():
            values[name] = value
            origins[name] = Origin("environment", name)
    for name, value in flags.items():
        values[name] = value
        origins[name] = Origin("flag", flag_names.get(name, name))
    return Configuration(path, values, origins, destinations)


def top_level(config: Configuration) -> EnvironmentReader:
    """A reader of the top-level settings by file key (``quiet_seconds``), each read from
    its variable or the file and named as it was given."""
    return EnvironmentReader(config, {key: name for name, key in known_variables().items()})


def settings(config: Configuration, cls: type[_T]) -> _T:
    """The typed settings ``cls`` of ``config`` (:func:`scp.typed_settings.from_env`;
    errors name file keys for file values)."""
    return explained(config, from_env, cls, config.values)


def explained(
    config: Configuration, parse: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs
) -> _T:
    """``parse(*args)``, its :class:`ConfigError` naming file keys instead of variables
    for values from the file (:meth:`Configuration.explain`)."""
    try:
        return parse(*args, **kwargs)
    except ConfigError as exc:
        raise config.explain(exc) from None


def read_file(path: Path) -> dict[str, Any]:
    """The file as TOML; a missing, unreadable or malformed file is one ConfigError."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"{CONFIG_VARIABLE}={path}: cannot read the configuration file ({exc.strerror})"
        ) from None
    try:
        document = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return document


def _check_environment(environ: Mapping[str, str], known: Mapping[str, str]) -> None:
    for name in sorted(environ):
        if not name.startswith(PREFIX) or name in known or name == CONFIG_VARIABLE:
            continue
        if name in TEST_SUITE_VARIABLES or name.startswith(TEST_SUITE_PREFIX):
            continue
        raise ConfigError(
            f"unknown environment variable {name}{_hint(name, [*known, CONFIG_VARIABLE])}"
        )


def _hint(name: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.75)
    return f" (did you mean {close[0]}?)" if close else ""


def _as_environment(path: Path, key: str, value: object) -> str:
    """A top-level file value in the form the environment variable would have."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int | float | str):
        return str(value)
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return ",".join(value)
    raise ConfigError(f"{path}: {key} must be a string, a number, true/false or a list of strings")


def _destination_tables(path: Path, value: object) -> tuple[dict[str, Any], ...]:
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise ConfigError(
            f"{path}: {DESTINATIONS_KEY} must be an array of tables ([[destinations]])"
        )
    return tuple(value)


def is_secret(variable: str) -> bool:
    return variable.endswith(SECRET_SUFFIXES)


def masked(value: str) -> str:
    """A value fit to print: a URL's password replaced by ``***``."""
    return _URL_PASSWORD.sub(r"\1***@", value)


_URL_PASSWORD = re.compile(r"^([a-z+]+://[^:/@]*:)[^@]*@")


# --- typed reading --------------------------------------------------------------------------


class Reader(ABC):
    """Typed access to one table of settings, with one-line errors naming each key as
    its source spells it, and a record of where each value came from."""

    def __init__(self, path: str = "", rel: str = "") -> None:
        #: How messages name this table (``destinations[1].auth``; "" at the top).
        self.path = path
        #: This table's key path from the reader it was opened from (``auth``).
        self.rel = rel
        self._used: set[str] = set()
        self._children: list[Reader] = []
        #: Key path (from the root reader) -> origin, for every value present.
        self.origins: dict[str, Origin] = {}

    # --- what a source provides ---------------------------------------------------------

    @abstractmethod
    def _raw(self, key: str) -> object | None:
        """The value of ``key`` as the source holds it; ``None`` when absent."""

    @abstractmethod
    def name(self, key: str) -> str:
        """``key`` as the operator wrote it (variable or file key)."""

    @abstractmethod
    def origin(self, key: str) -> Origin: ...

    @abstractmethod
    def _prefix(self, keys: Sequence[str]) -> str:
        """What an error about ``keys`` starts with (the file, for file values)."""

    @abstractmethod
    def table(self, key: str) -> Reader:
        """The reader of a nested table (an empty one when absent)."""

    @abstractmethod
    def has_table(self, key: str) -> bool: ...

    def finish(self) -> None:
        """Raise for keys present but never read (a file's unknown keys), here and in
        every table opened from here."""
        self._check_unused()
        for child in self._children:
            child.finish()

    @abstractmethod
    def _check_unused(self) -> None:
        """Raise for keys of this table present but never read."""

    def _opened(self, child: Reader) -> Reader:
        child.origins = self.origins  # one record for the whole tree
        self._children.append(child)
        return child

    # --- errors -------------------------------------------------------------------------

    def fail(self, message: str, *keys: str) -> ConfigError:
        return ConfigError(self._prefix(keys) + message)

    # --- typed values -------------------------------------------------------------------

    def _full(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def _rel(self, key: str) -> str:
        return f"{self.rel}.{key}" if self.rel else key

    def _value(self, key: str) -> object | None:
        self._used.add(key)
        raw = self._raw(key)
        if isinstance(raw, str):
            raw = raw.strip()
            if not raw:
                return None
        if raw is not None:
            self.origins[self._rel(key)] = self.origin(key)
        return raw

    def has(self, key: str) -> bool:
        return self._value(key) is not None

    def text(self, key: str) -> str | None:
        value = self._value(key)
        if value is None:
            return None
        if not isinstance(value, str):
            raise self.fail(f"{self.name(key)} must be a string", key)
        return value

    def required_text(self, key: str, why: str) -> str:
        value = self.text(key)
        if value is None:
            raise self.fail(f"{why} needs {self.name(key)}", key)
        return value

    def integer(self, key: str, default: int, low: int, high: int) -> int:
        value = self._value(key)
        if value is None:
            return default
        try:
            if isinstance(value, bool) or not isinstance(value, int | str):
                raise ValueError
            number = int(value)
        except ValueError:
            raise self.fail(f"{self.name(key)}={value!r} is not a whole number", key) from None
        if not low <= number <= high:
            raise self.fail(f"{self.name(key)}={number} is out of range {low}..{high}", key)
        return number

    def number(self, key: str, default: float, high: float) -> float:
        """A number above 0 and at most ``high``."""
        value = self._value(key)
        if value is None:
            return default
        try:
            if isinstance(value, bool) or not isinstance(value, int | float | str):
                raise ValueError
            number = float(value)
        except ValueError:
            raise self.fail(f"{self.name(key)}={value!r} is not a number", key) from None
        if not 0 < number <= high:
            raise self.fail(
                f"{self.name(key)}={number:g} must be above 0 and at most {high:g}", key
            )
        return number

    def flag(self, key: str, default: bool) -> bool:
        value = self._value(key)
        if value is None:
            return default
        if isinstance(value, bool):
            return value
        text = str(value).lower()
        if text in ("0", "false", "no", "off"):
            return False
        if text in ("1", "true", "yes", "on"):
            return True
        raise self.fail(f"{self.name(key)}={value!r} must be 1 or 0 (true or false)", key)

    def choice(
        self,
        key: str,
        default: str,
        allowed: Iterable[str],
        normal: Callable[[str], str] = str.lower,
    ) -> str:
        value = self.text(key)
        if value is None:
            return default
        options = list(allowed)
        if normal(value) not in options:
            raise self.fail(f"{self.name(key)}={value!r} must be one of {', '.join(options)}", key)
        return normal(value)

    def strings(self, key: str) -> tuple[str, ...]:
        """A TOML list of strings, or a comma-separated string."""
        value = self._value(key)
        if value is None:
            return ()
        items: Sequence[object]
        if isinstance(value, str):
            items = value.split(",")
        elif isinstance(value, list):
            items = value
        else:
            raise self.fail(f"{self.name(key)} must be a list of strings", key)
        if not all(isinstance(item, str) for item in items):
            raise self.fail(f"{self.name(key)} must be a list of strings", key)
        return tuple(str(item).strip() for item in items if str(item).strip())

    def path_value(self, key: str) -> Path | None:
        value = self.text(key)
        return Path(value).expanduser() if value is not None else None

    def mapping(self, key: str) -> dict[str, Any]:
        """A table passed on as it is (a plug-in's own options); ``{}`` when absent."""
        value = self._value(key)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail(f"{self.name(key)} must be a table", key)
        return dict(value)


class TableReader(Reader):
    """One table of the configuration file (``path`` names it in messages)."""

    def __init__(self, values: Mapping[str, Any], file: Path, path: str, rel: str = "") -> None:
        super().__init__(path, rel)
        self._values = values
        self.file = file

    def _raw(self, key: str) -> object | None:
        return self._values.get(key)

    def name(self, key: str) -> str:
        return self._full(key)

    def origin(self, key: str) -> Origin:
        return Origin("file", self._full(key), self.file)

    def _prefix(self, keys: Sequence[str]) -> str:
        return f"{self.file}: "

    def has_table(self, key: str) -> bool:
        return key in self._values

    def table(self, key: str) -> TableReader:
        self._used.add(key)
        value = self._values.get(key, {})
        if not isinstance(value, dict):
            raise self.fail(f"{self.name(key)} must be a table ([{self.name(key)}])", key)
        child = TableReader(value, self.file, self._full(key), self._rel(key))
        self._opened(child)
        return child

    def _check_unused(self) -> None:
        unknown = sorted(set(self._values) - self._used)
        if unknown:
            key = unknown[0]
            raise self.fail(f"unknown key {self.name(key)}{_hint(key, self._used)}", key)


class EnvironmentReader(Reader):
    """A table whose keys map to environment variables (``names``: key path ->
    variable), read from a :class:`Configuration`, where the values may also have come
    from the file's top level or a flag. Keys without a variable are absent."""

    def __init__(self, config: Configuration, names: Mapping[str, str], rel: str = "") -> None:
        super().__init__(rel, rel)
        self._config = config
        self._names = names

    def variable(self, key: str) -> str | None:
        return self._names.get(self._rel(key))

    def _raw(self, key: str) -> object | None:
        variable = self.variable(key)
        return self._config.values.get(variable) if variable else None

    def name(self, key: str) -> str:
        variable = self.variable(key)
        if variable is None:
            return self._rel(key)
        origin = self._config.origin(variable)
        return origin.name if origin.kind == "file" else variable

    def origin(self, key: str) -> Origin:
        variable = self.variable(key)
        return self._config.origin(variable) if variable else DEFAULT

    def _prefix(self, keys: Sequence[str]) -> str:
        if any(self.origin(key).kind == "file" for key in keys):
            return f"{self._config.file}: "
        return ""

    def has_table(self, key: str) -> bool:
        prefix = self._rel(key) + "."
        return any(path.startswith(prefix) for path in self._names)

    def _check_unused(self) -> None:
        """Nothing to do: unknown variables are refused by :func:`load`."""

    def table(self, key: str) -> EnvironmentReader:
        child = EnvironmentReader(self._config, self._names, self._rel(key))
        self._opened(child)
        return child

"""Where emitted studies go: the typed delivery settings, one :class:`Destination` each.

Two ways to configure them (:func:`delivery_settings`), never both:

* **the environment**: one destination, named ``default``, from
  ``SCP2FHIR_FHIR_BASE_URL`` and the other ``SCP2FHIR_FHIR_*`` delivery variables
  (:data:`ENVIRONMENT_NAMES`), as before destinations existed. They may also stand at the
  configuration file's top level (``fhir_base_url = ...``), like every variable;
* **the configuration file's** ``[[destinations]]`` tables: any number, each with a
  name and a FHIR server (``url``) or a folder (``folder``), and its own FHIR version,
  profile, write mode, Bundle, auth and TLS, retry policy, what to leave out
  (``[destinations.leave_out]``) and pseudonymization (``[destinations.pseudonymize]``).
  A delivery variable set as well is an error naming the destination key to use.

``SCP2FHIR_FHIR_VERSION``, ``SCP2FHIR_PROFILE``, ``SCP2FHIR_FHIR_BUNDLE`` and the
identifier systems shape the output folder; they are each destination's defaults too.

Each destination has its own queue, delivery state, retries and dead letters (keys in
:mod:`scp.keys`); :mod:`workers.runner` gives each its own delivery worker process.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from scp import keys
from scp.config import (
    Configuration,
    EnvironmentReader,
    Origin,
    Reader,
    TableReader,
)
from scp.secret import Secret
from scp.typed_settings import ConfigError
from workers.delivery_environment import ENVIRONMENT_NAMES as ENVIRONMENT_NAMES
from workers.mapping import MappingOptions
from workers.mapping.options import FhirVersion
from workers.profiles import PROFILES, profile_named
from workers.settings import WorkerSettings

WriteMode = Literal["conditional", "client-id"]
AuthMethod = Literal["none", "bearer", "client-credentials", "smart-backend"]

WRITE_MODES: tuple[WriteMode, ...] = ("conditional", "client-id")
AUTH_METHODS: tuple[AuthMethod, ...] = ("none", "bearer", "client-credentials", "smart-backend")
#: Entry point group of pseudonymization plug-ins (``[destinations.pseudonymize] hook``).
PSEUDONYM_HOOKS = "scp2fhir.pseudonyms"

#: Auth keys only the given methods use: set with another, they are an operator's
#: mistake (a credential meant for something else), not silently ignored.
_AUTH_KEYS: dict[str, tuple[AuthMethod, ...]] = {
    "token": ("bearer",),
    "token_file": ("bearer",),
    "token_url": ("client-credentials", "smart-backend"),
    "client_id": ("client-credentials", "smart-backend"),
    "client_secret": ("client-credentials",),
    "client_secret_file": ("client-credentials",),
    "private_key_file": ("smart-backend",),
    "key_id": ("smart-backend",),
    "scope": ("client-credentials", "smart-backend"),
}
#: Keys that make sense for a FHIR server only.
_SERVER_ONLY = ("write_mode", "timeout_seconds", "gzip_min_bytes", "validate")

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,39}$")
_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
#: A pseudonymization key shorter than this is refused (HMAC keys want entropy).
MIN_KEY_BYTES = 16


@dataclass(frozen=True)
class Auth:
    """How the bridge authenticates to the server (:mod:`workers.delivery.auth`)."""

    method: AuthMethod = "none"
    token: Secret | None = None
    token_url: str | None = None
    client_id: str | None = None
    client_secret: Secret | None = None
    private_key_file: Path | None = None
    key_id: str | None = None
    scope: str | None = None


@dataclass(frozen=True)
class Tls:
    """CAs trusted for the FHIR and token servers (None: the system's), client
    certificate for mutual TLS."""

    ca_bundle: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None


@dataclass(frozen=True)
class RetryPolicy:
    """Transient failures: attempts before the dead letter, exponential backoff."""

    max_attempts: int = 20
    base_seconds: float = 2.0
    max_seconds: float = 600.0
    conflict_retries: int = 3


@dataclass(frozen=True)
class LeaveOut:
    """Instances a destination does not get: sent by these calling AE titles, of
    series of these modalities, of these SOP classes."""

    calling_aets: frozenset[str] = frozenset()
    modalities: frozenset[str] = frozenset()
    sop_classes: frozenset[str] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.calling_aets or self.modalities or self.sop_classes)

    def drops(self, record: Mapping[str, Any], modality: str | None) -> bool:
        """Whether the instance ``record`` (of a series of ``modality``) is left out."""
        return (
            record.get("calling_ae") in self.calling_aets
            or record.get("sop_class_uid") in self.sop_classes
            or (modality is not None and modality in self.modalities)
        )


BirthDate = Literal["remove", "year"]
Dates = Literal["keep", "shift"]
Descriptions = Literal["remove", "keep"]


@dataclass(frozen=True)
class Pseudonymization:
    """How a destination's copy is pseudonymized (:mod:`workers.delivery.pseudonymize`)."""

    #: HMAC key (from ``key_file``); None only with a hook.
    key: Secret | None = None
    birth_date: BirthDate = "remove"
    dates: Dates = "keep"
    descriptions: Descriptions = "remove"
    #: Identifier systems of the pseudonyms (the issuers' are removed).
    patient_id_system: str | None = None
    accession_system: str | None = None
    #: Entry point (group :data:`PSEUDONYM_HOOKS`) making the pseudonyms instead.
    hook: str | None = None
    hook_options: dict[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class Destination:
    """One place emitted studies are delivered to."""

    name: str
    #: FHIR base URL (no trailing slash), or None for a folder destination.
    url: str | None = None
    #: Folder the resources are written to (``<folder>/ImagingStudy/<id>.json``).
    folder: Path | None = None
    fhir_version: FhirVersion = "R4"
    profile: str = "base"
    profile_version: str | None = None
    write_mode: WriteMode = "conditional"
    bundle: bool = False
    #: What the mapping is told for this destination (profile, Bundle, systems).
    options: MappingOptions = field(default_factory=MappingOptions)
    timeout_seconds: float = 30.0
    gzip_min_bytes: int = 65536
    #: Ask the server's ``$validate`` (with the profile's URL) before each write
    #: (:mod:`workers.delivery.validation`).
    validate: bool = False
    auth: Auth = Auth()
    tls: Tls = Tls()
    retry: RetryPolicy = RetryPolicy()
    leave_out: LeaveOut = LeaveOut()
    pseudonymize: Pseudonymization | None = None
    #: Key path -> where its value came from (``scp2fhir config check``).
    origins: dict[str, Origin] = field(default_factory=dict, compare=False, repr=False)

    @property
    def queue(self) -> str:
        return keys.deliver_queue(self.name)

    @property
    def kind(self) -> Literal["fhir", "folder"]:
        return "folder" if self.folder is not None else "fhir"

    @property
    def where(self) -> str:
        """The server's base URL or the folder, for log lines."""
        return self.url if self.url is not None else str(self.folder)

    def transforms(self) -> bool:
        """Whether its copy differs from the output folder's beyond the mapping options
        (something left out, or pseudonymized)."""
        return bool(self.leave_out) or self.pseudonymize is not None


@dataclass(frozen=True)
class DeliverySettings:
    destinations: tuple[Destination, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.destinations)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.destinations)

    def named(self, name: str) -> Destination | None:
        return next((d for d in self.destinations if d.name == name), None)


def delivery_settings(config: Configuration, settings: WorkerSettings) -> DeliverySettings:
    """The destinations ``config`` describes; raises :class:`ConfigError` (one line)."""
    if config.destinations:
        for variable in ENVIRONMENT_NAMES.values():
            origin = config.origins.get(variable)
            if origin is not None:
                key = next(k for k, v in ENVIRONMENT_NAMES.items() if v == variable)
                where = f"{config.file}: {origin.name}" if origin.kind == "file" else variable
                raise ConfigError(
                    f"{where} is set, but {config.file} lists [[destinations]]: give it as "
                    f"{key} in the destination it is for"
                )
        assert config.file is not None
        parsed: list[Destination] = []
        for index, table in enumerate(config.destinations):
            reader = TableReader(table, config.file, f"destinations[{index}]")
            destination = parse_destination(reader, settings, default_name=None)
            for earlier, other in enumerate(parsed):
                if other.name == destination.name:
                    raise reader.fail(
                        f"destinations[{index}].name={destination.name!r} is already the "
                        f"name of destinations[{earlier}]",
                        "name",
                    )
            parsed.append(destination)
        return DeliverySettings(tuple(parsed))
    environment = EnvironmentReader(config, ENVIRONMENT_NAMES)
    if environment.has("url"):
        destination = parse_destination(environment, settings, keys.DEFAULT_DESTINATION)
        return DeliverySettings((destination,))
    for variable in ENVIRONMENT_NAMES.values():
        if variable in config.values:
            origin = config.origin(variable)
            where = f"{config.file}: {origin.name}" if origin.kind == "file" else variable
            url = environment.name("url")
            raise ConfigError(f"{where} is set but {url} is not: no destination uses it")
    return DeliverySettings()


def parse_destination(r: Reader, settings: WorkerSettings, default_name: str | None) -> Destination:
    """One destination from ``r`` (a ``[[destinations]]`` table or the environment)."""
    name = r.text("name") or default_name
    if name is None:
        raise r.fail(f"{r.name('name')} is missing: every destination needs a name", "name")
    if not _NAME.match(name):
        raise r.fail(
            f"{r.name('name')}={name!r} must be 1-40 letters, digits, '-' or '_' "
            "(it names queues and Redis keys)",
            "name",
        )
    url = r.text("url")
    folder = r.path_value("folder")
    if (url is None) == (folder is None):
        raise r.fail(f"destination {name!r} needs one of url or folder", "url", "folder")
    if url is not None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise r.fail(f"{r.name('url')}={url!r} is not an http(s) URL", "url")
        url = url.rstrip("/")
    version = r.choice("fhir_version", settings.fhir_version, ("R4", "R5"), str.upper)
    fhir_version: FhirVersion = "R5" if version == "R5" else "R4"
    profile = r.choice("profile", settings.profile, PROFILES)
    known = profile_named(profile)
    if fhir_version not in known.fhir_versions:
        raise r.fail(
            f"{r.name('profile')}={profile} is defined for FHIR "
            f"{', '.join(sorted(known.fhir_versions))}, not {r.name('fhir_version')}={version}",
            "profile",
            "fhir_version",
        )
    profile_version = r.text("profile_version")
    if profile_version is not None and profile_version != known.version:
        raise r.fail(
            f"{r.name('profile_version')}={profile_version!r}: this scp2fhir builds "
            f"{profile} {known.version or '(no version: the FHIR core resource)'}",
            "profile_version",
        )
    if folder is not None:
        for key in _SERVER_ONLY:
            if r.has(key):
                raise r.fail(f"{r.name(key)} is for url destinations, not folders", key)
        for table in ("auth", "tls"):
            if r.has_table(table):
                raise r.fail(f"{r.name(table)} is for url destinations, not folders", table)
    write_mode = r.choice("write_mode", "conditional", WRITE_MODES)
    bundle = r.flag("bundle", settings.fhir_bundle)
    timeout = r.number("timeout_seconds", 30.0, high=600)
    gzip_min_bytes = r.integer("gzip_min_bytes", 65536, 0, 10**9)
    validate = r.flag("validate", False)
    auth = _auth(r.table("auth"), url is not None)
    tls = _tls(r.table("tls"))
    retry = _retry(r.table("retry"))
    leave_out = _leave_out(r.table("leave_out"))
    pseudonymize = (
        _pseudonymization(r.table("pseudonymize")) if r.has_table("pseudonymize") else None
    )
    wado = r.text("wado_rs_url")
    if pseudonymize is not None:
        # The study's real UIDs are gone: the archive holding it under those cannot serve
        # this copy. Only an endpoint named for this destination (a research PACS that
        # pseudonymizes with the same key) fits.
        patient_system, accession_system = (
            pseudonymize.patient_id_system,
            pseudonymize.accession_system,
        )
    else:
        wado = wado or settings.wado_rs_url
        patient_system, accession_system = settings.patient_id_system, settings.accession_system
    try:
        options = MappingOptions(
            accession_system=accession_system,
            patient_id_system=patient_system,
            wado_rs_base_url=wado,
            bundle=bundle,
            profile=profile,
        )
    except ValueError as exc:
        raise r.fail(f"destination {name!r}: {exc}", "wado_rs_url") from None
    r.finish()
    return Destination(
        name=name,
        url=url,
        folder=folder,
        fhir_version=fhir_version,
        profile=profile,
        profile_version=profile_version,
        write_mode="client-id" if write_mode == "client-id" else "conditional",
        bundle=bundle,
        options=options,
        timeout_seconds=timeout,
        gzip_min_bytes=gzip_min_bytes,
        validate=validate,
        auth=auth,
        tls=tls,
        retry=retry,
        leave_out=leave_out,
        pseudonymize=pseudonymize,
        origins=dict(r.origins),
    )


def _auth(r: Reader, has_url: bool) -> Auth:
    method_text = r.choice("method", "none", AUTH_METHODS)
    method: AuthMethod = next(m for m in AUTH_METHODS if m == method_text)
    for key, methods in _AUTH_KEYS.items():
        if r.has(key) and method not in methods:
            raise r.fail(
                f"{r.name(key)} is set but {r.name('method')}={method} does not use it "
                f"(it belongs to {' or '.join(methods)})",
                key,
                "method",
            )

    def need(key: str) -> str:
        return r.required_text(key, f"{r.name('method')}={method}")

    token = _secret(r, "token")
    client_secret = _secret(r, "client_secret")
    token_url = r.text("token_url")
    if method == "bearer" and token is None:
        raise r.fail(
            f"{r.name('method')}=bearer needs {r.name('token')} or {r.name('token_file')}",
            "method",
        )
    if method in ("client-credentials", "smart-backend"):
        token_url = need("token_url")
        parts = urlsplit(token_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise r.fail(f"{r.name('token_url')}={token_url!r} is not an http(s) URL", "token_url")
        need("client_id")
    if method == "client-credentials" and client_secret is None:
        raise r.fail(
            f"{r.name('method')}=client-credentials needs {r.name('client_secret')} or "
            f"{r.name('client_secret_file')}",
            "method",
        )
    private_key = _existing(r, "private_key_file")
    if method == "smart-backend":
        need("key_id")
        need("scope")
        need("private_key_file")
        assert private_key is not None
        # Checked now, so a wrong key stops the worker at start, not at the first delivery.
        try:
            signing_algorithm(private_key, r.name("private_key_file"))
        except ConfigError as exc:
            raise r.fail(str(exc), "private_key_file") from None
    return Auth(
        method=method,
        token=token,
        token_url=token_url,
        client_id=r.text("client_id"),
        client_secret=client_secret,
        private_key_file=private_key,
        key_id=r.text("key_id"),
        scope=r.text("scope"),
    )


def _secret(r: Reader, key: str) -> Secret | None:
    """``key`` or ``key_file`` (not both), as a :class:`Secret`."""
    value, path = r.text(key), r.path_value(key + "_file")
    if value is not None and path is not None:
        raise r.fail(f"set {r.name(key)} or {r.name(key + '_file')}, not both", key)
    if path is None:
        return Secret(value) if value is not None else None
    return Secret(_read_secret_file(r, key + "_file", path), path)


def _read_secret_file(r: Reader, key: str, path: Path) -> str:
    try:
        content = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8"
        raise r.fail(f"{r.name(key)}={str(path)!r} cannot be read: {reason}", key) from None
    if not content:
        raise r.fail(f"{r.name(key)}={str(path)!r} is empty", key)
    return content


def _existing(r: Reader, key: str) -> Path | None:
    path = r.path_value(key)
    if path is not None and not path.exists():
        raise r.fail(f"{r.name(key)}={str(path)!r} does not exist", key)
    return path


def _tls(r: Reader) -> Tls:
    ca_bundle = _existing(r, "ca_bundle")
    client_cert = _existing(r, "client_cert")
    client_key = _existing(r, "client_key")
    if client_key is not None and client_cert is None:
        raise r.fail(f"{r.name('client_key')} needs {r.name('client_cert')}", "client_key")
    if client_cert is not None:
        try:
            ssl.create_default_context().load_cert_chain(client_cert, client_key)
        except (ssl.SSLError, OSError) as exc:
            raise r.fail(
                f"{r.name('client_cert')} (with {r.name('client_key')}) cannot be loaded as a "
                f"PEM certificate and unencrypted key ({type(exc).__name__})",
                "client_cert",
            ) from None
    return Tls(ca_bundle, client_cert, client_key)


def _retry(r: Reader) -> RetryPolicy:
    base = r.number("base_seconds", 2.0, high=86400)
    cap = r.number("max_seconds", 600.0, high=86400)
    if cap < base:
        raise r.fail(
            f"{r.name('max_seconds')}={cap:g} is below {r.name('base_seconds')}={base:g}",
            "max_seconds",
        )
    return RetryPolicy(
        max_attempts=r.integer("max_attempts", 20, 1, 1000),
        base_seconds=base,
        max_seconds=cap,
        conflict_retries=r.integer("conflict_retries", 3, 0, 20),
    )


def _leave_out(r: Reader) -> LeaveOut:
    titles = r.strings("calling_aets")
    for title in titles:
        if not _AE_TITLE.match(title):
            raise r.fail(
                f"{r.name('calling_aets')} has an invalid AE title {title!r}", "calling_aets"
            )
    modalities = tuple(m.upper() for m in r.strings("modalities"))
    sop_classes = r.strings("sop_classes")
    for uid in sop_classes:
        if len(uid) > 64 or not _UID.match(uid):
            raise r.fail(f"{r.name('sop_classes')} has an invalid UID {uid!r}", "sop_classes")
    return LeaveOut(frozenset(titles), frozenset(modalities), frozenset(sop_classes))


def _pseudonymization(r: Reader) -> Pseudonymization:
    hook = r.text("hook")
    hook_options = r.mapping("hook_options")
    if hook is not None:
        found = entry_points(group=PSEUDONYM_HOOKS, name=hook)
        if not found:
            installed = sorted(ep.name for ep in entry_points(group=PSEUDONYM_HOOKS))
            raise r.fail(
                f"{r.name('hook')}={hook!r}: no entry point of that name in group "
                f"{PSEUDONYM_HOOKS} (installed: {', '.join(installed) or 'none'})",
                "hook",
            )
    elif hook_options:
        raise r.fail(f"{r.name('hook_options')} is set but {r.name('hook')} is not", "hook")
    key_path = r.path_value("key_file")
    key: Secret | None = None
    if key_path is not None:
        value = _read_secret_file(r, "key_file", key_path)
        if len(value.encode("utf-8")) < MIN_KEY_BYTES:
            raise r.fail(
                f"{r.name('key_file')}={str(key_path)!r} holds fewer than {MIN_KEY_BYTES} "
                "bytes: use a long random key (e.g. `openssl rand -hex 32`)",
                "key_file",
            )
        # Read once: a key that changed under a running worker would change every pseudonym.
        key = Secret(value, key_path, reread=False)
    elif hook is None:
        raise r.fail(
            f"{r.name('key_file')} is missing: pseudonyms need a key (or a hook)", "key_file"
        )
    birth_date = r.choice("birth_date", "remove", ("remove", "year"))
    dates = r.choice("dates", "keep", ("keep", "shift"))
    descriptions = r.choice("descriptions", "remove", ("remove", "keep"))
    return Pseudonymization(
        key=key,
        birth_date="year" if birth_date == "year" else "remove",
        dates="shift" if dates == "shift" else "keep",
        descriptions="keep" if descriptions == "keep" else "remove",
        patient_id_system=r.text("patient_id_system"),
        accession_system=r.text("accession_system"),
        hook=hook,
        hook_options=hook_options,
    )


def signing_algorithm(private_key_file: Path, name: str = "private_key_file") -> str:
    """RS384 for an RSA key, ES384 for an EC P-384 key: the two algorithms SMART Backend
    Services requires servers to support. Anything else is a :class:`ConfigError`."""
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        key = load_pem_private_key(private_key_file.read_bytes(), password=None)
    except TypeError:
        raise ConfigError(f"{name} is encrypted; give an unencrypted PEM key") from None
    except (ValueError, OSError) as exc:
        raise ConfigError(f"{name} is not a PEM private key ({type(exc).__name__})") from None
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < 2048:
            raise ConfigError(f"{name} is a {key.key_size}-bit RSA key; use 2048 bits or more")
        return "RS384"
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1":
        return "ES384"
    raise ConfigError(f"{name} must be an RSA key (RS384) or an EC P-384 key (ES384)")

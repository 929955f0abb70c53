"""Process configuration, parsed once from the environment in ``main()``.

Every process (SCP, worker, supervisor, converter) builds exactly one
:class:`Settings` from ``os.environ`` (plus command-line overrides) and passes
it down. Nothing reads the environment at import time.

Each variable, its default and its meaning is listed in :data:`VARIABLES`, which
is also what the README's configuration table is checked against.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypedDict
from urllib.parse import urlsplit

from scp.access import parse_networks

FhirVersion = Literal["R4", "R5"]


class ConfigError(ValueError):
    """A configuration value is invalid; the message is one line for the operator."""


class Secret:
    """A credential (bearer token, client secret). Its ``repr``/``str`` never show the
    value, so neither ``repr(Settings)`` nor a log line that formats one leaks it.

    A secret read from a file is read again on each :meth:`reveal`, so a rotated file
    (a Kubernetes secret mount, say) is picked up without a restart; if the file has
    become unreadable or empty, the value read at start is used.
    """

    __slots__ = ("_value", "path")

    def __init__(self, value: str, path: Path | None = None) -> None:
        self._value = value
        self.path = path

    def reveal(self) -> str:
        if self.path is not None:
            try:
                fresh = self.path.read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError):
                return self._value
            if fresh:
                return fresh
        return self._value

    def __repr__(self) -> str:
        return "Secret(***)" if self.path is None else f"Secret(file={str(self.path)!r})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return self.path == other.path and self._value == other._value

    def __hash__(self) -> int:
        return hash(self.path)


#: name -> (default shown to operators, description)
VARIABLES: dict[str, tuple[str, str]] = {
    "SCP2FHIR_REDIS_URL": (
        "(unset)",
        "Redis to use. Unset: `scp2fhir up` starts a private Redis; other verbs need it.",
    ),
    "SCP2FHIR_AE_TITLE": ("SCP2FHIR", "Called AE title the SCP answers to."),
    "SCP2FHIR_BIND": ("0.0.0.0", "Address the SCP listens on."),
    "SCP2FHIR_PORT": ("11112", "TCP port of the SCP."),
    "SCP2FHIR_QUIET_SECONDS": (
        "60",
        "A study is finished when no instance arrived for this long (may be fractional).",
    ),
    "SCP2FHIR_OUTPUT_DIR": ("./out", "ImagingStudy JSON is written to OUTPUT_DIR/ImagingStudy/."),
    "SCP2FHIR_FHIR_BASE_URL": (
        "(unset)",
        "FHIR server to PUT ImagingStudy resources to; unset: folder output only.",
    ),
    "SCP2FHIR_FHIR_VERSION": ("R4", "FHIR version of the output: R4 (4.0.1) or R5 (5.0.0)."),
    "SCP2FHIR_SPOOL": (
        "file",
        "Where the SCP holds a dataset while it arrives: `file` (a temporary file, memory "
        "stays flat for objects of any size) or `memory` (~25% faster, RAM per association "
        "= largest object).",
    ),
    "SCP2FHIR_SCP_PROCESSES": (
        "2",
        "SCP processes started by `scp2fhir up`; they share the port (SO_REUSEPORT), so "
        "parallel associations use several cores.",
    ),
    "SCP2FHIR_WORKERS": ("2", "Worker processes started by `scp2fhir up`."),
    "SCP2FHIR_ACCESSION_SYSTEM": (
        "(unset)",
        "Identifier system (absolute URI) for Accession Numbers whose header names no issuer.",
    ),
    "SCP2FHIR_PATIENT_ID_SYSTEM": (
        "(unset)",
        "Identifier system for Patient IDs whose header names no issuer (the Bundle creates a "
        "Patient only when its identifier has a system).",
    ),
    "SCP2FHIR_WADO_RS_URL": (
        "(unset)",
        "DICOMweb WADO-RS base URL of the archive holding the studies; becomes an Endpoint.",
    ),
    "SCP2FHIR_FHIR_BUNDLE": (
        "0",
        "1: also emit one transaction Bundle per study (Patient, Endpoint, Device, "
        "ImagingStudy) to OUTPUT_DIR/Bundle/.",
    ),
    "SCP2FHIR_PROFILE": (
        "base",
        "Implementation-guide profile of the output: base (FHIR ImagingStudy), mii (MII "
        "Bildgebung 2026.0.0, the current release), mii-2027 (its 2027.0.0-ballot), osiris "
        "(Osiris onco-imagingstudy) or qicore (QI-Core); the guides are R4 only. README "
        '"Profiles".',
    ),
    "SCP2FHIR_ALLOWED_CALLING_AETS": (
        "(any)",
        "Comma-separated calling AE titles allowed to associate; others are rejected.",
    ),
    "SCP2FHIR_ALLOWED_PEERS": (
        "(any)",
        "Comma-separated IP addresses/networks (CIDR) allowed to connect; others are "
        "refused before any DICOM is exchanged.",
    ),
    "SCP2FHIR_MAX_ASSOCIATIONS": ("32", "Simultaneous associations per SCP process."),
    "SCP2FHIR_MAX_ASSOCIATIONS_PER_AE": (
        "0",
        "Simultaneous associations one calling AE may hold per SCP process (0: no own limit).",
    ),
    "SCP2FHIR_MAX_PDU": ("1048576", "Largest PDU accepted (bytes, 4096 or more)."),
    "SCP2FHIR_ACSE_TIMEOUT": ("30", "Seconds to wait for association messages."),
    "SCP2FHIR_DIMSE_TIMEOUT": ("60", "Seconds to wait for DIMSE messages."),
    "SCP2FHIR_NETWORK_TIMEOUT": ("60", "Seconds an idle association is kept open."),
    "SCP2FHIR_TLS_CERT": ("(unset)", "PEM certificate (chain): the SCP speaks DICOM TLS only."),
    "SCP2FHIR_TLS_KEY": ("(unset)", "PEM private key of SCP2FHIR_TLS_CERT."),
    "SCP2FHIR_TLS_CA": (
        "(unset)",
        "PEM CA bundle: clients must present a certificate it signed (mutual TLS).",
    ),
    "SCP2FHIR_DASHBOARD_BIND": (
        "127.0.0.1",
        "Address of the RQ dashboard; any other than loopback requires "
        "SCP2FHIR_DASHBOARD_USERNAME and SCP2FHIR_DASHBOARD_PASSWORD.",
    ),
    "SCP2FHIR_DASHBOARD_USERNAME": ("(unset)", "HTTP basic-auth user of the RQ dashboard."),
    "SCP2FHIR_DASHBOARD_PASSWORD": ("(unset)", "HTTP basic-auth password of the RQ dashboard."),
    "SCP2FHIR_DASHBOARD_PORT": (
        "9181",
        "Port of the RQ dashboard started by `scp2fhir up` (0 = none); binds 127.0.0.1.",
    ),
    "SCP2FHIR_WEB_PORT": (
        "9464",
        "Port of `scp2fhir web` (/metrics, /healthz, /readyz, status page) under "
        "`scp2fhir up` (0 = none); binds SCP2FHIR_DASHBOARD_BIND.",
    ),
    "SCP2FHIR_LOG_FORMAT": ("text", "`text` or `json` (one JSON object per line)."),
    "SCP2FHIR_LOG_HASH_UIDS": (
        "0",
        "1: DICOM UIDs in logs are replaced by a short hash (uid:xxxxxxxxxxxx).",
    ),
    "SCP2FHIR_DATA_DIR": (
        "./scp2fhir-data",
        "Where `scp2fhir up` keeps its private Redis (append-only file).",
    ),
    "SCP2FHIR_REDIS_FSYNC": (
        "everysec",
        "appendfsync of the private Redis: always, everysec or no.",
    ),
    "SCP2FHIR_RETENTION_SECONDS": (
        "604800",
        "How long a study's aggregate is kept after emission, so late instances "
        "produce a complete update.",
    ),
    "SCP2FHIR_LOG_LEVEL": ("INFO", "DEBUG, INFO, WARNING or ERROR."),
    "SCP2FHIR_FHIR_WRITE_MODE": (
        "conditional",
        "How a study finds its resource: `conditional` (conditional update on the Study "
        "Instance UID identifier; the server assigns the id) or `client-id` (PUT to the "
        "study's stable id; the server must allow client ids).",
    ),
    "SCP2FHIR_FHIR_AUTH": (
        "none",
        "Authentication to the FHIR server: none, bearer, client-credentials (OAuth2) or "
        "smart-backend (SMART Backend Services, private_key_jwt).",
    ),
    "SCP2FHIR_FHIR_TOKEN": ("(unset)", "Static bearer token (SCP2FHIR_FHIR_AUTH=bearer)."),
    "SCP2FHIR_FHIR_TOKEN_FILE": (
        "(unset)",
        "File holding the static bearer token instead; read again on each delivery (rotation).",
    ),
    "SCP2FHIR_FHIR_TOKEN_URL": (
        "(unset)",
        "OAuth2 token endpoint (client-credentials, smart-backend).",
    ),
    "SCP2FHIR_FHIR_CLIENT_ID": (
        "(unset)",
        "OAuth2 client id (client-credentials, smart-backend).",
    ),
    "SCP2FHIR_FHIR_CLIENT_SECRET": (
        "(unset)",
        "OAuth2 client secret (client-credentials; sent with HTTP Basic).",
    ),
    "SCP2FHIR_FHIR_CLIENT_SECRET_FILE": (
        "(unset)",
        "File holding the OAuth2 client secret instead; read again on each token request.",
    ),
    "SCP2FHIR_FHIR_PRIVATE_KEY_FILE": (
        "(unset)",
        "PEM private key signing the SMART client assertion: RSA (RS384) or EC P-384 "
        "(ES384), unencrypted (protect the file).",
    ),
    "SCP2FHIR_FHIR_KEY_ID": (
        "(unset)",
        "`kid` of that key in the JWK Set registered with the server (smart-backend).",
    ),
    "SCP2FHIR_FHIR_SCOPE": (
        "(unset)",
        "Scopes asked for with the token, e.g. `system/ImagingStudy.rs system/ImagingStudy.cu` "
        "(required for smart-backend).",
    ),
    "SCP2FHIR_FHIR_CA_BUNDLE": (
        "(system)",
        "PEM file (or OpenSSL hashed folder) of the CAs trusted for the FHIR and token "
        "servers; unset: the operating system's trust store.",
    ),
    "SCP2FHIR_FHIR_CLIENT_CERT": (
        "(unset)",
        "PEM client certificate for mutual TLS (may hold its key too).",
    ),
    "SCP2FHIR_FHIR_CLIENT_KEY": (
        "(unset)",
        "PEM private key of SCP2FHIR_FHIR_CLIENT_CERT, if not in that file.",
    ),
    "SCP2FHIR_FHIR_TIMEOUT_SECONDS": (
        "30",
        "Timeout of one HTTP exchange with the FHIR or token server (connect: at most 10).",
    ),
    "SCP2FHIR_FHIR_MAX_ATTEMPTS": (
        "20",
        "Delivery attempts (timeouts, connection errors, 408, 429, 5xx) before the study "
        "is dead-lettered.",
    ),
    "SCP2FHIR_FHIR_RETRY_BASE_SECONDS": (
        "2",
        "First retry delay; doubles per attempt, with jitter, and is never shorter than "
        "the server's Retry-After.",
    ),
    "SCP2FHIR_FHIR_RETRY_MAX_SECONDS": ("600", "Longest retry delay of the backoff."),
    "SCP2FHIR_FHIR_CONFLICT_RETRIES": (
        "3",
        "Re-reads and retries after a version conflict (If-Match answered 409/412) before "
        "the attempt counts as failed.",
    ),
    "SCP2FHIR_FHIR_GZIP_MIN_BYTES": (
        "65536",
        "Request bodies at least this large are sent gzip-compressed (0 = never); once the "
        "server refuses one, bodies go plain for an hour.",
    ),
    # Conformance: the FHIR server's own validator before each write.
    "SCP2FHIR_FHIR_VALIDATE": (
        "0",
        "1: before writing, ask the server's $validate (with the profile's URL); errors "
        "dead-letter the study, warnings are counted.",
    ),
}

FhirWriteMode = Literal["conditional", "client-id"]
FhirAuth = Literal["none", "bearer", "client-credentials", "smart-backend"]

#: Variables that only the given SCP2FHIR_FHIR_AUTH uses: set with another, they are an
#: operator's mistake (a credential meant for something else), not silently ignored.
_FHIR_AUTH_VARIABLES: dict[str, tuple[str, ...]] = {
    "SCP2FHIR_FHIR_TOKEN": ("bearer",),
    "SCP2FHIR_FHIR_TOKEN_FILE": ("bearer",),
    "SCP2FHIR_FHIR_TOKEN_URL": ("client-credentials", "smart-backend"),
    "SCP2FHIR_FHIR_CLIENT_ID": ("client-credentials", "smart-backend"),
    "SCP2FHIR_FHIR_CLIENT_SECRET": ("client-credentials",),
    "SCP2FHIR_FHIR_CLIENT_SECRET_FILE": ("client-credentials",),
    "SCP2FHIR_FHIR_PRIVATE_KEY_FILE": ("smart-backend",),
    "SCP2FHIR_FHIR_KEY_ID": ("smart-backend",),
    "SCP2FHIR_FHIR_SCOPE": ("client-credentials", "smart-backend"),
}

_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # DICOM AE VR: no backslash, no control


@dataclass(frozen=True)
class Settings:
    """Everything a scp2fhir process needs to know, validated."""

    redis_url: str | None = None
    ae_title: str = "SCP2FHIR"
    bind: str = "0.0.0.0"
    port: int = 11112
    quiet_seconds: float = 60.0
    output_dir: Path = Path("out")
    fhir_base_url: str | None = None
    fhir_version: FhirVersion = "R4"
    spool: str = "file"
    accession_system: str | None = None
    patient_id_system: str | None = None
    wado_rs_url: str | None = None
    fhir_bundle: bool = False
    profile: str = "base"
    allowed_calling_aets: tuple[str, ...] = ()
    allowed_peers: tuple[str, ...] = ()
    max_associations: int = 32
    max_associations_per_ae: int = 0
    max_pdu: int = 1024 * 1024
    acse_timeout: float = 30.0
    dimse_timeout: float = 60.0
    network_timeout: float = 60.0
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    dashboard_bind: str = "127.0.0.1"
    dashboard_username: str | None = None
    dashboard_password: str | None = field(default=None, repr=False)
    scp_processes: int = 2
    workers: int = 2
    dashboard_port: int = 9181
    web_port: int = 9464
    log_format: str = "text"
    log_hash_uids: bool = False
    data_dir: Path = Path("scp2fhir-data")
    redis_fsync: str = "everysec"
    retention_seconds: int = 604800
    log_level: str = "INFO"
    fhir_write_mode: FhirWriteMode = "conditional"
    fhir_auth: FhirAuth = "none"
    fhir_token: Secret | None = None
    fhir_token_url: str | None = None
    fhir_client_id: str | None = None
    fhir_client_secret: Secret | None = None
    fhir_private_key_file: Path | None = None
    fhir_key_id: str | None = None
    fhir_scope: str | None = None
    fhir_ca_bundle: Path | None = None
    fhir_client_cert: Path | None = None
    fhir_client_key: Path | None = None
    fhir_timeout_seconds: float = 30.0
    fhir_max_attempts: int = 20
    fhir_retry_base_seconds: float = 2.0
    fhir_retry_max_seconds: float = 600.0
    fhir_conflict_retries: int = 3
    fhir_gzip_min_bytes: int = 65536
    fhir_validate: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """Build settings from ``env``; raise :class:`ConfigError` on the first bad value."""

        def get(name: str) -> str | None:
            value = env.get(name)
            return value.strip() if value is not None and value.strip() != "" else None

        defaults = cls()
        redis_url = get("SCP2FHIR_REDIS_URL")
        if redis_url is not None:
            _check_redis_url(redis_url)
        ae_title = get("SCP2FHIR_AE_TITLE") or defaults.ae_title
        if not _AE_TITLE.match(ae_title):
            raise ConfigError(
                f"SCP2FHIR_AE_TITLE={ae_title!r} is not a DICOM AE title "
                "(1-16 printable characters, no backslash)"
            )
        fhir_base_url = get("SCP2FHIR_FHIR_BASE_URL")
        if fhir_base_url is not None:
            parts = urlsplit(fhir_base_url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ConfigError(f"SCP2FHIR_FHIR_BASE_URL={fhir_base_url!r} is not an http(s) URL")
            fhir_base_url = fhir_base_url.rstrip("/")
        version = (get("SCP2FHIR_FHIR_VERSION") or defaults.fhir_version).upper()
        if version not in ("R4", "R5"):
            raise ConfigError(f"SCP2FHIR_FHIR_VERSION={version!r} must be R4 or R5")
        fsync = (get("SCP2FHIR_REDIS_FSYNC") or defaults.redis_fsync).lower()
        if fsync not in ("always", "everysec", "no"):
            raise ConfigError(f"SCP2FHIR_REDIS_FSYNC={fsync!r} must be always, everysec or no")
        spool = (get("SCP2FHIR_SPOOL") or defaults.spool).lower()
        if spool not in ("file", "memory"):
            raise ConfigError(f"SCP2FHIR_SPOOL={spool!r} must be file or memory")
        calling = tuple(
            t.strip() for t in (get("SCP2FHIR_ALLOWED_CALLING_AETS") or "").split(",") if t.strip()
        )
        for title in calling:
            if not _AE_TITLE.match(title):
                raise ConfigError(
                    f"SCP2FHIR_ALLOWED_CALLING_AETS has an invalid AE title {title!r}"
                )
        peers_text = get("SCP2FHIR_ALLOWED_PEERS") or ""
        try:
            peers = tuple(str(n) for n in parse_networks(peers_text))
        except ValueError as exc:
            raise ConfigError(f"SCP2FHIR_ALLOWED_PEERS: {exc}") from None
        tls = {name: _existing_file(env, f"SCP2FHIR_TLS_{name}") for name in ("CERT", "KEY", "CA")}
        if (tls["CERT"] is None) != (tls["KEY"] is None):
            raise ConfigError("SCP2FHIR_TLS_CERT and SCP2FHIR_TLS_KEY go together")
        if tls["CA"] is not None and tls["CERT"] is None:
            raise ConfigError("SCP2FHIR_TLS_CA needs SCP2FHIR_TLS_CERT and SCP2FHIR_TLS_KEY")
        dashboard_bind = get("SCP2FHIR_DASHBOARD_BIND") or defaults.dashboard_bind
        dashboard_username = get("SCP2FHIR_DASHBOARD_USERNAME")
        dashboard_password = get("SCP2FHIR_DASHBOARD_PASSWORD")
        if not _is_loopback(dashboard_bind) and not (dashboard_username and dashboard_password):
            raise ConfigError(
                f"SCP2FHIR_DASHBOARD_BIND={dashboard_bind} is reachable from other hosts: set "
                "SCP2FHIR_DASHBOARD_USERNAME and SCP2FHIR_DASHBOARD_PASSWORD"
            )
        log_level = (get("SCP2FHIR_LOG_LEVEL") or defaults.log_level).upper()
        if log_level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ConfigError(
                f"SCP2FHIR_LOG_LEVEL={log_level!r} must be DEBUG, INFO, WARNING or ERROR"
            )
        return cls(
            redis_url=redis_url,
            ae_title=ae_title,
            bind=get("SCP2FHIR_BIND") or defaults.bind,
            port=_int(env, "SCP2FHIR_PORT", defaults.port, 1, 65535),
            quiet_seconds=_float(env, "SCP2FHIR_QUIET_SECONDS", defaults.quiet_seconds),
            output_dir=Path(get("SCP2FHIR_OUTPUT_DIR") or defaults.output_dir),
            fhir_base_url=fhir_base_url,
            fhir_version="R5" if version == "R5" else "R4",
            spool=spool,
            accession_system=get("SCP2FHIR_ACCESSION_SYSTEM"),
            patient_id_system=get("SCP2FHIR_PATIENT_ID_SYSTEM"),
            wado_rs_url=get("SCP2FHIR_WADO_RS_URL"),
            fhir_bundle=_flag(env, "SCP2FHIR_FHIR_BUNDLE"),
            # Checked against the profile registry with the other mapping options
            # (workers.context.mapping_options), which knows the profiles.
            profile=(get("SCP2FHIR_PROFILE") or defaults.profile).lower(),
            allowed_calling_aets=calling,
            allowed_peers=peers,
            max_associations=_int(
                env, "SCP2FHIR_MAX_ASSOCIATIONS", defaults.max_associations, 1, 1000
            ),
            max_associations_per_ae=_int(
                env, "SCP2FHIR_MAX_ASSOCIATIONS_PER_AE", defaults.max_associations_per_ae, 0, 1000
            ),
            max_pdu=_int(env, "SCP2FHIR_MAX_PDU", defaults.max_pdu, 4096, 2**31 - 1),
            acse_timeout=_float(env, "SCP2FHIR_ACSE_TIMEOUT", defaults.acse_timeout),
            dimse_timeout=_float(env, "SCP2FHIR_DIMSE_TIMEOUT", defaults.dimse_timeout),
            network_timeout=_float(env, "SCP2FHIR_NETWORK_TIMEOUT", defaults.network_timeout),
            tls_cert=tls["CERT"],
            tls_key=tls["KEY"],
            tls_ca=tls["CA"],
            dashboard_bind=dashboard_bind,
            dashboard_username=dashboard_username,
            dashboard_password=dashboard_password,
            scp_processes=_int(env, "SCP2FHIR_SCP_PROCESSES", defaults.scp_processes, 1, 64),
            workers=_int(env, "SCP2FHIR_WORKERS", defaults.workers, 1, 64),
            dashboard_port=_int(env, "SCP2FHIR_DASHBOARD_PORT", defaults.dashboard_port, 0, 65535),
            web_port=_int(env, "SCP2FHIR_WEB_PORT", defaults.web_port, 0, 65535),
            log_format=_choice(env, "SCP2FHIR_LOG_FORMAT", defaults.log_format, ("text", "json")),
            log_hash_uids=_flag(env, "SCP2FHIR_LOG_HASH_UIDS"),
            data_dir=Path(get("SCP2FHIR_DATA_DIR") or defaults.data_dir),
            redis_fsync=fsync,
            retention_seconds=_int(
                env, "SCP2FHIR_RETENTION_SECONDS", defaults.retention_seconds, 60, 10**9
            ),
            log_level=log_level,
            **_fhir_delivery(env, fhir_base_url),
        )

    def require_redis_url(self) -> str:
        if self.redis_url is None:
            raise ConfigError(
                "SCP2FHIR_REDIS_URL is not set (only `scp2fhir up` starts a Redis of its own)"
            )
        return self.redis_url


def _choice(env: Mapping[str, str], name: str, default: str, allowed: tuple[str, ...]) -> str:
    raw = env.get(name, "").strip().lower() or default
    if raw not in allowed:
        raise ConfigError(f"{name}={raw!r} must be one of {', '.join(allowed)}")
    return raw


def _flag(env: Mapping[str, str], name: str) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise ConfigError(f"{name}={raw!r} must be 1 or 0")


def _existing_file(env: Mapping[str, str], name: str) -> Path | None:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    path = Path(raw)
    if not path.is_file():
        raise ConfigError(f"{name}={raw} is not a readable file")
    return path


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _FhirDelivery(TypedDict):
    fhir_write_mode: FhirWriteMode
    fhir_auth: FhirAuth
    fhir_token: Secret | None
    fhir_token_url: str | None
    fhir_client_id: str | None
    fhir_client_secret: Secret | None
    fhir_private_key_file: Path | None
    fhir_key_id: str | None
    fhir_scope: str | None
    fhir_ca_bundle: Path | None
    fhir_client_cert: Path | None
    fhir_client_key: Path | None
    fhir_timeout_seconds: float
    fhir_max_attempts: int
    fhir_retry_base_seconds: float
    fhir_retry_max_seconds: float
    fhir_conflict_retries: int
    fhir_gzip_min_bytes: int
    fhir_validate: bool


def _fhir_delivery(env: Mapping[str, str], base_url: str | None) -> _FhirDelivery:
    """The FHIR delivery fields (``SCP2FHIR_FHIR_*``), checked together: an incomplete
    or contradictory combination is one :class:`ConfigError`."""

    def get(name: str) -> str | None:
        value = env.get(name)
        return value.strip() if value is not None and value.strip() != "" else None

    mode = (get("SCP2FHIR_FHIR_WRITE_MODE") or "conditional").lower()
    if mode not in ("conditional", "client-id"):
        raise ConfigError(f"SCP2FHIR_FHIR_WRITE_MODE={mode!r} must be conditional or client-id")
    auth = (get("SCP2FHIR_FHIR_AUTH") or "none").lower()
    if auth not in ("none", "bearer", "client-credentials", "smart-backend"):
        raise ConfigError(
            f"SCP2FHIR_FHIR_AUTH={auth!r} must be none, bearer, client-credentials or smart-backend"
        )
    if auth != "none" and base_url is None:
        raise ConfigError(f"SCP2FHIR_FHIR_AUTH={auth} needs SCP2FHIR_FHIR_BASE_URL")
    for name, modes in _FHIR_AUTH_VARIABLES.items():
        if get(name) is not None and auth not in modes:
            raise ConfigError(
                f"{name} is set but SCP2FHIR_FHIR_AUTH={auth} does not use it "
                f"(it belongs to {' or '.join(modes)})"
            )

    def need(name: str) -> str:
        value = get(name)
        if value is None:
            raise ConfigError(f"SCP2FHIR_FHIR_AUTH={auth} needs {name}")
        return value

    def secret(name: str) -> Secret | None:
        """``NAME`` or ``NAME_FILE`` (not both), as a :class:`Secret`."""
        value, path = get(name), _fhir_path(env, name + "_FILE")
        if value is not None and path is not None:
            raise ConfigError(f"set {name} or {name}_FILE, not both")
        if path is None:
            return Secret(value) if value is not None else None
        try:
            content = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8"
            raise ConfigError(f"{name}_FILE={str(path)!r} cannot be read: {reason}") from None
        if not content:
            raise ConfigError(f"{name}_FILE={str(path)!r} is empty")
        return Secret(content, path)

    token = secret("SCP2FHIR_FHIR_TOKEN")
    client_secret = secret("SCP2FHIR_FHIR_CLIENT_SECRET")
    token_url = get("SCP2FHIR_FHIR_TOKEN_URL")
    private_key = _fhir_path(env, "SCP2FHIR_FHIR_PRIVATE_KEY_FILE")
    if auth == "bearer" and token is None:
        raise ConfigError("SCP2FHIR_FHIR_AUTH=bearer needs SCP2FHIR_FHIR_TOKEN or _TOKEN_FILE")
    if auth in ("client-credentials", "smart-backend"):
        token_url = need("SCP2FHIR_FHIR_TOKEN_URL")
        parts = urlsplit(token_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(f"SCP2FHIR_FHIR_TOKEN_URL={token_url!r} is not an http(s) URL")
        need("SCP2FHIR_FHIR_CLIENT_ID")
    if auth == "client-credentials" and client_secret is None:
        raise ConfigError(
            "SCP2FHIR_FHIR_AUTH=client-credentials needs SCP2FHIR_FHIR_CLIENT_SECRET or _FILE"
        )
    ca_bundle = _fhir_path(env, "SCP2FHIR_FHIR_CA_BUNDLE")
    client_cert = _fhir_path(env, "SCP2FHIR_FHIR_CLIENT_CERT")
    client_key = _fhir_path(env, "SCP2FHIR_FHIR_CLIENT_KEY")
    for name, path in (
        ("SCP2FHIR_FHIR_PRIVATE_KEY_FILE", private_key),
        ("SCP2FHIR_FHIR_CA_BUNDLE", ca_bundle),
        ("SCP2FHIR_FHIR_CLIENT_CERT", client_cert),
        ("SCP2FHIR_FHIR_CLIENT_KEY", client_key),
    ):
        if path is not None and not path.exists():
            raise ConfigError(f"{name}={str(path)!r} does not exist")
    if auth == "smart-backend":
        need("SCP2FHIR_FHIR_KEY_ID")
        need("SCP2FHIR_FHIR_SCOPE")
        # Checked now, so a wrong key stops the worker at start, not at the first delivery.
        signing_algorithm(Path(need("SCP2FHIR_FHIR_PRIVATE_KEY_FILE")))
    if client_key is not None and client_cert is None:
        raise ConfigError("SCP2FHIR_FHIR_CLIENT_KEY needs SCP2FHIR_FHIR_CLIENT_CERT")
    if client_cert is not None:
        import ssl

        try:
            ssl.create_default_context().load_cert_chain(client_cert, client_key)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(
                "SCP2FHIR_FHIR_CLIENT_CERT/_KEY cannot be loaded as a PEM certificate and "
                f"unencrypted key ({type(exc).__name__})"
            ) from None
    retry_base = _float(env, "SCP2FHIR_FHIR_RETRY_BASE_SECONDS", 2.0)
    retry_max = _float(env, "SCP2FHIR_FHIR_RETRY_MAX_SECONDS", 600.0)
    if retry_max < retry_base:
        raise ConfigError(
            f"SCP2FHIR_FHIR_RETRY_MAX_SECONDS={retry_max} is below "
            f"SCP2FHIR_FHIR_RETRY_BASE_SECONDS={retry_base}"
        )
    timeout = _float(env, "SCP2FHIR_FHIR_TIMEOUT_SECONDS", 30.0)
    if timeout > 600:
        raise ConfigError(f"SCP2FHIR_FHIR_TIMEOUT_SECONDS={timeout} must be at most 600")
    return _FhirDelivery(
        fhir_write_mode="client-id" if mode == "client-id" else "conditional",
        fhir_auth=auth,  # type: ignore[typeddict-item]  # checked against the Literal above
        fhir_token=token,
        fhir_token_url=token_url,
        fhir_client_id=get("SCP2FHIR_FHIR_CLIENT_ID"),
        fhir_client_secret=client_secret,
        fhir_private_key_file=private_key,
        fhir_key_id=get("SCP2FHIR_FHIR_KEY_ID"),
        fhir_scope=get("SCP2FHIR_FHIR_SCOPE"),
        fhir_ca_bundle=ca_bundle,
        fhir_client_cert=client_cert,
        fhir_client_key=client_key,
        fhir_timeout_seconds=timeout,
        fhir_max_attempts=_int(env, "SCP2FHIR_FHIR_MAX_ATTEMPTS", 20, 1, 1000),
        fhir_retry_base_seconds=retry_base,
        fhir_retry_max_seconds=retry_max,
        fhir_conflict_retries=_int(env, "SCP2FHIR_FHIR_CONFLICT_RETRIES", 3, 0, 20),
        fhir_gzip_min_bytes=_int(env, "SCP2FHIR_FHIR_GZIP_MIN_BYTES", 65536, 0, 10**9),
        fhir_validate=_flag(env, "SCP2FHIR_FHIR_VALIDATE"),
    )


def signing_algorithm(private_key_file: Path) -> str:
    """RS384 for an RSA key, ES384 for an EC P-384 key: the two algorithms SMART Backend
    Services requires servers to support. Anything else is a :class:`ConfigError`."""
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    name = "SCP2FHIR_FHIR_PRIVATE_KEY_FILE"
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


def _fhir_path(env: Mapping[str, str], name: str) -> Path | None:
    raw = env.get(name, "").strip()
    return Path(raw).expanduser() if raw else None


def _check_redis_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss", "unix", "redis+sentinel"):
        raise ConfigError(
            "SCP2FHIR_REDIS_URL must start with redis://, rediss://, unix:// or redis+sentinel://"
        )
    if parts.scheme != "unix" and not parts.hostname:
        raise ConfigError("SCP2FHIR_REDIS_URL has no host")


def _int(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = env.get(name, "").strip()
    if raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a whole number") from None
    if not low <= value <= high:
        raise ConfigError(f"{name}={value} is out of range {low}..{high}")
    return value


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None
    if not 0 < value <= 86400 * 7:
        raise ConfigError(f"{name}={value} must be above 0 and at most a week")
    return value

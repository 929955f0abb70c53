"""Process configuration, parsed once in ``main()``.

Every process (SCP, worker, supervisor, converter) builds exactly one :class:`Settings`
from the merged configuration (:mod:`scp.config`: the configuration file, the
environment and command-line flags) and passes it down. Nothing reads the environment
at import time. The delivery destinations have typed settings of their own
(:mod:`workers.delivery.settings`), parsed from the same configuration.

Each variable, its default and its meaning is listed in :data:`VARIABLES`, which is the
registry of known variables (:mod:`scp.config`) and what the README's configuration
table is checked against.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit

from scp.access import parse_networks
from scp.file_access import ACCESS_CHOICES
from scp.prefork import usable_cores
from scp.secret import Secret as Secret  # re-exported: it lived here before scp.secret

if TYPE_CHECKING:
    from scp.header import Limits

FhirVersion = Literal["R4", "R5"]


class ConfigError(ValueError):
    """A configuration value is invalid; the message is one line for the operator."""


#: name -> (default shown to operators, description)
VARIABLES: dict[str, tuple[str, str]] = {
    # --- the configuration mechanism (scp/config.py)
    "SCP2FHIR_CONFIG": (
        "(unset)",
        "TOML configuration file (also `--config`): any variable below by its name without "
        "SCP2FHIR_ in lower case, plus [[destinations]]. The environment wins over the file.",
    ),
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
    "SCP2FHIR_FAST_PATH": (
        "1",
        "0: every C-STORE through pynetdicom's own message handling instead of the SCP's "
        "C-STORE fast path (scp.fastpath; for comparison).",
    ),
    # --- where datasets wait while they arrive (scp.spool)
    "SCP2FHIR_SPOOL_DIR": (
        "(temp)/scp2fhir-spool",
        "Parent folder of the SCP processes' spool folders (one each, `scp-<pid>-<random>`); "
        "at start a process removes the folders of processes that are gone.",
    ),
    "SCP2FHIR_SCP_PROCESSES": (
        "(cores)",
        "Acceptor processes of `scp2fhir scp` (and so of `up`): it binds the port once and "
        "forks this many, which share it, so parallel associations use several cores. "
        "Default: the cores it may run on.",
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
        "ImagingStudy, vital-sign and dose Observations, R5 ImagingSelections) to "
        "OUTPUT_DIR/Bundle/.",
    ),
    "SCP2FHIR_PROFILE": (
        "base",
        "Implementation-guide profile of the output: base (FHIR ImagingStudy), mii (MII "
        "Bildgebung 2026.0.0, the current release), mii-2027 (its 2027.0.0-ballot), osiris "
        "(Osiris onco-imagingstudy) or qicore (QI-Core); the guides are R4 only. README "
        '"Profiles".',
    ),
    # --- mapping depth: local times ---
    "SCP2FHIR_SITE_TIMEZONE": (
        "(unset)",
        "IANA time zone of the site (e.g. Europe/Berlin): DICOM times of headers without "
        "Timezone Offset From UTC get the offset in force then; unset: such times keep only "
        "their date (no zone is invented).",
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
    # --- what a peer may hold before it is associated (scp.access.Slots)
    "SCP2FHIR_MAX_PENDING_CONNECTIONS": (
        "64",
        "Connections per SCP process that have not completed association negotiation; "
        "they never take association slots, and when all are taken a new connection "
        "drops the one that has waited longest.",
    ),
    "SCP2FHIR_MAX_ASSOCIATIONS_PER_AE": (
        "0",
        "Simultaneous associations one calling AE may hold per SCP process (0: no own limit).",
    ),
    "SCP2FHIR_MAX_PDU": (
        "1048576",
        "Largest P-DATA PDU accepted, and announced to senders (bytes, 4096 or more); a "
        "larger one, or an association PDU over 256 KiB, gets an A-ABORT before it is read.",
    ),
    # --- what one instance's header may cost (scp.header, scp.header_budget)
    "SCP2FHIR_MAX_HEADER_BYTES": (
        "4194304",
        "Largest header stored per instance (DICOM JSON bytes). Beyond it the identity and "
        "what the mapping reads are kept first and the rest left out, named by tag "
        "(Warning 0xB006).",
    ),
    "SCP2FHIR_MAX_INFLATED_BYTES": (
        "67108864",
        "How much of a deflated dataset is inflated (to a file in the spool folder) to find "
        "its header; one whose header does not end within it gets 0xC230.",
    ),
    "SCP2FHIR_ACSE_TIMEOUT": (
        "30",
        "Seconds to wait for association messages; also the most a connection may take "
        "from accept to an established association (and a TLS handshake).",
    ),
    "SCP2FHIR_DRAIN_SECONDS": (
        "20",
        "On a stop (SIGTERM, SIGINT, SIGHUP) the SCP refuses new associations and lets "
        "open ones go on for at most this many seconds, then aborts them.",
    ),
    "SCP2FHIR_DIMSE_TIMEOUT": (
        "60",
        "Seconds to wait for DIMSE messages; also the most one PDU may take to arrive once begun.",
    ),
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
        "1: DICOM UIDs in logs are replaced by a short hash (uid:xxxxxxxxxxxx); IP "
        "addresses stay readable; a path with a UID is replaced whole.",
    ),
    "SCP2FHIR_DATA_DIR": (
        "./scp2fhir-data",
        "Where `scp2fhir up` keeps its private Redis (append-only file).",
    ),
    "SCP2FHIR_FILE_ACCESS": (
        "private",
        "Who may read the ImagingStudy files and the private Redis's append-only file: "
        "`private` (files 0600, new folders 0700), `group` (0640/0750) or `umask` (as the "
        "process umask makes them).",
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
    # --- delivery: the environment's one destination, read by workers/delivery/settings.py
    # (with [[destinations]] in the configuration file these are errors)
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
    # --- study lifecycle (README "Study lifecycle") ---
    "SCP2FHIR_REJECTED_ON_RESEND": (
        "stay",
        "An instance an IOCM rejection note named that is C-STOREd again: `stay` rejected "
        "(IOCM) or `revive` (a copy received after the note shows it again).",
    ),
    "SCP2FHIR_RETRACTED_ON_STORE": (
        "stay",
        "A C-STORE into a study retracted with `scp2fhir retract`: `stay` (it is folded, the "
        "study stays entered-in-error) or `revive` (the retraction is lifted).",
    ),
    # Reconcile and backfill against a PACS: parsed by scp.pacs.settings.PacsSettings.
    "SCP2FHIR_PACS": (
        "(unset)",
        "The PACS `reconcile`, `backfill` and the scheduled reconcile talk to, as "
        "`AET@host:port`; `--pacs` overrides it.",
    ),
    "SCP2FHIR_PACS_CALLING_AE": (
        "(AE title)",
        "Calling AE title of the C-FIND and C-MOVE requests (default: SCP2FHIR_AE_TITLE); "
        "the PACS must allow it to query and move.",
    ),
    "SCP2FHIR_PACS_MOVE_DESTINATION": (
        "(AE title)",
        "AE title the PACS is asked to move studies to: the scp2fhir SCP as the PACS knows "
        "it (default: SCP2FHIR_AE_TITLE).",
    ),
    "SCP2FHIR_PACS_TIMEOUT": (
        "30",
        "Seconds to connect to the PACS, to associate, and to wait for each C-FIND response.",
    ),
    "SCP2FHIR_PACS_MOVE_TIMEOUT": (
        "600",
        "Seconds to wait for the next C-MOVE response (some PACS answer only when the whole "
        "study has been sent).",
    ),
    "SCP2FHIR_PACS_MAX_RESULTS": (
        "1000",
        "C-FIND results read per query; a day with more (or whose answer the PACS caps) is "
        "asked again in smaller Study Time windows, down to a minute.",
    ),
    "SCP2FHIR_PACS_MOVES": ("2", "C-MOVEs at once (backfill, reconcile --fetch)."),
    "SCP2FHIR_RECONCILE_DAYS": (
        "7",
        "Days (up to today) reconciled when `--since` is not given, and by the scheduled "
        "reconcile.",
    ),
    "SCP2FHIR_RECONCILE_EVERY_HOURS": (
        "0",
        "The workers reconcile the last SCP2FHIR_RECONCILE_DAYS days with SCP2FHIR_PACS "
        "every so many hours (0: never); drift on the status page and in /metrics.",
    ),
    # --- conformance: the FHIR server's own validator before each write
    "SCP2FHIR_FHIR_VALIDATE": (
        "0",
        "1: before writing, ask the server's $validate (with the profile's URL); errors "
        "dead-letter the study, warnings are counted.",
    ),
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
    fhir_version: FhirVersion = "R4"
    spool: str = "file"
    fast_path: bool = True
    # where datasets wait while they arrive (scp.spool)
    spool_dir: Path | None = None
    accession_system: str | None = None
    patient_id_system: str | None = None
    wado_rs_url: str | None = None
    fhir_bundle: bool = False
    profile: str = "base"
    # mapping depth: local times
    site_timezone: str | None = None
    allowed_calling_aets: tuple[str, ...] = ()
    allowed_peers: tuple[str, ...] = ()
    max_associations: int = 32
    max_associations_per_ae: int = 0
    # what a peer may hold before it is associated (scp.access.Slots)
    max_pending_connections: int = 64
    max_pdu: int = 1024 * 1024
    # what one instance's header may cost (scp.header, scp.header_budget)
    max_header_bytes: int = 4 * 1024 * 1024
    max_inflated_bytes: int = 64 * 1024 * 1024
    acse_timeout: float = 30.0
    drain_seconds: float = 20.0
    dimse_timeout: float = 60.0
    network_timeout: float = 60.0
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    dashboard_bind: str = "127.0.0.1"
    dashboard_username: str | None = None
    dashboard_password: str | None = field(default=None, repr=False)
    scp_processes: int = field(default_factory=usable_cores)
    workers: int = 2
    dashboard_port: int = 9181
    web_port: int = 9464
    log_format: str = "text"
    log_hash_uids: bool = False
    data_dir: Path = Path("scp2fhir-data")
    redis_fsync: str = "everysec"
    # modes of the files (and new folders) holding patient data (scp.file_access)
    file_access: str = "private"
    retention_seconds: int = 604800
    log_level: str = "INFO"
    # study lifecycle
    rejected_on_resend: str = "stay"
    retracted_on_store: str = "stay"

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
            fhir_version="R5" if version == "R5" else "R4",
            spool=spool,
            fast_path=_flag(env, "SCP2FHIR_FAST_PATH")
            if env.get("SCP2FHIR_FAST_PATH", "").strip()
            else defaults.fast_path,
            spool_dir=Path(spool_dir) if (spool_dir := get("SCP2FHIR_SPOOL_DIR")) else None,
            accession_system=get("SCP2FHIR_ACCESSION_SYSTEM"),
            patient_id_system=get("SCP2FHIR_PATIENT_ID_SYSTEM"),
            wado_rs_url=get("SCP2FHIR_WADO_RS_URL"),
            fhir_bundle=_flag(env, "SCP2FHIR_FHIR_BUNDLE"),
            # Checked against the profile registry with the other mapping options
            # (workers.context.mapping_options), which knows the profiles.
            profile=(get("SCP2FHIR_PROFILE") or defaults.profile).lower(),
            # Checked as an IANA zone by the mapping options (workers.context).
            site_timezone=get("SCP2FHIR_SITE_TIMEZONE"),
            allowed_calling_aets=calling,
            allowed_peers=peers,
            max_associations=_int(
                env, "SCP2FHIR_MAX_ASSOCIATIONS", defaults.max_associations, 1, 1000
            ),
            max_associations_per_ae=_int(
                env, "SCP2FHIR_MAX_ASSOCIATIONS_PER_AE", defaults.max_associations_per_ae, 0, 1000
            ),
            max_pending_connections=_int(
                env,
                "SCP2FHIR_MAX_PENDING_CONNECTIONS",
                defaults.max_pending_connections,
                1,
                10000,
            ),
            max_pdu=_int(env, "SCP2FHIR_MAX_PDU", defaults.max_pdu, 4096, 2**31 - 1),
            max_header_bytes=_int(
                env, "SCP2FHIR_MAX_HEADER_BYTES", defaults.max_header_bytes, 65536, 2**30
            ),
            max_inflated_bytes=_int(
                env, "SCP2FHIR_MAX_INFLATED_BYTES", defaults.max_inflated_bytes, 65536, 2**34
            ),
            acse_timeout=_float(env, "SCP2FHIR_ACSE_TIMEOUT", defaults.acse_timeout),
            drain_seconds=_float(env, "SCP2FHIR_DRAIN_SECONDS", defaults.drain_seconds),
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
            file_access=_choice(env, "SCP2FHIR_FILE_ACCESS", defaults.file_access, ACCESS_CHOICES),
            retention_seconds=_int(
                env, "SCP2FHIR_RETENTION_SECONDS", defaults.retention_seconds, 60, 10**9
            ),
            log_level=log_level,
            rejected_on_resend=_choice(
                env, "SCP2FHIR_REJECTED_ON_RESEND", defaults.rejected_on_resend, ("stay", "revive")
            ),
            retracted_on_store=_choice(
                env, "SCP2FHIR_RETRACTED_ON_STORE", defaults.retracted_on_store, ("stay", "revive")
            ),
        )

    def read_limits(self, scratch: Path | None = None) -> Limits:
        """What reading one header may cost (inflated data goes to ``scratch``)."""
        from scp.header import Limits

        return Limits(self.max_header_bytes, self.max_inflated_bytes, scratch)

    def spool_parent(self) -> Path:
        """``SCP2FHIR_SPOOL_DIR``, or ``scp2fhir-spool`` in the system's temporary folder."""
        if self.spool_dir is not None:
            return self.spool_dir
        import tempfile

        return Path(tempfile.gettempdir()) / "scp2fhir-spool"

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

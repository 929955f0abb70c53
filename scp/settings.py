"""Settings of the SCP (``scp2fhir scp``, and the SCP ``scp2fhir up`` runs), parsed once
in ``main()`` by :func:`scp.typed_settings.from_env` and passed down.

The other concerns have typed settings of their own, next to the code that uses them:
:mod:`scp.shared_settings` (Redis, retention, logging, file modes), :mod:`workers.settings`
(the workers and the mapping), :mod:`scp.up.settings` (the supervisor),
:mod:`workers.delivery.settings` and :mod:`scp.pacs.settings`. :data:`scp.variables.VARIABLES`
is collected from all of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from scp.access import parse_networks
from scp.prefork import usable_cores
from scp.typed_settings import (
    ConfigError,
    choice,
    existing_file,
    flag,
    integer,
    is_ae_title,
    path,
    seconds,
    setting,
    text,
)
from scp.typed_settings import (
    ae_title as _ae_title,
)

if TYPE_CHECKING:
    from scp.header import Limits


def _calling_aets(name: str, raw: str) -> tuple[str, ...]:
    titles = tuple(t.strip() for t in raw.split(",") if t.strip())
    for title in titles:
        if not is_ae_title(title):
            raise ConfigError(f"{name} has an invalid AE title {title!r}")
    return titles


def _peers(name: str, raw: str) -> tuple[str, ...]:
    try:
        return tuple(str(n) for n in parse_networks(raw))
    except ValueError as exc:
        raise ConfigError(f"{name}: {exc}") from None


@dataclass(frozen=True)
class ScpSettings:
    """What the SCP needs to know, validated."""

    ae_title: str = setting(
        "SCP2FHIR_AE_TITLE",
        "SCP2FHIR",
        "Called AE title the SCP answers to.",
        _ae_title,
        default="SCP2FHIR",
    )
    bind: str = setting(
        "SCP2FHIR_BIND", "0.0.0.0", "Address the SCP listens on.", text, default="0.0.0.0"
    )
    port: int = setting(
        "SCP2FHIR_PORT", "11112", "TCP port of the SCP.", integer(1, 65535), default=11112
    )
    spool: str = setting(
        "SCP2FHIR_SPOOL",
        "file",
        "Where the SCP holds a dataset while it arrives: `file` (in memory up to 4 MiB, then "
        "rolled over to a temporary file in the spool folder: memory stays flat for objects "
        "of any size, at most 4 MiB and one PDU per association receiving at once) or "
        "`memory` (always in memory: RAM per association = largest object).",
        choice(("file", "memory"), "must be file or memory"),
        default="file",
    )
    fast_path: bool = setting(
        "SCP2FHIR_FAST_PATH",
        "1",
        "0: every C-STORE through pynetdicom's own message handling instead of the SCP's "
        "C-STORE fast path (scp.fastpath; for comparison).",
        flag,
        default=True,
    )
    # where datasets wait while they arrive (scp.spool)
    spool_dir: Path | None = setting(
        "SCP2FHIR_SPOOL_DIR",
        "(temp)/scp2fhir-spool",
        "Parent folder of the SCP processes' spool folders (one each, `scp-<pid>-<random>`); "
        "at start a process removes the folders of processes that are gone.",
        path,
        default=None,
    )
    scp_processes: int = setting(
        "SCP2FHIR_SCP_PROCESSES",
        "(cores)",
        "Acceptor processes of `scp2fhir scp` (and so of `up`): it binds the port once and "
        "forks this many, which share it, so parallel associations use several cores. "
        "Default: the cores it may run on.",
        integer(1, 64),
        default_factory=usable_cores,
    )
    allowed_calling_aets: tuple[str, ...] = setting(
        "SCP2FHIR_ALLOWED_CALLING_AETS",
        "(any)",
        "Comma-separated calling AE titles allowed to associate; others are rejected.",
        _calling_aets,
        default=(),
    )
    allowed_peers: tuple[str, ...] = setting(
        "SCP2FHIR_ALLOWED_PEERS",
        "(any)",
        "Comma-separated IP addresses/networks (CIDR) allowed to connect; others are "
        "refused before any DICOM is exchanged.",
        _peers,
        default=(),
    )
    max_associations: int = setting(
        "SCP2FHIR_MAX_ASSOCIATIONS",
        "32",
        "Simultaneous associations per SCP process.",
        integer(1, 1000),
        default=32,
    )
    # what a peer may hold before it is associated (scp.access.Slots)
    max_pending_connections: int = setting(
        "SCP2FHIR_MAX_PENDING_CONNECTIONS",
        "64",
        "Connections per SCP process that have not completed association negotiation; "
        "they never take association slots, and when all are taken a new connection "
        "drops the one that has waited longest.",
        integer(1, 10000),
        default=64,
    )
    max_associations_per_ae: int = setting(
        "SCP2FHIR_MAX_ASSOCIATIONS_PER_AE",
        "0",
        "Simultaneous associations one calling AE may hold per SCP process (0: no own limit).",
        integer(0, 1000),
        default=0,
    )
    max_pdu: int = setting(
        "SCP2FHIR_MAX_PDU",
        "1048576",
        "Largest P-DATA PDU accepted, and announced to senders (bytes, 4096 or more); a "
        "larger one, or an association PDU over 256 KiB, gets an A-ABORT before it is read.",
        integer(4096, 2**31 - 1),
        default=1024 * 1024,
    )
    # what one instance's header may cost (scp.header, scp.header_budget)
    max_header_bytes: int = setting(
        "SCP2FHIR_MAX_HEADER_BYTES",
        "4194304",
        "Largest header stored per instance (DICOM JSON bytes). Beyond it the identity and "
        "what the mapping reads are kept first and the rest left out, named by tag "
        "(Warning 0xB006).",
        integer(65536, 2**30),
        default=4 * 1024 * 1024,
    )
    max_inflated_bytes: int = setting(
        "SCP2FHIR_MAX_INFLATED_BYTES",
        "67108864",
        "How much of a deflated dataset is inflated (to a file in the spool folder) to find "
        "its header; one whose header does not end within it gets 0xC230.",
        integer(65536, 2**34),
        default=64 * 1024 * 1024,
    )
    acse_timeout: float = setting(
        "SCP2FHIR_ACSE_TIMEOUT",
        "30",
        "Seconds to wait for association messages; also the most a connection may take "
        "from accept to an established association (and a TLS handshake).",
        seconds,
        default=30.0,
    )
    drain_seconds: float = setting(
        "SCP2FHIR_DRAIN_SECONDS",
        "20",
        "On a stop (SIGTERM, SIGINT, SIGHUP) the SCP refuses new associations and lets "
        "open ones go on for at most this many seconds, then aborts them.",
        seconds,
        default=20.0,
    )
    dimse_timeout: float = setting(
        "SCP2FHIR_DIMSE_TIMEOUT",
        "60",
        "Seconds to wait for DIMSE messages; also the most one PDU may take to arrive once begun.",
        seconds,
        default=60.0,
    )
    network_timeout: float = setting(
        "SCP2FHIR_NETWORK_TIMEOUT",
        "60",
        "Seconds an idle association is kept open.",
        seconds,
        default=60.0,
    )
    tls_cert: Path | None = setting(
        "SCP2FHIR_TLS_CERT",
        "(unset)",
        "PEM certificate (chain): the SCP speaks DICOM TLS only.",
        existing_file,
        default=None,
    )
    tls_key: Path | None = setting(
        "SCP2FHIR_TLS_KEY",
        "(unset)",
        "PEM private key of SCP2FHIR_TLS_CERT.",
        existing_file,
        default=None,
    )
    tls_ca: Path | None = setting(
        "SCP2FHIR_TLS_CA",
        "(unset)",
        "PEM CA bundle: clients must present a certificate it signed (mutual TLS).",
        existing_file,
        default=None,
    )

    def __post_init__(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("SCP2FHIR_TLS_CERT and SCP2FHIR_TLS_KEY go together")
        if self.tls_ca is not None and self.tls_cert is None:
            raise ConfigError("SCP2FHIR_TLS_CA needs SCP2FHIR_TLS_CERT and SCP2FHIR_TLS_KEY")

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

"""Settings of the PACS side (reconcile, backfill, scheduled reconcile), parsed once in
``main()`` from the ``SCP2FHIR_PACS_*`` and ``SCP2FHIR_RECONCILE_*`` variables (listed,
with the others, in :data:`scp.variables.VARIABLES`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from scp.typed_settings import (
    ConfigError,
    from_env,
    integer,
    is_ae_title,
    seconds,
    setting,
)
from scp.typed_settings import (
    ae_title as _ae_title,
)


@dataclass(frozen=True)
class PacsAddress:
    """Where a PACS answers: its (called) AE title, host and port."""

    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str, name: str = "--pacs") -> PacsAddress:
        """``AET@host:port`` (IPv6 as ``AET@[::1]:104``); :class:`ConfigError` otherwise."""
        usage = f"{name}={text!r} is not AET@host:port"
        ae_title, at, place = text.strip().rpartition("@")
        host, colon, port_text = place.rpartition(":")
        if not at or not colon or not host:
            raise ConfigError(usage)
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        if not is_ae_title(ae_title) or ae_title.strip() == "":
            raise ConfigError(f"{usage}: {ae_title!r} is not a DICOM AE title")
        try:
            port = int(port_text)
        except ValueError:
            raise ConfigError(f"{usage}: port {port_text!r} is not a number") from None
        if not 1 <= port <= 65535:
            raise ConfigError(f"{usage}: port {port} is out of range 1..65535")
        return cls(ae_title, host, port)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.ae_title}@{host}:{self.port}"


def _every_hours(name: str, raw: str) -> float:
    return 0.0 if raw == "0" else seconds(name, raw)


def _pacs(name: str, raw: str) -> PacsAddress:
    return PacsAddress.parse(raw, name)


@dataclass(frozen=True)
class PacsSettings:
    """How scp2fhir talks to the PACS it reconciles with."""

    #: The PACS; a command's ``--pacs`` overrides it.
    pacs: PacsAddress | None = setting(
        "SCP2FHIR_PACS",
        "(unset)",
        "The PACS `reconcile`, `backfill` and the scheduled reconcile talk to, as "
        "`AET@host:port`; `--pacs` overrides it.",
        _pacs,
        default=None,
    )
    #: Our calling AE title for C-FIND and C-MOVE; the PACS must know it.
    calling_ae: str = setting(
        "SCP2FHIR_PACS_CALLING_AE",
        "(AE title)",
        "Calling AE title of the C-FIND and C-MOVE requests (default: SCP2FHIR_AE_TITLE); "
        "the PACS must allow it to query and move.",
        _ae_title,
        default="SCP2FHIR",
    )
    #: The AE title the PACS moves to: the scp2fhir SCP, as the PACS knows it.
    move_destination: str = setting(
        "SCP2FHIR_PACS_MOVE_DESTINATION",
        "(AE title)",
        "AE title the PACS is asked to move studies to: the scp2fhir SCP as the PACS knows "
        "it (default: SCP2FHIR_AE_TITLE).",
        _ae_title,
        default="SCP2FHIR",
    )
    timeout: float = setting(
        "SCP2FHIR_PACS_TIMEOUT",
        "30",
        "Seconds to connect to the PACS, to associate, and to wait for each C-FIND response.",
        seconds,
        default=30.0,
    )
    move_timeout: float = setting(
        "SCP2FHIR_PACS_MOVE_TIMEOUT",
        "600",
        "Seconds to wait for the next C-MOVE response (some PACS answer only when the whole "
        "study has been sent).",
        seconds,
        default=600.0,
    )
    #: C-FIND results read per query before the query is split into smaller time windows.
    max_results: int = setting(
        "SCP2FHIR_PACS_MAX_RESULTS",
        "1000",
        "C-FIND results read per query; a day with more (or whose answer the PACS caps) is "
        "asked again in smaller Study Time windows, down to a minute.",
        integer(1, 10**6),
        default=1000,
    )
    moves: int = setting(
        "SCP2FHIR_PACS_MOVES",
        "2",
        "C-MOVEs at once (backfill, reconcile --fetch).",
        integer(1, 32),
        default=2,
    )
    reconcile_days: int = setting(
        "SCP2FHIR_RECONCILE_DAYS",
        "7",
        "Days (up to today) reconciled when `--since` is not given, and by the scheduled "
        "reconcile.",
        integer(1, 3660),
        default=7,
    )
    reconcile_every_hours: float = setting(
        "SCP2FHIR_RECONCILE_EVERY_HOURS",
        "0",
        "The workers reconcile the last SCP2FHIR_RECONCILE_DAYS days with SCP2FHIR_PACS "
        "every so many hours (0: never); drift on the status page and in /metrics.",
        _every_hours,
        default=0.0,
    )

    def __post_init__(self) -> None:
        if self.reconcile_every_hours and self.pacs is None:
            raise ConfigError("SCP2FHIR_RECONCILE_EVERY_HOURS needs SCP2FHIR_PACS")

    @classmethod
    def from_env(cls, env: Mapping[str, str], ae_title: str) -> PacsSettings:
        """Parse the variables; ``ae_title`` (``SCP2FHIR_AE_TITLE``) is the default of the
        calling AE and the move destination."""
        titles = {
            name: ae_title
            for name in ("SCP2FHIR_PACS_CALLING_AE", "SCP2FHIR_PACS_MOVE_DESTINATION")
            if not env.get(name, "").strip()
        }
        return from_env(cls, {**env, **titles})

    def address(self, override: str | None) -> PacsAddress:
        """The PACS a command talks to: ``--pacs`` if given, else ``SCP2FHIR_PACS``."""
        if override is not None:
            return PacsAddress.parse(override)
        if self.pacs is None:
            raise ConfigError("no PACS: give --pacs AET@host:port or set SCP2FHIR_PACS")
        return self.pacs

"""Settings of the PACS side (reconcile, backfill, scheduled reconcile), parsed once in
``main()`` from the ``SCP2FHIR_PACS_*`` and ``SCP2FHIR_RECONCILE_*`` variables (listed,
with the others, in :data:`scp.settings.VARIABLES`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from scp.settings import _AE_TITLE, ConfigError, _float, _int


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
        if not _AE_TITLE.match(ae_title) or ae_title.strip() == "":
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


@dataclass(frozen=True)
class PacsSettings:
    """How scp2fhir talks to the PACS it reconciles with. Defaults are documented in
    :data:`scp.settings.VARIABLES`."""

    #: The PACS (``SCP2FHIR_PACS``); a command's ``--pacs`` overrides it.
    pacs: PacsAddress | None = None
    #: Our calling AE title for C-FIND and C-MOVE; the PACS must know it.
    calling_ae: str = "SCP2FHIR"
    #: The AE title the PACS moves to: the scp2fhir SCP, as the PACS knows it.
    move_destination: str = "SCP2FHIR"
    #: Seconds to connect, to associate, and to wait for each C-FIND response.
    timeout: float = 30.0
    #: Seconds to wait for the next C-MOVE response (some PACS answer only at the end).
    move_timeout: float = 600.0
    #: C-FIND results read per query before the query is split into smaller time windows.
    max_results: int = 1000
    #: C-MOVEs at once (backfill, reconcile --fetch).
    moves: int = 2
    #: Days reconciled when no --since is given, and by the scheduled reconcile.
    reconcile_days: int = 7
    #: Hours between scheduled reconciles run by the workers (0: none).
    reconcile_every_hours: float = 0.0

    @classmethod
    def from_env(cls, env: Mapping[str, str], ae_title: str) -> PacsSettings:
        """Parse the variables; ``ae_title`` (``SCP2FHIR_AE_TITLE``) is the default of the
        calling AE and the move destination."""

        def title(name: str) -> str:
            value = env.get(name, "").strip() or ae_title
            if not _AE_TITLE.match(value):
                raise ConfigError(
                    f"{name}={value!r} is not a DICOM AE title "
                    "(1-16 printable characters, no backslash)"
                )
            return value

        raw_pacs = env.get("SCP2FHIR_PACS", "").strip()
        every = env.get("SCP2FHIR_RECONCILE_EVERY_HOURS", "").strip()
        settings = cls(
            pacs=PacsAddress.parse(raw_pacs, "SCP2FHIR_PACS") if raw_pacs else None,
            calling_ae=title("SCP2FHIR_PACS_CALLING_AE"),
            move_destination=title("SCP2FHIR_PACS_MOVE_DESTINATION"),
            timeout=_float(env, "SCP2FHIR_PACS_TIMEOUT", cls.timeout),
            move_timeout=_float(env, "SCP2FHIR_PACS_MOVE_TIMEOUT", cls.move_timeout),
            max_results=_int(env, "SCP2FHIR_PACS_MAX_RESULTS", cls.max_results, 1, 10**6),
            moves=_int(env, "SCP2FHIR_PACS_MOVES", cls.moves, 1, 32),
            reconcile_days=_int(env, "SCP2FHIR_RECONCILE_DAYS", cls.reconcile_days, 1, 3660),
            reconcile_every_hours=(
                0.0
                if every in ("", "0")
                else _float(env, "SCP2FHIR_RECONCILE_EVERY_HOURS", cls.reconcile_every_hours)
            ),
        )
        if settings.reconcile_every_hours and settings.pacs is None:
            raise ConfigError("SCP2FHIR_RECONCILE_EVERY_HOURS needs SCP2FHIR_PACS")
        return settings

    def address(self, override: str | None) -> PacsAddress:
        """The PACS a command talks to: ``--pacs`` if given, else ``SCP2FHIR_PACS``."""
        if override is not None:
            return PacsAddress.parse(override)
        if self.pacs is None:
            raise ConfigError("no PACS: give --pacs AET@host:port or set SCP2FHIR_PACS")
        return self.pacs

"""What the mapping can be told beyond the DICOM data: default identifier systems, the
DICOMweb endpoint, and whether companion resources are wanted."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from typing import Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from workers.profiles import profile_named

FhirVersion = Literal["R4", "R5"]

_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:\S+$")


@dataclass(frozen=True)
class MappingOptions:
    """Options of :func:`~workers.mapping.imaging_study` and
    :func:`~workers.mapping.study_bundle`. Invalid values raise ``ValueError``."""

    #: Identifier.system for Accession Numbers whose header names no issuer
    #: (Issuer of Accession Number Sequence); e.g. ``urn:oid:1.2.3.4`` or an http(s) URI.
    accession_system: str | None = None
    #: Identifier.system for Patient IDs whose header names no issuer (Issuer of Patient
    #: ID / Issuer of Patient ID Qualifiers Sequence).
    patient_id_system: str | None = None
    #: Base URL of the DICOMweb WADO-RS service that holds the studies; becomes an
    #: Endpoint (``dicom-wado-rs``). Stored without a trailing slash.
    wado_rs_base_url: str | None = None
    #: Emit one FHIR transaction Bundle per study (Patient, Endpoint, Device and the
    #: ImagingStudy) instead of the ImagingStudy alone (:func:`~workers.mapping.emitted`).
    bundle: bool = False
    #: The implementation-guide profile the resources follow (:mod:`workers.profiles`).
    profile: str = "base"
    #: IANA time zone of the site (``Europe/Berlin``): local DICOM times of headers without
    #: Timezone Offset From UTC get the offset in force then. ``None`` (the default): such
    #: times keep only their date, nothing is invented.
    site_timezone: str | None = None

    def __post_init__(self) -> None:
        for name in ("accession_system", "patient_id_system"):
            value = getattr(self, name)
            if value is not None and not _URI.match(value):
                raise ValueError(f"{name}={value!r} is not an absolute URI")
        profile_named(self.profile)  # raises ValueError naming the choices
        if self.site_timezone is not None:
            site_zone(self.site_timezone)  # raises ValueError for an unknown zone
        if self.wado_rs_base_url is not None:
            object.__setattr__(self, "wado_rs_base_url", wado_rs_address(self.wado_rs_base_url))

    @property
    def site_zone(self) -> ZoneInfo | None:
        """The site time zone summaries read local times in (``None``: none)."""
        return site_zone(self.site_timezone) if self.site_timezone else None

    @property
    def needs_technique(self) -> bool:
        """Whether instance summaries must carry their acquisition technique."""
        return profile_named(self.profile).needs_technique


@cache
def site_zone(name: str) -> ZoneInfo:
    """The IANA time zone ``name``; ``ValueError`` when the system's tz database lacks it."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"SCP2FHIR_SITE_TIMEZONE={name!r} is not an IANA time zone (e.g. Europe/Berlin)"
        ) from None


def wado_rs_address(url: str) -> str:
    """Check a WADO-RS base URL as the FHIR Endpoint rules want it: scheme, authority and
    path only, no sub-resources (``/studies``...), no query, no trailing slash."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"wado_rs_base_url={url!r} is not an http(s) URL")
    if parts.query or parts.fragment:
        raise ValueError(f"wado_rs_base_url={url!r} must not have a query or fragment")
    path = parts.path.rstrip("/")
    segments = [s.lower() for s in path.split("/")]
    if any(s in ("studies", "series", "instances", "metadata", "rendered") for s in segments):
        raise ValueError(f"wado_rs_base_url={url!r} names a sub-resource; give the service base")
    return f"{parts.scheme}://{parts.netloc}{path}"

"""Settings of the workers and the mapping (``scp2fhir worker``, and what the folder
output's conversion reads), parsed once in ``main()`` by
:func:`scp.typed_settings.from_env` and passed down (:class:`workers.context.WorkerContext`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from scp.typed_settings import choice, flag, lower, path, seconds, setting, text

if TYPE_CHECKING:  # the mapping package is large; a process that only parses needs none of it
    from workers.mapping.options import FhirVersion


@dataclass(frozen=True)
class WorkerSettings:
    """What the workers need to know beyond :class:`scp.shared_settings.SharedSettings`."""

    quiet_seconds: float = setting(
        "SCP2FHIR_QUIET_SECONDS",
        "60",
        "A study is finished when no instance arrived for this long (may be fractional).",
        seconds,
        default=60.0,
    )
    output_dir: Path = setting(
        "SCP2FHIR_OUTPUT_DIR",
        "./out",
        "ImagingStudy JSON is written to OUTPUT_DIR/ImagingStudy/.",
        path,
        default=Path("out"),
    )
    fhir_version: FhirVersion = setting(
        "SCP2FHIR_FHIR_VERSION",
        "R4",
        "FHIR version of the output: R4 (4.0.1) or R5 (5.0.0).",
        choice(("R4", "R5"), "must be R4 or R5", upper=True),
        default="R4",
    )
    # Checked against the profile registry with the other mapping options
    # (workers.context.mapping_options), which knows the profiles.
    profile: str = setting(
        "SCP2FHIR_PROFILE",
        "base",
        "Implementation-guide profile of the output: base (FHIR ImagingStudy), mii (MII "
        "Bildgebung 2026.0.0, the current release), mii-2027 (its 2027.0.0-ballot), osiris "
        "(Osiris onco-imagingstudy) or qicore (QI-Core); the guides are R4 only. README "
        '"Profiles".',
        lower,
        default="base",
    )
    fhir_bundle: bool = setting(
        "SCP2FHIR_FHIR_BUNDLE",
        "0",
        "1: also emit one transaction Bundle per study (Patient, Endpoint, Device, "
        "ImagingStudy, vital-sign and dose Observations, R5 ImagingSelections) to "
        "OUTPUT_DIR/Bundle/.",
        flag,
        default=False,
    )
    accession_system: str | None = setting(
        "SCP2FHIR_ACCESSION_SYSTEM",
        "(unset)",
        "Identifier system (absolute URI) for Accession Numbers whose header names no issuer.",
        text,
        default=None,
    )
    patient_id_system: str | None = setting(
        "SCP2FHIR_PATIENT_ID_SYSTEM",
        "(unset)",
        "Identifier system for Patient IDs whose header names no issuer (the Bundle creates a "
        "Patient only when its identifier has a system).",
        text,
        default=None,
    )
    wado_rs_url: str | None = setting(
        "SCP2FHIR_WADO_RS_URL",
        "(unset)",
        "DICOMweb WADO-RS base URL of the archive holding the studies; becomes an Endpoint.",
        text,
        default=None,
    )
    # mapping depth: local times. Checked as an IANA zone by the mapping options.
    site_timezone: str | None = setting(
        "SCP2FHIR_SITE_TIMEZONE",
        "(unset)",
        "IANA time zone of the site (e.g. Europe/Berlin): DICOM times of headers without "
        "Timezone Offset From UTC get the offset in force then; unset: such times keep only "
        "their date (no zone is invented).",
        text,
        default=None,
    )
    # study lifecycle (README "Study lifecycle")
    rejected_on_resend: str = setting(
        "SCP2FHIR_REJECTED_ON_RESEND",
        "stay",
        "An instance an IOCM rejection note named that is C-STOREd again: `stay` rejected "
        "(IOCM) or `revive` (a copy received after the note shows it again).",
        choice(("stay", "revive")),
        default="stay",
    )
    retracted_on_store: str = setting(
        "SCP2FHIR_RETRACTED_ON_STORE",
        "stay",
        "A C-STORE into a study retracted with `scp2fhir retract`: `stay` (it is folded, the "
        "study stays entered-in-error) or `revive` (the retraction is lifted).",
        choice(("stay", "revive")),
        default="stay",
    )

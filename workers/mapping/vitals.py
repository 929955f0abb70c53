"""Patient's Weight and Size as vital-sign Observations (FHIR's ``bodyweight`` and
``bodyheight`` profiles), for the study's transaction Bundle, whatever the profile.

DICOM records both "at the time of the study" (PS3.3 C.7.2.2), so each Observation is
dated by the study and derived from the ImagingStudy. An Observation says whose value it
is and when: without a Patient ID or a Study Date none is made (nothing is invented).
Height is given in cm, which the ``bodyheight`` profile binds (DICOM records metres).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from workers.mapping.common import Resource, stable_id, text
from workers.terminology import LOINC_SYSTEM, OBSERVATION_CATEGORY, UCUM_SYSTEM

VITAL_SIGNS = {"system": OBSERVATION_CATEGORY, "code": "vital-signs", "display": "Vital Signs"}
BODY_WEIGHT_PROFILE = "http://hl7.org/fhir/StructureDefinition/bodyweight"
BODY_HEIGHT_PROFILE = "http://hl7.org/fhir/StructureDefinition/bodyheight"

#: (study attribute, id prefix, profile, LOINC code, display, UCUM unit, factor from DICOM)
_MEASURES = (
    ("patient_weight_kg", "weight", BODY_WEIGHT_PROFILE, "29463-7", "Body weight", "kg", 1),
    ("patient_size_m", "height", BODY_HEIGHT_PROFILE, "8302-2", "Body height", "cm", 100),
)


def vital_sign_observations(
    study_uid: str,
    study: dict[str, Any],
    subject: dict[str, Any],
    imaging_study: dict[str, Any],
) -> list[Resource]:
    """The weight and height Observations of a study's attributes; ``subject`` and
    ``imaging_study`` are the references the Bundle's other entries get."""
    started = study.get("started")
    if not text(started) or "extension" in subject:
        return []
    observations: list[Resource] = []
    for attribute, kind, profile, loinc, display, unit, factor in _MEASURES:
        value = study.get(attribute)
        if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
            continue
        observations.append(
            {
                "resourceType": "Observation",
                "id": stable_id(kind, study_uid),
                "meta": {"profile": [profile]},
                "status": "final",
                "category": [{"coding": [dict(VITAL_SIGNS)]}],
                "code": {
                    "coding": [{"system": LOINC_SYSTEM, "code": loinc, "display": display}],
                    "text": display,
                },
                "subject": subject,
                "effectiveDateTime": started,
                "valueQuantity": {
                    "value": scaled(value, factor),
                    "unit": unit,
                    "system": UCUM_SYSTEM,
                    "code": unit,
                },
                "derivedFrom": [imaging_study],
            }
        )
    return observations


def scaled(value: int | float, factor: int) -> int | float:
    """``value * factor`` in decimal, so 1.73 m is 173 cm (not 173.00000000000003)."""
    if factor == 1:
        return value
    product = (Decimal(str(value)) * factor).normalize()
    return int(product) if product == product.to_integral_value() else float(product)

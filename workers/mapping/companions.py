"""A study's companion resources and its transaction Bundle.

One FHIR transaction per study holds:

* the Patient, created only if no Patient with the same identifier exists
  (``ifNoneExist``: never a duplicate). It needs an identifier system (from the
  issuer, or the configured default): without one, "the same identifier" cannot be
  told apart across issuers, and the ImagingStudy refers to the patient by
  identifier only;
* the WADO-RS Endpoint (when configured) and one Device per piece of equipment,
  both ``PUT`` to ids that depend only on their content, so every study shares them;
* the ImagingStudy, ``PUT`` to its stable id, referring to the others by their
  entries' ``urn:uuid`` fullUrls (the server rewrites them);
* the patient's weight and height at the time of the study as vital-sign Observations
  (:mod:`workers.mapping.vitals`), ``PUT`` to ids derived from the study;
* the dose Observations of its dose reports (:mod:`workers.mapping.dose`) and, in R5,
  the ImagingSelections of its KOS, SEG and RTSTRUCT instances
  (:mod:`workers.mapping.selections`; R4 has no such resource). Without a Bundle they
  are files of their own beside the ImagingStudy (:func:`standalone_resources`).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from workers.fold import StudyAggregate
from workers.mapping.common import Resource, fhir_id, full_url, patient_identifier, text
from workers.mapping.devices import DeviceKey, device_display, device_key, device_resource
from workers.mapping.dose import dose_observations
from workers.mapping.endpoint import endpoint_resource
from workers.mapping.options import FhirVersion, MappingOptions
from workers.mapping.selections import imaging_selections
from workers.mapping.series import modality_code
from workers.mapping.study import (
    Links,
    build_imaging_study,
    imaging_study,
    logical_subject,
    series_attrs,
    study_attrs,
)
from workers.mapping.vitals import vital_sign_observations
from workers.names import human_names
from workers.profiles import Gaps, profile_named

_GENDER = {"M": "male", "F": "female", "O": "other"}


def patient_resource(study: dict[str, Any], options: MappingOptions) -> Resource | None:
    """The Patient from the study's patient attributes; ``None`` without a Patient ID
    that has an identifier system."""
    if not text(study.get("patient_id")):
        return None
    identifier = patient_identifier(study, options.patient_id_system)
    if "system" not in identifier:
        return None
    patient: Resource = {"resourceType": "Patient", "identifier": [identifier]}
    names = human_names(study.get("patient_name"))
    if names:
        patient["name"] = names
    sex = study.get("patient_sex")
    gender = _GENDER.get(sex) if isinstance(sex, str) else None
    if gender:
        patient["gender"] = gender
    if text(study.get("patient_birth_date")):
        patient["birthDate"] = study["patient_birth_date"]
    return patient


def search_token(system: str, value: str) -> str:
    """``system|value`` as a token search parameter value, escaped and URL-encoded."""

    def escape(part: str) -> str:
        for char in ("\\", "|", ",", "$"):
            part = part.replace(char, "\\" + char)
        return part

    return quote(f"{escape(system)}|{escape(value)}", safe=":/|")


def _entries(
    aggregate: StudyAggregate, version: FhirVersion, options: MappingOptions, gaps: Gaps
) -> list[dict[str, Any]]:
    profile = profile_named(options.profile)
    study = study_attrs(aggregate)
    entries: list[dict[str, Any]] = []
    links = Links(subject=logical_subject(study, options))

    patient = patient_resource(study, options)
    if patient is not None:
        identifier = patient["identifier"][0]
        url = full_url("Patient", identifier["system"], identifier["value"])
        entries.append(
            {
                "fullUrl": url,
                "resource": patient,
                "request": {
                    "method": "POST",
                    "url": "Patient",
                    "ifNoneExist": "identifier="
                    + search_token(identifier["system"], identifier["value"]),
                },
            }
        )
        links.subject = {"reference": url, "type": "Patient"}

    if options.wado_rs_base_url:
        endpoint = endpoint_resource(options.wado_rs_base_url, version)
        url = full_url("Endpoint", options.wado_rs_base_url)
        entries.append(_put(url, endpoint))
        links.endpoints.append({"reference": url})

    equipment: dict[DeviceKey, tuple[dict[str, Any], list[str]]] = {}
    for series_uid in aggregate.members_by_series():
        attrs = series_attrs(aggregate, series_uid)
        key = device_key(attrs)
        if key is None:
            continue
        _, modalities = equipment.setdefault(key, (attrs, []))
        code = modality_code(attrs)
        if code and code not in modalities:
            modalities.append(code)
    for key, (attrs, modalities) in equipment.items():
        url = full_url("Device", *key)
        device = device_resource(key, attrs, sorted(modalities), version)
        profile.refine_device(device)
        entries.append(_put(url, device))
        links.devices[key] = {"reference": url, "type": "Device", "display": device_display(key)}

    study_resource = build_imaging_study(aggregate, version, options, links, gaps)
    study_url = full_url("ImagingStudy", aggregate.study_uid)
    entries.append(_put(study_url, study_resource))
    study_reference = {"reference": study_url, "type": "ImagingStudy"}
    extras = [
        *vital_sign_observations(aggregate.study_uid, study, links.subject, study_reference),
        *derived_resources(aggregate, version, links.subject, study_reference),
    ]
    for resource in extras:
        entries.append(_put(full_url(resource["resourceType"], resource["id"]), resource))
    return entries


def derived_resources(
    aggregate: StudyAggregate,
    version: FhirVersion,
    subject: dict[str, Any],
    imaging_study: dict[str, Any],
) -> list[Resource]:
    """What the study's dose reports and selections make: dose Observations (R4 and R5)
    and ImagingSelections (R5 only), referring to ``subject`` and ``imaging_study``."""
    schemes = study_attrs(aggregate).get("coding_schemes")
    local = schemes if isinstance(schemes, dict) else None
    out = dose_observations(aggregate, subject, imaging_study, local)
    if version == "R5":
        out += imaging_selections(aggregate, subject, imaging_study, local)
    return out


def standalone_resources(
    aggregate: StudyAggregate, version: FhirVersion, options: MappingOptions | None = None
) -> list[Resource]:
    """:func:`derived_resources` as files beside the ImagingStudy: the patient by
    identifier, the ImagingStudy by its id (``ImagingStudy/<id>``)."""
    options = options or MappingOptions()
    subject = logical_subject(study_attrs(aggregate), options)
    reference = {
        "reference": f"ImagingStudy/{fhir_id(aggregate.study_uid)}",
        "type": "ImagingStudy",
    }
    return derived_resources(aggregate, version, subject, reference)


def _put(url: str, resource: Resource) -> dict[str, Any]:
    return {
        "fullUrl": url,
        "resource": resource,
        "request": {"method": "PUT", "url": f"{resource['resourceType']}/{resource['id']}"},
    }


def study_resources(
    aggregate: StudyAggregate, version: FhirVersion, options: MappingOptions | None = None
) -> list[Resource]:
    """Every resource of a study as its Bundle holds them (Patient, Endpoint, Devices,
    ImagingStudy): the hook for validating a study's output in a FHIR server."""
    entries = _entries(aggregate, version, options or MappingOptions(), Gaps())
    return [entry["resource"] for entry in entries]


def study_bundle(
    aggregate: StudyAggregate,
    version: FhirVersion,
    options: MappingOptions | None = None,
    *,
    gaps: Gaps | None = None,
) -> Resource:
    """The study as one FHIR transaction Bundle (pure; deterministic fullUrls)."""
    entries = _entries(
        aggregate, version, options or MappingOptions(), Gaps() if gaps is None else gaps
    )
    return {
        "resourceType": "Bundle",
        "id": fhir_id(aggregate.study_uid),
        "type": "transaction",
        "entry": entries,
    }


def emitted(
    aggregate: StudyAggregate,
    version: FhirVersion,
    options: MappingOptions | None = None,
    *,
    gaps: Gaps | None = None,
) -> Resource:
    """What the pipeline emits for a study: its Bundle when ``options.bundle``, else the
    ImagingStudy alone. The profile's gaps (:mod:`workers.profiles.gaps`) go to ``gaps``."""
    options = options or MappingOptions()
    if options.bundle:
        return study_bundle(aggregate, version, options, gaps=gaps)
    return imaging_study(aggregate, version, options=options, gaps=gaps)

"""The ImagingStudy of a study aggregate (R4 4.0.1 or R5 5.0.0)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from workers.fold import StudyAggregate
from workers.mapping.common import (
    Resource,
    absent,
    accession_identifier,
    fhir_id,
    patient_identifier,
    practitioner,
    study_uid_identifier,
    text,
)
from workers.mapping.devices import DeviceKey, device_display
from workers.mapping.endpoint import endpoint_resource
from workers.mapping.options import FhirVersion, MappingOptions
from workers.mapping.series import build_series, modality_code, sort_series
from workers.profiles import Gaps, profile_named
from workers.terminology import concept, modality_coding

#: id of the contained Endpoint of a standalone ImagingStudy
CONTAINED_ENDPOINT = "wado-rs"


@dataclass
class Links:
    """How the ImagingStudy refers to other resources: logically (standalone) or to the
    entries of its transaction Bundle."""

    subject: dict[str, Any]
    endpoints: list[dict[str, Any]] = field(default_factory=list)
    contained: list[Resource] = field(default_factory=list)
    devices: dict[DeviceKey, dict[str, Any]] = field(default_factory=dict)

    def device(self, key: DeviceKey) -> dict[str, Any]:
        return self.devices.get(key) or {"type": "Device", "display": device_display(key)}


def study_attrs(aggregate: StudyAggregate) -> dict[str, Any]:
    return aggregate.study.attrs if aggregate.study else {}


def series_attrs(aggregate: StudyAggregate, series_uid: str) -> dict[str, Any]:
    sourced = aggregate.series.get(series_uid)
    return sourced.attrs if sourced else {}


def logical_subject(study: dict[str, Any], options: MappingOptions) -> dict[str, Any]:
    """Patient by identifier (Patient ID and its issuer), or data-absent-reason."""
    if not text(study.get("patient_id")):
        return absent()
    return {"type": "Patient", "identifier": patient_identifier(study, options.patient_id_system)}


def standalone_links(study: dict[str, Any], version: FhirVersion, options: MappingOptions) -> Links:
    links = Links(subject=logical_subject(study, options))
    if options.wado_rs_base_url:
        endpoint = endpoint_resource(options.wado_rs_base_url, version)
        endpoint["id"] = CONTAINED_ENDPOINT
        links.contained.append(endpoint)
        links.endpoints.append({"reference": f"#{CONTAINED_ENDPOINT}"})
    return links


def imaging_study(
    aggregate: StudyAggregate,
    version: FhirVersion,
    *,
    options: MappingOptions | None = None,
    gaps: Gaps | None = None,
) -> Resource:
    """The ImagingStudy on its own: Patient by identifier, practitioners and the device
    as displays, the WADO-RS Endpoint (if configured) contained. What the profile wanted
    and the data could not give is added to ``gaps``."""
    options = options or MappingOptions()
    return build_imaging_study(
        aggregate,
        version,
        options,
        standalone_links(study_attrs(aggregate), version, options),
        Gaps() if gaps is None else gaps,
    )


def build_imaging_study(
    aggregate: StudyAggregate,
    version: FhirVersion,
    options: MappingOptions,
    links: Links,
    gaps: Gaps,
) -> Resource:
    profile = profile_named(options.profile)
    if version not in profile.fhir_versions:
        raise ValueError(
            f"profile {profile.name} is defined for FHIR {sorted(profile.fhir_versions)}"
        )
    study = study_attrs(aggregate)
    schemes = study.get("coding_schemes")
    local_schemes = schemes if isinstance(schemes, dict) else None
    by_series = aggregate.members_by_series()

    resource: Resource = {"resourceType": "ImagingStudy", "id": fhir_id(aggregate.study_uid)}
    if links.contained:
        resource["contained"] = links.contained
    identifiers = _identifiers(aggregate.study_uid, study, options)
    if identifiers:
        resource["identifier"] = identifiers
    # available, or entered-in-error once rejected or retracted (workers.fold)
    resource["status"] = aggregate.status

    modalities = sorted(
        {code for uid in by_series if (code := modality_code(series_attrs(aggregate, uid)))}
    )
    codings = [c for code in modalities if (c := modality_coding(code)) is not None]
    if codings:
        resource["modality"] = codings if version == "R4" else [{"coding": [c]} for c in codings]
    resource["subject"] = links.subject
    if text(study.get("started")):
        resource["started"] = study["started"]
    if text(study.get("accession_number")):
        resource["basedOn"] = [
            {
                "type": "ServiceRequest",
                "identifier": accession_identifier(study, options.accession_system),
            }
        ]
    referrer = practitioner(study.get("referrer"))
    if referrer:
        resource["referrer"] = referrer
    if version == "R4":
        interpreters = [p for name in study.get("interpreters") or [] if (p := practitioner(name))]
        if interpreters:
            resource["interpreter"] = interpreters
    if links.endpoints:
        resource["endpoint"] = links.endpoints
    resource["numberOfSeries"] = len(by_series)
    resource["numberOfInstances"] = len(aggregate.instances)
    procedures = [
        c for code in study.get("procedures") or [] if (c := concept([code], local_schemes))
    ]
    if procedures:
        if version == "R4":
            resource["procedureCode"] = procedures
        else:
            resource["procedure"] = [{"concept": c} for c in procedures]
    location = ", ".join(
        value for name in ("department", "institution") if (value := text(study.get(name)))
    )
    if location:
        resource["location"] = {"display": location}
    reasons = [c for code in study.get("reasons") or [] if (c := concept([code], local_schemes))]
    reasons += [{"text": t} for t in study.get("reason_texts") or [] if text(t)]
    if reasons:
        if version == "R4":
            resource["reasonCode"] = reasons
        else:
            resource["reason"] = [{"concept": c} for c in reasons]
    if text(study.get("comments")):
        resource["note"] = [{"text": study["comments"]}]
    if text(study.get("study_description")):
        resource["description"] = study["study_description"]

    series_list = [
        made
        for uid, members in by_series.items()
        if (
            made := build_series(
                uid, series_attrs(aggregate, uid), members, version, links.device, local_schemes
            )
        )
        is not None
    ]
    sort_series(series_list)
    if series_list:
        resource["series"] = series_list
    profile.refine_study(resource, aggregate, gaps)
    return resource


def _identifiers(
    study_uid: str, study: dict[str, Any], options: MappingOptions
) -> list[dict[str, Any]]:
    identifiers: list[dict[str, Any]] = []
    uid_identifier = study_uid_identifier(study_uid)
    if uid_identifier:
        identifiers.append(uid_identifier)
    if text(study.get("accession_number")):
        identifiers.append(accession_identifier(study, options.accession_system))
    if text(study.get("study_id")):
        identifiers.append(
            {"use": "secondary", "type": {"text": "Study ID"}, "value": study["study_id"]}
        )
    return identifiers

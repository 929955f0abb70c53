"""The DICOMweb WADO-RS Endpoint through which a study's instances can be retrieved."""

from __future__ import annotations

from workers.mapping.common import Resource, stable_id
from workers.mapping.options import FhirVersion

CONNECTION_TYPE = {
    "system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type",
    "code": "dicom-wado-rs",
    "display": "DICOM WADO-RS",
}


def endpoint_id(address: str) -> str:
    return stable_id("wado", address)


def endpoint_resource(address: str, version: FhirVersion) -> Resource:
    """``address`` is the service base (checked by MappingOptions: no trailing slash,
    no sub-resources)."""
    endpoint: Resource = {"resourceType": "Endpoint", "id": endpoint_id(address)}
    endpoint["status"] = "active"
    if version == "R4":
        endpoint["connectionType"] = dict(CONNECTION_TYPE)
        endpoint["name"] = "DICOMweb WADO-RS"
        endpoint["payloadType"] = [{"text": "DICOM"}]
        endpoint["payloadMimeType"] = ["application/dicom"]
    else:
        endpoint["connectionType"] = [{"coding": [dict(CONNECTION_TYPE)]}]
        endpoint["name"] = "DICOMweb WADO-RS"
        endpoint["payload"] = [{"type": [{"text": "DICOM"}], "mimeType": ["application/dicom"]}]
    endpoint["address"] = address
    return endpoint

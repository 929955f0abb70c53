"""Sending an emitted ImagingStudy to the configured FHIR server.

This is the plain form: one PUT to the resource's stable id
(``PUT {base}/ImagingStudy/{id}``), which creates it the first time and updates it
after. Any failure raises, the emission job fails (visible in the RQ dashboard)
and the study stays open, so the periodic sweep tries again.
"""

from __future__ import annotations

import json
from typing import Any

import httpx

TIMEOUT = httpx.Timeout(30.0, connect=10.0)


def put_resource(base_url: str, fhir_version: str, resource: dict[str, Any]) -> int:
    """PUT ``resource``; returns the HTTP status (200 updated, 201 created)."""
    mime = "application/fhir+json; fhirVersion=" + ("5.0" if fhir_version == "R5" else "4.0")
    url = f"{base_url}/{resource['resourceType']}/{resource['id']}"
    response = httpx.put(
        url,
        content=json.dumps(resource).encode(),
        timeout=TIMEOUT,
        headers={"Content-Type": mime, "Accept": "application/fhir+json"},
    )
    response.raise_for_status()
    return response.status_code

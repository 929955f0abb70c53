"""The server's own validator before a write (``SCP2FHIR_FHIR_VALIDATE=1``, off by default).

Before the study's output is written, its ImagingStudy goes to
``POST [base]/ImagingStudy/$validate`` as a Parameters resource: ``resource``, and the
selected profile's URL as ``profile`` (none for ``base``: the server checks the resource
against FHIR itself and whatever its ``meta.profile`` claims). The OperationOutcome decides:

* an issue of severity ``error`` or ``fatal``: :class:`~workers.delivery.errors.Invalid`,
  the study is dead-lettered; the reason names the issues' codes and FHIRPath expressions,
  never their diagnostics (they may echo patient data);
* warnings: counted (``scp2fhir_delivery_validation_warnings_total``) and logged as a
  number; the write goes ahead.

HAPI FHIR answers 412 with the OperationOutcome when it finds errors and 200 otherwise;
others answer 200, 400 or 422: any answer that carries an OperationOutcome is read alike.
An answer without one is a server without ``$validate`` (404, 405, 501:
:class:`~workers.delivery.errors.Unsupported`) or a failure like any other (5xx and
timeouts are retried).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from scp import metrics
from scp.settings import Settings
from workers.delivery.client import FhirClient
from workers.delivery.errors import Invalid, Unsupported, outcome_summary
from workers.delivery.retry import error_for
from workers.profiles import profile_named

logger = logging.getLogger(__name__)


def parameters(resource: dict[str, Any], profile: str | None, fhir_version: str) -> dict[str, Any]:
    """The ``$validate`` request body: the resource and, if any, the profile (a ``uri`` in
    R4, a ``canonical`` in R5)."""
    parts: list[dict[str, Any]] = [{"name": "resource", "resource": resource}]
    if profile:
        key = "valueCanonical" if fhir_version == "R5" else "valueUri"
        parts.append({"name": "profile", key: profile})
    return {"resourceType": "Parameters", "parameter": parts}


def check(client: FhirClient, settings: Settings, study_uid: str, study: dict[str, Any]) -> int:
    """Ask the server to validate ``study``; returns its number of warnings, raises
    :class:`Invalid` when it found errors."""
    profile = profile_named(settings.profile).url
    response = client.request(
        "POST",
        "ImagingStudy/$validate",
        resource=parameters(study, profile, settings.fhir_version),
    )
    outcome = _outcome(response.content)
    if outcome is None:
        if response.status_code in (404, 405, 501):
            raise Unsupported(
                f"POST ImagingStudy/$validate: HTTP {response.status_code}: the server offers "
                "no $validate (SCP2FHIR_FHIR_VALIDATE=1)"
            )
        raise error_for(response, "POST ImagingStudy/$validate")
    issues = [i for i in outcome.get("issue") or [] if isinstance(i, dict)]
    errors = [i for i in issues if i.get("severity") in ("error", "fatal")]
    warnings = sum(1 for i in issues if i.get("severity") == "warning")
    if errors:
        only = json.dumps({"resourceType": "OperationOutcome", "issue": errors})
        raise Invalid(
            f"$validate against {profile or 'FHIR ' + settings.fhir_version}: "
            f"{len(errors)} errors: {outcome_summary(only)}"
        )
    if warnings:
        metrics.recorder().count("delivery_validation_warnings_total", warnings)
    logger.info(
        "study=%s validated by the server against %s: 0 errors, %d warnings",
        study_uid,
        profile or f"FHIR {settings.fhir_version}",
        warnings,
    )
    return warnings


def _outcome(body: bytes) -> dict[str, Any] | None:
    try:
        parsed = json.loads(body) if body else None
    except ValueError:
        return None
    if isinstance(parsed, dict) and parsed.get("resourceType") == "OperationOutcome":
        return parsed
    return None

"""The server's own validator before a write (a destination's ``validate = true``;
``SCP2FHIR_FHIR_VALIDATE=1`` for the environment's one; off by default).

Before the study's output is written, its ImagingStudy goes to
``POST [base]/ImagingStudy/$validate?profile=<the selected profile's URL>`` as the body
(no profile for ``base``: the server checks the resource against FHIR itself and whatever
its ``meta.profile`` claims). The resource as the body with the profile in the URL is the
form every server reads alike; HAPI FHIR 8.8 misreads a typed ``profile`` inside a
Parameters body (it looks for ``UriType[...]``). The OperationOutcome decides:

* an issue of severity ``error`` or ``fatal``: :class:`~workers.delivery.errors.Invalid`,
  the study is dead-lettered; the reason names the issues' codes and FHIRPath expressions,
  never their diagnostics (they may echo patient data);
* warnings: counted (``scp2fhir_delivery_validation_warnings_total``) and logged as a
  number; the write goes ahead.

Servers answer 200 (HAPI FHIR, also when it found errors), 400, 412 or 422: any answer
that carries an OperationOutcome is read alike.
An answer without one is a server without ``$validate`` (404, 405, 501:
:class:`~workers.delivery.errors.Unsupported`) or a failure like any other (5xx and
timeouts are retried).
"""

from __future__ import annotations

import json
import logging
from typing import Any
from urllib.parse import quote

from scp import metrics
from workers.delivery.client import FhirClient
from workers.delivery.errors import Invalid, Unsupported, outcome_summary
from workers.delivery.retry import error_for
from workers.delivery.settings import Destination
from workers.profiles import profile_named

logger = logging.getLogger(__name__)


def check(
    client: FhirClient, destination: Destination, study_uid: str, study: dict[str, Any]
) -> int:
    """Ask ``destination``'s server to validate ``study``; returns its number of warnings,
    raises :class:`Invalid` when it found errors."""
    profile = profile_named(destination.profile).url
    path = "ImagingStudy/$validate"
    if profile:
        path += "?profile=" + quote(profile, safe=":/")
    response = client.request("POST", path, resource=study)
    outcome = _outcome(response.content)
    if outcome is None:
        if response.status_code in (404, 405, 501):
            raise Unsupported(
                f"POST ImagingStudy/$validate: HTTP {response.status_code}: the server offers "
                f"no $validate (destination {destination.name}: validate)"
            )
        raise error_for(response, "POST ImagingStudy/$validate")
    issues = [i for i in outcome.get("issue") or [] if isinstance(i, dict)]
    errors = [i for i in issues if i.get("severity") in ("error", "fatal")]
    warnings = sum(1 for i in issues if i.get("severity") == "warning")
    if errors:
        only = json.dumps({"resourceType": "OperationOutcome", "issue": errors})
        raise Invalid(
            f"$validate against {profile or 'FHIR ' + destination.fhir_version}: "
            f"{len(errors)} errors: {outcome_summary(only)}"
        )
    if warnings:
        metrics.recorder().count(
            "delivery_validation_warnings_total", warnings, destination=destination.name
        )
    logger.info(
        "study=%s destination=%s validated by the server against %s: 0 errors, %d warnings",
        study_uid,
        destination.name,
        profile or f"FHIR {destination.fhir_version}",
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

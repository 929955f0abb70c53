"""What can go wrong delivering a study, and what the delivery job does about it.

    DeliveryError                    any failure to deliver a study's output
    ├── TransientDeliveryError       retried later (RQ scheduler, exponential backoff with
    │   │                            jitter, never sooner than Retry-After), until
    │   │                            SCP2FHIR_FHIR_MAX_ATTEMPTS; then GaveUp
    │   ├── ServerUnavailable        timeout, connection or TLS error, HTTP 408, 429, 5xx
    │   ├── TokenUnavailable         the same from the OAuth2 token endpoint
    │   └── ConflictPersists         409/412 still after SCP2FHIR_FHIR_CONFLICT_RETRIES
    │                                re-reads (or several resources carry the identifier)
    └── PermanentDeliveryError       dead-lettered at once: the same request cannot succeed
        ├── Rejected                 any other 4xx; its OperationOutcome summarised
        ├── Invalid                  the server's $validate found errors
        │                            (SCP2FHIR_FHIR_VALIDATE=1); its issues summarised
        ├── AuthenticationFailed     401/403 after one token refresh; the token endpoint
        │                            refused the client (invalid_client, bad assertion...)
        ├── Unsupported              the server lacks what delivery needs (no update,
        │                            another FHIR version)
        ├── NothingToDeliver         neither aggregate nor output file is left
        ├── ForeignResource          the server's resource for the study was not written by
        │                            scp2fhir (no origin tag): never overwritten or retracted
        └── GaveUp                   transient failures on every allowed attempt

Dead-lettered means: the RQ job fails, so it sits in the ``scp2fhir-deliver`` queue's
FailedJobRegistry (the RQ dashboard's "Failed" list) until ``scp2fhir retry-failed``.

Messages name HTTP statuses, issue severities, codes and FHIRPath expressions, and the
study UID; never values: an OperationOutcome's ``diagnostics`` and ``details.text`` may
echo patient data, so :func:`outcome_summary` leaves them out.
"""

from __future__ import annotations

import json
import re
from typing import Any


class DeliveryError(Exception):
    """Delivering a study's output to the FHIR server failed."""


class TransientDeliveryError(DeliveryError):
    """Worth trying again later."""

    #: Seconds the server asked us to wait (Retry-After), if it said.
    retry_after: float | None = None


class ServerUnavailable(TransientDeliveryError):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class TokenUnavailable(TransientDeliveryError):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ConflictPersists(TransientDeliveryError):
    pass


class PermanentDeliveryError(DeliveryError):
    """Retrying the same request cannot help: dead-letter the delivery."""


class Rejected(PermanentDeliveryError):
    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class Invalid(PermanentDeliveryError):
    pass


class AuthenticationFailed(PermanentDeliveryError):
    pass


class Unsupported(PermanentDeliveryError):
    pass


class NothingToDeliver(PermanentDeliveryError):
    pass


class GaveUp(PermanentDeliveryError):
    pass


#: At most this many issues are summarised; a validator may list hundreds.
MAX_ISSUES = 8
#: FHIRPath expressions are cut here (they name elements, but may be long).
MAX_EXPRESSION = 120


def outcome_summary(body: bytes | str | None) -> str:
    """``severity code @ expression`` for each issue of an OperationOutcome body, or a
    note that there was none. Never the diagnostics or details text (patient data)."""
    try:
        outcome: Any = json.loads(body) if body else None
    except ValueError:
        outcome = None
    if not isinstance(outcome, dict) or outcome.get("resourceType") != "OperationOutcome":
        return "no OperationOutcome"
    issues = outcome.get("issue")
    if not isinstance(issues, list) or not issues:
        return "OperationOutcome without issues"
    parts: list[str] = []
    for issue in issues[:MAX_ISSUES]:
        if not isinstance(issue, dict):
            continue
        text = f"{_word(issue.get('severity'))} {_word(issue.get('code'))}"
        codes = _detail_codes(issue.get("details"))
        if codes:
            text += f" [{codes}]"
        where = issue.get("expression") or issue.get("location")
        if isinstance(where, list) and where:
            text += " @ " + ", ".join(_expression(w) for w in where[:3])
        parts.append(text)
    more = len(issues) - MAX_ISSUES
    if more > 0:
        parts.append(f"... {more} more")
    return "; ".join(parts)


_CODE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
#: A quoted literal in a FHIRPath expression (``name.where(family = 'Doe')``) is a value.
_LITERAL = re.compile(r"'(?:[^'\\]|\\.)*'")


def _word(value: object) -> str:
    # Severities and codes are FHIR codes; anything else is not trusted into a log line.
    return value if isinstance(value, str) and _CODE.match(value) else "?"


def _expression(value: object) -> str:
    return _LITERAL.sub("'...'", str(value))[:MAX_EXPRESSION]


def _detail_codes(details: object) -> str:
    if not isinstance(details, dict):
        return ""
    codings = details.get("coding")
    if not isinstance(codings, list):
        return ""
    codes = [_word(c.get("code")) for c in codings if isinstance(c, dict) and c.get("code")]
    return ",".join(codes[:3])


class ForeignResource(PermanentDeliveryError):
    """The server holds the study's ImagingStudy, but scp2fhir did not write it (it lacks
    the origin tag, :mod:`workers.lifecycle.origin`): it is left alone."""

    def __init__(self, message: str) -> None:
        super().__init__(message)

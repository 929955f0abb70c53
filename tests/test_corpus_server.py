"""The mapping's output of the whole DICOM corpus, checked by a real FHIR server's
validator (medplum's validateResource against the R4 definitions; tests/fhirserver/).

The R4B/R5 models of fhir.resources check structure; this engine also checks what
they leave open: cardinalities of the R4 base profiles and required code bindings.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.fhirserver.harness import FhirServer
from tests.test_corpus import OPTION_SETS, corpus
from workers.fold import fold_all
from workers.mapping import study_bundle


@pytest.fixture(scope="module")
def fhir() -> Iterator[httpx.Client]:
    with FhirServer() as server, httpx.Client(base_url=server.base_url, timeout=30) as client:
        yield client


def problems(client: httpx.Client, resource: dict[str, Any]) -> list[str]:
    response = client.post(
        f"/{resource['resourceType']}/$validate",
        json=resource,
        headers={"Content-Type": "application/fhir+json"},
    )
    assert response.status_code == 200, response.text[:500]
    outcome = response.json()
    return [
        f"{resource['resourceType']}: {issue.get('diagnostics') or issue.get('details')}"
        f" at {issue.get('expression') or issue.get('location')}"
        for issue in outcome.get("issue", [])
        if issue.get("severity") in ("error", "fatal")
    ]


def test_every_corpus_study_passes_the_server_validator(fhir: httpx.Client) -> None:
    studies = fold_all(corpus().summaries.values())
    assert len(studies) >= 50
    errors: list[str] = []
    checked = 0
    for uid, study in sorted(studies.items()):
        for options in OPTION_SETS:
            bundle = study_bundle(study, "R4", options)
            for entry in bundle["entry"]:
                errors += [f"{uid} {p}" for p in problems(fhir, entry["resource"])]
                checked += 1
    assert checked >= 100
    assert errors == [], "\n".join(errors[:20])


def test_the_validator_does_reject_a_broken_resource(fhir: httpx.Client) -> None:
    # The check above can fail: a resource the models would let through is refused here.
    broken = {
        "resourceType": "ImagingStudy",
        "status": "bogus",
        "subject": {"reference": "Patient/x"},
    }
    assert problems(fhir, broken)

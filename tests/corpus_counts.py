"""Counts over the real-file corpus that the mapping-depth work is judged by.

``python -m tests.corpus_counts`` runs ``scp2fhir convert``'s own code over every corpus
file (tests/samples.py ``CORPUS_ROOTS``) in R4 and R5, as ImagingStudy and as Bundle, and
prints: files read and skipped, studies with ``basedOn`` in R4, codings still in SNOMED-RT
(system ``urn:oid:2.16.840.1.113883.6.5`` or an SRT-style code under SNOMED CT),
``urn:oid:`` values that are no OID, person names in performers (and those read from a
value of another VR), and the resource types the Bundles hold. Run it before and after
a mapping change to compare.
"""

from __future__ import annotations

import io
import json
import logging
import re
import warnings
from collections import Counter
from collections.abc import Iterator
from typing import Any

from tests.samples import CORPUS_ROOTS, corpus_files
from workers.convert import convert, read_file
from workers.mapping import FhirVersion, MappingOptions
from workers.summary import summarize

SNOMED_RT_OID = "urn:oid:2.16.840.1.113883.6.5"
_OID = re.compile(r"^[0-2](\.(0|[1-9][0-9]*))+$")
_SRT_STYLE = re.compile(r"^[A-Z][A-Z0-9]?-[0-9A-Z]+$")


def walk(node: Any) -> Iterator[Any]:
    yield node
    if isinstance(node, dict):
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def real_oid(text: str) -> bool:
    if not _OID.match(text):
        return False
    arcs = text.split(".")
    return arcs[0] == "2" or int(arcs[1]) <= 39


def counts(version: FhirVersion, bundle: bool) -> Counter[str]:
    out = io.StringIO()
    options = MappingOptions(
        bundle=bundle,
        patient_id_system="urn:oid:1.2.826.0.1.3680043.8.498.4242.300" if bundle else None,
    )
    studies, unreadable = convert(CORPUS_ROOTS, version, out, options)
    found: Counter[str] = Counter(studies=studies, unreadable_files=unreadable)
    for line in out.getvalue().splitlines():
        emitted = json.loads(line)
        resources = [e["resource"] for e in emitted["entry"]] if bundle else [emitted]
        for resource in resources:
            found[f"resource {resource['resourceType']}"] += 1
            if resource["resourceType"] == "ImagingStudy" and resource.get("basedOn"):
                found["studies with basedOn"] += 1
            for series in resource.get("series") or []:
                for performer in series.get("performer") or []:
                    if performer["actor"].get("type") == "Practitioner":
                        found["practitioner performers"] += 1
            for node in walk(resource):
                if not isinstance(node, dict):
                    continue
                if node.get("system") == SNOMED_RT_OID:
                    found["codings in SNOMED-RT"] += 1
                if node.get("system") == "http://snomed.info/sct" and _SRT_STYLE.match(
                    str(node.get("code", ""))
                ):
                    found["SRT codes under SNOMED CT"] += 1
                for value in node.values():
                    if (
                        isinstance(value, str)
                        and value.startswith("urn:oid:")
                        and not real_oid(value.removeprefix("urn:oid:"))
                    ):
                        found["urn:oid values that are no OID"] += 1
    return found


def names_read_from_another_vr() -> int:
    """Person names the summaries read although encoded with another VR (item 4)."""
    found = 0
    for path in corpus_files():
        try:
            summary = summarize(read_file(path).json)
        except Exception:  # not DICOM, or no instance: counted by convert above
            continue
        found += len(summary.mismatches)
    return found


def main() -> None:
    logging.disable(logging.WARNING)
    warnings.simplefilter("ignore")
    print(f"person names read from another VR: {names_read_from_another_vr()}")
    versions: tuple[FhirVersion, ...] = ("R4", "R5")
    for version in versions:
        for bundle in (False, True):
            found = counts(version, bundle)
            label = f"{version} {'Bundle' if bundle else 'ImagingStudy'}"
            print(label + ": " + ", ".join(f"{k}={v}" for k, v in sorted(found.items())))


if __name__ == "__main__":
    main()

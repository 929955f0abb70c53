"""The HL7 validator's verdict on everything scp2fhir writes (tests/test_conformance.py).

One *run* per guide and FHIR version: the profile's output for every study of the DICOM
corpus (tests/test_corpus.py) and of the profile datasets (tests/profile_datasets.py), with
every option set, each resource of the study's transaction Bundle (Patient, Endpoint,
Devices, ImagingStudy with its contained Observations) validated on its own, plus each
study's Bundle as a whole. Identical resources are validated once.

The validator (tests/hapi, ValidatorService) works offline: the guide's own definitions,
FHIR's core packages, no terminology server, so codes of SNOMED CT, LOINC, DICOM and other
systems that are not at hand are warnings, counted here like every other warning.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path
from typing import Any, Literal

from tests.hapi.harness import PROFILES_DIR, Validator
from workers.fold import StudyAggregate
from workers.mapping import MappingOptions, study_bundle

Json = dict[str, Any]

#: The checked-in warning budget per run: a run may never have more warnings, and when it
#: has fewer the budget must be lowered to match (it only shrinks).
BUDGET_FILE = Path(__file__).parent / "conformance_budget.json"


@dataclass(frozen=True)
class Run:
    """One validation run: a profile's output in one FHIR version against one guide."""

    label: str
    profile: str
    fhir_version: Literal["R4", "R5"]
    #: Folder of ../shared/profiles holding the guide; None: FHIR's core definitions only.
    guide: str | None
    #: Canonical URL the output claims and is validated against (None: the base resource).
    study_profile: str | None = None


RUNS = (
    Run("base R4", "base", "R4", None),
    Run("base R5", "base", "R5", None),
    Run(
        "MII Bildgebung 2026.0.0 (mii)",
        "mii",
        "R4",
        "mii-bildgebung-2026.0.0",
    ),
    Run(
        "MII Bildgebung 2027.0.0-ballot (mii-2027)",
        "mii-2027",
        "R4",
        "mii-bildgebung",
    ),
    Run("Osiris 1.1.0 (osiris)", "osiris", "R4", "osiris-1.1.0"),
    # No QI-Core package is at hand: the output is checked against R4 itself, and its
    # meta.profile is reported as a profile the validator does not know (a warning).
    Run("QI-Core (qicore), R4 core only", "qicore", "R4", None),
)


@dataclass
class Result:
    run: Run
    resources: int = 0
    errors: list[str] = field(default_factory=list)
    warnings: Counter[str] = field(default_factory=Counter)
    #: One whole message (and where) per kind of warning.
    examples: dict[str, str] = field(default_factory=dict)
    information: int = 0

    @property
    def warning_count(self) -> int:
        return sum(self.warnings.values())

    def as_json(self) -> Json:
        return {
            "run": self.run.label,
            "resources": self.resources,
            "errors": len(self.errors),
            "warnings": self.warning_count,
            "information": self.information,
            "warnings_by_kind": dict(self.warnings.most_common()),
            "examples": self.examples,
            "errors_by_kind": dict(
                Counter(_VARIABLE.sub("…", e) for e in self.errors).most_common()
            ),
            "first_errors": self.errors[:20],
        }


def missing_shared() -> str | None:
    """What is missing of ../shared/profiles, or None when every guide folder is there."""
    wanted = [run.guide for run in RUNS if run.guide]
    absent = [g for g in wanted if not (PROFILES_DIR / g).is_dir()]
    if absent:
        return (
            f"{PROFILES_DIR} lacks {', '.join(absent)}: the conformance tests need the "
            "guides of ../shared/profiles beside the clone (CI has them)"
        )
    return None


#: Quoted values, codes after '#', numbers and element indexes vary between resources; the
#: rest of a message says what kind of warning it is.
_VARIABLE = re.compile(r"'[^']*'|\"[^\"]*\"|#[^\s,)]+|\[\d+\]|\b\d[\d.]*\b")


def kind_of(issue: Json) -> str:
    text = str(issue.get("diagnostics") or (issue.get("details") or {}).get("text") or "")
    return _VARIABLE.sub("…", text)[:160]


def where(issue: Json) -> str:
    places = issue.get("expression") or issue.get("location") or ["?"]
    return str(places[0])


def options_for(run: Run) -> Iterator[MappingOptions]:
    """The corpus' option sets, with the run's profile."""
    from tests.test_corpus import OPTION_SETS

    for options in OPTION_SETS:
        yield replace(options, profile=run.profile)


def resources_of(study: StudyAggregate, run: Run) -> Iterator[tuple[str, Json]]:
    """``(what, resource)`` for every resource the run's profile writes for ``study``."""
    for index, options in enumerate(options_for(run)):
        bundle = study_bundle(study, run.fhir_version, options)
        yield f"Bundle (options {index})", bundle
        for entry in bundle["entry"]:
            resource = entry["resource"]
            yield f"{resource['resourceType']} (options {index})", resource


def validate_run(validator: Validator, run: Run, studies: dict[str, StudyAggregate]) -> Result:
    result = Result(run)
    seen: set[str] = set()
    for uid, study in sorted(studies.items()):
        for what, resource in resources_of(study, run):
            key = json.dumps(resource, sort_keys=True)
            if key in seen:
                continue
            seen.add(key)
            outcome = validator.validate(resource, run.fhir_version, guide=run.guide)
            result.resources += 1
            for issue in outcome.get("issue") or []:
                severity = issue.get("severity")
                if severity in ("error", "fatal"):
                    result.errors.append(
                        f"{uid} {what}: {issue.get('diagnostics')} @ {where(issue)}"
                    )
                elif severity == "warning":
                    kind = kind_of(issue)
                    result.warnings[kind] += 1
                    result.examples.setdefault(
                        kind, f"{issue.get('diagnostics')} @ {where(issue)} ({uid} {what})"
                    )
                else:
                    result.information += 1
    return result


@cache
def studies() -> dict[str, StudyAggregate]:
    """Every study of the DICOM corpus and the profile datasets' study, by label."""
    import tempfile

    from scp.header import read_header
    from tests import profile_datasets
    from tests.test_corpus import corpus
    from workers.fold import fold_all
    from workers.summary import summarize

    found = {f"corpus {uid}": s for uid, s in fold_all(corpus().summaries.values()).items()}
    folder = Path(tempfile.mkdtemp(prefix="scp2fhir-conformance-"))
    files = profile_datasets.study(folder)
    summaries = [summarize(read_header(f).json, with_technique=True) for f in files]
    for uid, study in fold_all(summaries).items():
        found[f"profile datasets {uid}"] = study
    return found


def load_budget() -> dict[str, int]:
    budget: dict[str, int] = json.loads(BUDGET_FILE.read_text(encoding="utf-8"))
    return budget


def table(results: list[Result]) -> str:
    """The README's "Conformance" table of one run of the tests."""
    lines = [
        "| guide and version | FHIR | resources validated | errors | warnings |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.run.label} | {r.run.fhir_version} | {r.resources} | {len(r.errors)} "
            f"| {r.warning_count} |"
        )
    return "\n".join(lines)


def report(results: list[Result]) -> str:
    """Every run's counts and its warnings by kind, for the test output."""
    parts = ["HL7 validator (offline) over every profile's output:", table(results)]
    for r in results:
        parts.append(f"\n{r.run.label} ({r.run.fhir_version}): {r.warning_count} warnings")
        parts += [f"  {n:6d}  {kind}" for kind, n in r.warnings.most_common()]
    return "\n".join(parts)


#: The results of the last conformance run in this process, for the terminal summary.
LAST: list[Result] = []

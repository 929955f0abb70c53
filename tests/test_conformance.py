"""Every profile's output, judged by the HL7 validator engine (tests/conformance.py):
0 errors per guide and FHIR version, warnings within the checked-in budget
(tests/conformance_budget.json), which may only shrink. The warnings are listed at the
end of the test output."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from tests import conformance
from tests.conformance import RUNS, Run, missing_shared
from tests.hapi.harness import Validator
from workers.mapping import MappingOptions, emitted
from workers.profiles import mii

ROOT = Path(__file__).resolve().parent.parent
ARTIFACT = ROOT / "test-artifacts" / "conformance.json"


@pytest.fixture(scope="module")
def engine(validator: Validator) -> Validator:
    """The validator, once the guides are known to be there and loaded."""
    missing = missing_shared()
    assert missing is None, missing
    loaded = validator.guides()
    for run in RUNS:
        if run.guide:
            assert loaded.get(run.guide, 0) >= 5, (run.guide, loaded)
    return validator


def errors_of(outcome: dict[str, object]) -> list[str]:
    issues = outcome.get("issue") or []
    assert isinstance(issues, list)
    return [
        f"{i.get('diagnostics')} @ {conformance.where(i)}"
        for i in issues
        if isinstance(i, dict) and i.get("severity") in ("error", "fatal")
    ]


@pytest.mark.parametrize("run", RUNS, ids=lambda r: f"{r.profile}-{r.fhir_version}")
def test_the_validator_finds_no_error(engine: Validator, run: Run) -> None:
    result = conformance.validate_run(engine, run, conformance.studies())
    conformance.LAST.append(result)
    ARTIFACT.parent.mkdir(exist_ok=True)
    previous = json.loads(ARTIFACT.read_text()) if ARTIFACT.exists() else {}
    previous[run.label] = result.as_json()
    ARTIFACT.write_text(json.dumps(previous, indent=1, ensure_ascii=False))
    assert result.resources >= 100
    assert result.errors == [], "\n".join(result.errors[:30])
    budget = conformance.load_budget()[run.label]
    assert result.warning_count <= budget, (
        f"{result.warning_count} warnings, the budget is {budget}:\n" + conformance.report([result])
    )
    assert result.warning_count == budget, (
        f"{run.label}: {result.warning_count} warnings, fewer than the budget of {budget}: "
        "lower it in tests/conformance_budget.json (it only shrinks)"
    )


def test_the_judge_can_fail(engine: Validator) -> None:
    """Each guide rejects what breaks it: a fixed unit changed, a value of the wrong type,
    an extension of another version, a missing required element."""
    aggregate = next(s for k, s in conformance.studies().items() if k.startswith("profile"))
    study = emitted(aggregate, "R4", MappingOptions(profile="mii"))
    assert errors_of(engine.validate(study, "R4", guide="mii-bildgebung-2026.0.0")) == []
    broken = copy.deepcopy(study)
    series = next(s for s in broken["series"] if s["modality"]["code"] == "CT")
    ct = next(e for e in series["extension"] if e["url"].endswith("modalitaet-ct"))
    kvp = next(p for p in ct["extension"] if p["url"] == "KVP")
    kvp["valueQuantity"]["code"] = "V"
    assert errors_of(engine.validate(broken, "R4", guide="mii-bildgebung-2026.0.0"))
    # The ballot's weight extension is no extension of the release.
    ballot = emitted(aggregate, "R4", MappingOptions(profile="mii-2027"))
    assert any(e["url"] == mii.WEIGHT for e in ballot["extension"])
    assert errors_of(engine.validate(ballot, "R4", guide="mii-bildgebung")) == []
    assert errors_of(engine.validate(ballot, "R4", guide="mii-bildgebung-2026.0.0"))
    osiris = emitted(aggregate, "R4", MappingOptions(profile="osiris"))
    osiris["series"][0]["extension"][0]["extension"][0]["valueString"] = 5
    assert errors_of(engine.validate(osiris, "R4", guide="osiris-1.1.0"))
    base = emitted(aggregate, "R5", MappingOptions())
    del base["status"]
    assert errors_of(engine.validate(base, "R5"))

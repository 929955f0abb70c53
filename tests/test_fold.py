"""The pure fold: duplicates, order, several series, re-open, moved instances."""

from __future__ import annotations

import itertools
import json
import random
from dataclasses import asdict, replace

import pytest

from tests.golden import assert_golden
from workers.fold import StudyAggregate, fold, fold_all
from workers.summary import InstanceSummary

STUDY = "1.2.3"


def inst(sop: str, series: str, number: int, description: str = "") -> InstanceSummary:
    series_attrs = {"modality": "CT", "series_description": description or f"series {series}"}
    return InstanceSummary(
        study_uid=STUDY,
        series_uid=series,
        sop_uid=sop,
        study={"patient_id": "P1", "study_description": f"from {sop}"},
        series=series_attrs,
        instance={
            "series_uid": series,
            "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2",
            "instance_number": number,
        },
    )


INSTANCES = [
    inst("1.2.3.1.3", "1.2.3.1", 3),
    inst("1.2.3.1.1", "1.2.3.1", 1),
    inst("1.2.3.2.1", "1.2.3.2", 1),
    inst("1.2.3.1.2", "1.2.3.1", 2),
    inst("1.2.3.2.2", "1.2.3.2", 2),
]


def as_json(aggregate: StudyAggregate) -> dict[str, object]:
    result: dict[str, object] = json.loads(json.dumps(asdict(aggregate)))
    return result


def test_fold_golden() -> None:
    aggregate = fold(StudyAggregate(STUDY), INSTANCES)
    assert len(aggregate.instances) == 5
    assert aggregate.series_uids() == ["1.2.3.1", "1.2.3.2"]
    # Every instance carries another description, once each: the tie goes to the
    # smallest SOP Instance UID's, whatever the order.
    assert aggregate.study is not None
    assert aggregate.study.attrs == INSTANCES[1].study
    assert_golden("fold_two_series.json", as_json(aggregate))


@pytest.mark.parametrize("seed", range(20))
def test_fold_is_order_independent_and_idempotent(seed: int) -> None:
    expected = fold(StudyAggregate(STUDY), INSTANCES)
    shuffled = INSTANCES * 3  # every instance three times
    random.Random(seed).shuffle(shuffled)
    assert fold(StudyAggregate(STUDY), shuffled) == expected


def test_every_permutation_gives_the_same_aggregate() -> None:
    expected = fold(StudyAggregate(STUDY), INSTANCES)
    for order in itertools.permutations(INSTANCES):
        assert fold(StudyAggregate(STUDY), order) == expected


def test_reopen_folds_into_the_existing_aggregate() -> None:
    first = fold(StudyAggregate(STUDY), INSTANCES[:3])
    late = fold(first, INSTANCES[3:])
    assert late == fold(StudyAggregate(STUDY), INSTANCES)
    assert len(first.instances) == 3, "folding is pure: the earlier aggregate is unchanged"


def test_changed_resend_replaces_the_instance() -> None:
    aggregate = fold(StudyAggregate(STUDY), INSTANCES)
    changed = replace(
        INSTANCES[1],
        series=INSTANCES[1].series | {"series_description": "new"},
        instance=INSTANCES[1].instance | {"instance_number": 10},
    )
    after = fold(aggregate, [changed])
    assert after.instances["1.2.3.1.1"]["instance_number"] == 10
    # A re-send of a known instance with changed series attributes is a correction: it
    # wins over the two that still carry the old description, which is reported.
    assert after.series["1.2.3.1"].attrs["series_description"] == "new"
    assert ("SeriesDescription", (2, 1)) in [(d.keyword, d.counts) for d in after.disagreements]
    assert len(after.instances) == 5
    # A re-send that changes nothing at study or series level is no correction.
    same = replace(INSTANCES[2], instance=INSTANCES[2].instance | {"instance_number": 11})
    assert fold(aggregate, [same]).series == aggregate.series


def test_resend_into_another_series_moves_the_instance() -> None:
    aggregate = fold(StudyAggregate(STUDY), INSTANCES)
    moved = inst("1.2.3.1.3", "1.2.3.2", 3)
    after = fold(aggregate, [moved])
    assert len(after.instances) == 5
    members = [r for r in after.instances.values() if r["series_uid"] == "1.2.3.2"]
    assert len(members) == 3


def test_fold_all_groups_by_study() -> None:
    other = replace(INSTANCES[0], study_uid="9.9", sop_uid="9.9.1")
    aggregates = fold_all([*INSTANCES, other])
    assert sorted(aggregates) == ["1.2.3", "9.9"]
    assert len(aggregates["9.9"].instances) == 1


def test_fold_refuses_another_study() -> None:
    with pytest.raises(ValueError):
        fold(StudyAggregate("4.5.6"), INSTANCES[:1])

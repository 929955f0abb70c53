"""The pure lifecycle rules: rejection notes, attribute consensus, corrections by
generation, and the order-independence property with rejection notes among the instances."""

from __future__ import annotations

import json
import random
from dataclasses import asdict, replace
from pathlib import Path

import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scp.header import read_header
from tests.golden import assert_golden
from workers.fold import (
    ENTERED_IN_ERROR,
    StudyAggregate,
    emitted,
    fold,
)
from workers.lifecycle.consensus import Vote, decide, disagreements
from workers.lifecycle.rejection import RejectionNote
from workers.mapping import imaging_study
from workers.summary import InstanceSummary

STUDY = "1.2.3"
CT = "1.2.840.10008.5.1.4.1.1.2"


def inst(
    sop: str, series: str, number: int, study: dict[str, object] | None = None, **series_attrs: str
) -> InstanceSummary:
    return InstanceSummary(
        study_uid=STUDY,
        series_uid=series,
        sop_uid=sop,
        study=study if study is not None else {"patient_id": "P1", "accession_number": "A1"},
        series={"modality": "CT", "series_description": f"series {series}", **series_attrs},
        instance={"series_uid": series, "sop_class_uid": CT, "instance_number": number},
    )


def note(sop: str, code: str, *rejected: str) -> InstanceSummary:
    """A rejection note as summarize() makes it (its own series, KOS)."""
    return InstanceSummary(
        study_uid=STUDY,
        series_uid="1.2.3.99",
        sop_uid=sop,
        study={"patient_id": "P1"},
        series={"modality": "KO"},
        instance={"series_uid": "1.2.3.99", "sop_class_uid": "1.2.840.10008.5.1.4.1.1.88.59"},
        rejection=RejectionNote(code, tuple(sorted(rejected))),
    )


SERIES_A = [inst(f"1.2.3.1.{n}", "1.2.3.1", n) for n in range(1, 4)]
SERIES_B = [inst(f"1.2.3.2.{n}", "1.2.3.2", n) for n in range(1, 3)]
REJECT_B = note("1.2.3.99.1", "113001", *(s.sop_uid for s in SERIES_B))


def as_json(aggregate: StudyAggregate) -> object:
    return json.loads(json.dumps(asdict(aggregate)))


# --- rejection notes -------------------------------------------------------------------


def test_a_rejected_series_disappears_and_the_note_is_no_instance() -> None:
    aggregate = fold(StudyAggregate(STUDY), [*SERIES_A, *SERIES_B, REJECT_B])
    assert aggregate.series_uids() == ["1.2.3.1"]
    assert set(aggregate.instances) == {s.sop_uid for s in SERIES_A}
    assert set(aggregate.series) == {"1.2.3.1"}
    assert aggregate.notes == {"1.2.3.99.1": "113001"}
    assert aggregate.status == "available"
    resource = imaging_study(aggregate, "R4")
    assert resource["numberOfSeries"] == 1 and resource["numberOfInstances"] == 3
    assert resource["status"] == "available"
    assert_golden("lifecycle_rejected_series.json", as_json(aggregate))


def test_a_rejection_before_its_instances_still_applies() -> None:
    aggregate = fold(StudyAggregate(STUDY), [REJECT_B])
    assert not aggregate.emittable, "known only from a note: nothing to write"
    aggregate = fold(aggregate, [*SERIES_B, *SERIES_A])
    assert set(aggregate.instances) == {s.sop_uid for s in SERIES_A}


def test_everything_rejected_is_entered_in_error_and_keeps_its_subject() -> None:
    everything = note("1.2.3.99.2", "113037", *(s.sop_uid for s in SERIES_A + SERIES_B))
    aggregate = fold(StudyAggregate(STUDY), [*SERIES_A, *SERIES_B, everything])
    assert aggregate.instances == {}
    assert aggregate.status == ENTERED_IN_ERROR
    resource = imaging_study(aggregate, "R4")
    assert resource["status"] == ENTERED_IN_ERROR
    assert resource["numberOfInstances"] == 0 and "series" not in resource
    # Still says which patient it (wrongly) was: that is what is in error.
    assert resource["subject"]["identifier"]["value"] == "P1"


@pytest.mark.parametrize("code", ["113037", "113038"])
def test_patient_safety_and_worklist_rejections_of_part_leave_the_rest_available(
    code: str,
) -> None:
    partial = note("1.2.3.99.3", code, SERIES_B[0].sop_uid)
    aggregate = fold(StudyAggregate(STUDY), [*SERIES_A, *SERIES_B, partial])
    assert aggregate.status == "available"
    assert len(aggregate.instances) == 4


def test_a_rejected_instance_stored_again_stays_rejected() -> None:
    aggregate = fold(StudyAggregate(STUDY), [*SERIES_B, REJECT_B])
    aggregate = fold(emitted(aggregate), SERIES_B)
    assert aggregate.instances == {}


def test_revive_lifts_a_rejection_only_for_a_copy_sent_after_the_note() -> None:
    # Received, rejected, received again: revived.
    aggregate = fold(StudyAggregate(STUDY), [*SERIES_B, REJECT_B], revive_rejected=True)
    assert aggregate.instances == {}
    aggregate = fold(aggregate, SERIES_B[:1], revive_rejected=True)
    assert set(aggregate.instances) == {SERIES_B[0].sop_uid}
    # Rejected before it ever arrived: its first arrival stays rejected, a second revives.
    early = fold(StudyAggregate(STUDY), [REJECT_B, *SERIES_B], revive_rejected=True)
    assert early.instances == {}
    assert set(fold(early, SERIES_B, revive_rejected=True).instances) == {
        s.sop_uid for s in SERIES_B
    }


def test_two_notes_on_one_instance_keep_the_smaller_note() -> None:
    first = note("1.2.3.99.5", "113039", SERIES_B[0].sop_uid)
    second = note("1.2.3.99.4", "113001", SERIES_B[0].sop_uid)
    one = fold(StudyAggregate(STUDY), [first, second])
    other = fold(StudyAggregate(STUDY), [second, first])
    assert one == other
    assert one.rejected[SERIES_B[0].sop_uid].note == "1.2.3.99.4"


# The property: whatever the order, with duplicates, rejection notes folded among
# instances give the same aggregate (default: rejected instances stay rejected).
EVERYTHING = [
    *SERIES_A,
    *SERIES_B,
    REJECT_B,
    note("1.2.3.99.6", "113038", SERIES_A[0].sop_uid),
    inst("1.2.3.3.1", "1.2.3.3", 1, {"patient_id": "", "accession_number": "A1"}),
    inst("1.2.3.3.2", "1.2.3.3", 2, {"patient_id": "P1", "institution": "ONE OF THREE"}),
]


@settings(max_examples=60, deadline=None)
@given(st.randoms(use_true_random=False), st.integers(min_value=1, max_value=3))
def test_fold_with_rejection_notes_is_order_independent(rng: random.Random, copies: int) -> None:
    expected = fold(StudyAggregate(STUDY), EVERYTHING)
    sends = EVERYTHING * copies
    rng.shuffle(sends)
    # In one fold or in several batches of the same generation.
    cut = rng.randrange(len(sends) + 1)
    assert fold(StudyAggregate(STUDY), sends) == expected
    assert fold(fold(StudyAggregate(STUDY), sends[:cut]), sends[cut:]) == expected


# --- consensus -------------------------------------------------------------------------


def test_an_empty_patient_id_never_outvotes_a_real_one() -> None:
    # The smallest SOP Instance UID has no Patient ID (the real-corpus case).
    # Empty ones outnumber it, as empty elements or left out: they do not vote.
    study = [
        inst("1.2.3.1.1", "1.2.3.1", 1, {"accession_number": "A1"}),
        inst("1.2.3.1.2", "1.2.3.1", 2, {"patient_id": "P7", "accession_number": "A1"}),
        inst("1.2.3.1.0", "1.2.3.1", 3, {"patient_id": "", "accession_number": "A1"}),
        inst("1.2.3.1.3", "1.2.3.1", 4, {"patient_id": "", "accession_number": "A1"}),
    ]
    aggregate = fold(StudyAggregate(STUDY), study)
    assert aggregate.study is not None and aggregate.study.attrs["patient_id"] == "P7"
    assert aggregate.disagreements == (), "an empty value is no disagreement"


def test_a_value_held_by_one_of_three_loses_and_is_reported_by_counts() -> None:
    study = [
        inst("1.2.3.1.1", "1.2.3.1", 1, {"institution": "MINORITY"}),
        inst("1.2.3.1.2", "1.2.3.1", 2, {"institution": "GENERAL"}),
        inst("1.2.3.1.3", "1.2.3.1", 3, {"institution": "GENERAL"}),
    ]
    aggregate = fold(StudyAggregate(STUDY), study)
    assert aggregate.study is not None and aggregate.study.attrs["institution"] == "GENERAL"
    (found,) = aggregate.disagreements
    assert (found.level, found.keyword, found.counts) == ("study", "InstitutionName", (2, 1))
    assert found.line() == "InstitutionName: 2 values among 3 instances (2/1)"
    assert "GENERAL" not in json.dumps(found.as_json()) and "MINORITY" not in found.line()


def test_a_correction_resent_in_part_wins_after_the_resend() -> None:
    old: dict[str, object] = {"patient_id": "WRONG", "patient_name": {"Alphabetic": "Wrong^Pat"}}
    new: dict[str, object] = {"patient_id": "RIGHT", "patient_name": {"Alphabetic": "Right^Pat"}}
    first = [inst(f"1.2.3.1.{n}", "1.2.3.1", n, old) for n in range(1, 11)]
    aggregate = emitted(fold(StudyAggregate(STUDY), first))  # emitted: generation 1 next
    corrected = [replace(s, study=new) for s in first[:3]]  # the PACS re-sends 3 of 10
    aggregate = fold(aggregate, corrected)
    assert aggregate.study is not None
    assert aggregate.study.attrs["patient_id"] == "RIGHT"
    assert aggregate.study.attrs["patient_name"] == {"Alphabetic": "Right^Pat"}
    (found, _) = aggregate.disagreements
    assert found.keyword == "PatientID" and found.counts == (7, 3)
    # The rest re-sent later: no disagreement left.
    aggregate = fold(emitted(aggregate), [replace(s, study=new) for s in first[3:]])
    assert aggregate.disagreements == ()


WRONG: dict[str, object] = {"patient_id": "WRONG", "accession_number": "A1"}
RIGHT: dict[str, object] = {"patient_id": "RIGHT", "accession_number": "A1"}
FIRST_SEND = [inst(f"1.2.3.1.{n}", "1.2.3.1", n, WRONG) for n in range(1, 11)]


def patient(aggregate: StudyAggregate) -> object:
    assert aggregate.study is not None
    return aggregate.study.attrs.get("patient_id")


def test_a_late_original_never_overrides_a_correction() -> None:
    aggregate = emitted(fold(StudyAggregate(STUDY), FIRST_SEND))
    aggregate = emitted(fold(aggregate, [replace(s, study=RIGHT) for s in FIRST_SEND[:3]]))
    assert patient(aggregate) == "RIGHT"
    # An image the modality had failed to send arrives now, with the old patient (its
    # retry queue never saw the PACS's correction): it is no correction.
    missed = inst("1.2.3.1.99", "1.2.3.1", 99, WRONG)
    assert patient(fold(aggregate, [missed])) == "RIGHT"
    # Nor is an unchanged copy of an uncorrected instance.
    assert patient(fold(aggregate, FIRST_SEND[5:])) == "RIGHT"
    # A second correction outranks the first.
    again = {"patient_id": "THIRD", "accession_number": "A1"}
    assert patient(fold(aggregate, [replace(FIRST_SEND[9], study=again)])) == "THIRD"


def test_a_correction_before_the_first_emission_wins_too() -> None:
    aggregate = fold(StudyAggregate(STUDY), FIRST_SEND)
    assert patient(fold(aggregate, [replace(FIRST_SEND[0], study=RIGHT)])) == "RIGHT"


def test_a_late_new_instance_only_votes() -> None:
    """A workstation's key object or report, arriving after the emission with its own
    Institution Name, is one more vote, not a correction."""
    study = [inst(f"1.2.3.1.{n}", "1.2.3.1", n, {"institution": "GENERAL"}) for n in range(3)]
    aggregate = emitted(fold(StudyAggregate(STUDY), study))
    late = inst("1.2.3.4.1", "1.2.3.4", 1, {"institution": "READING SITE"})
    aggregate = fold(aggregate, [late])
    assert aggregate.study is not None and aggregate.study.attrs["institution"] == "GENERAL"


# Order independence extends to a correction: after an emission, the PACS re-sends part
# of the study corrected, with duplicates, a rejection note and a missed original among
# it, in any order and in any batches: one result.
RESEND = [
    *(replace(s, study=RIGHT) for s in FIRST_SEND[:4]),
    note("1.2.3.99.8", "113001", FIRST_SEND[9].sop_uid),
    inst("1.2.3.1.42", "1.2.3.1", 42, WRONG),
]


@settings(max_examples=60, deadline=None)
@given(st.randoms(use_true_random=False), st.integers(min_value=1, max_value=3))
def test_a_correction_with_notes_is_order_independent(rng: random.Random, copies: int) -> None:
    first_send = [*FIRST_SEND, REJECT_B, *SERIES_B]
    rng.shuffle(first_send)
    before = emitted(fold(StudyAggregate(STUDY), first_send))
    assert before == emitted(fold(StudyAggregate(STUDY), [*FIRST_SEND, REJECT_B, *SERIES_B]))
    expected = fold(before, RESEND)
    sends = RESEND * copies
    rng.shuffle(sends)
    cut = rng.randrange(len(sends) + 1)
    assert fold(before, sends) == expected
    assert fold(fold(before, sends[:cut]), sends[cut:]) == expected
    assert patient(expected) == "RIGHT"
    assert FIRST_SEND[9].sop_uid not in expected.instances


def test_patient_attributes_never_mix_two_patients() -> None:
    votes: list[Vote] = [
        Vote(0, "1.1", {"patient_id": "OLD", "patient_birth_date": "1950-01-01"}),
        Vote(1, "1.2", {"patient_id": "NEW"}),  # the correction has no birth date
    ]
    decided = decide(votes)
    assert decided == {"patient_id": "NEW"}


def test_without_any_key_companions_are_decided_one_by_one() -> None:
    votes: list[Vote] = [
        Vote(0, "1.1", {"patient_name": {"Alphabetic": "A"}}),
        Vote(0, "1.2", {"patient_sex": "F"}),
    ]
    assert decide(votes) == {"patient_name": {"Alphabetic": "A"}, "patient_sex": "F"}


def test_consensus_is_linear_enough_for_a_big_study() -> None:
    votes: list[Vote] = [
        Vote(0, f"1.{n}", {"patient_id": "P", "institution": f"I{n % 3}"}) for n in range(20000)
    ]
    assert decide(votes)["institution"] == "I0"
    (found,) = disagreements("study", votes)
    assert found.counts == (6667, 6667, 6666)


# Instances that share a rank and a variant vote once, counted as many (what
# resolve() does): the same decision and the same counts as one vote per instance.
_VALUES = st.sampled_from(["", "A", "B", "C"])
_VARIANTS = st.fixed_dictionaries(
    {"patient_id": _VALUES, "patient_name": _VALUES, "institution": _VALUES}
)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), _VARIANTS), min_size=1, max_size=30), st.randoms())
def test_grouped_votes_decide_as_one_vote_per_instance(
    instances: list[tuple[int, dict[str, str]]], rng: random.Random
) -> None:
    sops = [f"1.2.{n}" for n in range(len(instances))]
    rng.shuffle(sops)
    single = [Vote(g, sop, attrs) for sop, (g, attrs) in zip(sops, instances, strict=True)]
    groups: dict[tuple[int, str], Vote] = {}
    for vote in single:
        key = (vote.rank, json.dumps(vote.attrs, sort_keys=True))
        known = groups.get(key)
        groups[key] = (
            vote
            if known is None
            else Vote(vote.rank, min(vote.sop, known.sop), vote.attrs, known.instances + 1)
        )
    grouped = list(groups.values())
    rng.shuffle(grouped)
    assert decide(grouped) == decide(single)
    assert disagreements("study", grouped) == disagreements("study", single)


# --- what is a rejection note (real KOS documents written by highdicom) ---------------


def test_only_a_kos_titled_with_a_rejection_code_is_a_note(tmp_path: Path) -> None:
    from pydicom.sr.codedict import codes

    from tests.lifecycle_support import rejection_note
    from tests.support import make_study
    from workers.summary import summarize

    study = make_study(tmp_path / "s", [("CT", 2)])
    path = rejection_note(tmp_path / "n", study.files, "113001")
    note_summary = summarize(read_header(path).json)
    assert note_summary.rejection is not None
    assert note_summary.rejection.rejected == tuple(sorted(study.sop_uids))
    # The same document titled "Of Interest" (a key image note) is an instance.
    ds = pydicom.dcmread(path)
    ds.ConceptNameCodeSequence[0].CodeValue = codes.DCM.OfInterest.value
    ds.ConceptNameCodeSequence[0].CodeMeaning = codes.DCM.OfInterest.meaning
    ds.save_as(path, enforce_file_format=True)
    assert summarize(read_header(path).json).rejection is None
    # A rejection code of another coding scheme is no IOCM title either.
    ds.ConceptNameCodeSequence[0].CodeValue = "113001"
    ds.ConceptNameCodeSequence[0].CodingSchemeDesignator = "99LOCAL"
    ds.save_as(path, enforce_file_format=True)
    assert summarize(read_header(path).json).rejection is None


def test_a_note_naming_another_studys_instances_does_not_reject_them(tmp_path: Path) -> None:
    from tests.lifecycle_support import rejection_note
    from tests.support import make_study
    from workers.summary import summarize

    study = make_study(tmp_path / "s", [("CT", 2)])
    other = make_study(tmp_path / "o", [("MR", 1)])
    path = rejection_note(tmp_path / "n", study.files, "113001")
    # Point the note's first evidence item at the other study (as a PACS in error would).
    ds = pydicom.dcmread(path)
    (evidence,) = ds.CurrentRequestedProcedureEvidenceSequence
    moved = pydicom.Dataset()
    moved.StudyInstanceUID = other.study_uid
    series = pydicom.Dataset()
    series.SeriesInstanceUID = next(iter(other.series))
    ref = pydicom.Dataset()
    ref.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    ref.ReferencedSOPInstanceUID = next(iter(other.sop_uids))
    series.ReferencedSOPSequence = [ref]
    moved.ReferencedSeriesSequence = [series]
    ds.CurrentRequestedProcedureEvidenceSequence = [evidence, moved]
    ds.save_as(path, enforce_file_format=True)
    rejection = summarize(read_header(path).json).rejection
    assert rejection is not None
    assert rejection.rejected == tuple(sorted(study.sop_uids)) and rejection.elsewhere == 1

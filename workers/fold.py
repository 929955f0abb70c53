"""Pure: fold instance summaries into a study aggregate.

Rules (the Redis store in :mod:`workers.aggregates` stores the same facts and resolves
them with the same :func:`resolve`):

* An instance is keyed by its SOP Instance UID: sent twice it counts once, and a
  changed resend replaces the earlier record (even if it moved to another series).
* Each record has a *rank*: 0 for an instance as first received (whenever it arrives);
  a re-send of a known instance whose study- or series-level attributes changed is a
  correction and ranks ``generation + 1``, where the *generation* is how many times the
  study had been emitted before (:func:`emitted` counts one up); an unchanged re-send
  keeps the rank it replaces.
* Study- and series-level attributes are decided per attribute from the values the
  instances carry (:mod:`workers.lifecycle.consensus`): the highest rank wins (the
  newest correction), then the value most of its instances carry. Arrival order within
  a generation does not matter, and an instance that merely arrives late (a missed
  image, a workstation's report) never overrides a correction.
* IOCM rejection notes (:mod:`workers.lifecycle.rejection`) are not instances: the
  instances they name are hidden, whether they arrived before the note or after it,
  and a series left empty disappears. With ``revive_rejected`` a copy of a rejected
  instance that arrives after the note (the instance had been received before it)
  lifts the rejection.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from workers.lifecycle import consensus
from workers.lifecycle.consensus import Disagreement
from workers.summary import Attributes, InstanceSummary

#: ImagingStudy.status of a study that is what it says
AVAILABLE = "available"
#: ... of a study every instance of which was rejected, or that an operator retracted
ENTERED_IN_ERROR = "entered-in-error"


@dataclass(frozen=True)
class Sourced:
    """Decided attributes and where they came from (``consensus`` of the instances)."""

    source: str
    attrs: Attributes


@dataclass(frozen=True)
class Received:
    """One instance as last received: its rank (see the module's rules), digests of its
    study- and series-level attributes (in :attr:`StudyAggregate.variants`) and its
    record."""

    rank: int
    study: str
    series: str
    record: Attributes


@dataclass(frozen=True)
class Rejection:
    """An instance a rejection note names."""

    code: str
    #: SOP Instance UID of the note (the smallest, if several name the instance)
    note: str
    #: only with ``revive_rejected``: the instance had been received when the note came
    seen: bool = False


@dataclass(frozen=True)
class Retraction:
    """An operator's ``scp2fhir retract`` (no patient data: who, when, why)."""

    at_ms: int
    by: str
    reason: str


@dataclass(frozen=True)
class StudyAggregate:
    study_uid: str
    #: decided study-level attributes
    study: Sourced | None = None
    #: SOP Instance UID -> instance record (names its ``series_uid``) of the instances
    #: shown: received and not rejected
    instances: dict[str, Attributes] = field(default_factory=dict)
    #: Series Instance UID -> decided series attributes, for the series shown
    series: dict[str, Sourced] = field(default_factory=dict)
    #: every instance received, rejected ones included (SOP Instance UID -> record)
    received: dict[str, Received] = field(default_factory=dict)
    #: attribute digest -> study- or series-level attributes (shared by instances)
    variants: dict[str, Attributes] = field(default_factory=dict)
    #: SOP Instance UID -> its rejection (the instance may not have arrived yet)
    rejected: dict[str, Rejection] = field(default_factory=dict)
    #: SOP Instance UID of each rejection note -> its DCM code
    notes: dict[str, str] = field(default_factory=dict)
    #: emissions so far; a correction folded from now on ranks one more
    generation: int = 0
    retraction: Retraction | None = None
    #: attributes the instances shown disagree on (counts only)
    disagreements: tuple[Disagreement, ...] = ()

    def members_by_series(self) -> dict[str, list[tuple[str, Attributes]]]:
        """Series Instance UID -> its (SOP Instance UID, record) pairs, by SOP Instance UID."""
        by_series: dict[str, list[tuple[str, Attributes]]] = {}
        for sop_uid, record in sorted(self.instances.items()):
            by_series.setdefault(record["series_uid"], []).append((sop_uid, record))
        return by_series

    def series_uids(self) -> list[str]:
        """Series that hold at least one instance."""
        return sorted({record["series_uid"] for record in self.instances.values()})

    @property
    def status(self) -> str:
        """``entered-in-error`` when retracted, or when instances were received and every
        one of them is rejected; else ``available``."""
        if self.retraction is not None or (self.received and not self.instances):
            return ENTERED_IN_ERROR
        return AVAILABLE

    @property
    def emittable(self) -> bool:
        """Whether there is anything to write: instances (shown or rejected) or a
        retraction. A study known only from rejection notes is not."""
        return bool(self.received) or self.retraction is not None


def digest(attrs: Attributes) -> str:
    """A short, stable name for a set of attributes (instances share their variants)."""
    return hashlib.sha1(consensus.canonical(attrs).encode()).hexdigest()[:12]


def fold(
    aggregate: StudyAggregate,
    summaries: Iterable[InstanceSummary],
    *,
    revive_rejected: bool = False,
) -> StudyAggregate:
    """Return ``aggregate`` with ``summaries`` of the same study folded in."""
    received = dict(aggregate.received)
    variants = dict(aggregate.variants)
    rejected = dict(aggregate.rejected)
    notes = dict(aggregate.notes)
    for summary in summaries:
        if summary.study_uid != aggregate.study_uid:
            raise ValueError("summary belongs to another study")
        sop = summary.sop_uid
        note = summary.rejection
        if note is not None:
            notes[sop] = note.code
            for uid in note.rejected:
                current = rejected.get(uid)
                if current is None or sop <= current.note:
                    rejected[uid] = Rejection(note.code, sop, revive_rejected and uid in received)
            continue
        study_digest, series_digest = digest(summary.study), digest(summary.series)
        variants[study_digest] = summary.study
        variants[series_digest] = summary.series
        received[sop] = Received(
            record_rank(received.get(sop), study_digest, series_digest, aggregate.generation),
            study_digest,
            series_digest,
            summary.instance,
        )
        rejection = rejected.get(sop)
        if revive_rejected and rejection is not None:
            if rejection.seen:
                del rejected[sop]
            else:
                rejected[sop] = replace(rejection, seen=True)
    return resolve(
        replace(aggregate, received=received, variants=variants, rejected=rejected, notes=notes)
    )


def record_rank(previous: Received | None, study: str, series: str, generation: int) -> int:
    """The rank of a record with these variant digests that replaces ``previous``."""
    if previous is None:
        return 0
    if previous.study == study and previous.series == series:
        return previous.rank
    return generation + 1


def emitted(aggregate: StudyAggregate) -> StudyAggregate:
    """The aggregate after an emission closed the study: the next generation, so a later
    correction outranks the earlier ones (what the Redis close script does)."""
    return replace(aggregate, generation=aggregate.generation + 1)


def resolve(aggregate: StudyAggregate) -> StudyAggregate:
    """Derive what is shown (instances, decided attributes, disagreements) from what was
    received, rejected and retracted. Linear in the number of instances: instances that
    share a rank and a variant of their attributes vote once, counted as many."""
    instances: dict[str, Attributes] = {}
    study_tally = _Tally()
    series_tally: dict[str, _Tally] = {}
    for sop, got in aggregate.received.items():
        if sop in aggregate.rejected:
            continue
        instances[sop] = got.record
        study_tally.add(got.rank, sop, got.study)
        series_uid = got.record["series_uid"]
        tally = series_tally.get(series_uid)
        if tally is None:
            tally = series_tally[series_uid] = _Tally()
        tally.add(got.rank, sop, got.series)
    if not instances:
        # Everything rejected: the study keeps what it said, to mark that in error.
        for sop, got in aggregate.received.items():
            study_tally.add(got.rank, sop, got.study)
    study_votes = study_tally.votes(aggregate.variants)
    found = consensus.disagreements("study", study_votes) if instances else []
    series: dict[str, Sourced] = {}
    for series_uid in sorted(series_tally):
        votes = series_tally[series_uid].votes(aggregate.variants)
        series[series_uid] = Sourced("consensus", consensus.decide(votes))
        found += consensus.disagreements(f"series {series_uid}", votes)
    study = Sourced("consensus", consensus.decide(study_votes)) if study_votes else None
    return replace(
        aggregate,
        study=study,
        instances=instances,
        series=series,
        disagreements=tuple(found),
    )


class _Tally:
    """Instances per (rank, variant digest), with the smallest SOP Instance UID."""

    __slots__ = ("_groups",)

    def __init__(self) -> None:
        self._groups: dict[tuple[int, str], list[Any]] = {}

    def add(self, rank: int, sop: str, variant: str) -> None:
        group = self._groups.get((rank, variant))
        if group is None:
            self._groups[(rank, variant)] = [sop, 1]
        else:
            group[1] += 1
            if sop < group[0]:
                group[0] = sop

    def votes(self, variants: dict[str, Attributes]) -> list[consensus.Vote]:
        return [
            consensus.Vote(rank, sop, variants.get(variant, {}), count)
            for (rank, variant), (sop, count) in self._groups.items()
        ]


def fold_all(summaries: Iterable[InstanceSummary]) -> dict[str, StudyAggregate]:
    """Group summaries by study and fold each group (offline conversion)."""
    grouped: dict[str, list[InstanceSummary]] = {}
    for summary in summaries:
        grouped.setdefault(summary.study_uid, []).append(summary)
    return {uid: fold(StudyAggregate(uid), group) for uid, group in grouped.items()}

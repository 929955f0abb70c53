"""Pure: fold instance summaries into a study aggregate.

Rules (the Redis store in :mod:`workers.aggregates` applies the same ones):

* An instance is keyed by its SOP Instance UID: sent twice it counts once, and a
  changed resend replaces the earlier record (even if it moved to another series).
* Study- and series-level attributes are taken from the instance with the
  smallest SOP Instance UID that carried them (:func:`prefer`), so the result is
  the same whatever order the instances arrive in.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from workers.summary import Attributes, InstanceSummary


@dataclass(frozen=True)
class Sourced:
    """Attributes and the SOP Instance UID they were taken from."""

    source: str
    attrs: Attributes


@dataclass(frozen=True)
class StudyAggregate:
    study_uid: str
    study: Sourced | None = None
    #: SOP Instance UID -> instance record (names its ``series_uid``)
    instances: dict[str, Attributes] = field(default_factory=dict)
    #: Series Instance UID -> series attributes
    series: dict[str, Sourced] = field(default_factory=dict)

    def members_by_series(self) -> dict[str, list[tuple[str, Attributes]]]:
        """Series Instance UID -> its (SOP Instance UID, record) pairs, by SOP Instance UID."""
        by_series: dict[str, list[tuple[str, Attributes]]] = {}
        for sop_uid, record in sorted(self.instances.items()):
            by_series.setdefault(record["series_uid"], []).append((sop_uid, record))
        return by_series

    def series_uids(self) -> list[str]:
        """Series that hold at least one instance."""
        return sorted({record["series_uid"] for record in self.instances.values()})


def prefer(current: Sourced | None, candidate: Sourced) -> Sourced:
    """The attributes to keep: those from the smaller SOP Instance UID (ties: the newer)."""
    if current is None or candidate.source <= current.source:
        return candidate
    return current


def fold(aggregate: StudyAggregate, summaries: Iterable[InstanceSummary]) -> StudyAggregate:
    """Return ``aggregate`` with ``summaries`` of the same study folded in."""
    study = aggregate.study
    instances = dict(aggregate.instances)
    series = dict(aggregate.series)
    for summary in summaries:
        if summary.study_uid != aggregate.study_uid:
            raise ValueError("summary belongs to another study")
        instances[summary.sop_uid] = summary.instance
        study = prefer(study, Sourced(summary.sop_uid, summary.study))
        series[summary.series_uid] = prefer(
            series.get(summary.series_uid), Sourced(summary.sop_uid, summary.series)
        )
    return replace(aggregate, study=study, instances=instances, series=series)


def fold_all(summaries: Iterable[InstanceSummary]) -> dict[str, StudyAggregate]:
    """Group summaries by study and fold each group (offline conversion)."""
    grouped: dict[str, list[InstanceSummary]] = {}
    for summary in summaries:
        grouped.setdefault(summary.study_uid, []).append(summary)
    return {uid: fold(StudyAggregate(uid), group) for uid, group in grouped.items()}

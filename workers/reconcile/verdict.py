"""Pure: what the PACS has against what scp2fhir holds, as one verdict per study.

* **missing** -- the PACS has the study, scp2fhir holds none of it;
* **incomplete** -- scp2fhir holds fewer instances; the series that fall short are named;
* **complete** -- scp2fhir holds at least what the PACS counts (more: the PACS deleted
  some, or counts differently);
* **unknown to the PACS** -- scp2fhir holds or emitted a study of that date the PACS does
  not list (deleted there? sent to scp2fhir only?).

Study-level counts decide where they agree; where scp2fhir holds fewer, the series are
compared (:func:`by_series`), since only they say *what* to fetch. Instances waiting to be
folded are not counted as held (a resend may count them twice); they are shown.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from scp.pacs.query import PacsSeries, PacsStudy
from workers.reconcile.holdings import Holding


class State(StrEnum):
    MISSING = "missing"
    INCOMPLETE = "incomplete"
    COMPLETE = "complete"
    UNKNOWN = "unknown to the PACS"


@dataclass(frozen=True)
class SeriesGap:
    series_uid: str
    pacs: int
    held: int


@dataclass(frozen=True)
class Verdict:
    study_uid: str
    #: YYYYMMDD as the PACS (or, for studies unknown to it, scp2fhir) has it; "" if none.
    study_date: str
    state: State
    #: Instances the PACS counts (None: unknown to the PACS).
    pacs: int | None
    held: int
    #: Instances in the last emitted ImagingStudy (None: never emitted / not recorded).
    emitted: int | None
    waiting: int = 0
    #: Incomplete studies: the series that fall short.
    gaps: tuple[SeriesGap, ...] = field(default=())

    @property
    def needs_fetch(self) -> bool:
        return self.state in (State.MISSING, State.INCOMPLETE)

    @property
    def series_to_move(self) -> tuple[str, ...]:
        """Series to C-MOVE: none named means the whole study."""
        if self.state is State.INCOMPLETE:
            return tuple(gap.series_uid for gap in self.gaps)
        return ()

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["state"] = self.state.value
        data["gaps"] = [asdict(gap) for gap in self.gaps]
        return data


def by_study(pacs: PacsStudy, holding: Holding) -> Verdict | None:
    """The verdict if study-level counts settle it, else None: compare the series."""
    if holding.held == 0:
        return _verdict(pacs, holding, State.MISSING)
    if pacs.instances is not None and holding.held >= pacs.instances:
        return _verdict(pacs, holding, State.COMPLETE)
    return None


def by_series(
    pacs: PacsStudy,
    holding: Holding,
    pacs_series: list[PacsSeries],
    held_series: dict[str, int],
) -> Verdict:
    """The verdict from series-level counts (every ``pacs_series`` count known)."""
    gaps = tuple(
        SeriesGap(series.series_uid, series.instances, held_series.get(series.series_uid, 0))
        for series in pacs_series
        if series.instances is not None and held_series.get(series.series_uid, 0) < series.instances
    )
    total = sum(series.instances or 0 for series in pacs_series)
    counted = PacsStudy(pacs.study_uid, pacs.study_date, pacs.instances or total)
    return _verdict(counted, holding, State.INCOMPLETE if gaps else State.COMPLETE, gaps)


def unknown_to_pacs(holding: Holding, study_date: str) -> Verdict:
    return Verdict(
        study_uid=holding.study_uid,
        study_date=study_date,
        state=State.UNKNOWN,
        pacs=None,
        held=holding.held,
        emitted=holding.emitted.instances if holding.emitted else None,
        waiting=holding.waiting,
    )


def _verdict(
    pacs: PacsStudy, holding: Holding, state: State, gaps: tuple[SeriesGap, ...] = ()
) -> Verdict:
    return Verdict(
        study_uid=pacs.study_uid,
        study_date=pacs.study_date,
        state=state,
        pacs=pacs.instances,
        held=holding.held,
        emitted=holding.emitted.instances if holding.emitted else None,
        waiting=holding.waiting,
        gaps=gaps,
    )

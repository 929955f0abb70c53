"""How ``scp2fhir reconcile`` shows its verdicts: a table for people, JSON for scripts.
Identifiers and counts only, never patient data."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from scp.pacs import PacsAddress
from workers.reconcile.fetcher import Fetched
from workers.reconcile.verdict import State, Verdict

#: Order of the states in the table and the summary.
_ORDER = (State.MISSING, State.INCOMPLETE, State.COMPLETE, State.UNKNOWN)


@dataclass
class Report:
    pacs: PacsAddress
    since: dt.date
    until: dt.date
    verdicts: list[Verdict]
    #: Study UID -> outcome of its fetch (``--fetch`` only).
    fetched: dict[str, Fetched] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        counted = Counter(v.state for v in self.verdicts)
        return {state.value: counted.get(state, 0) for state in _ORDER}

    def unresolved(self) -> list[Verdict]:
        """Studies still missing instances: not fetched, or whose fetch failed."""
        return [
            v
            for v in self.verdicts
            if v.needs_fetch
            and (v.study_uid not in self.fetched or self.fetched[v.study_uid].error is not None)
        ]

    def as_json(self) -> dict[str, Any]:
        studies = []
        for item in self.verdicts:
            entry = item.as_json()
            outcome = self.fetched.get(item.study_uid)
            if outcome is not None:
                entry["fetch"] = (
                    {"error": str(outcome.error)}
                    if outcome.error is not None
                    else {
                        "completed": outcome.result.completed if outcome.result else 0,
                        "warning": outcome.result.warning if outcome.result else 0,
                    }
                )
            studies.append(entry)
        return {
            "pacs": str(self.pacs),
            "since": self.since.isoformat(),
            "until": self.until.isoformat(),
            "counts": self.counts(),
            "unresolved": len(self.unresolved()),
            "studies": studies,
        }


def render_text(report: Report) -> str:
    lines = [
        f"reconcile {report.pacs}  {report.since.isoformat()}..{report.until.isoformat()}",
        f"{'state':<20} {'date':<8} {'study instance uid':<64} {'pacs':>6} {'held':>6} "
        f"{'emitted':>7}  notes",
    ]
    ordered = sorted(report.verdicts, key=lambda v: (_ORDER.index(v.state), v.study_date))
    for item in ordered:
        lines.append(
            f"{item.state.value:<20} {item.study_date or '-':<8} {item.study_uid:<64} "
            f"{_n(item.pacs):>6} {item.held:>6} {_n(item.emitted):>7}  {_notes(report, item)}"
        )
        for gap in item.gaps:
            lines.append(f"{'':<20} {'':<8}   series {gap.series_uid}: {gap.held} of {gap.pacs}")
    summary = ", ".join(f"{n} {state}" for state, n in report.counts().items())
    lines.append(f"{len(report.verdicts)} studies: {summary}")
    if report.fetched:
        ok = [f for f in report.fetched.values() if f.error is None]
        moved = sum(f.result.completed + f.result.warning for f in ok if f.result)
        lines.append(
            f"fetched {len(ok)} of {len(report.fetched)} studies ({moved} instances moved)"
        )
    return "\n".join(lines)


def _n(value: int | None) -> str:
    return "-" if value is None else str(value)


def _notes(report: Report, item: Verdict) -> str:
    notes = []
    if item.waiting:
        notes.append(f"{item.waiting} waiting to fold")
    if item.state is State.COMPLETE and item.pacs is not None and item.held > item.pacs:
        notes.append(f"{item.held - item.pacs} more than the PACS")
    outcome = report.fetched.get(item.study_uid)
    if outcome is not None:
        if outcome.error is not None:
            notes.append(f"fetch failed: {outcome.error}")
        elif outcome.result is not None:
            notes.append(f"fetched {outcome.result.completed + outcome.result.warning}")
    return "; ".join(notes)

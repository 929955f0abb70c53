"""Pure: a series' acquisition technique, reduced over its instances.

Each instance record carries its own technique (:mod:`workers.technique`). A profile that
states a value once per series gets it from :meth:`SeriesFacts.value` only when every
instance of the series agrees; otherwise the value is :data:`VARIES` (instances disagree,
or some lack it) and the profile leaves the element out and reports a gap. That keeps a
series with mixed slice thickness from being described as one thickness.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


class _Varies:
    """Marker: instances of the series disagree on the value, or only some carry it."""

    def __repr__(self) -> str:
        return "VARIES"


VARIES = _Varies()


@dataclass(frozen=True)
class Spread:
    """How a fact is spread over a series: distinct values and instances without it."""

    distinct: int
    missing: int
    total: int

    def reason(self, tag: str) -> str:
        parts = []
        if self.distinct > 1:
            parts.append(f"{self.distinct} different values")
        if self.missing:
            parts.append(f"absent in {self.missing}")
        return f"{tag}: {' and '.join(parts)} among {self.total} instances"


class SeriesFacts:
    """The techniques of one series' instances, asked by fact name."""

    def __init__(self, members: list[tuple[str, dict[str, Any]]]) -> None:
        """``members``: the series' (SOP Instance UID, record) pairs
        (:meth:`~workers.fold.StudyAggregate.members_by_series`)."""
        # Anything but a dict (a record from an older or damaged aggregate) is no technique.
        self._techniques: list[dict[str, Any]] = [
            t if isinstance(t := r.get("technique"), dict) else {} for _, r in members
        ]

    @property
    def recorded(self) -> bool:
        """Whether the instances were summarized for a profile at all."""
        return any(self._techniques)

    def value(self, name: str) -> Any:
        """The value every instance agrees on; ``None`` when no instance has it,
        :data:`VARIES` when they disagree or only some have it."""
        seen: dict[Any, Any] = {}
        missing = 0
        for technique in self._techniques:
            if name in technique:
                seen.setdefault(_key(technique[name]), technique[name])
            else:
                missing += 1
        if not seen:
            return None
        if len(seen) > 1 or missing:
            return VARIES
        return next(iter(seen.values()))

    def spread(self, name: str) -> Spread:
        distinct = {_key(t[name]) for t in self._techniques if name in t}
        missing = sum(1 for t in self._techniques if name not in t)
        return Spread(len(distinct), missing, len(self._techniques))

    def any_true(self, name: str) -> bool | None:
        """For yes/no facts: ``True`` if any instance says yes, ``False`` if all say no,
        ``None`` if some are unknown and none says yes."""
        values = [t.get(name) for t in self._techniques]
        if any(v is True for v in values):
            return True
        if values and all(v is False for v in values):
            return False
        return None


def _key(value: Any) -> Any:
    """A hashable stand-in for a fact's value that tells 1, 1.0 and True apart (they are
    equal in Python) and compares lists and coded entries by content."""
    if isinstance(value, str | int | float | bool):
        return (type(value).__name__, value)
    return json.dumps(value, sort_keys=True)

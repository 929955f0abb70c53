"""What a profile wanted and the DICOM data could not truthfully give.

A profile never invents data. Where it requires (or must support) an element the headers
lack, or where instances of a series disagree on a value the profile holds once per
series, the element is left out and a :class:`Gap` says why. Gaps are logged at emission
(element paths and DICOM tags only, never values) and listed by
``scp2fhir convert --explain``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

#: Kinds of gap, most serious first.
REQUIRED = "required"  # the profile requires the element (min >= 1): output does not conform
MUST_SUPPORT = "must-support"  # populated when the data exist; here they do not
VARIES = "varies"  # instances of the series disagree; one value would misrepresent them


@dataclass(frozen=True, order=True)
class Gap:
    #: ``study``, or ``series <Series Instance UID>``
    where: str
    #: The element, as a FHIR path with extension slice names (``extension:ct_image.kvp``).
    element: str
    kind: str
    #: Why, naming DICOM tags and counts, never values (they may identify a patient).
    reason: str

    def line(self) -> str:
        return f"{self.where}: {self.element} [{self.kind}] {self.reason}"


class Gaps:
    """The gaps of one resource, in the order found; duplicates collapse."""

    def __init__(self) -> None:
        self._gaps: list[Gap] = []

    def add(self, where: str, element: str, kind: str, reason: str) -> None:
        gap = Gap(where, element, kind, reason)
        if gap not in self._gaps:
            self._gaps.append(gap)

    def __iter__(self) -> Iterator[Gap]:
        return iter(self._gaps)

    def __len__(self) -> int:
        return len(self._gaps)

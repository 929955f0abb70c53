"""The header budget: at most ``SCP2FHIR_MAX_HEADER_BYTES`` of DICOM JSON per instance.

A header within the budget is stored whole. Beyond it, top-level elements are kept
in this order, each group in tag order, each element whole or not at all:

1. what identifies the instance (:data:`~scp.header_rules.IDENTITY_KEYWORDS`): always;
2. what the workers read (:data:`~scp.header_rules.MAPPED_KEYWORDS`), while it fits;
3. everything else, while it fits.

What is left out is named by tag in the SCP's log line and in the C-STORE response
(Warning 0xB006, the tags as Offending Element), so one huge Content Sequence costs
neither memory nor Redis, and the instance still shows up in FHIR.

The rule is applied three times, so that memory never holds much more than the budget
and what is stored never exceeds it: by the fast encoder as it reads
(:mod:`scp.rawjson`, from estimated sizes), by pydicom's path (:mod:`scp.header`,
from exact sizes) and by :func:`encode`, on the JSON text as stored.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydicom.datadict import tag_for_keyword

from scp.header_rules import IDENTITY_KEYWORDS, MAPPED_KEYWORDS
from scp.json_text import dumps


def _keys(keywords: frozenset[str]) -> frozenset[str]:
    tags = (tag_for_keyword(keyword) for keyword in keywords)
    return frozenset(f"{tag:08X}" for tag in tags if tag is not None)


#: DICOM JSON keys of the identity and of the mapped elements.
IDENTITY_KEYS = _keys(IDENTITY_KEYWORDS)
MAPPED_KEYS = _keys(MAPPED_KEYWORDS) | IDENTITY_KEYS
#: Elements kept before the others when the budget is short (as ints, for the readers).
PREFERRED_TAGS = frozenset(int(key, 16) for key in MAPPED_KEYS)


def rank(key: str) -> int:
    """0 identity, 1 read by the workers, 2 the rest."""
    if key in IDENTITY_KEYS:
        return 0
    return 1 if key in MAPPED_KEYS else 2


def fit(sizes: Mapping[str, int], budget: int) -> list[str]:
    """The keys to leave out so that the others' ``sizes`` sum to at most ``budget``."""
    if sum(sizes.values()) <= budget:
        return []
    room = budget
    dropped: list[str] = []
    for group in (0, 1, 2):
        for key in sorted(k for k in sizes if rank(k) == group):
            if group == 0 or sizes[key] <= room:
                room -= sizes[key]
            else:
                dropped.append(key)
    return dropped


def element_size(key: str, element: Any) -> int:
    """Bytes the element takes in the stored JSON (``"key":{...},``)."""
    return len(dumps({key: element}))


def encode(header: dict[str, Any], budget: int) -> tuple[bytes, list[str]]:
    """The header as stored (JSON text of at most ``budget`` bytes, unless its identity
    alone is larger) and the keys left out to get there."""
    payload = dumps(header)
    if len(payload) <= budget:
        return payload, []
    sizes = {key: element_size(key, element) for key, element in header.items()}
    dropped = fit(sizes, budget - 2)  # the braces
    left_out = set(dropped)
    return dumps({k: v for k, v in header.items() if k not in left_out}), dropped

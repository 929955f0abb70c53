"""The origin marker: every resource scp2fhir writes carries it in ``meta.tag``, and
scp2fhir never updates, retracts or deletes a server resource that lacks it.

A tag (not ``meta.source``) because servers keep tags as they are sent and search them
(``_tag``); some servers set ``meta.source`` themselves.
"""

from __future__ import annotations

import copy
from typing import Any

ORIGIN_SYSTEM = "urn:scp2fhir"
ORIGIN_CODE = "scp2fhir"
ORIGIN_TAG: dict[str, str] = {
    "system": ORIGIN_SYSTEM,
    "code": ORIGIN_CODE,
    "display": "written by scp2fhir",
}
#: the ``_tag`` search value that finds scp2fhir's resources
ORIGIN_SEARCH = f"{ORIGIN_SYSTEM}|{ORIGIN_CODE}"

Resource = dict[str, Any]


def with_origin(resource: Resource) -> Resource:
    """``resource`` (or every entry's resource of a Bundle, and the Bundle) with the tag;
    the argument is not changed."""
    marked = copy.deepcopy(resource)
    _tag(marked)
    for entry in marked.get("entry") or [] if marked.get("resourceType") == "Bundle" else []:
        if isinstance(entry.get("resource"), dict):
            _tag(entry["resource"])
    return marked


def _tag(resource: Resource) -> None:
    meta = resource.setdefault("meta", {})
    tags = meta.setdefault("tag", [])
    if not any(_is_origin(tag) for tag in tags):
        tags.append(dict(ORIGIN_TAG))


def _is_origin(tag: Any) -> bool:
    return (
        isinstance(tag, dict)
        and tag.get("system") == ORIGIN_SYSTEM
        and tag.get("code") == ORIGIN_CODE
    )


def written_by_us(resource: Resource) -> bool:
    """Whether a resource read from a server carries scp2fhir's origin tag."""
    meta = resource.get("meta")
    tags = meta.get("tag") if isinstance(meta, dict) else None
    return isinstance(tags, list) and any(_is_origin(tag) for tag in tags)

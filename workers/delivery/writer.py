"""Writing one study's output so that the same study always lands on the same resource.

The ImagingStudy is found by its Study Instance UID identifier
(``urn:dicom:uid`` | ``urn:oid:<UID>``) or its stable id, never created twice:

* First write (no server id known): conditional update
  ``PUT ImagingStudy?identifier=urn:dicom:uid|urn:oid:<UID>`` (the body without id: the
  server assigns one), or ``PUT ImagingStudy/<stable id>`` in client-id mode, or the
  fallback when the server offers neither (:mod:`workers.delivery.conformance`).
* Later writes: ``PUT ImagingStudy/<id>`` with ``If-Match: W/"<version the bridge last
  wrote>"``. A 409/412 means someone else changed the resource: it is re-read and logged
  (never silently overwritten); if it already holds exactly what we send (our own write
  whose answer was lost to a timeout) that version is adopted, otherwise the write is
  repeated against the version just read, at most ``retry.conflict_retries`` times.
  The bridge's content is authoritative for what DICOM says.
* A transaction Bundle (the study with its Patient, Devices, Endpoint) carries the same
  decisions in its ImagingStudy entry (``request.url``, ``ifMatch``, ``ifNoneExist``).
* Only resources scp2fhir wrote (origin tag, :mod:`workers.lifecycle.origin`) are ever
  updated: the first write looks for the study's resource first (by identifier, or by id
  in client-id mode) and refuses one without the tag (:class:`ForeignResource`); the
  conditional update is also conditioned on the tag, and a conflict re-read that shows a
  resource without it is refused too.
"""

from __future__ import annotations

import copy
import json
import logging
import re
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import quote

import httpx

from workers.delivery.client import FhirClient
from workers.delivery.conformance import Capabilities
from workers.delivery.errors import ConflictPersists, ForeignResource, Rejected, Unsupported
from workers.delivery.retry import error_for
from workers.delivery.settings import Destination
from workers.delivery.state import Delivered
from workers.lifecycle.origin import ORIGIN_SEARCH, written_by_us

logger = logging.getLogger(__name__)

Resource = dict[str, Any]

DICOM_UID_SYSTEM = "urn:dicom:uid"
_ETAG = re.compile(r'^(?:W/)?"([^"]*)"$')
_HISTORY = re.compile(r"(?:^|/)ImagingStudy/([A-Za-z0-9\-.]{1,64})(?:/_history/([^/?#]+))?")


@dataclass(frozen=True)
class Target:
    """How the ImagingStudy is written: method, URL (relative to the base), the id the
    body carries (``None``: no id) and the preconditions."""

    method: str
    url: str
    resource_id: str | None
    if_match: str | None = None
    if_none_exist: str | None = None


@dataclass(frozen=True)
class WriteResult:
    resource_id: str
    version: str | None
    status: int
    how: str


def study_identifier_token(study: Resource) -> str | None:
    """``system|value`` of the study's Study Instance UID identifier, search-escaped."""
    for identifier in study.get("identifier") or []:
        if identifier.get("system") == DICOM_UID_SYSTEM and identifier.get("value"):
            value = str(identifier["value"])
            for char in ("\\", "|", ",", "$"):
                value = value.replace(char, "\\" + char)
            return f"{DICOM_UID_SYSTEM}|{value}"
    return None


def identifier_query(token: str) -> str:
    return "identifier=" + quote(token, safe=":/")


def weak_etag(version: str) -> str:
    return f'W/"{version}"'


def version_of(response: httpx.Response, body: Any) -> str | None:
    match = _ETAG.match(response.headers.get("ETag", "").strip())
    if match and match.group(1):
        return match.group(1)
    if isinstance(body, dict):
        version = (body.get("meta") or {}).get("versionId")
        return str(version) if version else None
    return None


def comparable(resource: Resource) -> str:
    """A resource's content without what the server stamps (id, meta, text)."""
    stripped = {k: v for k, v in resource.items() if k not in ("id", "meta", "text")}
    return json.dumps(stripped, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def imaging_study_of(output: Resource) -> tuple[Resource, int | None]:
    """The ImagingStudy in ``output`` and, for a Bundle, the index of its entry."""
    if output.get("resourceType") == "ImagingStudy":
        return output, None
    for index, entry in enumerate(output.get("entry") or []):
        if (entry.get("resource") or {}).get("resourceType") == "ImagingStudy":
            return entry["resource"], index
    raise Rejected("the study's Bundle holds no ImagingStudy", 0)


class StudyWriter:
    def __init__(self, client: FhirClient, destination: Destination, caps: Capabilities) -> None:
        self.client = client
        self.destination = destination
        self.caps = caps

    def write(self, study_uid: str, output: Resource, known: Delivered) -> WriteResult:
        """Write ``output`` (an ImagingStudy or a transaction Bundle); raises a
        :class:`~workers.delivery.errors.DeliveryError` when it cannot."""
        study, _ = imaging_study_of(output)
        token = study_identifier_token(study)
        target = self._target(study, token, known)
        retries = self.destination.retry.conflict_retries
        for _round in range(retries + 1):
            response, result = self._send(output, target)
            if result is not None:
                return result
            status = response.status_code
            resource_id = target.resource_id
            if status in (409, 412) and target.if_match and resource_id:
                current = self._read(resource_id)
                if current is None:
                    target = self._first_write(study, token)
                    continue
                current_version = version_of(current[0], current[1])
                _ensure_ours(current[1], study_uid)
                if comparable(current[1]) == comparable(study):
                    # Our own earlier write (its answer was lost): nothing to do.
                    return WriteResult(resource_id, current_version, 200, "already current")
                logger.warning(
                    "study=%s concurrent edit detected on ImagingStudy/%s: server has version "
                    "%s, the bridge last wrote %s; re-applying the bridge's content on top",
                    study_uid,
                    resource_id,
                    current_version,
                    target.if_match,
                )
                target = replace(
                    target, if_match=weak_etag(current_version) if current_version else None
                )
                continue
            if status in (404, 410) and target.if_match and resource_id:
                logger.warning(
                    "study=%s ImagingStudy/%s is gone from the server (HTTP %d): writing it anew",
                    study_uid,
                    resource_id,
                    status,
                )
                target = self._first_write(study, token)
                continue
            if status == 412 and target.if_match is None and "?" in target.url:
                raise ConflictPersists(
                    f"{target.method} {target.url.split('?')[0]}: HTTP 412: several "
                    f"ImagingStudy resources carry identifier {token}; merge them on the server"
                )
            raise error_for(response, f"{target.method} {target.url.split('?')[0]}")
        raise ConflictPersists(
            f"ImagingStudy/{target.resource_id}: still conflicting after {retries} re-reads"
        )

    # --- targets -------------------------------------------------------------------

    def _target(self, study: Resource, token: str | None, known: Delivered) -> Target:
        if known.resource_id:
            if not self.caps.update:
                raise Unsupported(
                    f"ImagingStudy/{known.resource_id} changed, but the server does not allow "
                    "ImagingStudy update (CapabilityStatement)"
                )
            return Target(
                "PUT",
                f"ImagingStudy/{known.resource_id}",
                known.resource_id,
                if_match=weak_etag(known.version) if known.version else None,
            )
        return self._first_write(study, token)

    def _first_write(self, study: Resource, token: str | None) -> Target:
        way = self.caps.first_write(self.destination.write_mode, token is not None)
        if way == "conditional" and token is not None:
            if self.caps.search_identifier:
                found = self._search(token)
                if found is not None:
                    return self._update_found(found, study)
            # Conditioned on the tag too: a resource someone else created in between is
            # never overwritten (the server then creates ours beside it).
            return Target(
                "PUT",
                f"ImagingStudy?{identifier_query(token)}&_tag={quote(ORIGIN_SEARCH, safe=':')}",
                None,
            )
        if way == "search" and token is not None:
            return self._search_target(token, study)
        resource_id = str(study["id"])
        current = self._read(resource_id)
        if current is not None:
            return self._update_found(current[1], study)
        return Target("PUT", f"ImagingStudy/{resource_id}", resource_id)

    def _update_found(self, found: Resource, study: Resource) -> Target:
        """Update the study's resource the server already has, if scp2fhir wrote it."""
        _ensure_ours(found, _uid_of(study))
        if not self.caps.update:
            raise Unsupported(
                f"ImagingStudy/{found['id']} exists, but the server does not allow "
                "ImagingStudy update (CapabilityStatement)"
            )
        version = (found.get("meta") or {}).get("versionId")
        return Target(
            "PUT",
            f"ImagingStudy/{found['id']}",
            str(found["id"]),
            if_match=weak_etag(str(version)) if version else None,
        )

    def _search(self, token: str) -> Resource | None:
        """The one ImagingStudy that carries the study's identifier, if any."""
        query = identifier_query(token)
        response = self.client.request("GET", f"ImagingStudy?{query}&_count=2")
        if response.status_code != 200:
            raise error_for(response, "GET ImagingStudy (search by identifier)")
        entries = [
            e["resource"]
            for e in response.json().get("entry") or []
            if (e.get("resource") or {}).get("resourceType") == "ImagingStudy"
        ]
        if len(entries) > 1:
            raise ConflictPersists(
                f"several ImagingStudy resources carry identifier {token}; merge them"
            )
        return entries[0] if entries else None

    def _search_target(self, token: str, study: Resource) -> Target:
        found = self._search(token)
        if found is not None:
            return self._update_found(found, study)
        query = identifier_query(token)
        return Target(
            "POST",
            "ImagingStudy",
            None,
            if_none_exist=query if self.caps.conditional_create else None,
        )

    # --- sending ---------------------------------------------------------------------

    def _send(self, output: Resource, target: Target) -> tuple[httpx.Response, WriteResult | None]:
        if output.get("resourceType") == "Bundle":
            return self._send_bundle(output, target)
        study = _with_id(output, target.resource_id)
        headers = {}
        if target.if_match:
            headers["If-Match"] = target.if_match
        if target.if_none_exist:
            headers["If-None-Exist"] = target.if_none_exist
        response = self.client.request(target.method, target.url, resource=study, headers=headers)
        if response.status_code not in (200, 201):
            return response, None
        body = _json(response)
        resource_id = (body or {}).get("id") if isinstance(body, dict) else None
        if not resource_id:
            resource_id = _id_from_location(response.headers.get("Location"))
        resource_id = resource_id or target.resource_id
        if not resource_id:
            raise Rejected(f"{target.method} ImagingStudy: success without an id", 0)
        how = {"PUT": "update", "POST": "create"}[target.method]
        if "?" in target.url:
            how = "conditional " + how
        return response, WriteResult(
            str(resource_id), version_of(response, body), response.status_code, how
        )

    def _send_bundle(
        self, bundle: Resource, target: Target
    ) -> tuple[httpx.Response, WriteResult | None]:
        sent = copy.deepcopy(bundle)
        _, index = imaging_study_of(sent)
        assert index is not None
        entry = sent["entry"][index]
        entry["resource"] = _with_id(entry["resource"], target.resource_id)
        request: dict[str, str] = {"method": target.method, "url": target.url}
        if target.if_match:
            request["ifMatch"] = target.if_match
        if target.if_none_exist:
            request["ifNoneExist"] = target.if_none_exist
        entry["request"] = request
        response = self.client.request("POST", "", resource=sent)
        if response.status_code != 200:
            return response, None
        body = _json(response)
        entries = body.get("entry") if isinstance(body, dict) else None
        if not isinstance(entries, list) or len(entries) <= index:
            raise Rejected("POST transaction: the response Bundle lacks entries", 0)
        answer = entries[index].get("response") or {}
        resource = entries[index].get("resource") or {}
        resource_id = resource.get("id") or _id_from_location(answer.get("location"))
        resource_id = resource_id or target.resource_id
        if not resource_id:
            raise Rejected("POST transaction: no id for the ImagingStudy entry", 0)
        version = None
        match = _ETAG.match(str(answer.get("etag", "")).strip())
        if match and match.group(1):
            version = match.group(1)
        else:
            version = (resource.get("meta") or {}).get("versionId") or _version_from_location(
                answer.get("location")
            )
        status = int(str(answer.get("status", "200")).split()[0] or 200)
        return response, WriteResult(str(resource_id), version, status, "transaction")

    def _read(self, resource_id: str) -> tuple[httpx.Response, Resource] | None:
        """The resource as the server has it now; ``None`` if it is gone."""
        response = self.client.request("GET", f"ImagingStudy/{resource_id}")
        if response.status_code in (404, 410):
            return None
        if response.status_code != 200:
            raise error_for(response, f"GET ImagingStudy/{resource_id}")
        body = _json(response)
        if not isinstance(body, dict):
            raise Rejected(f"GET ImagingStudy/{resource_id}: not a resource", 0)
        return response, body


def _uid_of(study: Resource) -> str:
    for identifier in study.get("identifier") or []:
        if identifier.get("system") == DICOM_UID_SYSTEM:
            return str(identifier.get("value", "")).removeprefix("urn:oid:")
    return str(study.get("id", ""))


def _ensure_ours(found: Resource, study_uid: str) -> None:
    if not written_by_us(found):
        logger.error(
            "study=%s ImagingStudy/%s on the server was not written by scp2fhir (no origin "
            "tag): left alone, nothing written",
            study_uid,
            found.get("id"),
        )
        raise ForeignResource(
            f"ImagingStudy/{found.get('id')} carries the study but was not written by "
            "scp2fhir (no origin tag): not overwritten"
        )


def _with_id(resource: Resource, resource_id: str | None) -> Resource:
    result = dict(resource)
    if resource_id is None:
        result.pop("id", None)
    else:
        result["id"] = resource_id
    return result


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _id_from_location(location: object) -> str | None:
    match = _HISTORY.search(str(location or ""))
    return match.group(1) if match else None


def _version_from_location(location: object) -> str | None:
    match = _HISTORY.search(str(location or ""))
    return match.group(2) if match and match.group(2) else None

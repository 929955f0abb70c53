"""pynetdicom event handlers, bound to their dependencies at server start.

``handle_store`` is the heart of the SCP: read the header, check the instance is
identifiable, push it to Redis and answer Success only once Redis has it. Every
other outcome is a DICOM status with an Error Comment and one log line naming
the association and the instance by UID, never the patient.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import time
from typing import Any

import redis
from pydicom.dataset import Dataset
from pynetdicom import events

from scp import header_budget, metrics, statuses
from scp.associations import AssociationLog
from scp.header import (
    DEFAULT_LIMITS,
    Header,
    HeaderTooLarge,
    Limits,
    read_dataset_bytes,
    read_header,
)
from scp.inbox import Inbox
from scp.spool import spool_failed

logger = logging.getLogger(__name__)

_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def handle_echo(event: events.Event) -> int:
    return statuses.SUCCESS


def handle_store(
    event: events.Event,
    inbox: Inbox,
    associations: AssociationLog | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> Dataset | int:
    """Answer one C-STORE request, and count the answer."""
    began = time.perf_counter()
    answer = _store(event, inbox, limits)
    code = answer if isinstance(answer, int) else int(answer.Status)
    recorder = metrics.recorder()
    recorder.count("instances_received_total", status=f"0x{code:04X}")
    if code in (statuses.SUCCESS, statuses.ELEMENTS_DISCARDED):
        recorder.observe("receive_to_redis_seconds", time.perf_counter() - began)
    if associations is not None:
        associations.stored(event, code in (statuses.SUCCESS, statuses.ELEMENTS_DISCARDED))
    return answer


#: errno values of a disk (or quota, or file size limit) that takes no more.
_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def _store(event: events.Event, inbox: Inbox, limits: Limits) -> Dataset | int:
    assoc = _assoc_label(event)
    request: Any = event.request
    announced_sop = str(request.AffectedSOPInstanceUID or "")
    announced_class = str(request.AffectedSOPClassUID or "")
    if spool_failed(request):  # logged where it failed (scp.spool)
        return statuses.status(statuses.OUT_OF_RESOURCES, "spool full, retry later")
    try:
        header = _read_header(event, limits)
    except HeaderTooLarge as exc:
        logger.warning(
            "assoc=%s sop=%s rejected 0x%04X: %s (SCP2FHIR_MAX_INFLATED_BYTES=%d, "
            "SCP2FHIR_MAX_HEADER_BYTES=%d)",
            assoc,
            announced_sop,
            statuses.HEADER_TOO_LARGE,
            exc,
            limits.inflated_bytes,
            limits.header_bytes,
        )
        return statuses.status(statuses.HEADER_TOO_LARGE, "header beyond the size limits")
    except Exception as exc:
        if isinstance(exc, OSError) and exc.errno in _DISK_FULL:
            logger.error(
                "assoc=%s sop=%s refused 0xA700: no room to read the dataset (%s)",
                assoc,
                announced_sop,
                os.strerror(exc.errno),
            )
            return statuses.status(statuses.OUT_OF_RESOURCES, "spool full, retry later")
        logger.warning(
            "assoc=%s sop=%s rejected 0xC210: cannot decode dataset (%s)",
            assoc,
            announced_sop,
            type(exc).__name__,
        )
        return statuses.status(statuses.CANNOT_DECODE, "cannot decode dataset")

    try:
        uids = {keyword: _first(header.json, tag) for keyword, tag in _IDENTITY.items()}
        problem = _identity_problem(uids, announced_sop, announced_class)
        if problem is not None:
            code, comment = problem
            logger.warning(
                "assoc=%s sop=%s rejected 0x%04X: %s", assoc, announced_sop, code, comment
            )
            return statuses.status(code, comment)

        # Who sent it, as storescp records it in a file's meta information: destinations
        # may leave out what one calling AE title sends (workers.delivery.settings).
        header.json[SOURCE_AE_TITLE] = {"vr": "AE", "Value": [event.assoc.requestor.ae_title]}
        payload, over = header_budget.encode(header.json, limits.header_bytes)
        header.dropped += over
        receipt = inbox.push_encoded(uids["StudyInstanceUID"], payload)
    except redis.RedisError as exc:
        logger.error(
            "assoc=%s sop=%s refused 0xA700: Redis did not take the header (%s)",
            assoc,
            announced_sop,
            type(exc).__name__,
        )
        return statuses.status(statuses.OUT_OF_RESOURCES, "storage queue unavailable, retry later")
    except Exception:
        logger.exception("assoc=%s sop=%s failed 0xC2FF: internal error", assoc, announced_sop)
        return statuses.status(statuses.INTERNAL_ERROR, "internal error")

    if header.skipped or header.dropped:
        return _discarded(assoc, announced_sop, receipt.entry_id, header)
    logger.debug("assoc=%s sop=%s stored entry=%s", assoc, announced_sop, receipt.entry_id)
    return statuses.SUCCESS


def _discarded(assoc: str, sop: str, entry_id: str, header: Header) -> Dataset:
    """Warning 0xB006: stored, with the elements left out named (tags only)."""
    if header.dropped:
        logger.warning(
            "assoc=%s sop=%s stored entry=%s over the header budget, left out: %s",
            assoc,
            sop,
            entry_id,
            ",".join(header.dropped[:20]),
        )
    if header.skipped:
        logger.warning(
            "assoc=%s sop=%s stored entry=%s with undecodable elements discarded: %s",
            assoc,
            sop,
            entry_id,
            ",".join(header.skipped[:20]),
        )
    comment = (
        "elements over the header budget left out"
        if header.dropped
        else "undecodable elements discarded"
    )
    answer = statuses.status(statuses.ELEMENTS_DISCARDED, comment)
    tags = [int(key, 16) for key in (*header.dropped, *header.skipped) if _is_tag(key)]
    if tags:
        answer.OffendingElement = tags[:_MAX_OFFENDING]
    return answer


#: Tags named in Offending Element (0000,0901), at most.
_MAX_OFFENDING = 64


def _is_tag(key: str) -> bool:
    return len(key) == 8 and all(c in "0123456789ABCDEF" for c in key)


def _read_header(event: events.Event, limits: Limits) -> Header:
    # With STORE_RECV_CHUNKED_DATASET pynetdicom has already written the dataset to
    # a temporary Part 10 file; otherwise it is in memory.
    path = getattr(event.request, "_dataset_path", None)
    if path is not None:
        return read_header(path, limits)
    return read_dataset_bytes(
        event.encoded_dataset(include_meta=False),
        str(event.context.transfer_syntax),
        lambda: event.encoded_dataset(include_meta=True),
        limits,
    )


#: Source Application Entity Title (0002,0016): the calling AE title the instance came from.
SOURCE_AE_TITLE = "00020016"

#: The UIDs that identify an instance, by keyword and DICOM JSON key.
_IDENTITY = {
    "StudyInstanceUID": "0020000D",
    "SeriesInstanceUID": "0020000E",
    "SOPInstanceUID": "00080018",
    "SOPClassUID": "00080016",
}


def _first(header: dict[str, Any], key: str) -> str:
    values = header.get(key, {}).get("Value") or [""]
    if not all(isinstance(value, str) for value in values):
        return ""
    # An identifying UID has exactly one value: several ("1.2\\1.3") are joined, so
    # they fail the UID check instead of the first one silently standing for all.
    return "\\".join(values)


def _identity_problem(
    uids: dict[str, str], announced_sop: str, announced_class: str
) -> tuple[int, str] | None:
    for keyword, text in uids.items():
        if not text:
            return statuses.MISSING_OR_INVALID_UID, f"{keyword} missing"
        if len(text) > 64 or not _UID.match(text):
            return statuses.MISSING_OR_INVALID_UID, f"{keyword} is not a valid UID"
    if announced_sop and uids["SOPInstanceUID"] != announced_sop:
        return statuses.SOP_INSTANCE_UID_MISMATCH, "SOPInstanceUID differs from the request"
    if announced_class and uids["SOPClassUID"] != announced_class:
        return statuses.DATASET_DOES_NOT_MATCH_SOP_CLASS, "SOPClassUID differs from the request"
    return None


def _assoc_label(event: events.Event) -> str:
    assoc = event.assoc
    requestor = assoc.requestor
    return f"{assoc.name}:{requestor.ae_title}@{requestor.address}"

"""MPPS (Modality Performed Procedure Step, PS3.4 Annex F) and IAN (Instance
Availability Notification, PS3.4 Annex R) on the storage SCP's own AE: completion
signals that let a study be emitted before its quiet period (:mod:`scp.signals`).

* N-CREATE of an MPPS: Performed Procedure Step Status must be ``IN PROGRESS``; the
  step's studies are the Study Instance UIDs of its Scheduled Step Attribute Sequence.
* N-SET of an MPPS: a new status (``IN PROGRESS``, ``COMPLETED``, ``DISCONTINUED``)
  and/or the Performed Series Sequence (the instances the step produced). A COMPLETED
  or DISCONTINUED step may no longer be updated.
* N-CREATE of an IAN: the study and the instances now available (UNAVAILABLE ones are
  not waited for).

Bad input gets the DIMSE status PS3.7 Annex C names and one log line (UIDs only, never
patient data); nothing is stored for a refused request:

    0x0106 invalid attribute value   status not allowed, a listed series of another study
    0x0110 processing failure        the dataset cannot be decoded; a final step updated
                                     (Error ID A710, PS3.4 Table F.7.2-2)
    0x0111 duplicate SOP instance    an N-CREATE for a step or notification already known
    0x0112 no such object instance   an N-SET for an unknown step
    0x0117 invalid object instance   an N-CREATE whose Affected SOP Instance UID is invalid
    0x0120 missing attribute         N-CREATE: no status, no study, no series list (IAN)
    0x0121 missing attribute value   a listed series without its Series Instance UID
    0x0213 resource limitation       Redis did not take it (the SCU may retry)

A final step that lists no instance (its series items reference none: Type 2 in PS3.4
Table F.7.2-1) is valid and accepted; it only cannot shorten the quiet period
(:mod:`workers.lifecycle.completion`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any

import redis
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import events

from scp.signals import COMPLETED, IN_PROGRESS, STATES, Signal, SignalStore
from scp.statuses import status

logger = logging.getLogger(__name__)

MPPS_SOP_CLASS = "1.2.840.10008.3.1.2.3.3"
IAN_SOP_CLASS = "1.2.840.10008.5.1.4.33"

SUCCESS = 0x0000
INVALID_ATTRIBUTE_VALUE = 0x0106
PROCESSING_FAILURE = 0x0110
DUPLICATE_SOP_INSTANCE = 0x0111
NO_SUCH_OBJECT_INSTANCE = 0x0112
INVALID_OBJECT_INSTANCE = 0x0117
MISSING_ATTRIBUTE = 0x0120
MISSING_ATTRIBUTE_VALUE = 0x0121
#: Error ID (0000,0903) and Error Comment of an N-SET of a completed or discontinued step.
NO_LONGER_UPDATABLE_ID = 0xA710
NO_LONGER_UPDATABLE = "Performed Procedure Step Object may no longer be updated"
RESOURCE_LIMITATION = 0x0213

#: Logged (and looked up) in place of a UID that is not one: never the raw bytes.
INVALID = "<invalid>"
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
#: Instance Availability values an IAN may report; UNAVAILABLE ones are not waited for.
_AVAILABLE = frozenset({"ONLINE", "NEARLINE", "OFFLINE"})


class Refused(Exception):
    def __init__(self, status: int, comment: str, error_id: int | None = None) -> None:
        super().__init__(comment)
        self.status = status
        self.comment = comment
        self.error_id = error_id


def _uid(value: Any) -> str | None:
    text = str(value or "").strip().rstrip("\x00")
    return text if text and len(text) <= 64 and _UID.match(text) else None


def _attributes(event: events.Event, name: str) -> Dataset:
    """The request's dataset (``attribute_list`` of an N-CREATE, ``modification_list`` of
    an N-SET), decoded; a dataset that cannot be read is a processing failure."""
    try:
        ds: Dataset = getattr(event, name)
        ds.decode()
        # Reading every element now: pydicom decodes lazily, so a bad value would
        # otherwise raise later, in the middle of checking it.
        for _ in ds.iterall():
            pass
        return ds
    except Exception as exc:
        raise Refused(PROCESSING_FAILURE, "cannot decode the attribute list") from exc


def _listed(items: Sequence[Dataset], sop_sequences: Sequence[str]) -> dict[str, list[str]]:
    """Series Instance UID -> SOP Instance UIDs of items of a series sequence."""
    listed: dict[str, list[str]] = {}
    for item in items:
        series_uid = _uid(item.get("SeriesInstanceUID"))
        if series_uid is None:
            raise Refused(MISSING_ATTRIBUTE_VALUE, "a series item has no valid SeriesInstanceUID")
        sops = listed.setdefault(series_uid, [])
        for name in sop_sequences:
            for ref in item.get(name) or []:
                if name == "ReferencedSOPSequence":
                    availability = str(ref.get("InstanceAvailability", "ONLINE")).strip()
                    if availability not in _AVAILABLE:
                        continue
                sop = _uid(ref.get("ReferencedSOPInstanceUID"))
                if sop is None:
                    raise Refused(
                        INVALID_ATTRIBUTE_VALUE, "a referenced SOP Instance UID is invalid"
                    )
                sops.append(sop)
    return listed


class CompletionSignals:
    """The N-CREATE and N-SET handlers, bound to the signal store at server start."""

    def __init__(self, store: SignalStore) -> None:
        self.store = store

    # --- pynetdicom event handlers -----------------------------------------------------

    def handle_n_create(self, event: events.Event) -> tuple[Dataset, Dataset | None]:
        request: Any = event.request
        sop_class = str(request.AffectedSOPClassUID or "")
        given = _uid(request.AffectedSOPInstanceUID)
        supplied = request.AffectedSOPInstanceUID is not None
        instance_uid = given or (INVALID if supplied else generate_uid())
        kind = "ian" if sop_class == IAN_SOP_CLASS else "mpps"
        try:
            if supplied and given is None:
                # The response carries the request's UID (PS3.7 10.1.5): a step stored
                # under another one could never be found by the N-SET that follows.
                raise Refused(INVALID_OBJECT_INSTANCE, "Affected SOP Instance UID is invalid")
            ds = _attributes(event, "attribute_list")
            signal = self._ian(ds) if kind == "ian" else self._created_step(ds)
            self._check_series(ds, signal)
            if not self.store.create(f"{kind}:{instance_uid}", signal):
                raise Refused(DUPLICATE_SOP_INSTANCE, f"{kind} {instance_uid} exists already")
        except Refused as refused:
            return self._refuse(event, kind, "N-CREATE", instance_uid, refused), None
        except redis.RedisError as exc:
            return self._unavailable(event, kind, instance_uid, exc), None
        self._log(event, kind, "N-CREATE", instance_uid, signal)
        if signal.final:
            self._request_checks(kind, instance_uid, signal)
        reply = Dataset()
        if given is None:
            reply.AffectedSOPInstanceUID = instance_uid  # pynetdicom moves it to the response
        return status(SUCCESS), reply

    def handle_n_set(self, event: events.Event) -> tuple[Dataset, Dataset | None]:
        request: Any = event.request
        instance_uid = _uid(request.RequestedSOPInstanceUID) or INVALID
        name = f"mpps:{instance_uid}"
        try:
            known = self.store.load(name)
            if known is None:
                raise Refused(NO_SUCH_OBJECT_INSTANCE, "no such Performed Procedure Step")
            if known.final:  # PS3.4 F.7.2.2.3: only a step IN PROGRESS takes an N-SET
                raise Refused(PROCESSING_FAILURE, NO_LONGER_UPDATABLE, NO_LONGER_UPDATABLE_ID)
            ds = _attributes(event, "modification_list")
            signal = self._updated_step(ds, known)
            self._check_series(ds, signal)
            result = self.store.update(name, signal)
            if result == "unknown":
                raise Refused(NO_SUCH_OBJECT_INSTANCE, "no such Performed Procedure Step")
            if result == "final":
                raise Refused(PROCESSING_FAILURE, NO_LONGER_UPDATABLE, NO_LONGER_UPDATABLE_ID)
        except Refused as refused:
            return self._refuse(event, "mpps", "N-SET", instance_uid, refused), None
        except redis.RedisError as exc:
            return self._unavailable(event, "mpps", instance_uid, exc), None
        self._log(event, "mpps", "N-SET", instance_uid, signal)
        if signal.final:
            self._request_checks("mpps", instance_uid, signal)
        return status(SUCCESS), None

    def _request_checks(self, kind: str, uid: str, signal: Signal) -> None:
        """Queue the completion checks of a final signal. The signal is stored, so this
        failing must not fail the request (the SCU would retry an N-SET the step now
        refuses): the quiet period, or the next fold of the study, checks instead."""
        try:
            self.store.request_checks(signal.studies)
        except redis.RedisError as exc:
            logger.warning(
                "%s uid=%s stored, but its completion check was not queued (%s): the "
                "quiet period decides",
                kind,
                uid,
                type(exc).__name__,
            )

    # --- reading the requests ----------------------------------------------------------

    def _created_step(self, ds: Dataset) -> Signal:
        state = str(ds.get("PerformedProcedureStepStatus", "") or "").strip()
        if not state:
            raise Refused(MISSING_ATTRIBUTE, "PerformedProcedureStepStatus missing")
        if state != IN_PROGRESS:
            raise Refused(INVALID_ATTRIBUTE_VALUE, "N-CREATE status must be IN PROGRESS")
        studies = self._step_studies(ds)
        if studies is None:
            raise Refused(
                MISSING_ATTRIBUTE, "no StudyInstanceUID in ScheduledStepAttributesSequence"
            )
        listed = _listed(ds.get("PerformedSeriesSequence") or [], _STEP_SOPS)
        return Signal("mpps", state, _sops(listed), studies)

    def _updated_step(self, ds: Dataset, known: Signal) -> Signal:
        state = known.state
        if "PerformedProcedureStepStatus" in ds:
            state = str(ds.PerformedProcedureStepStatus or "").strip()
            if state not in STATES:
                raise Refused(INVALID_ATTRIBUTE_VALUE, "PerformedProcedureStepStatus not allowed")
        studies = self._step_studies(ds)
        if studies is not None and set(studies) != set(known.studies):
            raise Refused(INVALID_ATTRIBUTE_VALUE, "N-SET may not change the step's studies")
        sops = known.sops
        if "PerformedSeriesSequence" in ds:
            sops = _sops(_listed(ds.PerformedSeriesSequence or [], _STEP_SOPS))
        return Signal("mpps", state, sops, known.studies)

    @staticmethod
    def _step_studies(ds: Dataset) -> tuple[str, ...] | None:
        if "ScheduledStepAttributesSequence" not in ds:
            return None
        studies = []
        for item in ds.ScheduledStepAttributesSequence or []:
            uid = _uid(item.get("StudyInstanceUID"))
            if uid is None:
                raise Refused(
                    INVALID_ATTRIBUTE_VALUE, "a scheduled step has no valid StudyInstanceUID"
                )
            studies.append(uid)
        return tuple(sorted(set(studies))) or None

    def _ian(self, ds: Dataset) -> Signal:
        study = _uid(ds.get("StudyInstanceUID"))
        if study is None:
            raise Refused(MISSING_ATTRIBUTE, "StudyInstanceUID missing or invalid")
        series = ds.get("ReferencedSeriesSequence") or []
        if not series:
            raise Refused(MISSING_ATTRIBUTE, "ReferencedSeriesSequence missing")
        listed = _listed(series, ("ReferencedSOPSequence",))
        return Signal("ian", COMPLETED, _sops(listed), (study,))

    def _check_series(self, ds: Dataset, signal: Signal) -> None:
        """Refuse a list naming a series the fold has seen in another study."""
        series_uids = [
            uid
            for name in ("PerformedSeriesSequence", "ReferencedSeriesSequence")
            for item in ds.get(name) or []
            if (uid := _uid(item.get("SeriesInstanceUID")))
        ]
        for series_uid, study in self.store.studies_of_series(series_uids).items():
            if study not in signal.studies:
                raise Refused(
                    INVALID_ATTRIBUTE_VALUE,
                    f"series {series_uid} belongs to another study",
                )

    # --- answers -------------------------------------------------------------------------

    def _refuse(
        self, event: events.Event, kind: str, verb: str, uid: str, refused: Refused
    ) -> Dataset:
        logger.warning(
            "assoc=%s %s %s uid=%s refused 0x%04X: %s",
            _label(event),
            kind,
            verb,
            uid,
            refused.status,
            refused.comment,
        )
        _count(kind, f"0x{refused.status:04X}")
        answer = status(refused.status, refused.comment)
        if refused.error_id is not None:
            answer.ErrorID = refused.error_id
        return answer

    def _unavailable(
        self, event: events.Event, kind: str, uid: str, exc: redis.RedisError
    ) -> Dataset:
        logger.error(
            "assoc=%s %s uid=%s refused 0x0213: Redis did not take it (%s)",
            _label(event),
            kind,
            uid,
            type(exc).__name__,
        )
        _count(kind, "0x0213")
        return status(RESOURCE_LIMITATION, "storage unavailable, retry later")

    def _log(self, event: events.Event, kind: str, verb: str, uid: str, signal: Signal) -> None:
        logger.info(
            "assoc=%s %s %s uid=%s state=%s studies=%s instances=%d",
            _label(event),
            kind,
            verb,
            uid,
            signal.state,
            ",".join(signal.studies),
            len(signal.sops),
        )
        _count(kind, "0x0000")


#: Where a Performed Series Sequence item lists its instances (PS3.3 C.4.15).
_STEP_SOPS = ("ReferencedImageSequence", "ReferencedNonImageCompositeSOPInstanceSequence")


def _sops(listed: dict[str, list[str]]) -> tuple[str, ...]:
    return tuple(sorted({sop for sops in listed.values() for sop in sops}))


def _count(kind: str, status: str) -> None:
    from scp import metrics

    metrics.recorder().count("completion_signals_total", kind=kind, status=status)


def _label(event: events.Event) -> str:
    assoc = event.assoc
    return f"{assoc.name}:{assoc.requestor.ae_title}@{assoc.requestor.address}"

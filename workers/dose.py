"""Pure: the radiation dose a dose report (an SR instance) records, for dose Observations.

Read from the SR content tree, which the SCP keeps with the header (it is header data,
not bulk): the X-Ray Radiation Dose Report (TID 10001 projection X-ray, TID 10011 CT) of
X-Ray and Enhanced X-Ray Radiation Dose SR, and the radiopharmaceutical administrations
(TID 10021) of Radiopharmaceutical Radiation Dose SR.

* the accumulated dose: the numbers of "CT Accumulated Dose Data" (113811) or
  "Accumulated X-Ray Dose Data" (113702) that :data:`MEASURES` names (DLP total, DAP
  total, dose at the reference point, fluoroscopy time...);
* each irradiation event ("CT Acquisition" 113819, "Irradiation Event X-Ray Data" 113706,
  "Radiopharmaceutical Administration Event Data" 113502): its Irradiation Event UID,
  start, protocol, target region and numbers (CTDIvol, DLP, SSDE, DAP, administered
  activity...), wherever in the event's subtree they are (CTDIvol sits in "CT Dose").

Numbers keep the report's own value and unit (UCUM when the report says so); nothing is
converted. The record is bounded: a report with more than :data:`MAX_DOSE_EVENTS` events
keeps its accumulated dose only and says how many events there were (never a partial
list of events).
"""

from __future__ import annotations

from typing import Any

from workers.dicomjson import Code, DicomJson
from workers.dicomtime import Zone

#: SOP Classes of dose reports.
DOSE_REPORT_SOP_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.88.67",  # X-Ray Radiation Dose SR
        "1.2.840.10008.5.1.4.1.1.88.76",  # Enhanced X-Ray Radiation Dose SR
        "1.2.840.10008.5.1.4.1.1.88.68",  # Radiopharmaceutical Radiation Dose SR
    }
)
#: Containers of the accumulated dose (DCM codes).
ACCUMULATED = frozenset({"113811", "113702"})
#: Containers of one irradiation event (DCM codes).
EVENTS = frozenset({"113819", "113706", "113502"})
#: The numbers kept (DCM codes): what the dose is, per event and accumulated.
MEASURES = frozenset(
    {
        # CT (TID 10011/10012/10013)
        "113812",  # Total Number of Irradiation Events
        "113813",  # CT Dose Length Product Total
        "113814",  # CT Effective Dose Total
        "113830",  # Mean CTDIvol
        "113838",  # DLP
        "113930",  # Size Specific Dose Estimation
        "113839",  # Effective Dose
        # Projection X-ray (TID 10001/10002/10003)
        "113722",  # Dose Area Product Total
        "113725",  # Dose (RP) Total
        "113726",  # Fluoro Dose Area Product Total
        "113727",  # Acquisition Dose Area Product Total
        "113728",  # Fluoro Dose (RP) Total
        "113729",  # Acquisition Dose (RP) Total
        "113730",  # Total Fluoro Time
        "113731",  # Total Number of Radiographic Frames
        "113855",  # Total Acquisition Time
        "111637",  # Accumulated Average Glandular Dose
        "122130",  # Dose Area Product
        "113738",  # Dose (RP)
        "111631",  # Average Glandular Dose
        "111636",  # Entrance Exposure at RP
        "113742",  # Irradiation Duration
        # Radiopharmaceutical (TID 10021)
        "113507",  # Administered activity
    }
)
#: Irradiation events one report may record; beyond, only the accumulated dose is kept.
MAX_DOSE_EVENTS = 100
#: How deep below a dose container its numbers are looked for (CT Dose is one level).
_MAX_DEPTH = 3

_DATETIME_STARTED = "111526"
_ACQUISITION_PROTOCOL = "125203"
_TARGET_REGION = "123014"
_IRRADIATION_EVENT_UID = "113769"


def dose_report(dj: DicomJson, sop_class: str | None, zone: Zone | None) -> dict[str, Any] | None:
    """The dose a report records; ``None`` for an instance that is no dose report."""
    if sop_class not in DOSE_REPORT_SOP_CLASSES or dj.code_string("ValueType") != "CONTAINER":
        return None
    accumulated: dict[str, Any] | None = None
    events: list[dict[str, Any]] = []
    for item in dj.items("ContentSequence"):
        name = _concept(item)
        if name is None or name["scheme"] != "DCM":
            continue
        if name["code"] in ACCUMULATED and accumulated is None:
            accumulated = {"concept": name, "measures": _measures(item, 0)}
        elif name["code"] in EVENTS:
            events.append(_event(item, name, zone))
    out: dict[str, Any] = {}
    if accumulated and accumulated["measures"]:
        out["accumulated"] = accumulated
    events = [event for event in events if event["measures"]]
    if len(events) > MAX_DOSE_EVENTS:
        out["events_left_out"] = len(events)
        dj.warn("ContentSequence")
    elif events:
        out["events"] = events
    return out or None


def _concept(item: DicomJson) -> Code | None:
    names = item.codes("ConceptNameCodeSequence")
    return names[0] if names else None


def _event(item: DicomJson, name: Code, zone: Zone | None) -> dict[str, Any]:
    event: dict[str, Any] = {"concept": name}
    for child in item.items("ContentSequence"):
        concept = _concept(child)
        code = concept["code"] if concept and concept["scheme"] == "DCM" else None
        if code == _IRRADIATION_EVENT_UID:
            _put(event, "uid", child.uid("UID"))
        elif code == _DATETIME_STARTED:
            _put(event, "started", child.date_time("DateTime", zone))
        elif code == _ACQUISITION_PROTOCOL:
            _put(event, "protocol", child.text("TextValue"))
        elif code == _TARGET_REGION:
            targets = child.codes("ConceptCodeSequence")
            _put(event, "target", targets[0] if targets else None)
    event["measures"] = _measures(item, 0)
    return event


def _measures(item: DicomJson, depth: int) -> list[dict[str, Any]]:
    """The :data:`MEASURES` numbers among ``item``'s children and their containers."""
    out: list[dict[str, Any]] = []
    for child in item.items("ContentSequence"):
        kind = child.code_string("ValueType")
        if kind == "CONTAINER" and depth < _MAX_DEPTH:
            out += _measures(child, depth + 1)
            continue
        concept = _concept(child)
        if kind != "NUM" or concept is None or concept["scheme"] != "DCM":
            continue
        if concept["code"] not in MEASURES:
            continue
        for measured in child.items("MeasuredValueSequence")[:1]:
            value = measured.number("NumericValue")
            units = measured.codes("MeasurementUnitsCodeSequence")
            if value is not None and units:
                out.append({"concept": concept, "value": value, "unit": units[0]})
    return out


def _put(out: dict[str, Any], name: str, value: Any) -> None:
    if value is not None:
        out[name] = value

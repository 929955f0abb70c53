"""Real radiation dose reports, built with highdicom's SR content items.

highdicom (0.28) has no class for the dose templates (TID 10001 "Projection X-Ray
Radiation Dose", TID 10011 "CT Radiation Dose") nor for the X-Ray Radiation Dose SR IOD,
so the content tree is made of its content items (containers, NUM with UCUM units,
CODE, UIDREF, DATETIME, TEXT) as the templates lay it out, in a Comprehensive SR
document whose SOP Class is then that of X-Ray Radiation Dose SR Storage (the IOD has
the same modules; its content is constrained to the dose templates).
"""

from __future__ import annotations

import datetime as dt
import warnings
from collections.abc import Sequence

from highdicom.sr import (
    CodeContentItem,
    ComprehensiveSR,
    ContainerContentItem,
    ContentItem,
    ContentSequence,
    DateTimeContentItem,
    NumContentItem,
    TextContentItem,
    UIDRefContentItem,
)
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code
from pydicom.uid import UID, generate_uid

XRAY_RADIATION_DOSE_SR = UID("1.2.840.10008.5.1.4.1.1.88.67")

CONTAINS, CONCEPT_MOD = "CONTAINS", "HAS CONCEPT MOD"


def dcm(code: str, meaning: str) -> Code:
    return Code(code, "DCM", meaning)


def ucum(code: str, meaning: str) -> Code:
    return Code(code, "UCUM", meaning)


def num(code: str, meaning: str, value: float, unit: Code) -> NumContentItem:
    return NumContentItem(dcm(code, meaning), value, unit, relationship_type=CONTAINS)


def container(code: str, meaning: str, items: Sequence[ContentItem]) -> ContainerContentItem:
    made = ContainerContentItem(dcm(code, meaning), relationship_type=CONTAINS)
    made.ContentSequence = ContentSequence(items)
    return made


def started(minute: int) -> DateTimeContentItem:
    value = dt.datetime(2024, 5, 6, 9, 0, 0) + dt.timedelta(minutes=minute)
    return DateTimeContentItem(dcm("111526", "DateTime Started"), value, CONTAINS)


def _uid(*parts: str) -> str:
    """A UID derived from ``parts``: the same report gets the same UIDs in every run, so
    what is built from the corpus (the conformance run's warning count) never varies."""
    return str(generate_uid(entropy_srcs=["scp2fhir test dose report", *parts]))


def event_uid(uid: str) -> UIDRefContentItem:
    return UIDRefContentItem(dcm("113769", "Irradiation Event UID"), uid, CONTAINS)


MGY, MGYCM, GYM2, GY, SECONDS = (
    ucum("mGy", "mGy"),
    ucum("mGy.cm", "mGy.cm"),
    ucum("Gy.m2", "Gy.m2"),
    ucum("Gy", "Gy"),
    ucum("s", "s"),
)


def ct_events(count: int) -> list[tuple[str, float, float]]:
    """(Irradiation Event UID, CTDIvol mGy, DLP mGy.cm) of ``count`` CT acquisitions."""
    return [(_uid("CT irradiation event", str(i)), 8.25 + i, 301.5 + 10 * i) for i in range(count)]


def ct_dose_report(
    images: Dataset, events: list[tuple[str, float, float]] | None = None
) -> Dataset:
    """A CT Radiation Dose report (TID 10011) of the study of ``images``: accumulated
    DLP and event count, one CT Acquisition per event with CTDIvol, DLP, target region,
    protocol, and non-dose parameters (exposure time) that are no dose quantities."""
    events = ct_events(2) if events is None else events
    acquisitions: list[ContentItem] = []
    for number, (uid, ctdivol, dlp) in enumerate(events):
        dose = [
            num("113830", "Mean CTDIvol", ctdivol, MGY),
            CodeContentItem(
                dcm("113835", "CTDIw Phantom Type"),
                dcm("113691", "IEC Body Dosimetry Phantom"),
                CONTAINS,
            ),
            num("113838", "DLP", dlp, MGYCM),
        ]
        if number == 0:
            dose.append(num("113930", "Size Specific Dose Estimation", 10.5, MGY))
        acquisitions.append(
            container(
                "113819",
                "CT Acquisition",
                [
                    TextContentItem(dcm("125203", "Acquisition Protocol"), "Chest", CONTAINS),
                    CodeContentItem(
                        dcm("123014", "Target Region"), Code("T-D3000", "SRT", "Chest"), CONTAINS
                    ),
                    CodeContentItem(
                        dcm("113820", "CT Acquisition Type"),
                        dcm("113804", "Sequenced Acquisition"),
                        CONTAINS,
                    ),
                    event_uid(uid),
                    started(10 + number),
                    container(
                        "113822",
                        "CT Acquisition Parameters",
                        [num("113824", "Exposure Time", 4.5, SECONDS)],
                    ),
                    container("113829", "CT Dose", dose),
                ],
            )
        )
    accumulated = container(
        "113811",
        "CT Accumulated Dose Data",
        [
            num(
                "113812",
                "Total Number of Irradiation Events",
                len(events),
                ucum("{events}", "events"),
            ),
            num("113813", "CT Dose Length Product Total", sum(e[2] for e in events), MGYCM),
        ],
    )
    return _report(images, "10011", [accumulated, *acquisitions])


def xray_dose_report(images: Dataset) -> Dataset:
    """A Projection X-Ray Radiation Dose report (TID 10001): accumulated DAP, dose at
    the reference point and fluoroscopy time, one irradiation event."""
    accumulated = container(
        "113702",
        "Accumulated X-Ray Dose Data",
        [
            num("113722", "Dose Area Product Total", 0.00042, GYM2),
            num("113725", "Dose (RP) Total", 0.0125, GY),
            num("113726", "Fluoro Dose Area Product Total", 0.0003, GYM2),
            num("113730", "Total Fluoro Time", 95, SECONDS),
        ],
    )
    event = container(
        "113706",
        "Irradiation Event X-Ray Data",
        [
            CodeContentItem(
                dcm("113721", "Irradiation Event Type"),
                dcm("113611", "Stationary Acquisition"),
                CONTAINS,
            ),
            event_uid(_uid(images.StudyInstanceUID, "X-ray irradiation event")),
            started(30),
            num("122130", "Dose Area Product", 0.00012, GYM2),
            num("113738", "Dose (RP)", 0.004, GY),
            num("113733", "KVP", 81, ucum("kV", "kV")),
        ],
    )
    return _report(images, "10001", [accumulated, event])


def _report(images: Dataset, template: str, items: Sequence[ContentItem]) -> Dataset:
    root = ContainerContentItem(dcm("113701", "X-Ray Radiation Dose Report"), template_id=template)
    procedure = CodeContentItem(
        Code("121058", "DCM", "Procedure reported"),
        Code("77477000", "SCT", "Computed Tomography X-Ray"),
        CONCEPT_MOD,
    )
    root.ContentSequence = ContentSequence([procedure, *items])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = ComprehensiveSR(
            evidence=[images],
            content=root,
            series_instance_uid=_uid(images.StudyInstanceUID, template, "series"),
            series_number=997,
            sop_instance_uid=_uid(images.StudyInstanceUID, template, "instance"),
            instance_number=1,
            manufacturer="scp2fhir tests",
            is_complete=True,
            is_final=True,
        )
    report.SOPClassUID = XRAY_RADIATION_DOSE_SR
    report.file_meta.MediaStorageSOPClassUID = XRAY_RADIATION_DOSE_SR
    report.Modality = "SR"
    return report

"""What a header keeps and what it leaves out; shared by both header encoders."""

from __future__ import annotations

from typing import Any

#: Binary values longer than this (bytes) are bulk data and are not kept.
BULK_THRESHOLD = 1024
#: Sequences nested deeper than this are cut off (a hostile-input guard).
MAX_SEQUENCE_DEPTH = 12
#: Text values longer than this (bytes, all values of the element together) are left out
#: and reported (Warning 0xB006), so one hostile element cannot make an inbox entry of any
#: size. Nothing is lost that a worker reads: the longest text it keeps is 65536
#: characters (workers.dicomjson.UNLIMITED_CAP), at most 4 bytes each.
MAX_TEXT_BYTES = 4 * 65536
#: Default of ``SCP2FHIR_MAX_HEADER_BYTES``: the largest header stored for one instance
#: (its DICOM JSON, in bytes). An ordinary CT header takes 5-20 KB, an enhanced
#: multi-frame header with a thousand frames a few MB.
MAX_HEADER_BYTES = 4 * 1024 * 1024
#: Default of ``SCP2FHIR_MAX_INFLATED_BYTES``: how much of a deflated dataset is
#: inflated, at most, to find its header (everything before the pixel data).
MAX_INFLATED_BYTES = 64 * 1024 * 1024
#: VRs whose values are character strings (PS3.5 6.2).
TEXT_VRS = frozenset(
    {
        "AE",
        "AS",
        "CS",
        "DA",
        "DS",
        "DT",
        "IS",
        "LO",
        "LT",
        "PN",
        "SH",
        "ST",
        "TM",
        "UC",
        "UI",
        "UR",
        "UT",
    }
)

_BULK_TAGS = frozenset(
    {
        0x7FE00008,  # Float Pixel Data
        0x7FE00009,  # Double Float Pixel Data
        0x7FE00010,  # Pixel Data
        0x54001010,  # Waveform Data
        0x00420011,  # Encapsulated Document
        0x56000020,  # Spectroscopy Data
    }
)


def is_bulk(tag: int) -> bool:
    """Pixel, waveform, spectroscopy, document, overlay and curve data: never kept."""
    if tag in _BULK_TAGS:
        return True
    # Overlay Data (60xx,3000) and retired Curve/Audio Data (50xx,3000) repeat over groups.
    return (tag >> 16) & 0xFF00 in (0x6000, 0x5000) and tag & 0xFFFF == 0x3000


#: VRs whose leading and trailing spaces are insignificant (PS3.5 6.2); other text VRs
#: lose trailing padding only.
_STRIP_BOTH = frozenset({"AE", "AS", "CS", "DA", "DT", "TM", "UI"})


def normalize_text(element: dict[str, Any]) -> dict[str, Any]:
    """Strip padding from each value of a text element, as the standard intends.

    pydicom strips only the end of the whole (multi-valued) string, which leaves
    e.g. ``"DERIVED "`` in ``DERIVED \\PRIMARY``.
    """
    values = element.get("Value")
    if not values:
        return element
    vr = element["vr"]
    if vr in _STRIP_BOTH:
        element["Value"] = [v.strip(" \0") if isinstance(v, str) else v for v in values]
    elif vr in ("SH", "LO", "UC"):
        element["Value"] = [v.rstrip(" \0") if isinstance(v, str) else v for v in values]
    return element


# --- the private elements a worker reads ----------------------------------------------
# Private data is left out, but for these: (group, private creator, element offset) -> VR.
# The Osiris ImagingStudy (ig-osiris.cancer.fr, onco-imagingstudy 1.1.0) takes a series'
# description from (00E1,1040) first: "Image Label" of private creator ELSCINT1 (Philips,
# ex Elscint; pydicom's private dictionary), in whichever block that creator reserved.
KEPT_PRIVATE: dict[tuple[int, str, int], str] = {(0x00E1, "ELSCINT1", 0x40): "SH"}
KEPT_PRIVATE_GROUPS = frozenset(group for group, _, _ in KEPT_PRIVATE)
KEPT_PRIVATE_CREATORS = frozenset((group, creator) for group, creator, _ in KEPT_PRIVATE)
#: A kept private value longer than this (bytes) is left out: the record stays bounded.
MAX_PRIVATE_BYTES = 64


def is_private_creator(element: int) -> bool:
    """(gggg,0010)-(gggg,00FF) of an odd group reserve the blocks (gggg,10xx)-(gggg,FFxx)."""
    return 0x0010 <= element <= 0x00FF


def kept_private_vr(group: int, element: int, creators: dict[int, str]) -> str | None:
    """The VR to keep a private element as, ``None`` to leave it out; ``creators`` maps
    the blocks seen so far in ``group`` to the creators that reserved them."""
    creator = creators.get(element >> 8)
    if creator is None:
        return None
    return KEPT_PRIVATE.get((group, creator, element & 0xFF))


def kept_private_json(vr: str, text: str) -> dict[str, Any] | None:
    """A kept private text value as DICOM JSON (both encoders write it this way)."""
    value = text.strip(" \0")
    if not value or len(value.encode("utf-8")) > MAX_PRIVATE_BYTES:
        return None
    return {"vr": vr, "Value": [value]}


#: Keywords the workers read (:mod:`workers.summary`, :mod:`workers.technique`, the
#: profiles), checked against the workers' code by ``tests/test_budget.py``. Under the
#: header budget these elements are kept before any other (see :mod:`scp.header_budget`).
MAPPED_KEYWORDS = frozenset(
    [
        "AccessionNumber",
        "AcquisitionDate",
        "AcquisitionDateTime",
        "AcquisitionTime",
        "AnatomicRegionSequence",
        "AttenuationCorrectionMethod",
        "BodyPartExamined",
        "BurnedInAnnotation",
        "CTDIvol",
        "CTExposureSequence",
        "CTReconstructionSequence",
        "CTTableDynamicsSequence",
        "CTXRayDetailsSequence",
        "CodeMeaning",
        "CodeValue",
        "CodingSchemeDesignator",
        "CodingSchemeIdentificationSequence",
        "CodingSchemeUID",
        "CodingSchemeURL",
        "CodingSchemeVersion",
        "Columns",
        "ConceptCodeSequence",
        "ConceptNameCodeSequence",
        "ContentLabel",
        "ContentSequence",
        "ContourImageSequence",
        "ContrastBolusAgent",
        "ContrastBolusAgentSequence",
        "ContrastBolusRoute",
        "ConvolutionKernel",
        "CurrentRequestedProcedureEvidenceSequence",
        "DateTime",
        "DeviceSerialNumber",
        "DocumentTitle",
        "EchoTime",
        "EffectiveEchoTime",
        "Exposure",
        "ExposureInmAs",
        "ExposureTime",
        "ExposureTimeInms",
        "FilterType",
        "FlipAngle",
        "FrameAnatomySequence",
        "FrameLaterality",
        "FrameOfReferenceUID",
        "ImageLaterality",
        "ImageType",
        "ImagingFrequency",
        "InstanceNumber",
        "InstitutionName",
        "InstitutionalDepartmentName",
        "InversionTime",
        "IssuerOfAccessionNumberSequence",
        "IssuerOfPatientID",
        "IssuerOfPatientIDQualifiersSequence",
        "IssuerOfTheSpecimenIdentifierSequence",
        "KVP",
        "Laterality",
        "LocalNamespaceEntityID",
        "Location",
        "LongCodeValue",
        "MRAcquisitionType",
        "MREchoSequence",
        "MRReceiveCoilSequence",
        "MRTimingAndRelatedParametersSequence",
        "MagneticFieldStrength",
        "Manufacturer",
        "ManufacturerModelName",
        "MeasuredValueSequence",
        "MeasurementUnitsCodeSequence",
        "Modality",
        "NameOfPhysiciansReadingStudy",
        "NumericValue",
        "OperatorsName",
        "PatientBirthDate",
        "PatientID",
        "PatientName",
        "PatientOrientation",
        "PatientSex",
        "PatientSize",
        "PatientWeight",
        "PerFrameFunctionalGroupsSequence",
        "PerformingPhysicianName",
        "PixelMeasuresSequence",
        "PixelSpacing",
        "ProcedureCodeSequence",
        "PulseRepetitionFrequency",
        "RTPlanLabel",
        "RTReferencedSeriesSequence",
        "RTReferencedStudySequence",
        "RadionuclideCodeSequence",
        "RadionuclideHalfLife",
        "RadionuclideTotalDose",
        "Radiopharmaceutical",
        "RadiopharmaceuticalCodeSequence",
        "RadiopharmaceuticalInformationSequence",
        "ReasonForPerformedProcedureCodeSequence",
        "ReasonForRequestedProcedureCodeSequence",
        "ReasonForStudy",
        "ReasonForTheRequestedProcedure",
        "ReceiveCoilName",
        "ReconstructionDiameter",
        "ReconstructionMethod",
        "ReferencedFrameNumber",
        "ReferencedFrameOfReferenceSequence",
        "ReferencedInstanceSequence",
        "ReferencedSOPClassUID",
        "ReferencedSOPInstanceUID",
        "ReferencedSOPSequence",
        "ReferencedSeriesSequence",
        "ReferringPhysicianName",
        "RepetitionTime",
        "RequestAttributesSequence",
        "RequestedProcedureCodeSequence",
        "Rows",
        "SOPClassUID",
        "SOPInstanceUID",
        "ScanningSequence",
        "ScatterCorrectionMethod",
        "SequenceName",
        "SequenceOfUltrasoundRegions",
        "SequenceVariant",
        "SeriesDate",
        "SeriesDescription",
        "SeriesInstanceUID",
        "SeriesNumber",
        "SeriesTime",
        "SeriesType",
        "SharedFunctionalGroupsSequence",
        "SliceThickness",
        "SoftwareVersions",
        "SourceApplicationEntityTitle",
        "SpecimenDescriptionSequence",
        "SpecimenIdentifier",
        "SpecimenShortDescription",
        "SpecimenUID",
        "SpiralPitchFactor",
        "StationName",
        "StructureSetLabel",
        "StudiesContainingOtherReferencedInstancesSequence",
        "StudyComments",
        "StudyDate",
        "StudyDescription",
        "StudyID",
        "StudyInstanceUID",
        "StudyTime",
        "TextValue",
        "TimezoneOffsetFromUTC",
        "TransducerFrequency",
        "TransducerType",
        "UID",
        "URNCodeValue",
        "UltrasoundColorDataPresent",
        "Units",
        "UniversalEntityID",
        "UniversalEntityIDType",
        "ValueType",
        "ViewCodeSequence",
        "ViewPosition",
        "XRayTubeCurrent",
        "XRayTubeCurrentInmA",
    ]
)
#: What identifies an instance (and how its text is encoded): never left out.
IDENTITY_KEYWORDS = frozenset(
    {
        "SpecificCharacterSet",
        "SOPClassUID",
        "SOPInstanceUID",
        "StudyInstanceUID",
        "SeriesInstanceUID",
    }
)

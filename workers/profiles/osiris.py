"""Osiris: the French oncology data model's ImagingStudy (``onco-imagingstudy``, R4, 1.1.0).

* study: one identifier (the Study Instance UID; the Accession Number moves to
  ``basedOn`` as the ServiceRequest's identifier, since ``identifier`` is 1..1), and the
  elements the profile requires are checked: modality, subject, started, endpoint
  (``SCP2FHIR_WADO_RS_URL``), reasonReference (an Osiris Analysis: never in DICOM),
  description;
* series: ``description`` as the guide sources it: ELSCINT1's private Image Label
  (00E1,xx40) first (read only in the block that private creator reserved), then Series
  Description (0008,103E), then Study Description (0008,1030);
  the ``imaging-settings`` extension (geometry plus one of ``mr_image``,
  ``ct_image``, ``dx_image``, ``pt_nm_image`` by modality) and ``series-weightheigt``.
  Values come from the DICOM tags named in :data:`SETTINGS` and :data:`BLOCKS`; a value
  is given only where every instance of the series agrees, an integer only where the
  DICOM value is integral (never rounded). Everything required but missing is a gap.

Weight is in kg and height in m, as DICOM records them (Patient's Weight / Size); the
profile types them as bare decimals.
"""

from __future__ import annotations

from typing import Any

from workers.fold import StudyAggregate
from workers.profiles.facts import VARIES, SeriesFacts
from workers.profiles.fhir import (
    absent,
    add_extension,
    based_on_accession,
    complex_extension,
    decimal_text,
    series_where,
)
from workers.profiles.gaps import MUST_SUPPORT, REQUIRED, Gaps
from workers.profiles.gaps import VARIES as VARIES_GAP
from workers.profiles.profile import Profile, Resource

_IG = "https://ig-osiris.cancer.fr/ig/osiris/StructureDefinition/"
STUDY_PROFILE = _IG + "onco-imagingstudy"
IMAGING_SETTINGS = _IG + "imaging-settings"
WEIGHT_HEIGHT = _IG + "series-weightheigt"

#: One setting: (slice name, technique fact, DICOM tag, FHIR type, required).
Setting = tuple[str, str, str, str, bool]

#: The geometry every image series describes.
SETTINGS: list[Setting] = [
    ("slice_thickness", "slice_thickness", "(0018,0050)", "string", True),
    ("pixel_spacing", "pixel_spacing", "(0028,0030)", "string", True),
    ("field_of_view", "reconstruction_diameter", "(0018,1100)", "integer", False),
    ("rows", "rows", "(0028,0010)", "integer", True),
    ("columns", "columns", "(0028,0011)", "integer", True),
]

#: Modality block -> (modalities it describes, its settings).
BLOCKS: dict[str, tuple[frozenset[str], list[Setting]]] = {
    "mr_image": (
        frozenset({"MR"}),
        [
            ("sequence_name", "sequence_name", "(0018,0024)", "string", True),
            ("magnetic_field_strength", "magnetic_field_strength", "(0018,0087)", "decimal", True),
            ("mr_acquisition_type", "mr_acquisition_type", "(0018,0023)", "string", True),
            ("repetition_time", "repetition_time", "(0018,0080)", "decimal", True),
            ("echo_time", "echo_time", "(0018,0081)", "decimal", True),
            ("imaging_frequency", "imaging_frequency", "(0018,0084)", "decimal", True),
            ("flip_angle", "flip_angle", "(0018,1314)", "decimal", True),
            ("inversion_time", "inversion_time", "(0018,0082)", "decimal", True),
            ("receive_coil_name", "receive_coil", "(0018,1250)", "string", True),
        ],
    ),
    "ct_image": (
        frozenset({"CT"}),
        [
            ("kvp", "kvp", "(0018,0060)", "integer", False),
            ("xray_tube_current", "tube_current_ma", "(0018,1151)", "integer", True),
            ("exposure_time", "exposure_time_ms", "(0018,1150)", "integer", True),
            ("spiral_pitch_factor", "spiral_pitch_factor", "(0018,9311)", "decimal", True),
            ("filter_type", "filter_type", "(0018,1160)", "string", True),
            ("convolution_kernel", "convolution_kernel", "(0018,1210)", "string", True),
        ],
    ),
    "dx_image": (
        frozenset({"DX", "CR", "MG"}),
        [
            ("image_laterality", "image_laterality", "(0020,0062)", "string", True),
            ("patient_orientation", "patient_orientation", "(0020,0020)", "string", False),
            ("kvp", "kvp", "(0018,0060)", "integer", True),
            ("exposure", "exposure_mas", "(0018,1152)", "integer", True),
            ("exposure_time", "exposure_time_ms", "(0018,1150)", "integer", True),
        ],
    ),
    "pt_nm_image": (
        frozenset({"PT", "NM"}),
        [
            (
                "attenuation_correction_method",
                "attenuation_correction",
                "(0054,1101)",
                "string",
                True,
            ),
            ("reconstruction_method", "reconstruction_method", "(0054,1103)", "string", True),
            ("scatter_correction_method", "scatter_correction", "(0054,1105)", "string", True),
        ],
    ),
}

#: Required (primitive) study elements the base mapping fills from DICOM when it can.
_STUDY_REQUIRED = [
    ("started", "(0008,0020) Study Date absent"),
    ("description", "(0008,1030) Study Description absent"),
]
_SERIES_REQUIRED = [
    (
        "description",
        "(00E1,1040) ELSCINT1 Image Label, (0008,103E) Series Description and (0008,1030) "
        "Study Description absent",
    ),
    ("started", "(0008,0021) Series Date absent and no acquisition date"),
]

#: Osiris codes modalities with its own value set (VSModality, required): five DICOM
#: modalities under this system, RT structure sets under Arkhn's, everything else "Unknown".
OSIRIS_DICOM = "https://dicom.nema.org/medical/dicom"
MODALITIES = {
    "MR": (OSIRIS_DICOM, "MR", "Magnetic Resonance Imaging"),
    "CT": (OSIRIS_DICOM, "CT", "Computed Tomography Scanner"),
    "PT": (OSIRIS_DICOM, "PT", "Positron emission Tomography"),
    "DX": (OSIRIS_DICOM, "DX", "Digital X Ray"),
    "NM": (OSIRIS_DICOM, "NM", "Nuclear Medicine image"),
    "RTSTRUCT": ("https://terminology.arkhn.com/SeriesModalityCS", "RTSTRUCT", None),
}
UNKNOWN_MODALITY = ("http://terminology.hl7.org/CodeSystem/umls", "C0439673", "Unknown")
DEVICE_PROFILE = _IG + "imaging-device"


class OsirisProfile(Profile):
    name = "osiris"
    url = STUDY_PROFILE
    version = "1.1.0"
    fhir_versions = frozenset({"R4"})
    needs_technique = True

    def refine_study(self, study: Resource, aggregate: StudyAggregate, gaps: Gaps) -> None:
        self.claim(study)
        _one_identifier(study)
        for element, reason in _STUDY_REQUIRED:
            if element not in study:
                gaps.add("study", element, REQUIRED, reason)
                study[f"_{element}"] = absent()
        if "extension" in (study.get("subject") or {}):
            gaps.add("study", "subject", REQUIRED, "(0010,0020) Patient ID absent")
        if not study.get("endpoint"):
            gaps.add("study", "endpoint", REQUIRED, "no WADO-RS endpoint (SCP2FHIR_WADO_RS_URL)")
            study["endpoint"] = [absent()]
        gaps.add(
            "study",
            "reasonReference",
            REQUIRED,
            "an Osiris Analysis resource: DICOM headers do not identify one",
        )
        # DICOM cannot carry an Analysis: "unsupported" by the source, not merely unknown.
        study["reasonReference"] = [absent("unsupported")]
        if not study.get("series"):
            gaps.add("study", "series", REQUIRED, "no series")
        attrs = aggregate.study.attrs if aggregate.study else {}
        members = aggregate.members_by_series()
        for series in study.get("series") or []:
            _describe(series, aggregate, attrs)
            facts = SeriesFacts(members.get(series["uid"], []))
            _series(series, facts, attrs, gaps)
        _study_modalities(study, gaps)

    def refine_device(self, device: Resource) -> None:
        """``imaging-device``: manufacturer, one device name (of type manufacturer-name: the
        Manufacturer's Model Name) and a version are required; what DICOM lacks says so
        (data-absent-reason). The station name has no place there."""
        self.claim(device, DEVICE_PROFILE)
        if "manufacturer" not in device:
            device["_manufacturer"] = absent()
        model = [n for n in device.get("deviceName") or [] if n.get("type") == "model-name"]
        name = {"name": model[0]["name"]} if model else {"_name": absent()}
        device["deviceName"] = [{**name, "type": "manufacturer-name"}]
        if not device.get("version"):
            device["version"] = [{"_value": absent()}]


def _describe(series: Resource, aggregate: StudyAggregate, study: dict[str, Any]) -> None:
    """``series.description`` from (00E1,1040), (0008,103E), (0008,1030), in that order."""
    sourced = aggregate.series.get(series["uid"])
    label = sourced.attrs.get("image_label") if sourced else None
    if isinstance(label, str) and label:
        series["description"] = label
    elif "description" not in series and isinstance(study.get("study_description"), str):
        series["description"] = study["study_description"]


def _one_identifier(study: Resource) -> None:
    """``identifier`` is 1..1: keep the Study Instance UID; the Accession Number becomes
    the identifier of the ServiceRequest the study is based on."""
    based_on = based_on_accession(study)
    if based_on:
        study["basedOn"] = based_on
    identifiers = study.get("identifier") or []
    if identifiers:
        study["identifier"] = identifiers[:1]


def _series(series: Resource, facts: SeriesFacts, study: dict[str, Any], gaps: Gaps) -> None:
    where = series_where(series)
    for element, reason in _SERIES_REQUIRED:
        if element not in series:
            gaps.add(where, element, REQUIRED, reason)
            series[f"_{element}"] = absent()
    if "code" not in (series.get("modality") or {}):
        gaps.add(where, "modality", REQUIRED, "(0008,0060) Modality absent or not a DICOM code")
    modality = str((series.get("modality") or {}).get("code", ""))
    _osiris_modality(series, where, gaps)
    parts = _settings(SETTINGS, facts, where, "extension:imaging-settings", gaps)
    if not any("value" in key for p in parts for key in p):
        gaps.add(
            where,
            "extension:imaging-settings",
            REQUIRED,
            "no image geometry: the series holds no images (or was received before a "
            "profile was selected)",
        )
    for block, (modalities, settings) in BLOCKS.items():
        if modality in modalities:
            path = f"extension:imaging-settings.{block}"
            made = _settings(settings, facts, where, path, gaps)
            if any(not _is_absent(p) for p in made):
                parts.append({"url": block, "extension": made})
    add_extension(series, complex_extension(IMAGING_SETTINGS, parts))
    measures = [
        {"url": name, "valueDecimal": value}
        for name, key in (
            ("patient_weight", "patient_weight_kg"),
            ("patient_height", "patient_size_m"),
        )
        if _is_number(value := study.get(key))
    ]
    add_extension(series, complex_extension(WEIGHT_HEIGHT, measures))


def _settings(
    settings: list[Setting], facts: SeriesFacts, where: str, path: str, gaps: Gaps
) -> list[dict[str, Any]]:
    """The settings' sub-extensions; a required one without a true value is there with a
    data-absent-reason (the profile requires the slice) and reported as a gap."""
    made: list[dict[str, Any]] = []
    for slice_name, fact, tag, kind, required in settings:
        element = f"{path}.{slice_name}"
        value = facts.value(fact)
        typed = None
        if value is VARIES:
            gaps.add(where, element, VARIES_GAP, facts.spread(fact).reason(tag))
        elif value is None:
            if required and facts.recorded:
                gaps.add(where, element, REQUIRED, f"{tag} absent")
        else:
            typed = _typed(value, kind)
            if typed is None:
                gaps.add(
                    where,
                    element,
                    REQUIRED if required else MUST_SUPPORT,
                    f"{tag} is not a whole number; the profile wants an integer",
                )
        if typed is not None:
            made.append({"url": slice_name, **typed})
        elif required:
            made.append({"url": slice_name, f"_{_VALUE_KEYS[kind]}": absent()})
    return made


_VALUE_KEYS = {"string": "valueString", "integer": "valueInteger", "decimal": "valueDecimal"}


def _is_absent(part: dict[str, Any]) -> bool:
    return not any(key.startswith("value") for key in part)


def _osiris_coding(code: str | None) -> dict[str, Any]:
    system, value, display = MODALITIES.get(code or "", UNKNOWN_MODALITY)
    coding = {"system": system, "code": value}
    if display:
        coding["display"] = display
    return coding


def _osiris_modality(series: Resource, where: str, gaps: Gaps) -> None:
    """The series' DICOM modality as Osiris codes it (VSModality)."""
    code = (series.get("modality") or {}).get("code")
    if code not in MODALITIES:
        gaps.add(
            where,
            "modality",
            MUST_SUPPORT,
            f"(0008,0060) Modality {code or '(none)'} has no code in Osiris' VSModality: "
            "coded as Unknown",
        )
    series["modality"] = _osiris_coding(code)


def _study_modalities(study: Resource, gaps: Gaps) -> None:
    """Study-level ``modality`` (1..*, the same value set): the series' Osiris codes."""
    codings: list[dict[str, Any]] = []
    for series in study.get("series") or []:
        if (coding := series.get("modality")) and coding not in codings:
            codings.append(coding)
    if not codings:
        gaps.add("study", "modality", REQUIRED, "(0008,0060) no series has a Modality")
        codings = [_osiris_coding(None)]
    study["modality"] = codings


def _typed(value: Any, kind: str) -> dict[str, Any] | None:
    """``value`` as the profile's type; ``None`` when it cannot be that type truthfully."""
    if kind == "string":
        values = value if isinstance(value, list) else [value]
        texts = [v if isinstance(v, str) else _number_text(v) for v in values]
        if not texts or any(t is None or t == "" for t in texts):
            return None
        return {"valueString": "\\".join(t for t in texts if t is not None)}
    if kind == "integer":
        return {"valueInteger": value} if _is_number(value) and isinstance(value, int) else None
    return {"valueDecimal": value} if _is_number(value) else None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _number_text(value: Any) -> str | None:
    return decimal_text(value) if _is_number(value) else None


PROFILE = OsirisProfile()

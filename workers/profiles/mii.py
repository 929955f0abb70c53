"""MII Bildgebung: the German Medical Informatics Initiative's imaging module (FHIR R4).

Profile ``mii-pr-bildgebung-bildgebungsstudie`` in two versions, which share their
canonical URLs:

* ``mii``: the current release **2026.0.0** (what data integration centres run);
* ``mii-2027``: the **2027.0.0-ballot**, which adds the study-level weight and height
  extensions (``gewicht`` / ``groesse``); everything else scp2fhir writes is the same in
  both (the StructureDefinitions of the two versions differ there, and in bindings that
  do not change the output: tests/test_profiles.py compares them, the validator checks
  each version's output against that version).

What the profile adds:

* study: reason for imaging (``bildgebungsgrund``); with 2027.0.0-ballot also the
  patient's weight and height, which the profile wants as references to vital-sign
  Observations: they are contained in the ImagingStudy, dated by the study;
* series: one modality extension (CT, MG/CR/DX, MR, PT, NM, US), contrast
  (``kontrastmittel``) and slice thickness (``serie-schichtdicke``) -- each value only
  where every instance of the series agrees (:mod:`workers.profiles.facts`);
* instance: ``instanz-details`` (pixel spacing x/y, slice thickness, image type, burned-in
  annotation), which is where a heterogeneous series shows its spread, one instance at a
  time;
* Devices of the transaction Bundle claim ``mii-pr-bildgebung-geraet``.

Units are the UCUM codes the StructureDefinitions fix (tests compare them with the
StructureDefinitions themselves).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeGuard

from workers.dicomjson import Code
from workers.fold import StudyAggregate
from workers.profiles.facts import VARIES, SeriesFacts
from workers.profiles.fhir import (
    add_extension,
    complex_extension,
    extension,
    instances_of,
    quantity,
    series_where,
)
from workers.profiles.gaps import MUST_SUPPORT, Gaps
from workers.profiles.gaps import VARIES as VARIES_GAP
from workers.profiles.profile import Profile, Resource
from workers.terminology import coding

_BASE = "https://www.medizininformatik-initiative.de/fhir/ext/modul-bildgebung"
SD = f"{_BASE}/StructureDefinition/"
CS = f"{_BASE}/CodeSystem/"

STUDY_PROFILE = SD + "mii-pr-bildgebung-bildgebungsstudie"
DEVICE_PROFILE = SD + "mii-pr-bildgebung-geraet"
REASON = SD + "mii-ex-bildgebung-bildgebungsgrund"
WEIGHT = SD + "mii-ex-bildgebung-gewicht"
HEIGHT = SD + "mii-ex-bildgebung-groesse"
INSTANCE_DETAILS = SD + "mii-ex-bildgebung-instanz-details"
CONTRAST = SD + "mii-ex-bildgebung-kontrastmittel"
SLICE_THICKNESS = SD + "mii-ex-bildgebung-serie-schichtdicke"
IMAGE_TYPE_SYSTEM = CS + "mii-cs-bildgebung-instance-image-type"
SCANNING_SEQUENCE_SYSTEM = CS + "mii-cs-bildgebung-scanning-sequence"
SEQUENCE_VARIANT_SYSTEM = CS + "mii-cs-bildgebung-scanning-sequence-variant"
SERIES_TYPE_SYSTEM = CS + "mii-cs-bildgebung-series-type"
TRANSDUCER_TYPE_SYSTEM = CS + "mii-cs-bildgebung-transducer-type"

#: German vital-sign Observation profiles (HL7 Deutschland Basisprofile) the weight and
#: height extensions refer to; LOINC code, SNOMED code and display of each.
WEIGHT_OBSERVATION = (
    "http://fhir.de/StructureDefinition/observation-de-vitalsign-koerpergewicht",
    "29463-7",
    "27113001",
    "Body weight",
)
HEIGHT_OBSERVATION = (
    "http://fhir.de/StructureDefinition/observation-de-vitalsign-koerpergroesse",
    "8302-2",
    "1153637007",
    "Body height",
)

#: Concrete codes of the instance image-type CodeSystem (its abstract groupers, PDC, PEC,
#: MSC, CT, MR, NM, US, ISI, NMI, USI, are not for use).
IMAGE_TYPE_CODES = frozenset(
    [
        "ORIGINAL",
        "DERIVED",
        "PRIMARY",
        "SECONDARY",
        "AXIAL",
        "LOCALIZER",
        "DENSITYMAP",
        "DIFFUSIONMAP",
        "IMAGEADDITION",
        "MODULUSSUBTRACT",
        "MPR",
        "OTHER",
        "PHASEMAP",
        "PHASESUBTRACT",
        "PROJECTIONIMAGE",
        "T1MAP",
        "T2MAP",
        "VELOCITYMAP",
        "STATIC",
        "DYNAMIC",
        "GATED",
        "WHOLEBODY",
        "TOMO",
        "GATEDTOMO",
        "RECONTOMO",
        "RECONGATEDTOMO",
        "ABDOMINAL",
        "BREAST",
        "CHEST",
        "ENDOCAVITARY",
        "ENDORECTAL",
        "ENDOVAGINAL",
        "EPICARDIAL",
        "FETAL_HEART",
        "GYNECOLOGY",
        "INTRACARDIAC",
        "INTRAOPERATIVE",
        "INTRAVASCULAR",
        "MUSCULOSKELETAL",
        "NEONATAL_HEAD",
        "OBSTETRICAL",
        "OPHTHALMIC",
        "PEDIATRIC",
        "PELVIC",
        "RETROPERITONEAL",
        "SCROTAL",
        "SMALL_PARTS",
        "TEE",
        "THYROID",
        "TRANSCRANIAL",
        "TTE",
        "US_BIOPSY",
        "VASCULAR",
        "EMISSION",
        "TRANSMISSION",
        "0001",
        "0002",
        "0004",
        "0008",
        "0010",
        "0020",
        "0040",
        "0100",
        "0200",
        "0400",
    ]
)
#: The codes of the MII CodeSystems for DICOM's defined terms (tests compare them with the
#: CodeSystems of both versions).
SCANNING_SEQUENCE_CODES = frozenset(["SE", "IR", "GR", "EP", "RM"])
SEQUENCE_VARIANT_CODES = frozenset(["SK", "MTC", "SS", "TRSS", "SP", "MP", "OSP", "NONE"])
SERIES_TYPE_CODES = frozenset(["STATIC", "DYNAMIC", "GATED", "WHOLEBODY", "IMAGE", "REPROJECTION"])
TRANSDUCER_TYPE_CODES = frozenset(
    [
        "SECTOR_PHASED",
        "SECTOR_MECH",
        "SECTOR_ANNULAR",
        "LINEAR",
        "CURVED_LINEAR",
        "SINGLE_CRYSTAL",
        "SPLIT_XTAL_CWD",
        "IV_PHASED",
        "IV_ROT_XTAL",
        "IV_ROT_MIRROR",
        "ENDOCAV_PA",
        "ENDOCAV_MECH",
        "ENDOCAV_CLA",
        "ENDOCAV_AA",
        "ENDOCAV_LINEAR",
        "VECTOR_PHASED",
    ]
)
#: The US image type's 4th value is a hexadecimal bit map of these flags (PS3.3
#: C.8.5.6.1.1); the CodeSystem has one code per flag.
_US_FLAGS = ("0001", "0002", "0004", "0008", "0010", "0020", "0040", "0100", "0200", "0400")

#: DICOM PET Units (0054,1001) -> UCUM, as CID 84 "PET Units" codes them.
_PET_UNITS = {
    "BQML": ("Bq/mL", "Becquerels/milliliter"),
    "CNTS": ("{counts}", "Counts"),
    "PCNT": ("%", "Percent"),
    # g/ml and cm2/ml are SUVs of a kind SUV Type (0054,1006) tells; the unit is just that.
    "GML": ("g/mL", "Grams/milliliter"),
    "CM2ML": ("cm2/mL", "Centimeters**2/milliliter"),
}

#: Image IODs that include the Contrast/Bolus module "if contrast media was used" (PS3.3
#: A.3 CT, A.4 MR, A.21 PET, A.6 US, A.14 XA, A.16 RF): there, its absence means none was.
#: Elsewhere (CR, DX, MG: optional module; NM: none) absence says nothing.
_CONTRAST_CONDITIONAL = frozenset({"CT", "MR", "PT", "US", "XA", "RF"})
_CONTRAST_OPTIONAL = frozenset({"CR", "DX", "MG", "NM"})

# One sub-extension of a modality extension: (slice name, technique fact, DICOM tag, build).
Part = tuple[str, str, str, Callable[[Any], dict[str, Any] | None]]


def _q(code: str, unit: str) -> Callable[[Any], dict[str, Any] | None]:
    def build(value: Any) -> dict[str, Any] | None:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return {"valueQuantity": quantity(value, code, unit)}
        return None

    return build


def _string(value: Any) -> dict[str, Any] | None:
    return {"valueString": value} if isinstance(value, str) and value else None


def _boolean(value: Any) -> dict[str, Any] | None:
    return {"valueBoolean": value} if isinstance(value, bool) else None


def _codes(
    system: str, codes: frozenset[str], separator: str = ""
) -> Callable[[Any], dict[str, Any] | None]:
    """Defined terms of a CS element (one or several values) as codes of an MII CodeSystem
    (``codes``), whose codes write DICOM's spaces as ``separator`` (``CURVED LINEAR``:
    ``CURVED_LINEAR``). A term the CodeSystem lacks (``OTHER``, a vendor's) is no code;
    ``text`` then keeps the whole DICOM value beside the codes there are. The bindings are
    required, so a value with no code at all gives no part (``None``)."""

    def build(value: Any) -> dict[str, Any] | None:
        values = [value] if isinstance(value, str) else value
        if not isinstance(values, list) or not all(isinstance(v, str) and v for v in values):
            return None
        if not values:
            return None
        terms = [v.replace(" ", separator) for v in values]
        codings = [{"system": system, "code": t} for t in dict.fromkeys(terms) if t in codes]
        if not codings:
            return None  # the binding is required: no code, no part (a gap)
        concept: dict[str, Any] = {"coding": codings}
        if len(codings) < len(set(terms)):
            concept["text"] = "\\".join(values)
        return {"valueCodeableConcept": concept}

    return build


def _concept(value: Any) -> dict[str, Any] | None:
    """A coded DICOM entry (Code Sequence item) as a CodeableConcept."""
    if isinstance(value, dict):
        made = coding(_as_code(value))
        if made is not None:
            concept: dict[str, Any] = {"coding": [made]}
            if isinstance(value.get("meaning"), str):
                concept["text"] = value["meaning"]
            return {"valueCodeableConcept": concept}
    return None


def _as_code(value: dict[str, Any]) -> Code:
    return {k: str(v) for k, v in value.items()}


def _text_concept(value: Any) -> dict[str, Any] | None:
    return {"valueCodeableConcept": {"text": value}} if isinstance(value, str) and value else None


def _pet_units(value: Any) -> dict[str, Any] | None:
    if not isinstance(value, str):
        return None
    known = _PET_UNITS.get(value)
    if known is None:
        return {"valueCodeableConcept": {"text": value}}
    code, display = known
    return {
        "valueCodeableConcept": {
            "coding": [{"system": "http://unitsofmeasure.org", "code": code, "display": display}],
            "text": value,
        }
    }


_X_RAY: list[Part] = [
    ("KVP", "kvp", "(0018,0060)", _q("kV", "kilovolt")),
    ("exposureTime", "exposure_time_ms", "(0018,1150)", _q("ms", "milliseconds")),
    ("exposure", "exposure_mas", "(0018,1152)", _q("mA.s", "milliampere second")),
    ("xRayTubeCurrent", "tube_current_ma", "(0018,1151)", _q("mA", "milliampere")),
]
_NUCLIDE: list[Part] = [
    ("radiopharmaceutical", "radiopharmaceutical", "(0054,0304)", _concept),
    ("radiopharmaceutical", "radiopharmaceutical_text", "(0018,0031)", _text_concept),
    ("radionuclide", "radionuclide", "(0054,0300)", _concept),
    ("units", "units", "(0054,1001)", _pet_units),
]
_HALF_LIFE: Part = (
    "radionuclideHalfLife",
    "radionuclide_half_life",
    "(0018,1075)",
    _q("s", "Seconds"),
)

#: Modality -> (its extension's StructureDefinition, its parts).
MODALITY_EXTENSIONS: dict[str, tuple[str, list[Part]]] = {
    "CT": (
        SD + "mii-ex-bildgebung-modalitaet-ct",
        [
            ("CTDIvol", "ctdi_vol", "(0018,9345)", _q("mGy", "milligray")),
            *_X_RAY,
            ("convolutionalKernel", "convolution_kernel", "(0018,1210)", _string),
        ],
    ),
    "MR": (
        SD + "mii-ex-bildgebung-modalitaet-mr",
        [
            ("magneticFieldStrength", "magnetic_field_strength", "(0018,0087)", _q("T", "tesla")),
            (
                "scanningSequence",
                "scanning_sequence",
                "(0018,0020)",
                _codes(SCANNING_SEQUENCE_SYSTEM, SCANNING_SEQUENCE_CODES),
            ),
            (
                "scanningSequenceVariant",
                "sequence_variant",
                "(0018,0021)",
                _codes(SEQUENCE_VARIANT_SYSTEM, SEQUENCE_VARIANT_CODES),
            ),
            ("echoTime", "echo_time", "(0018,0081)", _q("ms", "milliseconds")),
            ("repetitionTime", "repetition_time", "(0018,0080)", _q("ms", "milliseconds")),
            ("inversionTime", "inversion_time", "(0018,0082)", _q("ms", "milliseconds")),
            ("flipAngle", "flip_angle", "(0018,1314)", _q("deg", "plane angle degree")),
        ],
    ),
    "PT": (
        SD + "mii-ex-bildgebung-modalitaet-pt",
        [
            *_NUCLIDE,
            # PET Isotope module: Radionuclide Total Dose in Bq (PS3.3 C.8.9.2).
            (
                "radionuclideTotalDose",
                "radionuclide_total_dose",
                "(0018,1074)",
                _q("Bq", "Becquerel"),
            ),
            _HALF_LIFE,
            (
                "seriesType",
                "series_type",
                "(0054,1000)",
                _codes(SERIES_TYPE_SYSTEM, SERIES_TYPE_CODES),
            ),
        ],
    ),
    "NM": (
        SD + "mii-ex-bildgebung-modalitaet-nm",
        [
            *_NUCLIDE,
            # NM Isotope module: Radionuclide Total Dose in MBq (PS3.3 C.8.4.10).
            (
                "radionuclideTotalDose",
                "radionuclide_total_dose",
                "(0018,1074)",
                _q("MBq", "Megabecquerel"),
            ),
            _HALF_LIFE,
        ],
    ),
    "US": (
        SD + "mii-ex-bildgebung-modalitaet-us",
        [
            (
                "transducerType",
                "transducer_type",
                "(0018,6031)",
                _codes(TRANSDUCER_TYPE_SYSTEM, TRANSDUCER_TYPE_CODES, "_"),
            ),
            (
                "transducerFrequency",
                "transducer_frequency_khz",
                "(0018,6030)",
                _q("kHz", "kilohertz"),
            ),
            (
                "pulseRepetitionFrequency",
                "pulse_repetition_frequency_hz",
                "(0018,6032)",
                _q("Hz", "hertz"),
            ),
            ("ultrasoundColor", "ultrasound_color", "(0028,0014)", _boolean),
        ],
    ),
}
_PROJECTION = (SD + "mii-ex-bildgebung-modalitaet-mg-cr-dx", _X_RAY)
MODALITY_EXTENSIONS.update(dict.fromkeys(("MG", "CR", "DX"), _PROJECTION))


class MiiProfile(Profile):
    url = STUDY_PROFILE
    version = "2027.0.0-ballot"
    fhir_versions = frozenset({"R4"})
    needs_technique = True

    def __init__(self, name: str, version: str, vital_signs: bool) -> None:
        self.name = name
        #: The guide's version (``StructureDefinition.version``).
        self.version = version
        #: Whether the study profile has the weight and height extensions.
        self.vital_signs = vital_signs

    def refine_study(self, study: Resource, aggregate: StudyAggregate, gaps: Gaps) -> None:
        self.claim(study)
        attrs = aggregate.study.attrs if aggregate.study else {}
        reasons = [t for t in attrs.get("reason_texts") or [] if isinstance(t, str) and t]
        if reasons:
            add_extension(study, extension(REASON, valueString="; ".join(reasons)))
        if self.vital_signs:
            _vital_signs(study, attrs, gaps)
        members = aggregate.members_by_series()
        for series in study.get("series") or []:
            facts = SeriesFacts(members.get(series["uid"], []))
            _series(series, facts, gaps)
            by_sop = aggregate.instances
            for instance in instances_of(series):
                technique = by_sop.get(instance["uid"], {}).get("technique")
                if isinstance(technique, dict):
                    add_extension(instance, _instance_details(technique, _modality(series)))

    def refine_device(self, device: Resource) -> None:
        self.claim(device, DEVICE_PROFILE)


def _modality(series: Resource) -> str:
    modality = series.get("modality") or {}
    return str(modality.get("code", ""))


def _series(series: Resource, facts: SeriesFacts, gaps: Gaps) -> None:
    if not facts.recorded:
        return
    where = series_where(series)
    modality = _modality(series)
    spec = MODALITY_EXTENSIONS.get(modality)
    if spec is not None:
        url, parts = spec
        made: list[dict[str, Any]] = []
        for slice_name, fact, tag, build in parts:
            if any(p["url"] == slice_name for p in made):
                continue  # a code and a text alternative: the code won
            value = facts.value(fact)
            if value is VARIES:
                gaps.add(
                    where,
                    f"extension:{_short(url)}.{slice_name}",
                    VARIES_GAP,
                    facts.spread(fact).reason(tag),
                )
                continue
            built = build(value) if value is not None else None
            if built is not None:
                made.append({"url": slice_name, **built})
            elif value is not None:
                gaps.add(
                    where,
                    f"extension:{_short(url)}.{slice_name}",
                    MUST_SUPPORT,
                    f"{tag} holds no value the profile's type or code system can take",
                )
        if modality in ("MG", "CR", "DX"):
            _view_position(made, facts, where, gaps)
        add_extension(series, complex_extension(url, made))
    if modality in _CONTRAST_CONDITIONAL | _CONTRAST_OPTIONAL:
        contrast = facts.any_true("contrast_agent")
        if contrast is False and modality in _CONTRAST_OPTIONAL:
            gaps.add(
                where,
                "extension:kontrastmittel",
                MUST_SUPPORT,
                f"(0018,0010) Contrast/Bolus Agent absent, which in a {modality} image does "
                "not mean none was given",
            )
        elif contrast is None:
            gaps.add(
                where,
                "extension:kontrastmittel",
                MUST_SUPPORT,
                "(0018,0010) Contrast/Bolus Agent empty: use of contrast unknown",
            )
        else:
            add_extension(
                series,
                complex_extension(CONTRAST, [{"url": "contrastBolus", "valueBoolean": contrast}]),
            )
    thickness = facts.value("slice_thickness")
    if thickness is VARIES:
        gaps.add(
            where,
            "extension:schichtdicke",
            VARIES_GAP,
            facts.spread("slice_thickness").reason("(0018,0050)")
            + "; see each instance's instanz-details",
        )
    elif _positive(thickness):
        add_extension(
            series,
            extension(SLICE_THICKNESS, valueQuantity=quantity(thickness, "mm", "millimeter")),
        )


def _view_position(made: list[dict[str, Any]], facts: SeriesFacts, where: str, gaps: Gaps) -> None:
    """View Code Sequence (SNOMED) where the header has it, else View Position as text."""
    code = facts.value("view_code")
    text = facts.value("view_position")
    if code is VARIES or (code is None and text is VARIES):
        gaps.add(
            where,
            "extension:modalitaet-mg-cr-dx.viewPosition",
            VARIES_GAP,
            facts.spread("view_position").reason("(0018,5101)"),
        )
        return
    built = _concept(code) if code is not None else _text_concept(text)
    if built is not None:
        made.append({"url": "viewPosition", **built})


def _short(url: str) -> str:
    return url.rsplit("/", 1)[-1].removeprefix("mii-ex-bildgebung-")


def _positive(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


def _instance_details(technique: dict[str, Any], modality: str) -> dict[str, Any] | None:
    parts: list[dict[str, Any]] = []
    spacing = technique.get("pixel_spacing")
    if isinstance(spacing, list) and len(spacing) == 2 and all(map(_positive, spacing)):
        # Pixel Spacing is "row spacing \\ column spacing": y first, then x.
        y, x = spacing
        parts.append({"url": "pixelSpacingX", "valueQuantity": quantity(x, "mm", "millimeter")})
        parts.append({"url": "pixelSpacingY", "valueQuantity": quantity(y, "mm", "millimeter")})
    thickness = technique.get("slice_thickness")
    if _positive(thickness):
        parts.append(
            {"url": "sliceThickness", "valueQuantity": quantity(thickness, "mm", "millimeter")}
        )
    image_type = technique.get("image_type")
    if isinstance(image_type, list) and image_type and all(isinstance(v, str) for v in image_type):
        parts.append(
            {"url": "imageType", "valueCodeableConcept": image_type_concept(image_type, modality)}
        )
    burned_in = technique.get("burned_in_annotation")
    if isinstance(burned_in, bool):
        parts.append({"url": "burnedInAnnotation", "valueBoolean": burned_in})
    return complex_extension(INSTANCE_DETAILS, parts)


def image_type_concept(values: list[str], modality: str = "") -> dict[str, Any]:
    """Image Type (0008,0008) values as codes of the MII CodeSystem where it has them;
    ``text`` keeps the whole DICOM value, so terms outside the CodeSystem (vendor terms
    such as ``M``, ``NORM``) are not lost."""
    codes: list[str] = []
    for position, value in enumerate(values):
        for code in _image_type_codes(position, value, modality):
            if code not in codes:
                codes.append(code)
    concept: dict[str, Any] = {}
    if codes:
        concept["coding"] = [{"system": IMAGE_TYPE_SYSTEM, "code": c} for c in codes]
    concept["text"] = "\\".join(values)
    return concept


def _image_type_codes(position: int, value: str, modality: str) -> list[str]:
    if modality == "US" and position == 3 and len(value) == 4 and _is_hex(value):
        # An ultrasound 4th value: a bit map; one code per set flag, if all are known.
        bits = int(value, 16)
        flags = [f for f in _US_FLAGS if bits & int(f, 16)]
        if bits and sum(int(f, 16) for f in flags) == bits:
            return flags
        return []
    for candidate in (value, value.replace(" ", ""), value.replace(" ", "_")):
        if candidate in IMAGE_TYPE_CODES:
            return [candidate]
    return []


def _is_hex(value: str) -> bool:
    return all(c in "0123456789ABCDEFabcdef" for c in value)


def _vital_signs(study: Resource, attrs: dict[str, Any], gaps: Gaps) -> None:
    """Weight and height as contained vital-sign Observations the extensions refer to."""
    measured = [
        (
            "koerpergewicht",
            WEIGHT,
            WEIGHT_OBSERVATION,
            attrs.get("patient_weight_kg"),
            "kg",
            "(0010,1030)",
        ),
        (
            "koerpergroesse",
            HEIGHT,
            HEIGHT_OBSERVATION,
            attrs.get("patient_size_m"),
            "m",
            "(0010,1020)",
        ),
    ]
    for local_id, url, (profile, loinc, snomed, display), value, unit, tag in measured:
        if not _positive(value):
            continue
        started = study.get("started")
        subject = study.get("subject") or {}
        if not started or "extension" in subject:
            gaps.add(
                "study",
                f"extension:{local_id}",
                MUST_SUPPORT,
                f"{tag} present, but a vital-sign Observation needs the study date "
                "(0008,0020) and a Patient ID (0010,0020)",
            )
            continue
        observation: Resource = {
            "resourceType": "Observation",
            "id": local_id,
            "meta": {"profile": [profile]},
            "status": "final",
            "category": [
                {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                            "code": "vital-signs",
                            "display": "Vital Signs",
                        }
                    ]
                }
            ],
            "code": {
                "coding": [
                    {"system": "http://loinc.org", "code": loinc, "display": display},
                    {"system": "http://snomed.info/sct", "code": snomed, "display": display},
                ],
                "text": display,
            },
            "subject": subject,
            # DICOM records weight and size "at the time of the study" (PS3.3 C.7.2.2).
            "effectiveDateTime": started,
            "valueQuantity": quantity(value, unit, unit),
        }
        study.setdefault("contained", []).append(observation)
        add_extension(study, extension(url, valueReference={"reference": f"#{local_id}"}))


__all__ = [
    "MODALITY_EXTENSIONS",
    "PROFILE",
    "PROFILE_2027",
    "MiiProfile",
    "image_type_concept",
]

#: ``mii``: the current release.
PROFILE = MiiProfile("mii", "2026.0.0", vital_signs=False)
#: ``mii-2027``: the ballot of the next release.
PROFILE_2027 = MiiProfile("mii-2027", "2027.0.0-ballot", vital_signs=True)

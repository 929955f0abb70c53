"""Pure: one instance header (DICOM JSON) -> its acquisition technique, for the profiles.

The implementation-guide profiles (:mod:`workers.profiles`) describe how a series was
acquired: pixel spacing, slice thickness, tube voltage, echo time, radiopharmaceutical...
Those values can differ from instance to instance of one series (tube current
modulation, a localizer among axial slices, a mixed-thickness series), so they are
recorded per instance and reduced per series only when a resource is built
(:mod:`workers.profiles.facts`); a series is never described by one arbitrary instance.

Only summaries built for a profile carry technique (``summarize(..., technique=True)``),
so the base mapping's per-instance records stay small. Names are FHIR-neutral; values are
JSON numbers, strings, booleans, lists of them, or coded entries
(:class:`~workers.dicomjson.Code`). Absent data is absent; malformed values are left
out and reported through the dataset's warnings, never guessed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from workers.dicomjson import DicomJson

Technique = dict[str, Any]

_LATERALITIES = frozenset({"R", "L", "B", "U"})
#: Contrast/Bolus Agent texts that say no agent was given (seen in real headers).
_NO_AGENT = frozenset({"NONE", "NO", "NO CONTRAST", "NOT USED", "WITHOUT", "NATIVE", "N/A"})


def technique(dj: DicomJson) -> Technique:
    """The acquisition facts of one instance (see the module docstring)."""
    out: Technique = {}
    _image(dj, out)
    _x_ray(dj, out)
    _magnetic_resonance(dj, out)
    _nuclear(dj, out)
    _ultrasound(dj, out)
    _contrast(dj, out)
    return out


def _grouped(dj: DicomJson, group: str, read: Callable[[DicomJson], Any]) -> Any:
    """A value an enhanced multi-frame image keeps in a functional group macro (PS3.3
    C.7.6.16) instead of the top level: from the shared group, else from the per-frame
    groups when every frame agrees. Frames that disagree give nothing: one value would
    misdescribe the image."""
    for shared in dj.items("SharedFunctionalGroupsSequence")[:1]:
        for item in shared.items(group)[:1]:
            value = read(item)
            if value is not None and value != []:
                return value
    values = [
        read(item)
        for frame in dj.items("PerFrameFunctionalGroupsSequence")
        for item in frame.items(group)[:1]
    ]
    if (
        values
        and values[0] is not None
        and values[0] != []
        and values.count(values[0]) == len(values)
    ):
        return values[0]
    return None


def _enhanced(dj: DicomJson) -> bool:
    return dj.has("SharedFunctionalGroupsSequence") or dj.has("PerFrameFunctionalGroupsSequence")


def _number(dj: DicomJson, keyword: str, group: str, grouped: str | None = None) -> Any:
    """A number at the top level, else in the functional group ``group`` (where some
    attributes have their own keyword, e.g. Exposure Time in ms)."""
    value = dj.number(keyword)
    if value is None and _enhanced(dj):
        value = _grouped(dj, group, lambda item: item.number(grouped or keyword))
    return value


def _text(dj: DicomJson, keyword: str, group: str, separator: str = "\\") -> Any:
    value = dj.joined(keyword, separator)
    if value is None and _enhanced(dj):
        value = _grouped(dj, group, lambda item: item.joined(keyword, separator))
    return value


def _image(dj: DicomJson, out: Technique) -> None:
    """Image geometry and type (enhanced images: the Pixel Measures functional group)."""
    spacing = dj.numbers("PixelSpacing") or _grouped(
        dj, "PixelMeasuresSequence", lambda item: item.numbers("PixelSpacing")
    )
    if isinstance(spacing, list) and len(spacing) == 2 and all(n > 0 for n in spacing):
        # PS3.3 C.7.6.2.1.1: row spacing (between rows: y) first, column spacing (x) second.
        out["pixel_spacing"] = spacing
    _put(out, "slice_thickness", _number(dj, "SliceThickness", "PixelMeasuresSequence"))
    _put(out, "image_type", dj.texts("ImageType"))
    _put(out, "rows", dj.integer("Rows", low=1, high=65535))
    _put(out, "columns", dj.integer("Columns", low=1, high=65535))
    burned_in = dj.enumerated("BurnedInAnnotation", frozenset({"YES", "NO"}))
    if burned_in is not None:
        out["burned_in_annotation"] = burned_in == "YES"
    _put(out, "image_laterality", dj.enumerated("ImageLaterality", _LATERALITIES))
    _put(out, "patient_orientation", dj.texts("PatientOrientation"))


def _x_ray(dj: DicomJson, out: Technique) -> None:
    """Projection and CT exposure (enhanced CT: the CT functional groups, C.8.15.3)."""
    _put(out, "kvp", _number(dj, "KVP", "CTXRayDetailsSequence"))
    _put(out, "ctdi_vol", _number(dj, "CTDIvol", "CTExposureSequence"))
    _put(
        out,
        "exposure_time_ms",
        _number(dj, "ExposureTime", "CTExposureSequence", "ExposureTimeInms"),
    )
    _put(out, "exposure_mas", _number(dj, "Exposure", "CTExposureSequence", "ExposureInmAs"))
    _put(
        out,
        "tube_current_ma",
        _number(dj, "XRayTubeCurrent", "CTExposureSequence", "XRayTubeCurrentInmA"),
    )
    _put(out, "convolution_kernel", _text(dj, "ConvolutionKernel", "CTReconstructionSequence"))
    _put(out, "spiral_pitch_factor", _number(dj, "SpiralPitchFactor", "CTTableDynamicsSequence"))
    _put(out, "filter_type", _text(dj, "FilterType", "CTXRayDetailsSequence"))
    _put(
        out,
        "reconstruction_diameter",
        _number(dj, "ReconstructionDiameter", "CTReconstructionSequence"),
    )
    _put(out, "view_position", dj.code_string("ViewPosition"))
    views = dj.codes("ViewCodeSequence")
    _put(out, "view_code", views[0] if views else None)


def _magnetic_resonance(dj: DicomJson, out: Technique) -> None:
    """MR acquisition (enhanced MR: the MR functional groups, C.8.13.5)."""
    _put(out, "magnetic_field_strength", dj.number("MagneticFieldStrength"))
    _put(out, "scanning_sequence", dj.texts("ScanningSequence"))
    _put(out, "sequence_variant", dj.texts("SequenceVariant"))
    _put(out, "sequence_name", dj.text("SequenceName"))
    _put(out, "mr_acquisition_type", dj.code_string("MRAcquisitionType"))
    _put(
        out,
        "repetition_time",
        _number(dj, "RepetitionTime", "MRTimingAndRelatedParametersSequence"),
    )
    _put(out, "echo_time", _number(dj, "EchoTime", "MREchoSequence", "EffectiveEchoTime"))
    _put(out, "inversion_time", dj.number("InversionTime"))
    _put(out, "flip_angle", _number(dj, "FlipAngle", "MRTimingAndRelatedParametersSequence"))
    _put(out, "imaging_frequency", dj.number("ImagingFrequency"))
    _put(out, "receive_coil", _text(dj, "ReceiveCoilName", "MRReceiveCoilSequence"))


def _nuclear(dj: DicomJson, out: Technique) -> None:
    _put(out, "units", dj.code_string("Units"))
    _put(out, "series_type", dj.texts("SeriesType"))
    _put(out, "attenuation_correction", dj.text("AttenuationCorrectionMethod"))
    _put(out, "reconstruction_method", dj.text("ReconstructionMethod"))
    _put(out, "scatter_correction", dj.text("ScatterCorrectionMethod"))
    for item in dj.items("RadiopharmaceuticalInformationSequence")[:1]:
        drugs = item.codes("RadiopharmaceuticalCodeSequence")
        if drugs:
            out["radiopharmaceutical"] = drugs[0]
        else:
            _put(out, "radiopharmaceutical_text", item.text("Radiopharmaceutical"))
        nuclides = item.codes("RadionuclideCodeSequence")
        _put(out, "radionuclide", nuclides[0] if nuclides else None)
        # The unit depends on the module: Bq in the PET Isotope module (PS3.3 C.8.9.2),
        # MBq in the NM Isotope module (C.8.4.10); the profiles fix the same units.
        _put(out, "radionuclide_total_dose", item.number("RadionuclideTotalDose"))
        _put(out, "radionuclide_half_life", item.number("RadionuclideHalfLife"))
    if "radionuclide" not in out:
        # NM images may carry the radionuclide at the top level of the Isotope module.
        nuclides = dj.codes("RadionuclideCodeSequence")
        _put(out, "radionuclide", nuclides[0] if nuclides else None)


def _ultrasound(dj: DicomJson, out: Technique) -> None:
    color = dj.integer("UltrasoundColorDataPresent", low=0, high=1)
    if color is not None:
        out["ultrasound_color"] = color == 1
    # The transducer and its frequencies are described per calibrated region (PS3.3
    # C.8.5.5); the first region is the primary one.
    for region in dj.items("SequenceOfUltrasoundRegions")[:1]:
        _put(out, "transducer_frequency_khz", region.number("TransducerFrequency"))
        _put(out, "pulse_repetition_frequency_hz", region.number("PulseRepetitionFrequency"))
        _put(out, "transducer_type", region.code_string("TransducerType"))
    if "transducer_type" not in out:
        _put(out, "transducer_type", dj.code_string("TransducerType"))


def _contrast(dj: DicomJson, out: Technique) -> None:
    """Contrast/Bolus Agent given -> ``True``; element absent -> ``False`` (image IODs
    include the Contrast/Bolus module "if contrast media was used"); present but empty
    (Type 2: unknown) -> nothing."""
    agents = dj.codes("ContrastBolusAgentSequence")
    agent = dj.text("ContrastBolusAgent")
    if agent is not None and agent.strip(" .-").upper() in _NO_AGENT and not agents:
        out["contrast_agent"] = False  # the agent field itself says none was given
    elif agent or agents:
        out["contrast_agent"] = True
    elif not dj.has("ContrastBolusAgent") and not dj.has("ContrastBolusAgentSequence"):
        out["contrast_agent"] = False


def _put(out: Technique, name: str, value: Any) -> None:
    if value is not None and value != [] and value != "":
        out[name] = value

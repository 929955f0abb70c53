"""Realistic DICOM files for the profile tests (MII Bildgebung, Osiris): one builder per
modality writing the header values such devices really write, in the units the standard
defines (kV, mA, ms, mAs as IS; PET doses in Bq, NM doses in MBq; ultrasound frequencies in
kHz and Hz), with tiny 16x16 pixel data so a whole study is a few kilobytes. UIDs come from a
fixed root and fixed entropy, so every run writes the same files."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_ROOT_UID,
    UID,
    ComputedRadiographyImageStorage,
    CTImageStorage,
    DigitalMammographyXRayImageStorageForPresentation,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    MRImageStorage,
    NuclearMedicineImageStorage,
    PositronEmissionTomographyImageStorage,
    UltrasoundImageStorage,
    generate_uid,
)

SIZE = 16  # rows and columns of every image


def uid(*parts: object) -> str:
    """A UID under pydicom's root, the same for the same ``parts`` on every run."""
    return generate_uid(PYDICOM_ROOT_UID, entropy_srcs=["scp2fhir-profile", *map(str, parts)])


STUDY_UID = uid("study")
STUDY_DATE = "20240719"


def code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _base(
    modality: str,
    sop_class: UID,
    *,
    study_uid: str,
    series_number: int,
    number: int,
    description: str,
    body_part: str,
    maker: tuple[str, str],
) -> Dataset:
    """Patient, study, series, equipment and image-pixel attributes common to every file."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SeriesInstanceUID = uid(study_uid, modality, series_number)
    ds.SOPInstanceUID = uid(ds.SeriesInstanceUID, number)
    ds.StudyInstanceUID = study_uid
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.PatientName = "Mustermann^Max"
    ds.PatientID = "PID-0815"
    ds.PatientBirthDate = "19650412"
    ds.PatientSex = "M"
    ds.PatientWeight = 72.5  # kg
    ds.PatientSize = 1.78  # m
    ds.StudyDate, ds.StudyTime = STUDY_DATE, "120000"
    ds.StudyDescription = "Tumorstaging"
    ds.AccessionNumber = "ACC-2024-0719"
    ds.StudyID = "1"
    ds.ReferringPhysicianName = "Weber^Anna"
    ds.Modality = modality
    ds.SeriesNumber = series_number
    ds.SeriesDescription = description
    ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = STUDY_DATE
    ds.SeriesTime = f"12{series_number:02d}00"
    ds.ContentTime = ds.AcquisitionTime = f"12{series_number:02d}{number:02d}.000000"
    ds.BodyPartExamined = body_part
    ds.Manufacturer, ds.ManufacturerModelName = maker
    ds.InstitutionName = "Universitätsklinikum Musterstadt"
    ds.InstanceNumber = number
    ds.Rows = ds.Columns = SIZE
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = bytes(range(256)) * (SIZE * SIZE * 2 // 256)
    return ds


def _slice(ds: Dataset, index: int, thickness: float, spacing: Sequence[float]) -> None:
    """Geometry of an axial slice ``index`` of a cross-sectional series."""
    ds.FrameOfReferenceUID = uid(ds.SeriesInstanceUID, "frame")
    ds.PositionReferenceIndicator = ""
    ds.PatientPosition = "HFS"
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [-175, -175, -index * thickness]
    ds.SliceLocation = -index * thickness
    ds.SliceThickness = thickness
    ds.PixelSpacing = list(spacing)


def _write(ds: Dataset, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{ds.SeriesNumber:02d}-{ds.Modality.lower()}-{ds.InstanceNumber:03d}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def ct_series(
    folder: Path,
    *,
    study_uid: str = STUDY_UID,
    n: int = 3,
    heterogeneous: bool = False,
    contrast: bool = False,
    kernel: str | Sequence[str] = "B30f",
    series_number: int = 2,
) -> list[Path]:
    """An axial chest CT. ``contrast`` makes it the venous phase with Omnipaque 350. A
    two-valued ``kernel`` (["FC08", "AXIAL"]) is how Canon/Toshiba scanners write it, so the
    series then comes from one. ``heterogeneous`` (n >= 3) starts with a localizer and mixes
    5 mm and 1.25 mm slices, two pixel spacings and rising tube currents."""
    assert not heterogeneous or n >= 3, "a heterogeneous series needs three instances"
    canon = not isinstance(kernel, str)
    maker = ("CANON_MEC", "Aquilion ONE") if canon else ("SIEMENS", "SOMATOM Definition AS+")
    phase = "venös" if contrast else "nativ"
    paths = []
    for i in range(n):
        ds = _base(
            "CT",
            CTImageStorage,
            study_uid=study_uid,
            series_number=series_number,
            number=i + 1,
            description=f"Thorax {phase} 5.0 {kernel if isinstance(kernel, str) else kernel[0]}",
            body_part="CHEST",
            maker=maker,
        )
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.KVP = 120
        ds.XRayTubeCurrent = 250
        ds.ExposureTime = 500
        ds.Exposure = 125
        ds.CTDIvol = 11.47
        ds.ConvolutionKernel = kernel if isinstance(kernel, str) else list(kernel)
        ds.SpiralPitchFactor = 0.984375
        ds.FilterType = "BODY FILTER"
        ds.ReconstructionDiameter = 350
        ds.DataCollectionDiameter = 500
        ds.GantryDetectorTilt = 0
        ds.RotationDirection = "CW"
        ds.ScanOptions = "HELICAL MODE"
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
        thickness, spacing = 5.0, (0.683594, 0.683594)
        if heterogeneous:
            thickness = 5.0 if i % 2 else 1.25
            spacing = (0.683594, 0.683594) if i % 2 else (0.78125, 0.78125)
            ds.XRayTubeCurrent = 220 + 30 * i
            if i == 0:  # the topogram the scan was planned on
                ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
                ds.XRayTubeCurrent, ds.CTDIvol = 35, 0.13
                thickness, spacing = 0.6, (0.6, 0.677)
        _slice(ds, i, thickness, spacing)
        if contrast:
            ds.ContrastBolusAgent = "Omnipaque 350"
            ds.ContrastBolusRoute = "IV"
            ds.ContrastBolusVolume = 80
            ds.ContrastBolusStartTime = f"12{series_number - 1:02d}30"
        paths.append(_write(ds, folder))
    return paths


def mr_series(
    folder: Path,
    *,
    study_uid: str = STUDY_UID,
    n: int = 3,
    heterogeneous: bool = False,
    series_number: int = 4,
) -> list[Path]:
    """A transversal T2 dark-fluid (FLAIR) of the head at 1.5 T, as a Siemens Aera writes it.
    ``heterogeneous`` alternates 5 mm / 3 mm slices and two pixel spacings."""
    paths = []
    for i in range(n):
        ds = _base(
            "MR",
            MRImageStorage,
            study_uid=study_uid,
            series_number=series_number,
            number=i + 1,
            description="t2_tirm_tra_dark-fluid",
            body_part="HEAD",
            maker=("SIEMENS", "MAGNETOM Aera"),
        )
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND", "NORM"]
        ds.ScanningSequence = ["SE", "IR"]
        ds.SequenceVariant = ["SK", "SP", "MP"]
        ds.ScanOptions = ["IR", "PFP", "FS"]
        ds.MRAcquisitionType = "2D"
        ds.SequenceName = "*tir2d1_15"
        ds.RepetitionTime = 9000
        ds.EchoTime = 94
        ds.InversionTime = 2500
        ds.EchoTrainLength = 15
        ds.FlipAngle = 150
        ds.ImagingFrequency = 63.676
        ds.ImagedNucleus = "1H"
        ds.MagneticFieldStrength = 1.5
        ds.ReceiveCoilName = "HeadNeck_20"
        ds.TransmitCoilName = "Body"
        ds.SpacingBetweenSlices = 6.5
        thickness, spacing = 5.0, (0.449219, 0.449219)
        if heterogeneous and i % 2:
            thickness, spacing = 3.0, (0.898438, 0.898438)
        _slice(ds, i, thickness, spacing)
        paths.append(_write(ds, folder))
    return paths


def _isotope(
    name: str, dose: float, half_life: float, nuclide: Dataset | None, drug: Dataset | None
) -> Dataset:
    """A Radiopharmaceutical Information Sequence item; injected 65 minutes before the scan."""
    item = Dataset()
    item.Radiopharmaceutical = name
    item.RadiopharmaceuticalRoute = "Intravenous"
    item.RadiopharmaceuticalStartTime = "105500.000000"
    item.RadiopharmaceuticalStartDateTime = f"{STUDY_DATE}105500.000000"
    item.RadionuclideTotalDose = dose
    item.RadionuclideHalfLife = half_life
    if nuclide is not None:
        item.RadionuclideCodeSequence = [nuclide]
    if drug is not None:
        item.RadiopharmaceuticalCodeSequence = [drug]
    return item


def pt_series(
    folder: Path, *, study_uid: str = STUDY_UID, n: int = 3, series_number: int = 5
) -> list[Path]:
    """A whole-body FDG PET (Siemens Biograph), attenuation corrected with the CT, 370 MBq
    injected: RadionuclideTotalDose is in Bq, as the PET module defines it."""
    paths = []
    for i in range(n):
        ds = _base(
            "PT",
            PositronEmissionTomographyImageStorage,
            study_uid=study_uid,
            series_number=series_number,
            number=i + 1,
            description="PET WB AC",
            body_part="WHOLEBODY",
            maker=("SIEMENS", "Biograph64"),
        )
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
        ds.SeriesType = ["WHOLE BODY", "IMAGE"]
        ds.Units = "BQML"
        ds.CountsSource = "EMISSION"
        ds.DecayCorrection = "START"
        ds.CorrectedImage = ["DECY", "ATTN", "SCAT"]
        ds.AttenuationCorrectionMethod = "measured,AC CT"
        ds.ReconstructionMethod = "OSEM3D 2i21s"
        ds.ScatterCorrectionMethod = "Model-based"
        ds.DecayFactor = 1.0123
        ds.ActualFrameDuration = 180000  # ms
        ds.RescaleIntercept, ds.RescaleSlope = 0, 2.8127
        ds.RadiopharmaceuticalInformationSequence = [
            _isotope(
                "Fluorodeoxyglucose",
                3.7e8,
                6586.2,
                code("77004003", "SCT", "^18^Fluorine"),
                code("35321007", "SCT", "Fluorodeoxyglucose F^18^"),
            )
        ]
        _slice(ds, i, 3.0, (4.07283, 4.07283))
        paths.append(_write(ds, folder))
    return paths


def nm_series(
    folder: Path, *, study_uid: str = STUDY_UID, n: int = 2, series_number: int = 6
) -> list[Path]:
    """Static bone scintigraphy (Tc-99m MDP), single-frame NM images; 740 MBq injected:
    RadionuclideTotalDose is in MBq, as the NM module defines it."""
    paths = []
    for i in range(n):
        ds = _base(
            "NM",
            NuclearMedicineImageStorage,
            study_uid=study_uid,
            series_number=series_number,
            number=i + 1,
            description="Skelett statisch",
            body_part="WHOLEBODY",
            maker=("SIEMENS NM", "Symbia T2"),
        )
        ds.ImageType = ["ORIGINAL", "PRIMARY", "STATIC", "EMISSION"]
        ds.NumberOfFrames = 1
        ds.FrameIncrementPointer = [0x00540010, 0x00540020]  # EnergyWindowVector, DetectorVector
        ds.EnergyWindowVector, ds.NumberOfEnergyWindows = [1], 1
        ds.DetectorVector, ds.NumberOfDetectors = [1], 1
        window = Dataset()
        limits = Dataset()
        limits.EnergyWindowLowerLimit, limits.EnergyWindowUpperLimit = 126, 154
        window.EnergyWindowRangeSequence = [limits]
        window.EnergyWindowName = "Tc99m"
        ds.EnergyWindowInformationSequence = [window]
        ds.RadiopharmaceuticalInformationSequence = [
            _isotope("Tc-99m MDP", 740, 21624.12, None, None)
        ]
        ds.PixelSpacing = [2.3976, 2.3976]
        ds.ActualFrameDuration = 300000  # ms
        paths.append(_write(ds, folder))
    return paths


def _projection(
    ds: Dataset, kvp: float, mas: int, ms: int, ma: int, view: str, orientation: list[str]
) -> None:
    """Technique and view of a projection radiograph (Exposure, ExposureTime and
    XRayTubeCurrent are IS: whole mAs, ms, mA)."""
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.KVP = kvp
    ds.Exposure, ds.ExposureTime, ds.XRayTubeCurrent = mas, ms, ma
    ds.ExposureInuAs = mas * 1000
    ds.ViewPosition = view
    ds.PatientOrientation = orientation


def dx_image(folder: Path, *, study_uid: str = STUDY_UID, series_number: int = 7) -> list[Path]:
    """A posterior-anterior chest radiograph from a flat-panel detector."""
    ds = _base(
        "DX",
        DigitalXRayImageStorageForPresentation,
        study_uid=study_uid,
        series_number=series_number,
        number=1,
        description="Thorax p.a.",
        body_part="CHEST",
        maker=("Philips Medical Systems", "DigitalDiagnost"),
    )
    _projection(ds, 125, 3, 12, 250, "PA", ["L", "F"])
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ImageLaterality = "U"
    ds.DetectorType = "SCINTILLATOR"
    ds.DistanceSourceToDetector, ds.DistanceSourceToPatient = 1800, 1650
    ds.ImagerPixelSpacing = ds.PixelSpacing = [0.148, 0.148]
    ds.PositionerType = "COLUMN"
    return [_write(ds, folder)]


def cr_image(folder: Path, *, study_uid: str = STUDY_UID, series_number: int = 8) -> list[Path]:
    """An anterior-posterior radiograph of the right knee on a storage-phosphor plate."""
    ds = _base(
        "CR",
        ComputedRadiographyImageStorage,
        study_uid=study_uid,
        series_number=series_number,
        number=1,
        description="Knie re a.p.",
        body_part="KNEE",
        maker=("FUJIFILM Corporation", "FCR PROFECT CS"),
    )
    _projection(ds, 63, 5, 20, 250, "AP", ["L", "F"])
    ds.Laterality = ds.ImageLaterality = "R"
    ds.PlateType = "ST-VI"
    ds.ImagerPixelSpacing = ds.PixelSpacing = [0.1, 0.1]
    ds.DistanceSourceToDetector = 1150
    return [_write(ds, folder)]


def mg_image(
    folder: Path, *, study_uid: str = STUDY_UID, view: str = "CC", series_number: int = 9
) -> list[Path]:
    """A left-breast mammogram in ``view`` "CC" or "MLO"; the view is also coded."""
    views = {
        "CC": (code("399162004", "SCT", "cranio-caudal"), ["A", "R"]),
        "MLO": (code("399368009", "SCT", "medio-lateral oblique"), ["A", "FR"]),
    }
    view_code, orientation = views[view]
    ds = _base(
        "MG",
        DigitalMammographyXRayImageStorageForPresentation,
        study_uid=study_uid,
        series_number=series_number,
        number=1 if view == "CC" else 2,
        description=f"L {view}",
        body_part="BREAST",
        maker=("HOLOGIC, Inc.", "Selenia Dimensions"),
    )
    _projection(ds, 29, 80, 1200, 65, view, orientation)
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ImageLaterality = "L"
    ds.ViewCodeSequence = [view_code]
    ds.DetectorType = "DIRECT"
    ds.AnodeTargetMaterial, ds.FilterMaterial = "TUNGSTEN", "RHODIUM"
    ds.BodyPartThickness, ds.CompressionForce = 52, 110
    ds.ImagerPixelSpacing = ds.PixelSpacing = [0.07, 0.07]
    return [_write(ds, folder)]


def us_image(folder: Path, *, study_uid: str = STUDY_UID, series_number: int = 10) -> list[Path]:
    """A colour-Doppler abdominal ultrasound frame (RGB). Transducer Type sits in the image
    module, frequency (kHz) and pulse repetition frequency (Hz) in the ultrasound region."""
    ds = _base(
        "US",
        UltrasoundImageStorage,
        study_uid=study_uid,
        series_number=series_number,
        number=1,
        description="Abdomen",
        body_part="ABDOMEN",
        maker=("GE Healthcare", "LOGIQ E9"),
    )
    ds.ImageType = ["ORIGINAL", "PRIMARY", "ABDOMINAL", "0011"]
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = bytes(range(256)) * (SIZE * SIZE * 3 // 256)
    ds.UltrasoundColorDataPresent = 1
    ds.TransducerType = "CURVED LINEAR"
    ds.TransducerData = ["C1-6-D", "", ""]
    region = Dataset()
    values: dict[str, Any] = {
        "RegionSpatialFormat": 1,  # 2D
        "RegionDataType": 2,  # colour flow
        "RegionFlags": 0,
        "RegionLocationMinX0": 0,
        "RegionLocationMinY0": 0,
        "RegionLocationMaxX1": SIZE - 1,
        "RegionLocationMaxY1": SIZE - 1,
        "PhysicalUnitsXDirection": 3,  # cm
        "PhysicalUnitsYDirection": 3,
        "PhysicalDeltaX": 0.025,
        "PhysicalDeltaY": 0.025,
        "TransducerFrequency": 5000,  # kHz
        "PulseRepetitionFrequency": 4000,  # Hz
    }
    for keyword, value in values.items():
        setattr(region, keyword, value)
    ds.SequenceOfUltrasoundRegions = [region]
    return [_write(ds, folder)]


def study(folder: Path, *, study_uid: str = STUDY_UID) -> list[Path]:
    """One study holding every modality: native CT, contrast CT (Canon kernel), a
    heterogeneous CT, MR, PET, NM, DX, CR, MG (CC and MLO) and US."""
    return [
        *ct_series(folder, study_uid=study_uid),
        *ct_series(
            folder, study_uid=study_uid, contrast=True, kernel=["FC08", "AXIAL"], series_number=3
        ),
        *ct_series(folder, study_uid=study_uid, n=4, heterogeneous=True, series_number=11),
        *mr_series(folder, study_uid=study_uid),
        *pt_series(folder, study_uid=study_uid),
        *nm_series(folder, study_uid=study_uid),
        *dx_image(folder, study_uid=study_uid),
        *cr_image(folder, study_uid=study_uid),
        *mg_image(folder, study_uid=study_uid, view="CC"),
        *mg_image(folder, study_uid=study_uid, view="MLO"),
        *us_image(folder, study_uid=study_uid),
    ]

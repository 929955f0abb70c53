"""Implementation-guide profiles (SCP2FHIR_PROFILE): MII Bildgebung, Osiris, QI-Core.

Realistic CT, MR, PT, NM, DX, CR, MG and US datasets (tests/profile_datasets.py) go through
the product's own reading (scp.header), summary, fold and mapping. The output is checked
against the guides' own StructureDefinitions in ../shared/profiles (tests/sdcheck.py reads
them), never against expectations copied into this file, and against each DICOM file's
values read back with pydicom. Conformance itself is the HL7 validator's verdict
(tests/test_conformance.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest

from scp.header import read_header
from scp.typed_settings import ConfigError, from_env
from tests import profile_datasets as datasets
from tests import samples, sdcheck
from tests.conftest import (
    TEST_QUIET_SECONDS,
    ScpThread,
    pipeline_env,
    start_worker,
    stop_process,
)
from tests.fhirserver.harness import FhirServer
from tests.support import free_port, r4b_model_validate, read_json, storescu, wait_for
from tests.test_corpus import corpus
from tests.test_corpus_server import problems
from workers.context import mapping_options
from workers.fold import StudyAggregate, fold_all
from workers.lifecycle.origin import with_origin
from workers.mapping import MappingOptions, emitted, study_bundle
from workers.profiles import PROFILES, Gaps, mii, osiris
from workers.settings import WorkerSettings
from workers.summary import summarize

ROOT = Path(__file__).resolve().parent.parent
WADO = "https://pacs.example.org/dicomweb"
Json = dict[str, Any]


@cache
def _files() -> tuple[Path, ...]:
    folder = Path(__import__("tempfile").mkdtemp(prefix="scp2fhir-profiles-"))
    return tuple(datasets.study(folder))


@pytest.fixture(scope="module")
def files() -> tuple[Path, ...]:
    return _files()


@pytest.fixture(scope="module")
def aggregate(files: tuple[Path, ...]) -> StudyAggregate:
    summaries = [summarize(read_header(f).json, with_technique=True) for f in files]
    (only,) = fold_all(summaries).values()
    return only


def build(aggregate: StudyAggregate, profile: str, **options: Any) -> tuple[Json, Gaps]:
    gaps = Gaps()
    resource = emitted(aggregate, "R4", MappingOptions(profile=profile, **options), gaps=gaps)
    return resource, gaps


def datasets_by_sop(files: tuple[Path, ...]) -> dict[str, pydicom.Dataset]:
    return {str(ds.SOPInstanceUID): ds for ds in (pydicom.dcmread(f) for f in files)}


def series_by_modality(study: Json, modality: str) -> list[Json]:
    return [s for s in study["series"] if s["modality"]["code"] == modality]


def ext(element: Json, url: str) -> Json | None:
    found = [e for e in element.get("extension", []) if e["url"] == url]
    assert len(found) <= 1
    return found[0] if found else None


def sub(extension: Json, name: str) -> Json | None:
    found = [e for e in extension.get("extension", []) if e["url"] == name]
    return found[0] if found else None


# --- MII ---------------------------------------------------------------------------------


def test_mii_output_conforms_to_the_structure_definitions(aggregate: StudyAggregate) -> None:
    study, _ = build(aggregate, "mii")
    assert study["meta"]["profile"] == [sdcheck.load_mii().study_url]
    r4b_model_validate(study)
    # every modality of the study got its modality extension
    profiles = sdcheck.load_mii()
    for modality, suffix in [
        ("CT", "modalitaet-ct"),
        ("MR", "modalitaet-mr"),
        ("PT", "modalitaet-pt"),
        ("NM", "modalitaet-nm"),
        ("DX", "modalitaet-mg-cr-dx"),
        ("CR", "modalitaet-mg-cr-dx"),
        ("MG", "modalitaet-mg-cr-dx"),
        ("US", "modalitaet-us"),
    ]:
        for series in series_by_modality(study, modality):
            assert ext(series, profiles.url_of(suffix)) is not None, (modality, suffix)


def test_mii_units_are_those_the_structure_definitions_fix(aggregate: StudyAggregate) -> None:
    """Every Quantity the product writes carries exactly the SD's unit, system and code."""
    study, _ = build(aggregate, "mii")
    profiles = sdcheck.load_mii()
    checked = 0
    for series in study["series"]:
        for extension in series.get("extension", []):
            suffix = extension["url"].rsplit("/", 1)[-1].removeprefix("mii-ex-bildgebung-")
            for part in extension.get("extension", []):
                if "valueQuantity" in part:
                    want = sdcheck.expected_quantity(suffix, part["url"])
                    got = {k: part["valueQuantity"][k] for k in ("unit", "system", "code")}
                    assert got == want, (suffix, part["url"])
                    checked += 1
            if "valueQuantity" in extension:
                assert (
                    extension["valueQuantity"]["code"] == sdcheck.expected_quantity(suffix)["code"]
                )
    assert checked >= 20
    assert profiles.version == "2026.0.0" == mii.PROFILE.version
    # The ballot fixes the same units.
    for suffix in ("modalitaet-ct", "modalitaet-mr", "modalitaet-pt", "modalitaet-nm"):
        for name in sdcheck.load_mii().extension(suffix).subs.values():
            if name.patterns:
                ballot = sdcheck.expected_quantity(suffix, name.name, sdcheck.MII_BALLOT_DIR)
                assert sdcheck.expected_quantity(suffix, name.name) == ballot


def test_mii_modality_extensions_have_the_examples_shape(aggregate: StudyAggregate) -> None:
    """Our nesting (complex extension -> named parts -> one value each) and part names are
    those of the MII example resources for the same modality."""
    study, _ = build(aggregate, "mii")
    examples: dict[str, set[str]] = {}
    for path in sorted(sdcheck.MII_DIR.glob("ImagingStudy-*.json")):
        example = json.loads(path.read_text())
        for series in example["series"]:
            for extension in series.get("extension", []):
                if "extension" in extension:
                    parts = {p["url"] for p in extension["extension"]}
                    examples.setdefault(extension["url"], set()).update(parts)
    compared = 0
    for series in study["series"]:
        for extension in series.get("extension", []):
            if extension["url"] in examples:
                made = [p["url"] for p in extension["extension"]]
                assert len(made) == len(set(made))
                # tracerExposureTime and contrastBolusDetails are never made (see README)
                assert set(made) <= examples[extension["url"]], extension["url"]
                for part in extension["extension"]:
                    assert len([k for k in part if k.startswith("value")]) == 1
                compared += 1
    assert compared >= 10


def test_mii_instance_details_follow_each_file(
    aggregate: StudyAggregate, files: tuple[Path, ...]
) -> None:
    """Pixel spacing split into x (column spacing, 2nd value) and y (row spacing, 1st),
    slice thickness and image type: per instance, exactly as each file says."""
    study, _ = build(aggregate, "mii")
    by_sop = datasets_by_sop(files)
    codes = {
        c["code"]
        for c in json.loads(
            (sdcheck.MII_DIR / "CodeSystem-mii-cs-bildgebung-instance-image-type.json").read_text()
        )["concept"]
    }
    details_url = sdcheck.load_mii().url_of("instanz-details")
    seen = 0
    for series in study["series"]:
        for instance in series["instance"]:
            ds = by_sop[instance["uid"]]
            details = ext(instance, details_url)
            if "PixelSpacing" not in ds:
                continue
            assert details is not None
            x, y = sub(details, "pixelSpacingX"), sub(details, "pixelSpacingY")
            assert x is not None and y is not None
            assert x["valueQuantity"]["value"] == pytest.approx(float(ds.PixelSpacing[1]))
            assert y["valueQuantity"]["value"] == pytest.approx(float(ds.PixelSpacing[0]))
            if "SliceThickness" in ds:
                thickness = sub(details, "sliceThickness")
                assert thickness is not None
                assert thickness["valueQuantity"]["value"] == pytest.approx(
                    float(ds.SliceThickness)
                )
            image_type = sub(details, "imageType")
            assert image_type is not None
            concept = image_type["valueCodeableConcept"]
            assert concept["text"] == "\\".join(ds.ImageType)
            assert {c["code"] for c in concept.get("coding", [])} <= codes
            seen += 1
    assert seen >= 15


def test_the_image_type_code_list_is_the_code_systems_concrete_codes() -> None:
    system = json.loads(
        (sdcheck.MII_DIR / "CodeSystem-mii-cs-bildgebung-instance-image-type.json").read_text()
    )
    assert system["url"] == mii.IMAGE_TYPE_SYSTEM
    # groupers (PDC, MSC, CT, ...) are the concepts that have children
    concrete = {
        c["code"]
        for c in system["concept"]
        if not any(p["code"] == "child" for p in c.get("property", []))
    }
    assert concrete == mii.IMAGE_TYPE_CODES


def test_mii_heterogeneous_series_is_represented_faithfully(
    aggregate: StudyAggregate, files: tuple[Path, ...]
) -> None:
    """A CT series mixing a localizer, 5 mm and 1.25 mm slices and a modulated tube current:
    no series-level thickness or tube current (it would be false for most instances); each
    instance keeps its own values; the gaps say why, by tag."""
    study, gaps = build(aggregate, "mii")
    by_sop = datasets_by_sop(files)
    profiles = sdcheck.load_mii()
    mixed = [
        s
        for s in series_by_modality(study, "CT")
        if len({float(by_sop[i["uid"]].SliceThickness) for i in s["instance"]}) > 1
    ]
    assert len(mixed) == 1
    series = mixed[0]
    assert ext(series, profiles.url_of("serie-schichtdicke")) is None
    ct = ext(series, profiles.url_of("modalitaet-ct"))
    assert ct is not None and sub(ct, "xRayTubeCurrent") is None
    assert sub(ct, "KVP") is not None  # the same in every instance: kept
    thicknesses = {
        sub(ext(i, profiles.url_of("instanz-details")) or {}, "sliceThickness")["valueQuantity"][  # type: ignore[index]
            "value"
        ]
        for i in series["instance"]
    }
    assert len(thicknesses) > 1
    reasons = {g.element: g for g in gaps if series["uid"] in g.where}
    assert reasons["extension:schichtdicke"].kind == "varies"
    assert "(0018,0050)" in reasons["extension:schichtdicke"].reason
    assert "extension:modalitaet-ct.xRayTubeCurrent" in reasons
    # homogeneous CT series do carry the series thickness
    homogeneous = [s for s in series_by_modality(study, "CT") if s is not series]
    assert homogeneous
    for other in homogeneous:
        thickness = ext(other, profiles.url_of("serie-schichtdicke"))
        assert thickness is not None
        assert thickness["valueQuantity"]["value"] == pytest.approx(
            float(by_sop[other["instance"][0]["uid"]].SliceThickness)
        )


def test_mii_values_come_from_the_right_tags(
    aggregate: StudyAggregate, files: tuple[Path, ...]
) -> None:
    study, _ = build(aggregate, "mii")
    by_sop = datasets_by_sop(files)
    profiles = sdcheck.load_mii()
    (mr,) = series_by_modality(study, "MR")
    ds = by_sop[mr["instance"][0]["uid"]]
    mr_ext = ext(mr, profiles.url_of("modalitaet-mr"))
    assert mr_ext is not None
    flip = sub(mr_ext, "flipAngle")
    assert flip is not None
    assert flip["valueQuantity"]["value"] == pytest.approx(float(ds[0x00181314].value))
    sequences = sub(mr_ext, "scanningSequence")
    assert sequences is not None
    assert [c["code"] for c in sequences["valueCodeableConcept"]["coding"]] == list(
        ds.ScanningSequence
    )
    (pt,) = series_by_modality(study, "PT")
    pet = by_sop[pt["instance"][0]["uid"]]
    pt_ext = ext(pt, profiles.url_of("modalitaet-pt"))
    assert pt_ext is not None
    dose = sub(pt_ext, "radionuclideTotalDose")
    assert dose is not None
    info = pet.RadiopharmaceuticalInformationSequence[0]
    assert dose["valueQuantity"]["value"] == pytest.approx(float(info.RadionuclideTotalDose))
    nuclide = sub(pt_ext, "radionuclide")
    assert nuclide is not None
    assert nuclide["valueCodeableConcept"]["coding"][0]["code"] == str(
        info.RadionuclideCodeSequence[0].CodeValue
    )
    # contrast: the post-contrast CT says true, the native one false
    contrast_url = profiles.url_of("kontrastmittel")
    flags = {
        bool(by_sop[s["instance"][0]["uid"]].get("ContrastBolusAgent")): sub(
            ext(s, contrast_url) or {}, "contrastBolus"
        )
        for s in series_by_modality(study, "CT")
    }
    assert flags[True] == {"url": "contrastBolus", "valueBoolean": True}
    assert flags[False] == {"url": "contrastBolus", "valueBoolean": False}


def test_mii_weight_and_height_are_contained_vital_signs(
    aggregate: StudyAggregate, files: tuple[Path, ...]
) -> None:
    """The 2027.0.0-ballot's study extensions; the release has none of them."""
    study, _ = build(aggregate, "mii-2027")
    ds = pydicom.dcmread(files[0])
    profiles = sdcheck.load_mii(sdcheck.MII_BALLOT_DIR)
    contained = {r["id"]: r for r in study["contained"]}
    for suffix, value in (("gewicht", ds.PatientWeight), ("groesse", ds.PatientSize)):
        extension = ext(study, profiles.url_of(suffix))
        assert extension is not None
        observation = contained[extension["valueReference"]["reference"].removeprefix("#")]
        assert observation["valueQuantity"]["value"] == pytest.approx(float(value))
        assert observation["valueQuantity"]["system"] == "http://unitsofmeasure.org"
        assert observation["subject"] == study["subject"]
        assert observation["effectiveDateTime"] == study["started"]
    assert ext(study, profiles.url_of("gewicht")) is not None
    release, _ = build(aggregate, "mii")
    assert "contained" not in release
    assert {e["url"] for e in release.get("extension", [])} <= {mii.REASON}


def test_the_mii_versions_differ_where_their_structure_definitions_do(
    aggregate: StudyAggregate,
) -> None:
    """Each version's output uses only extensions its ImagingStudy profile slices, on the
    level it slices them; the ballot's weight and height are its only additions."""
    slots = {}
    for name, folder in sdcheck.MII_DIRS.items():
        profiles = sdcheck.load_mii(folder)
        slots[name] = profiles.slots
        study, _ = build(aggregate, name)
        places = [("ImagingStudy", study)]
        for series in study["series"]:
            places.append(("ImagingStudy.series", series))
            places += [("ImagingStudy.series.instance", i) for i in series.get("instance", [])]
        for level, element in places:
            for extension in element.get("extension", []):
                assert extension["url"] in profiles.slots[level], (name, level, extension["url"])
    added = {
        level: set(slots["mii-2027"][level]) - set(slots["mii"][level]) for level in sdcheck.LEVELS
    }
    assert added == {
        "ImagingStudy": {mii.WEIGHT, mii.HEIGHT},
        "ImagingStudy.series": set(),
        "ImagingStudy.series.instance": set(),
    }
    assert not mii.PROFILE.vital_signs and mii.PROFILE_2027.vital_signs


@pytest.mark.parametrize("folder", sorted(sdcheck.MII_DIRS.values()), ids=lambda p: p.name)
def test_the_mii_code_lists_are_the_code_systems_codes(folder: Path) -> None:
    """The defined terms the profile codes are exactly the codes of the MII CodeSystems."""
    for name, codes in (
        ("scanning-sequence", mii.SCANNING_SEQUENCE_CODES),
        ("scanning-sequence-variant", mii.SEQUENCE_VARIANT_CODES),
        ("series-type", mii.SERIES_TYPE_CODES),
        ("transducer-type", mii.TRANSDUCER_TYPE_CODES),
    ):
        system = json.loads((folder / f"CodeSystem-mii-cs-bildgebung-{name}.json").read_text())
        assert {c["code"] for c in system["concept"]} == codes, name


def test_mii_bundle_devices_claim_the_device_profile(aggregate: StudyAggregate) -> None:
    bundle = study_bundle(aggregate, "R4", MappingOptions(profile="mii"))
    devices = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Device"]
    assert devices
    for device in devices:
        assert device["meta"]["profile"] == [mii.DEVICE_PROFILE]
    device_sd = json.loads(
        (sdcheck.MII_DIR / "StructureDefinition-mii-pr-bildgebung-geraet.json").read_text()
    )
    assert device_sd["url"] == mii.DEVICE_PROFILE


# --- Osiris ------------------------------------------------------------------------------


def test_osiris_series_extensions_match_the_profile(aggregate: StudyAggregate) -> None:
    study, gaps = build(aggregate, "osiris", wado_rs_base_url=WADO)
    page = sdcheck.load_osiris()
    assert study["meta"]["profile"] == [page.url] == [osiris.STUDY_PROFILE]
    r4b_model_validate(study)
    tree = sdcheck.osiris_settings_tree()
    assert tree["imaging-settings"].url == osiris.IMAGING_SETTINGS
    assert tree["series-weightheigt"].url == osiris.WEIGHT_HEIGHT
    gap_paths = {(g.where.split()[1], g.element) for g in gaps if g.where != "study"}
    for series in study["series"]:
        assert series.get("extension"), "series.extension is 1..*"
        for extension in series["extension"]:
            # every required slice without a value (data-absent-reason) is a gap, never
            # a made-up value
            for missing in sdcheck.missing_osiris_slices(extension):
                element = "extension:" + missing
                assert (series["uid"], element) in gap_paths, (series["uid"], missing)
    # the code knows every slice the profile defines, with the profile's types
    for block, (_, settings) in {"": (None, osiris.SETTINGS), **osiris.BLOCKS}.items():
        node = tree["imaging-settings"].sub(block) if block else tree["imaging-settings"]
        for name, _, _, kind, required in settings:
            assert node.sub(name).types == (kind,), (block, name)
            assert (node.sub(name).min >= 1) == required, (block, name)
        if block:
            assert {s.name for s in node.subs.values()} == {name for name, *_ in settings}
    page_slices = {s.name for s in tree["imaging-settings"].subs.values()}
    made = {name for name, *_ in osiris.SETTINGS} | set(osiris.BLOCKS)
    assert page_slices - made == {"imaging_injection"}  # a reference: not in DICOM (README)


def test_osiris_study_constraints(aggregate: StudyAggregate) -> None:
    study, gaps = build(aggregate, "osiris")
    page = sdcheck.load_osiris()
    assert page.elements["ImagingStudy.identifier"] == (1, "1")
    assert len(study["identifier"]) == 1
    assert study["identifier"][0]["system"] == "urn:dicom:uid"
    accession = study["basedOn"][0]["identifier"]
    assert accession["type"]["coding"][0]["code"] == "ACSN"
    elements = {(g.where, g.element, g.kind) for g in gaps}
    assert ("study", "endpoint", "required") in elements  # no WADO-RS configured
    assert ("study", "reasonReference", "required") in elements
    for element in ("numberOfSeries", "description", "started", "subject", "modality"):
        if page.elements.get(f"ImagingStudy.{element}", (0, "*"))[0] >= 1:
            assert element in study, element
    for series in study["series"]:
        for element in ("description", "numberOfInstances", "started"):
            assert page.elements[f"ImagingStudy.series.{element}"][0] == 1
            assert element in series or any(
                g.element == element and series["uid"] in g.where for g in gaps
            )
    with_endpoint, gaps = build(aggregate, "osiris", wado_rs_base_url=WADO)
    assert len(with_endpoint["endpoint"]) == 1
    assert not [g for g in gaps if g.element == "endpoint"]


def test_osiris_values_are_true_to_dicom(
    aggregate: StudyAggregate, files: tuple[Path, ...]
) -> None:
    study, gaps = build(aggregate, "osiris")
    by_sop = datasets_by_sop(files)
    (mr,) = series_by_modality(study, "MR")
    ds = by_sop[mr["instance"][0]["uid"]]
    settings = ext(mr, osiris.IMAGING_SETTINGS)
    assert settings is not None
    mr_image = sub(settings, "mr_image")
    assert mr_image is not None
    flip = sub(mr_image, "flip_angle")
    assert flip is not None and flip["valueDecimal"] == pytest.approx(float(ds[0x00181314].value))
    name = sub(mr_image, "sequence_name")
    assert name is not None and name["valueString"] == ds[0x00180024].value
    spacing = sub(settings, "pixel_spacing")
    assert spacing is not None
    assert [float(v) for v in spacing["valueString"].split("\\")] == pytest.approx(
        [float(v) for v in ds.PixelSpacing]
    )
    weight = ext(mr, osiris.WEIGHT_HEIGHT)
    assert weight is not None
    patient_weight = sub(weight, "patient_weight")
    assert patient_weight is not None
    assert patient_weight["valueDecimal"] == pytest.approx(float(ds.PatientWeight))
    # integers only where DICOM is integral; the heterogeneous CT gets gaps, not a value
    for series in study["series"]:
        for part in _leaves(ext(series, osiris.IMAGING_SETTINGS) or {}):
            if "valueInteger" in part:
                assert isinstance(part["valueInteger"], int)
    assert any(g.kind == "varies" and "(0018,0050)" in g.reason for g in gaps)


def _leaves(extension: Json) -> Iterator[Json]:
    for part in extension.get("extension", []):
        if "extension" in part:
            yield from _leaves(part)
        else:
            yield part


# --- QI-Core -----------------------------------------------------------------------------


def test_qicore_populates_must_support_elements(
    aggregate: StudyAggregate, files: tuple[Path, ...]
) -> None:
    study, gaps = build(aggregate, "qicore")
    r4b_model_validate(study)
    assert study["meta"]["profile"] == [
        "http://hl7.org/fhir/us/qicore/StructureDefinition/qicore-imagingstudy"
    ]
    ds = pydicom.dcmread(files[0])
    assert study["basedOn"][0]["identifier"]["value"] == ds.AccessionNumber
    for element in ("subject", "started"):
        assert element in study
    for series in study["series"]:
        for element in ("uid", "number", "modality", "numberOfInstances", "started", "instance"):
            assert element in series, element
        if "bodySite" not in series:
            assert any(g.element == "bodySite" and series["uid"] in g.where for g in gaps)
    assert {g.element for g in gaps if g.where == "study"} == {"procedureReference"}


# --- all profiles ------------------------------------------------------------------------


def test_profiles_leave_the_base_mapping_untouched_when_base(aggregate: StudyAggregate) -> None:
    base, gaps = build(aggregate, "base")
    assert "meta" not in base and not len(gaps)
    for series in base["series"]:
        assert "extension" not in series
    # the base profile does not record technique per instance: records stay small
    plain = [summarize(read_header(f).json) for f in _files()[:3]]
    assert all("technique" not in s.instance for s in plain)


def test_every_profile_is_r4_only_and_refused_with_r5() -> None:
    for name, profile in PROFILES.items():
        env = {"SCP2FHIR_PROFILE": name, "SCP2FHIR_FHIR_VERSION": "R5"}
        if name == "base":
            assert mapping_options(from_env(WorkerSettings, env)).profile == "base"
            continue
        assert profile.fhir_versions == {"R4"}
        with pytest.raises(ConfigError, match="R4"):
            mapping_options(from_env(WorkerSettings, env))
    with pytest.raises(ConfigError, match="base, mii, mii-2027, osiris, qicore"):
        mapping_options(from_env(WorkerSettings, {"SCP2FHIR_PROFILE": "nope"}))


def test_convert_explain_lists_the_gaps(files: tuple[Path, ...], tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "scp.cli", "convert", "--profile", "osiris", "--explain"]
        + [str(f) for f in files],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert f"study {datasets.STUDY_UID} (profile osiris):" in result.stdout
    assert "reasonReference [required]" in result.stdout
    assert "[varies] (0018,0050)" in result.stdout
    # no patient data in the view
    ds = pydicom.dcmread(files[0])
    for phi in (str(ds.PatientName), str(ds.PatientID)):
        assert phi not in result.stdout
    refused = subprocess.run(
        [
            sys.executable,
            "-m",
            "scp.cli",
            "convert",
            "--profile",
            "mii",
            "--fhir-version",
            "R5",
            str(files[0]),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert refused.returncode == 2
    assert "configuration error" in refused.stderr


def test_readme_maps_every_profile_element() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Profiles") :]
    section = section[: section.index("\n## ", 1)]
    for url, parts in mii.MODALITY_EXTENSIONS.values():
        for slice_name, _, tag, _ in parts:
            assert f"`{slice_name}` | {tag}" in section, (url, slice_name)
    for name, _, tag, _, _ in osiris.SETTINGS:
        assert f"`{name}`" in section and tag in section
    for block, (_, settings) in osiris.BLOCKS.items():
        for name, _, tag, _, _ in settings:
            assert f"`{block}.{name}`" in section and tag in section


# --- through the pipeline and a FHIR server ----------------------------------------------


def test_the_pipeline_emits_what_convert_makes(
    redis_url: str, tmp_path: Path, files: tuple[Path, ...]
) -> None:
    """storescu -> SCP -> Redis -> worker with SCP2FHIR_PROFILE=mii: the emitted
    ImagingStudy equals the offline conversion of the same files, extension for extension
    (the technique survives the Redis fold)."""
    port = free_port()
    env = pipeline_env(redis_url, tmp_path / "out", port, SCP2FHIR_PROFILE="mii")
    scp = ScpThread(env).start(port)
    worker = start_worker(env, tmp_path / "worker.log")
    try:
        storescu(port, files)
        path = tmp_path / "out" / "ImagingStudy" / f"{datasets.STUDY_UID}.json"

        def complete() -> Json | None:
            if not path.exists():
                return None
            resource: Json = read_json(path)
            return resource if resource["numberOfInstances"] == len(files) else None

        emitted_study = wait_for(complete, TEST_QUIET_SECONDS + 30, "the profiled study")
    finally:
        scp.stop()
        stop_process(worker)
    summaries = [summarize(read_header(f).json, with_technique=True) for f in files]
    (offline,) = fold_all(summaries).values()
    expected, _ = build(offline, "mii")
    # The pipeline marks what it writes as its own (README "Study lifecycle").
    assert emitted_study == with_origin(expected)
    log = (tmp_path / "worker.log").read_text()
    assert f"study={datasets.STUDY_UID} profile=mii gaps=" in log


@pytest.fixture(scope="module")
def fhir() -> Iterator[httpx.Client]:
    with FhirServer() as server, httpx.Client(base_url=server.base_url, timeout=30) as client:
        yield client


def test_profiled_resources_pass_the_fhir_servers_validator(
    fhir: httpx.Client, aggregate: StudyAggregate
) -> None:
    """medplum's validator (R4 base definitions, required bindings) on every resource of
    every profile's Bundle, contained Observations included."""
    errors: list[str] = []
    for name in ("mii", "osiris", "qicore"):
        options = MappingOptions(profile=name, wado_rs_base_url=WADO, patient_id_system=WADO)
        for entry in study_bundle(aggregate, "R4", options)["entry"]:
            errors += [f"{name}: {p}" for p in problems(fhir, entry["resource"])]
        errors += [f"{name}: {p}" for p in problems(fhir, build(aggregate, name)[0])]
    assert errors == [], "\n".join(errors[:20])


def test_every_corpus_study_maps_under_every_profile() -> None:
    """The whole DICOM corpus (pydicom's and pydicom-data's files, every modality they
    have) maps under each profile to resources the R4B models accept; the HL7 validator's
    verdict on the same output is tests/test_conformance.py's."""
    studies = fold_all(corpus().summaries.values())
    assert len(studies) >= 50
    extensions = 0
    for _uid, study in sorted(studies.items()):
        for name in ("mii", "mii-2027", "osiris", "qicore"):
            resource, _ = build(study, name)
            r4b_model_validate(resource)
            extensions += sum(len(s.get("extension", [])) for s in resource.get("series", []))
    assert extensions >= 50


def _item(**elements: Any) -> pydicom.Dataset:
    item = pydicom.Dataset()
    for keyword, value in elements.items():
        setattr(item, keyword, value)
    return item


def test_enhanced_multiframe_images_are_read_from_their_functional_groups() -> None:
    """Enhanced CT keeps exposure, kernel and geometry in functional groups (PS3.3
    C.7.6.16), not at the top level: shared groups are read, per-frame groups only where
    every frame agrees (frames that disagree give no value, not the first frame's)."""
    ds = pydicom.dcmread(_files()[0])
    for keyword in ("KVP", "CTDIvol", "XRayTubeCurrent", "ConvolutionKernel", "FilterType"):
        if keyword in ds:
            delattr(ds, keyword)
    del ds.PixelSpacing, ds.SliceThickness
    ds.SharedFunctionalGroupsSequence = [
        _item(
            CTXRayDetailsSequence=[_item(KVP=100, FilterType="WEDGE")],
            CTExposureSequence=[_item(CTDIvol=7.5, XRayTubeCurrentInmA=310.0)],
            CTReconstructionSequence=[_item(ConvolutionKernel="Br40")],
        )
    ]
    ds.PerFrameFunctionalGroupsSequence = [
        _item(PixelMeasuresSequence=[_item(PixelSpacing=[0.5, 0.5], SliceThickness=t)])
        for t in (1.0, 1.0, 2.0)
    ]
    technique = summarize(samples.header_of(ds), with_technique=True).instance["technique"]
    assert technique["kvp"] == 100
    assert technique["ctdi_vol"] == pytest.approx(7.5)
    assert technique["tube_current_ma"] == 310
    assert technique["convolution_kernel"] == "Br40"
    assert technique["filter_type"] == "WEDGE"
    assert technique["pixel_spacing"] == [0.5, 0.5]  # every frame agrees
    assert "slice_thickness" not in technique  # frames disagree


def test_mii_coded_parts_and_contrast_rules(
    aggregate: StudyAggregate, files: tuple[Path, ...]
) -> None:
    """Single-valued coded terms (US transducer type), PET units, and contrast: absence of
    the Contrast/Bolus module means "none" only where the IOD makes the module conditional
    on contrast use (CT, MR, PT, US...), not in DX/CR/MG/NM."""
    study, gaps = build(aggregate, "mii")
    by_sop = datasets_by_sop(files)
    profiles = sdcheck.load_mii()
    (us,) = series_by_modality(study, "US")
    us_ext = ext(us, profiles.url_of("modalitaet-us"))
    assert us_ext is not None
    transducer = sub(us_ext, "transducerType")
    assert transducer is not None
    dicom = by_sop[us["instance"][0]["uid"]]
    region = dicom.SequenceOfUltrasoundRegions[0]
    kind = region.get("TransducerType") or dicom.get("TransducerType")
    assert transducer["valueCodeableConcept"]["coding"][0]["code"] == kind.replace(" ", "_")
    (pt,) = series_by_modality(study, "PT")
    units = sub(ext(pt, profiles.url_of("modalitaet-pt")) or {}, "units")
    assert units is not None
    assert units["valueCodeableConcept"]["text"] == by_sop[pt["instance"][0]["uid"]].Units
    contrast_url = profiles.url_of("kontrastmittel")
    for modality in ("DX", "CR", "MG", "NM"):
        for series in series_by_modality(study, modality):
            if not by_sop[series["instance"][0]["uid"]].get("ContrastBolusAgent"):
                assert ext(series, contrast_url) is None, modality
                assert any(
                    g.element == "extension:kontrastmittel" and series["uid"] in g.where
                    for g in gaps
                )
    for modality in ("MR", "US"):
        for series in series_by_modality(study, modality):
            assert ext(series, contrast_url) is not None, modality


def test_profiles_survive_damaged_technique_records(aggregate: StudyAggregate) -> None:
    """Records from an older or damaged aggregate (technique of the wrong JSON type) give
    fewer extensions, never an exception or an invalid resource."""
    damaged = dict(aggregate.instances)
    junk: list[Any] = ["text", 7, [1, 2], {"image_type": [1, None], "pixel_spacing": [True, 1]}]
    for index, sop in enumerate(sorted(damaged)):
        damaged[sop] = {**damaged[sop], "technique": junk[index % len(junk)]}
    broken = StudyAggregate(aggregate.study_uid, aggregate.study, damaged, aggregate.series)
    for name in ("mii", "osiris", "qicore"):
        resource, _ = build(broken, name)
        r4b_model_validate(resource)

"""The guide reader (tests/sdcheck.py): what it reads from ../shared/profiles is what the
StructureDefinitions say, for each MII version and for Osiris. (Checking resources is the
HL7 validator's job: tests/test_conformance.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.sdcheck import (
    LEVELS,
    MII_BALLOT_DIR,
    MII_DIR,
    MII_DIRS,
    OsirisSlice,
    expected_quantity,
    load_mii,
    load_osiris,
    missing_osiris_slices,
    osiris_settings_tree,
    require,
    seed_osiris_page,
    value_key,
)

UCUM = "http://unitsofmeasure.org"


@pytest.mark.parametrize(
    ("name", "version"), [("mii", "2026.0.0"), ("mii-2027", "2027.0.0-ballot")]
)
def test_both_mii_versions_are_read(name: str, version: str) -> None:
    mii = load_mii(MII_DIRS[name])
    assert mii.version == version
    assert len(sorted(MII_DIRS[name].glob("ImagingStudy-*.json"))) == 7
    assert {d.name for d in mii.extensions.values()} >= {
        "mii-ex-bildgebung-modalitaet-ct",
        "mii-ex-bildgebung-instanz-details",
    }
    assert all(mii.slots[level] for level in LEVELS)


def test_expected_quantity_comes_from_the_sd() -> None:
    assert expected_quantity("modalitaet-ct", "KVP") == {
        "unit": "kilovolt",
        "system": UCUM,
        "code": "kV",
    }
    assert expected_quantity("modalitaet-mr", "flipAngle")["code"] == "deg"
    # PET doses are in Bq, NM doses in MBq, as the DICOM modules define them.
    assert expected_quantity("modalitaet-pt", "radionuclideTotalDose")["code"] == "Bq"
    assert expected_quantity("modalitaet-nm", "radionuclideTotalDose")["code"] == "MBq"
    assert expected_quantity("serie-schichtdicke")["code"] == "mm"
    assert expected_quantity("serie-schichtdicke", folder=MII_BALLOT_DIR)["code"] == "mm"
    with pytest.raises(KeyError):
        expected_quantity("modalitaet-ct", "kvp")


def test_only_the_ballot_has_weight_and_height() -> None:
    assert load_mii(MII_BALLOT_DIR).url_of("gewicht")
    with pytest.raises(KeyError):
        load_mii(MII_DIR).url_of("gewicht")


def test_a_missing_guide_is_a_clear_failure(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"\.\./shared/profiles beside the clone"):
        require(tmp_path / "mii-bildgebung-2026.0.0")


def test_osiris_is_read_from_its_structure_definitions() -> None:
    osiris = load_osiris()
    assert osiris.version == "1.1.0"
    assert osiris.url.endswith("/StructureDefinition/onco-imagingstudy")
    for path in ("description", "numberOfSeries", "series.description"):
        assert osiris.elements[f"ImagingStudy.{path}"][0] == 1, path
    assert osiris.elements["ImagingStudy.identifier"] == (1, "1")
    assert osiris.elements["ImagingStudy.series.extension:imaging-settings"] == (1, "1")
    tree = osiris_settings_tree()
    assert set(tree) == {"imaging-settings", "series-weightheigt"}
    settings = tree["imaging-settings"]
    assert (
        settings.url == "https://ig-osiris.cancer.fr/ig/osiris/StructureDefinition/imaging-settings"
    )

    def leaf(s: OsirisSlice) -> tuple[int, str, tuple[str, ...]]:
        return s.min, s.max, s.types

    assert leaf(settings.sub("slice_thickness")) == (1, "1", ("string",))
    assert leaf(settings.sub("pixel_spacing")) == (1, "1", ("string",))
    assert leaf(settings.sub("rows")) == (1, "1", ("integer",))
    assert leaf(settings.sub("field_of_view")) == (0, "1", ("integer",))
    assert leaf(settings.sub("mr_image").sub("flip_angle")) == (1, "1", ("decimal",))
    assert leaf(settings.sub("ct_image").sub("kvp")) == (0, "1", ("integer",))
    assert leaf(settings.sub("ct_image").sub("spiral_pitch_factor")) == (1, "1", ("decimal",))
    assert len(settings.sub("mr_image").subs) == 9
    assert "Reference" in settings.sub("imaging_injection").types
    weight = tree["series-weightheigt"].sub("patient_weight")
    assert leaf(weight) == (0, "1", ("decimal",))


def test_missing_required_slices_are_named() -> None:
    tree = osiris_settings_tree()
    mr = tree["imaging-settings"].sub("mr_image")
    absent = {"extension": [{"url": "x", "valueCode": "unknown"}]}
    ext = {
        "url": tree["imaging-settings"].url,
        "extension": [
            {"url": "slice_thickness", "valueString": "5"},
            {"url": "rows", "_valueInteger": absent},
            {"url": "mr_image", "extension": [{"url": "flip_angle", "valueDecimal": 150}]},
        ],
    }
    missing = missing_osiris_slices(ext)
    assert {"imaging-settings.pixel_spacing", "imaging-settings.rows"} <= set(missing)
    assert "imaging-settings.slice_thickness" not in missing
    assert "imaging-settings.field_of_view" not in missing  # optional
    assert "imaging-settings.ct_image.kvp" not in missing  # under an absent ct_image
    assert "imaging-settings.mr_image.flip_angle" not in missing
    assert len([m for m in missing if ".mr_image." in m]) == len(mr.subs) - 1
    assert value_key("Quantity") == "valueQuantity"
    assert json.dumps(ext)  # plain JSON throughout


def test_the_osiris_guide_is_the_one_the_seed_page_shows() -> None:
    """The seed the project started from (the Osiris page) and the StructureDefinitions the
    tests read name the same profile and version."""
    osiris = load_osiris()
    assert seed_osiris_page() == (osiris.url, osiris.version)

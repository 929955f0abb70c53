"""The profile checker itself: the MII examples pass it, broken copies fail it, and what it
reads from the vendored profile text is what the profiles say."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from tests.sdcheck import (
    LEVELS,
    MII_DIR,
    ExtDef,
    OsirisSlice,
    expected_quantity,
    load_mii,
    load_osiris,
    missing_osiris_slices,
    osiris_settings_tree,
    problems_in_extension,
    problems_in_osiris_series_extension,
    problems_in_study,
    value_key,
)

EXAMPLES = sorted(MII_DIR.glob("ImagingStudy-*.json"))
UCUM = "http://unitsofmeasure.org"


def example(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((MII_DIR / f"{name}.json").read_text("utf-8"))
    return data


def ct_example() -> dict[str, Any]:
    return example("ImagingStudy-mii-exa-bildgebung-bildgebungsstudie-ct")


def sub(ext: dict[str, Any], url: str) -> dict[str, Any]:
    found: dict[str, Any] = next(e for e in ext["extension"] if e["url"] == url)
    return found


# --- MII ---------------------------------------------------------------------------------


def test_vendored_profiles_are_read() -> None:
    mii = load_mii()
    assert mii.version == "2027.0.0-ballot"
    assert len(EXAMPLES) == 7
    assert {d.name for d in mii.extensions.values()} >= {
        "mii-ex-bildgebung-modalitaet-ct",
        "mii-ex-bildgebung-instanz-details",
    }
    assert all(mii.slots[level] for level in LEVELS)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem.rsplit("-", 1)[-1])
def test_mii_examples_conform(path: Path) -> None:
    # The examples carry only unit and value on their Quantities, hence require_ucum=False.
    study = json.loads(path.read_text("utf-8"))
    assert problems_in_study(study, require_ucum=False) == []


def test_examples_lack_ucum_system_and_code() -> None:
    problems = problems_in_study(ct_example())
    assert problems
    assert all("no system" in p or "no code" in p for p in problems)


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
    with pytest.raises(KeyError):
        expected_quantity("modalitaet-ct", "kvp")


SAMPLE: dict[str, Any] = {
    "string": "B30f",
    "boolean": True,
    "CodeableConcept": {"text": "x"},
    "Reference": {"reference": "Observation/1"},
    "id": "1.2.826.0.1.3680043.8.498.1",
}


def filled(d: ExtDef) -> dict[str, Any]:
    """Every slice of ``d`` once, each value of the SD's type, Quantities with UCUM."""
    if d.subs:
        return {"url": d.url, "extension": [filled(s) for s in d.subs.values()]}
    kind = d.types[0]
    value = {"value": 1.5, **d.patterns} if kind == "Quantity" else SAMPLE[kind]
    return {"url": d.url, value_key(kind): value}


@pytest.mark.parametrize(
    "url",
    sorted(load_mii().extensions),
    ids=lambda u: u.rsplit("/", 1)[-1].removeprefix("mii-ex-bildgebung-"),
)
def test_complete_extension_with_ucum_conforms(url: str) -> None:
    assert problems_in_extension(filled(load_mii().extensions[url]), url) == []


def break_kvp(ext: dict[str, Any], change: dict[str, Any]) -> None:
    kvp = sub(ext, "KVP")
    kvp.pop("valueQuantity")
    kvp.update(change)


def ct_ext(study: dict[str, Any]) -> dict[str, Any]:
    return sub(study["series"][0], load_mii().url_of("modalitaet-ct"))


def test_mutations_are_found() -> None:
    mii = load_mii()
    cases: dict[str, tuple[Any, str]] = {}

    def case(name: str, expect: str) -> dict[str, Any]:
        study = ct_example()
        cases[name] = (study, expect)
        return study

    case("no profile", "meta.profile").pop("meta")
    ct_ext(case("wrong url", "is no extension the profile allows"))["url"] += "-x"
    break_kvp(ct_ext(case("wrong type", "wants valueQuantity")), {"valueString": "120"})
    sub(ct_ext(case("wrong unit", "fixes 'kilovolt'")), "KVP")["valueQuantity"]["unit"] = "volt"
    sub(ct_ext(case("wrong code", "fixes 'kV'")), "KVP")["valueQuantity"]["code"] = "V"
    sub(ct_ext(case("text number", "not a valid Quantity")), "KVP")["valueQuantity"]["value"] = "1"
    ct_ext(case("unknown slice", "none of the slices"))["extension"].append(
        {"url": "kvp", "valueString": "120"}
    )
    ext = ct_ext(case("duplicate sub-slice", "2 occurrences, the profile allows at most 1"))
    ext["extension"].append(copy.deepcopy(sub(ext, "KVP")))
    series = case("duplicate slice", "2 occurrences")["series"][0]
    series["extension"].append(copy.deepcopy(series["extension"][0]))
    study = case("wrong level", "belongs on ImagingStudy.series.instance")
    study["series"][0]["extension"].append(study["series"][0]["instance"][0]["extension"][0])
    ct_ext(case("value on complex", "value[x], the profile allows at most 0"))["valueString"] = "x"
    contrast = sub(
        case("missing required", "requires at least 1")["series"][0], mii.url_of("kontrastmittel")
    )
    contrast["extension"] = [e for e in contrast["extension"] if e["url"] != "contrastBolus"]
    case("foreign", "is no extension the profile allows")["extension"].append(
        {"url": "http://example.org/x", "valueString": "x"}
    )
    for name, (broken, expect) in cases.items():
        problems = problems_in_study(broken, require_ucum=False)
        assert any(expect in p for p in problems), (name, problems)


def test_open_slicing_allows_foreign_but_not_misplaced_extensions() -> None:
    study = ct_example()
    study["extension"].append({"url": "http://example.org/x", "valueString": "x"})
    assert problems_in_study(study, require_ucum=False, open_slicing=True) == []
    study["extension"].append(study["series"][0]["instance"][0]["extension"][0])
    assert problems_in_study(study, require_ucum=False, open_slicing=True)


def test_simple_extensions() -> None:
    mii = load_mii()
    thickness = mii.url_of("serie-schichtdicke")
    good = {
        "url": thickness,
        "valueQuantity": {"value": 5, "unit": "millimeter", "system": UCUM, "code": "mm"},
    }
    assert problems_in_extension(good, thickness) == []
    assert problems_in_extension({"url": thickness}, thickness)  # value[x] is 1..1
    inch = {
        **good,
        "valueQuantity": {"value": 0.2, "unit": "inch", "system": UCUM, "code": "[in_i]"},
    }
    assert len(problems_in_extension(inch, thickness)) == 2
    assert problems_in_extension({**good, "extension": [good]}, thickness)
    series_uid = mii.url_of("series-uid")
    assert problems_in_extension({"url": series_uid, "valueId": "1.2.3"}, series_uid) == []
    assert problems_in_extension({"url": series_uid, "valueId": "1.2.3 "}, series_uid)
    assert problems_in_extension({"url": series_uid, "valueString": "1.2"}, series_uid)
    assert problems_in_extension(good, "http://example.org/none") != []


# --- Osiris ------------------------------------------------------------------------------


def test_osiris_page_is_parsed() -> None:
    osiris = load_osiris()
    assert osiris.version == "1.1.0"
    assert osiris.url.endswith("/StructureDefinition/onco-imagingstudy")
    for path in ("description", "numberOfSeries", "series.description", "series.uid"):
        assert osiris.elements[f"ImagingStudy.{path}"] == (1, "1"), path
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


OSIRIS_SAMPLE: dict[str, Any] = {"string": "5", "integer": 512, "decimal": 1.5}


def osiris_filled(s: OsirisSlice, *, optional: bool = True) -> dict[str, Any]:
    """``s`` with every sub-slice (or only the required ones) once."""
    if s.subs:
        parts = [osiris_filled(c, optional=optional) for c in s.subs.values() if optional or c.min]
        return {"url": s.url, "extension": parts}
    if "Reference" in s.types:
        return {"url": s.url, "valueReference": {"reference": "MedicationAdministration/1"}}
    return {"url": s.url, value_key(s.types[0]): OSIRIS_SAMPLE[s.types[0]]}


def test_complete_osiris_extensions_conform() -> None:
    tree = osiris_settings_tree()
    # series-weightheigt has no required slice: with none it would be empty, which ext-1 forbids
    for ext in (
        *map(osiris_filled, tree.values()),
        osiris_filled(tree["imaging-settings"], optional=False),
    ):
        assert problems_in_osiris_series_extension(ext) == []
        assert missing_osiris_slices(ext) == []


def settings() -> dict[str, Any]:
    return osiris_filled(osiris_settings_tree()["imaging-settings"])


def test_malformed_osiris_extensions_are_found() -> None:
    rows = settings()
    sub(rows, "rows")["valueInteger"] = "512"
    wrong_type = settings()
    sub(wrong_type, "rows")["valueString"] = sub(wrong_type, "rows").pop("valueInteger")
    unknown = settings()
    unknown["extension"].append({"url": "slice-thickness", "valueString": "5"})
    duplicate = settings()
    duplicate["extension"].append(sub(duplicate, "slice_thickness"))
    flat = settings()  # a leaf of mr_image put directly under imaging-settings
    flat["extension"].append(sub(sub(flat, "mr_image"), "flip_angle"))
    valued = settings()
    sub(valued, "mr_image")["valueString"] = "T2"
    nested = settings()
    sub(nested, "rows")["extension"] = [{"url": "x", "valueString": "y"}]
    for broken in (rows, wrong_type, unknown, duplicate, flat, valued, nested):
        assert problems_in_osiris_series_extension(broken), broken
    assert problems_in_osiris_series_extension({"url": "http://example.org/x"})


def test_missing_required_slices_are_reported_apart() -> None:
    mr = osiris_settings_tree()["imaging-settings"].sub("mr_image")
    ext = {
        "url": osiris_settings_tree()["imaging-settings"].url,
        "extension": [
            {"url": "slice_thickness", "valueString": "5"},
            {"url": "mr_image", "extension": [{"url": "flip_angle", "valueDecimal": 150}]},
        ],
    }
    assert problems_in_osiris_series_extension(ext) == []
    missing = missing_osiris_slices(ext)
    assert {"imaging-settings.pixel_spacing", "imaging-settings.rows"} <= set(missing)
    assert "imaging-settings.field_of_view" not in missing  # optional
    assert "imaging-settings.ct_image.kvp" not in missing  # under an absent ct_image
    assert "imaging-settings.mr_image.flip_angle" not in missing
    assert len([m for m in missing if ".mr_image." in m]) == len(mr.subs) - 1

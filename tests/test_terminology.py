"""The code tables shipped as data: Annex L body parts, laterality, modalities, schemes."""

from __future__ import annotations

import re
import tomllib
import warnings
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom._uid_dict import UID_dictionary
from pydicom.uid import UID

from tests.samples import corpus_files
from workers import terminology
from workers.dicomjson import is_oid
from workers.terminology import (
    RFC3986_SYSTEM as RFC3986,
)
from workers.terminology import (
    body_part_coding,
    code_system,
    coding,
    concept,
    laterality_coding,
    modality_coding,
    sop_class_coding,
)

ROOT = Path(__file__).resolve().parent.parent


def test_annex_l_table() -> None:
    table = terminology._body_parts()
    assert len(table) > 300
    for term, (code, meaning) in table.items():
        assert re.match(r"^[A-Z0-9]{1,16}$", term), term
        assert re.match(r"^[1-9][0-9]{5,17}$", code), (term, code)  # SNOMED CT concept id
        assert meaning.strip() == meaning and meaning
    assert body_part_coding("CHEST") == {
        "system": "http://snomed.info/sct",
        "code": "816094009",
        "display": "Chest",
    }
    assert body_part_coding("WHOLE BODY") == body_part_coding("WHOLEBODY")  # common variant
    assert body_part_coding("l_spine") == body_part_coding("LSPINE")
    assert body_part_coding("NOT A PART") is None


@pytest.mark.parametrize(
    ("dicom", "code"), [("R", "24028007"), ("L", "7771000"), ("B", "51440002"), ("U", None)]
)
def test_laterality(dicom: str, code: str | None) -> None:
    made = laterality_coding(dicom)
    assert (made["code"] if made else None) == code


def test_modality_codings() -> None:
    assert modality_coding("US") == {
        "system": "http://dicom.nema.org/resources/ontology/DCM",
        "code": "US",
        "display": "Ultrasound",
    }
    assert modality_coding("XYZ") == {
        "system": "http://dicom.nema.org/resources/ontology/DCM",
        "code": "XYZ",
    }  # a DCM defined term the table does not know: no display invented
    assert modality_coding("ct scan!") is None


def test_code_systems() -> None:
    assert code_system("SCT") == "http://snomed.info/sct"
    assert code_system("LN") == "http://loinc.org"
    assert code_system("SRT") == "urn:oid:2.16.840.1.113883.6.5"
    assert code_system("99LOCAL") is None
    assert code_system("99LOCAL", {"99LOCAL": "urn:oid:1.2.3"}) == "urn:oid:1.2.3"
    assert coding({"code": "X 1", "scheme": "99LOCAL", "meaning": "x"}) == {
        "code": "X 1",
        "display": "x",
    }
    assert coding({"code": " X", "scheme": "LN", "meaning": "x"}) is None


def test_sop_class_names_come_from_the_uid_dictionary() -> None:
    ct = sop_class_coding("1.2.840.10008.5.1.4.1.1.2")
    assert ct is not None and ct["display"] == "CT Image Storage"
    assert sop_class_coding("1.2.3.4.5") == {"system": RFC3986, "code": "urn:oid:1.2.3.4.5"}
    # A DICOM-looking UID that is no OID gets no urn:oid: code.
    assert sop_class_coding("999.999.2.19941105.112000") is None


def _sop_class_coding_uncached(uid: str) -> dict[str, str] | None:
    """The straightforward sop_class_coding (before its cache), to compare with."""
    if not is_oid(uid):
        return None
    out = {"system": RFC3986, "code": f"urn:oid:{uid}"}
    name = UID(uid).name
    if name and name != uid:
        out["display"] = name
    return out


def test_cached_sop_class_coding_equals_the_straightforward_one() -> None:
    # Every SOP class of pydicom's UID dictionary, the SOP Class UIDs the installed corpus
    # carries (pydicom's and pydicom-data's files) and UIDs that are no OID or no class.
    uids = {uid for uid, entry in UID_dictionary.items() if entry[1] == "SOP Class"}
    for path in corpus_files():
        try:
            with warnings.catch_warnings():  # the corpus holds damaged files on purpose
                warnings.simplefilter("ignore")
                ds = dcmread(path, specific_tags=["SOPClassUID"], force=True)
                value = ds.get("SOPClassUID")
        except Exception:  # not DICOM, or not readable: nothing to compare
            continue
        if isinstance(value, str):
            uids.add(str(value))
    corpus = len(uids)
    uids |= {"1.2.3.4.5", "999.999.2.19941105.112000", "", "1.2.840.10008.1.2", "x"}
    assert corpus > 100
    for uid in sorted(uids):
        first, again = sop_class_coding(uid), sop_class_coding(uid)
        assert first == again == _sop_class_coding_uncached(uid), uid
        # Each caller gets a dict of its own (a cached one would be shared).
        assert first is None or first is not again


@pytest.mark.parametrize(
    ("uid", "oid"),
    [
        ("1.2.840.10008.5.1.4.1.1.2", True),
        ("2.25.329800735698586629295641978511506172918", True),
        ("0.39.1", True),
        ("1.40.1", False),  # second arc above 39 under 1
        ("2.999.1", True),  # any second arc under 2
        ("3.1.2", False),  # first arc 0, 1 or 2 only
        ("999.999.2.19941105.112000", False),
        ("1", False),
        ("1.02.3", False),  # not even a UID
    ],
)
def test_what_is_an_oid(uid: str, oid: bool) -> None:
    assert is_oid(uid) is oid


def test_data_files_are_package_data() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = config["tool"]["setuptools"]["package-data"]["workers"]
    assert "data/*.csv" in patterns
    for name in (
        "annex_l_body_parts.csv",
        "laterality.csv",
        "dcm_modalities.csv",
    ):
        assert (ROOT / "workers" / "data" / name).is_file()


def test_snomed_rt_table() -> None:
    table = terminology._snomed_rt()
    assert len(table) > 7000
    for snomed_id, concept_id in table.items():
        assert re.match(r"^[A-Z][A-Z0-9]?-[0-9A-Z]{4,6}$", snomed_id), snomed_id
        assert re.match(r"^[1-9][0-9]{5,17}$", concept_id), (snomed_id, concept_id)
    # Brain, Chest, Heart (SNOMED CT concept ids as SNOMED International publishes them)
    assert [table[i] for i in ("T-A0100", "T-D3000", "T-32000")] == [
        "12738006",
        "51185008",
        "80891009",
    ]


def test_legacy_snomed_codings() -> None:
    brain = {"system": "http://snomed.info/sct", "code": "12738006", "display": "Brain"}
    for scheme in ("SRT", "SNM3", "99SDM"):
        assert coding({"code": "T-A0100", "scheme": scheme, "meaning": "Brain"}) == brain
    assert coding({"code": "T-NONE1", "scheme": "SRT", "meaning": "Brain"}) is None
    assert concept([{"code": "T-NONE1", "scheme": "SRT", "meaning": "Brain"}]) == {"text": "Brain"}

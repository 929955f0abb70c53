"""The realistic DICOM builders write readable, reproducible files with the intended tags
where the standard puts them (the header as the product reads it: scp.header.read_header)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydicom
import pytest

from scp.header import read_header
from tests import profile_datasets as pd

SOP_CLASSES = {
    "CT": "1.2.840.10008.5.1.4.1.1.2",
    "MR": "1.2.840.10008.5.1.4.1.1.4",
    "PT": "1.2.840.10008.5.1.4.1.1.128",
    "NM": "1.2.840.10008.5.1.4.1.1.20",
    "DX": "1.2.840.10008.5.1.4.1.1.1.1",
    "CR": "1.2.840.10008.5.1.4.1.1.1",
    "MG": "1.2.840.10008.5.1.4.1.1.1.2",
    "US": "1.2.840.10008.5.1.4.1.1.6.1",
}


def header(path: Path) -> dict[str, Any]:
    return read_header(path).json


def value(json: dict[str, Any], tag: str) -> Any:
    """The values of ``tag`` in a DICOM JSON dataset (None when absent)."""
    return json.get(tag, {}).get("Value")


def item(json: dict[str, Any], sequence: str) -> dict[str, Any]:
    items = value(json, sequence)
    assert items and len(items) == 1, sequence
    found: dict[str, Any] = items[0]
    return found


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return pd.study(tmp_path_factory.mktemp("study"))


def by_series(files: list[Path], number: int) -> list[dict[str, Any]]:
    return [header(p) for p in files if p.name.startswith(f"{number:02d}-")]


def test_study_is_readable_tiny_and_consistent(files: list[Path]) -> None:
    assert len(files) == 23
    sop_uids = set()
    for path in files:
        ds = pydicom.dcmread(path)
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds.SOPClassUID == SOP_CLASSES[ds.Modality] == ds.file_meta.MediaStorageSOPClassUID
        assert ds.pixel_array.shape[:2] == (pd.SIZE, pd.SIZE)
        assert path.stat().st_size < 4096
        json = header(path)
        assert value(json, "0020000D") == [pd.STUDY_UID]
        assert value(json, "00101030") == [72.5] and value(json, "00101020") == [1.78]
        for tag in ("00080020", "00080021", "00080031", "0008103E", "00200011", "00200013"):
            assert value(json, tag), (path.name, tag)
        sop_uids.add(ds.SOPInstanceUID)
    assert len(sop_uids) == len(files)


def test_builders_are_reproducible(files: list[Path], tmp_path: Path) -> None:
    again = pd.study(tmp_path)
    assert [p.name for p in again] == [p.name for p in files]
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(again, files, strict=True))


def test_ct(files: list[Path]) -> None:
    native, contrast = by_series(files, 2), by_series(files, 3)
    ct = native[0]
    assert value(ct, "00180060") == [120]  # KVP
    assert value(ct, "00189345") == [11.47]  # CTDIvol, FD
    assert value(ct, "00189311") == [0.984375]  # SpiralPitchFactor
    assert value(ct, "00181210") == ["B30f"]
    assert value(ct, "00280030") == [0.683594, 0.683594]
    assert value(ct, "00180015") == ["CHEST"]
    assert all("00180010" not in h for h in native)
    assert value(contrast[0], "00180010") == ["Omnipaque 350"]
    assert value(contrast[0], "00181210") == ["FC08", "AXIAL"]


def test_heterogeneous_ct_differs_between_instances(files: list[Path], tmp_path: Path) -> None:
    series = by_series(files, 11)
    assert value(series[0], "00080008") == ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    assert {value(h, "00180050")[0] for h in series} == {0.6, 1.25, 5.0}
    assert len({tuple(value(h, "00280030")) for h in series}) == 3
    assert len({value(h, "00181151")[0] for h in series}) == len(series)
    plain = [header(p) for p in pd.ct_series(tmp_path)]  # the default, for contrast
    assert len({(value(h, "00180050")[0], value(h, "00181151")[0]) for h in plain}) == 1


def test_mr(files: list[Path], tmp_path: Path) -> None:
    mr = by_series(files, 4)[0]
    assert "00181314" in mr and value(mr, "00181314") == [150]  # FlipAngle
    assert value(mr, "00180087") == [1.5]
    assert value(mr, "00180020") == ["SE", "IR"]
    assert value(mr, "00180021") == ["SK", "SP", "MP"]
    assert value(mr, "00180024") == ["*tir2d1_15"]
    assert value(mr, "00180084") == [63.676]
    assert value(mr, "00181250") == ["HeadNeck_20"]
    mixed = [header(p) for p in pd.mr_series(tmp_path, heterogeneous=True)]
    assert len({value(h, "00180050")[0] for h in mixed}) == 2
    assert len({tuple(value(h, "00280030")) for h in mixed}) == 2


def test_pet_dose_sits_in_the_radiopharmaceutical_sequence(files: list[Path]) -> None:
    pt = by_series(files, 5)[0]
    assert "00181074" not in pt
    drug = item(pt, "00540016")
    assert value(drug, "00181074") == [3.7e8]  # Bq
    assert value(drug, "00181075") == [6586.2]
    assert value(item(drug, "00540300"), "00080100") == ["77004003"]
    assert value(item(drug, "00540304"), "00080100") == ["35321007"]
    assert value(pt, "00541001") == ["BQML"]
    assert value(pt, "00541000") == ["WHOLE BODY", "IMAGE"]
    assert value(pt, "00280051") == ["DECY", "ATTN", "SCAT"]
    assert value(pt, "00541101") == ["measured,AC CT"]


def test_nm(files: list[Path]) -> None:
    nm = by_series(files, 6)[0]
    assert value(item(nm, "00540016"), "00181074") == [740]  # MBq
    assert value(nm, "00080008") == ["ORIGINAL", "PRIMARY", "STATIC", "EMISSION"]


def test_projection_radiography(files: list[Path]) -> None:
    dx, cr = by_series(files, 7)[0], by_series(files, 8)[0]
    cc, mlo = by_series(files, 9)
    assert (value(dx, "00185101"), value(cr, "00185101")) == (["PA"], ["AP"])
    for json in (dx, cr, cc):
        assert json["00181152"]["vr"] == json["00181150"]["vr"] == "IS"  # mAs, ms
        assert value(json, "00181151")
    assert value(cc, "00200062") == ["L"]
    assert value(cc, "00200020") == ["A", "R"]
    assert value(mlo, "00185101") == ["MLO"]
    assert value(item(mlo, "00540220"), "00080100") == ["399368009"]
    assert value(dx, "00187004") == ["SCINTILLATOR"]


def test_ultrasound(files: list[Path]) -> None:
    us = by_series(files, 10)[0]
    region = item(us, "00186011")
    assert value(region, "00186030") == [5000]  # kHz
    assert value(region, "00186032") == [4000]  # Hz
    assert value(us, "00280014") == [1]
    assert value(us, "00186031") == ["CURVED LINEAR"]
    assert value(us, "00080008") == ["ORIGINAL", "PRIMARY", "ABDOMINAL", "0011"]

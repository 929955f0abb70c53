"""Header extraction: real files in, DICOM JSON without bulk or private data out."""

from __future__ import annotations

from pydicom.data import get_charset_files

from scp.header import extract_header, read_dataset
from tests.golden import assert_golden
from tests.support import sample_file


def test_ct_header_golden() -> None:
    header = extract_header(read_dataset(sample_file("CT_small.dcm")))
    assert header.skipped == []
    assert "7FE00010" not in header.json
    assert_golden("header_CT_small.json", header.json)


def test_no_pixel_private_or_bulk_data_is_kept() -> None:
    for name in (
        "MR_small.dcm",
        "SC_rgb_jpeg_dcmtk.dcm",
        "JPEG2000.dcm",
        "MR_small_RLE.dcm",
        "image_dfl.dcm",
        "emri_small_jpeg_2k_lossless.dcm",
        "waveform_ecg.dcm",
    ):
        header = extract_header(read_dataset(sample_file(name))).json
        for key, element in header.items():
            assert int(key[:4], 16) % 2 == 0, f"{name}: private element {key} kept"
            assert key not in ("7FE00010", "54001010"), f"{name}: bulk element {key} kept"
            assert len(element.get("InlineBinary", "")) <= 1400, f"{name}: {key} is bulk"
        assert "0020000D" in header, f"{name}: Study Instance UID lost"


def test_sequences_are_kept_as_dicom_json() -> None:
    header = extract_header(read_dataset(sample_file("waveform_ecg.dcm"))).json
    sequences = [e for e in header.values() if e["vr"] == "SQ"]
    assert sequences, "the ECG has sequences"
    assert all(isinstance(item, dict) for e in sequences for item in e.get("Value", []))


def test_character_sets_decode_to_unicode() -> None:
    header = extract_header(read_dataset(get_charset_files("chrH31.dcm")[0])).json
    name = header["00100010"]["Value"][0]
    assert name["Ideographic"] == "山田^太郎"
    header = extract_header(read_dataset(get_charset_files("chrRuss.dcm")[0])).json
    assert header["00100010"]["Value"][0]["Alphabetic"] == "Люкceмбypг"

"""The one private element the SCP keeps (ELSCINT1 Image Label, for Osiris), and only it:
both header encoders agree, the creator decides, the value is bounded; the Osiris series
description follows the guide's order of sources."""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ImplicitVRLittleEndian

from scp.header import extract_header, read_dataset, read_header
from tests.samples import aggregate, dataset, header_of, summary_of
from workers.mapping import MappingOptions, imaging_study
from workers.profiles import Gaps
from workers.summary import summarize

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def with_private(ds: Dataset, blocks: dict[int, tuple[str, str]]) -> Dataset:
    """``ds`` with private blocks in group 00E1: block -> (creator, value at xx40)."""
    for block, (creator, value) in blocks.items():
        ds.add_new(0x00E10000 | block, "LO", creator)
        ds.add_new(0x00E10000 | block << 8 | 0x40, "SH", value)
        ds.add_new(0x00E10000 | block << 8 | 0x41, "LO", "not kept")
    return ds


def headers(ds: Dataset, tmp_path: Path, implicit: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """(fast path, pydicom path) headers of ``ds`` written as a Part 10 file."""
    path = tmp_path / "private.dcm"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if implicit:
            ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        ds.save_as(path, enforce_file_format=True, implicit_vr=implicit, little_endian=True)
        return read_header(path).json, extract_header(read_dataset(path)).json


@pytest.mark.parametrize("implicit", [False, True])
def test_only_the_elscint1_image_label_is_kept_by_both_encoders(
    tmp_path: Path, implicit: bool
) -> None:
    ds = with_private(
        dataset("MR_small.dcm"),
        {0x10: ("PHILIPS MR IMAGING DD 001", "other creator"), 0x11: ("ELSCINT1", "sFRAME 3")},
    )
    fast, slow = headers(ds, tmp_path, implicit)
    assert fast == slow
    kept = {k: v for k, v in fast.items() if k.startswith("00E1")}
    assert kept == {
        "00E10011": {"vr": "LO", "Value": ["ELSCINT1"]},
        "00E11140": {"vr": "SH", "Value": ["sFRAME 3"]},
    }
    assert not any(k.startswith(("0009", "0019", "0029")) for k in fast)  # other private


def test_a_long_private_value_is_not_kept(tmp_path: Path) -> None:
    ds = with_private(dataset("MR_small.dcm"), {0x10: ("ELSCINT1", "x" * 65)})
    fast, slow = headers(ds, tmp_path, implicit=False)
    assert fast == slow and "00E11040" not in fast and "00E10010" in fast


def osiris_descriptions(*datasets: Dataset) -> list[str | None]:
    # (summaries for a profile, as a worker with SCP2FHIR_PROFILE=osiris makes them)
    study = aggregate(*(summarize(header_of(ds), with_technique=True) for ds in datasets))
    gaps = Gaps()
    resource = imaging_study(study, "R4", options=MappingOptions(profile="osiris"), gaps=gaps)
    return [series.get("description") for series in resource["series"]]


def test_osiris_series_description_follows_the_guide() -> None:
    def series(number: int, blocks: dict[int, tuple[str, str]], description: str | None) -> Any:
        ds = with_private(dataset("MR_small.dcm"), blocks)
        ds.SeriesInstanceUID = f"{ds.SeriesInstanceUID}.{number}"
        ds.SOPInstanceUID = f"{ds.SOPInstanceUID}.{number}"
        ds.SeriesNumber = number
        ds.StudyDescription = "MR Breast"
        if description is None:
            ds.pop("SeriesDescription", None)
        else:
            ds.SeriesDescription = description
        return ds

    assert osiris_descriptions(
        series(1, {0x10: ("ELSCINT1", "sFRAME 3")}, "T1 axial"),  # the private label first
        series(2, {0x10: ("SOMEONE ELSE", "sFRAME 3")}, "T1 axial"),  # not its creator
        series(3, {}, None),  # neither: the study's description
    ) == ["sFRAME 3", "T1 axial", "MR Breast"]
    # The base mapping ignores the private label.
    study = aggregate(summary_of(series(1, {0x10: ("ELSCINT1", "sFRAME 3")}, "T1 axial")))
    assert imaging_study(study, "R4")["series"][0]["description"] == "T1 axial"


def test_the_label_survives_the_pipeline_header_json() -> None:
    # What the SCP stores is what the worker summarizes: the label comes through.
    ds = with_private(dataset("MR_small.dcm"), {0x12: ("ELSCINT1", "sFRAME 3")})
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(buffer, enforce_file_format=True)
    header = extract_header(read_dataset(io.BytesIO(buffer.getvalue()))).json
    summary = summarize(header, with_technique=True)
    assert summary.series["image_label"] == "sFRAME 3"
    assert "image_label" not in summarize(header).series  # only a profile reads it

"""`scp2fhir convert` with mapping options: Bundles out, bad values logged by tag."""

from __future__ import annotations

import io
import json
import logging
import warnings
from pathlib import Path

import pytest
from fhir.resources import get_fhir_model_class
from pydicom import dcmread

from scp import cli
from tests.samples import enriched_ct, enriched_mr_knee
from tests.support import sample_file
from workers.convert import NotDicom, convert, read_file
from workers.mapping import MappingOptions


def write(tmp_path: Path) -> list[Path]:
    ct, mr = enriched_ct(), enriched_mr_knee()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ct.StudyDate = "20231340"  # a bad value in a real file
        paths = [tmp_path / "ct.dcm", tmp_path / "mr.dcm"]
        ct.save_as(paths[0], enforce_file_format=True)
        mr.save_as(paths[1], enforce_file_format=True)
    return paths


def test_convert_writes_bundles_and_logs_bad_values_by_tag(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    paths = write(tmp_path)
    out = io.StringIO()
    options = MappingOptions(wado_rs_base_url="https://pacs.example.org/wado", bundle=True)
    with caplog.at_level(logging.WARNING, logger="workers.convert"):
        studies, unreadable = convert(paths, "R5", out, options)
    assert (studies, unreadable) == (1, 0)
    (line,) = out.getvalue().splitlines()
    bundle = json.loads(line)
    get_fhir_model_class("Bundle").model_validate(bundle)
    types = [e["resource"]["resourceType"] for e in bundle["entry"]]
    # The CT's Study Date is bad, the MR's good: the study is dated by the MR (attribute
    # consensus), so the CT's Patient's Weight becomes a body weight Observation too.
    assert types == ["Patient", "Endpoint", "Device", "Device", "ImagingStudy", "Observation"]
    messages = [r.getMessage() for r in caplog.records if r.name == "workers.convert"]
    assert any("00080020 StudyDate" in m for m in messages), messages
    assert not any("MRN-0042" in m or "Doe" in m for m in messages)


def test_convert_without_options_writes_the_imaging_study(tmp_path: Path) -> None:
    out = io.StringIO()
    convert(write(tmp_path), "R4", out)
    resource = json.loads(out.getvalue())
    assert resource["resourceType"] == "ImagingStudy" and resource["numberOfSeries"] == 2


def test_files_without_a_part10_header_are_read_when_they_identify_themselves(
    tmp_path: Path,
) -> None:
    # pydicom's rtstruct.dcm is a real RT Structure Set written without preamble or file
    # meta; the no_meta.dcm beside it is a bare dataset with no identity: not an instance.
    rtstruct = Path(sample_file("rtstruct.dcm"))
    assert rtstruct.read_bytes()[128:132] != b"DICM"
    text = tmp_path / "notes.txt"
    text.write_text("Study 1.2.3: see the report\n", encoding="utf-8")
    out = io.StringIO()
    studies, unreadable = convert([rtstruct, Path(sample_file("no_meta.dcm")), text], "R4", out)
    assert (studies, unreadable) == (1, 2)
    study = json.loads(out.getvalue())
    assert study["modality"] == [
        {
            "system": "http://dicom.nema.org/resources/ontology/DCM",
            "code": "RTSTRUCT",
            "display": "RT Structure Set",
        }
    ]
    assert study["series"][0]["instance"][0]["sopClass"]["display"] == ("RT Structure Set Storage")


def test_read_file_refuses_what_does_not_identify_itself(tmp_path: Path) -> None:
    path = tmp_path / "bare.dcm"
    ds = enriched_ct()
    del ds.SOPClassUID
    del ds.file_meta
    ds.preamble = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(path, enforce_file_format=False, implicit_vr=True, little_endian=True)
    assert read_file_without_class(path)
    with pytest.raises(NotDicom):
        read_file(path)


def read_file_without_class(path: Path) -> bool:
    """The bare dataset is otherwise readable: only its missing SOP Class refuses it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = dcmread(path, force=True)
    return "SOPInstanceUID" in ds and "SOPClassUID" not in ds


def test_the_site_time_zone_setting_reaches_convert(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    ds = enriched_ct()
    del ds.TimezoneOffsetFromUTC
    path = tmp_path / "ct.dcm"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(path, enforce_file_format=True)
    assert cli.main(["convert", str(path)]) == 0
    assert json.loads(capsys.readouterr().out)["started"] == "2004-01-19"
    monkeypatch.setenv("SCP2FHIR_SITE_TIMEZONE", "Europe/Paris")
    assert cli.main(["convert", str(path)]) == 0
    assert json.loads(capsys.readouterr().out)["started"] == "2004-01-19T07:27:30+01:00"
    monkeypatch.setenv("SCP2FHIR_SITE_TIMEZONE", "Paris")
    assert cli.main(["convert", str(path)]) == 2
    assert "SCP2FHIR_SITE_TIMEZONE" in capsys.readouterr().err

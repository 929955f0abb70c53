"""`scp2fhir convert` with mapping options: Bundles out, bad values logged by tag."""

from __future__ import annotations

import io
import json
import logging
import warnings
from pathlib import Path

import pytest
from fhir.resources import get_fhir_model_class

from tests.samples import enriched_ct, enriched_mr_knee
from workers.convert import convert
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
    assert types == ["Patient", "Endpoint", "Device", "Device", "ImagingStudy"]
    messages = [r.getMessage() for r in caplog.records if r.name == "workers.convert"]
    assert any("00080020 StudyDate" in m for m in messages), messages
    assert not any("MRN-0042" in m or "Doe" in m for m in messages)


def test_convert_without_options_writes_the_imaging_study(tmp_path: Path) -> None:
    out = io.StringIO()
    convert(write(tmp_path), "R4", out)
    resource = json.loads(out.getvalue())
    assert resource["resourceType"] == "ImagingStudy" and resource["numberOfSeries"] == 2

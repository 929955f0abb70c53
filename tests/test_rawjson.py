"""The fast header encoder equals the pydicom one wherever it applies, and gives way
to pydicom everywhere else."""

from __future__ import annotations

import glob
import os
from pathlib import Path

import data_store  # the pydicom-data wheel
import pytest
from pydicom.data import get_charset_files, get_testdata_files

from scp.header import extract_header, read_dataset, read_header
from scp.rawjson import Unsupported, part10_to_json
from tests.support import make_study, sample_file

DATA_STORE = Path(os.path.dirname(data_store.__file__)) / "data"
CORPUS = sorted(
    set(get_testdata_files("*"))
    | set(get_charset_files("*"))
    | set(glob.glob(str(DATA_STORE / "*.dcm")))
)


def pydicom_header(path: str) -> dict[str, object] | None:
    try:
        return extract_header(read_dataset(path)).json
    except Exception:
        return None  # not something pydicom reads either


def test_fast_path_equals_pydicom_over_the_corpus() -> None:
    fast_count = 0
    for path in CORPUS:
        expected = pydicom_header(path)
        if expected is None:
            continue
        try:
            _, fast = part10_to_json(Path(path).read_bytes())
        except Unsupported:
            continue
        assert fast == expected, path
        fast_count += 1
    # Most real files take the fast path (big endian and ISO 2022 ones do not).
    assert fast_count >= 100, fast_count


def test_read_header_falls_back_to_pydicom() -> None:
    for name in ("chrJapMulti.dcm", "chrGreek.dcm"):  # character sets the fast path leaves
        path = get_charset_files(name)[0]
        with pytest.raises(Unsupported):
            part10_to_json(Path(path).read_bytes())
        assert read_header(path).json == pydicom_header(path)
    big_endian = sample_file("MR_small_bigendian.dcm")
    assert read_header(big_endian).json == pydicom_header(big_endian)


def test_generated_study_takes_the_fast_path(tmp_path: Path) -> None:
    study = make_study(tmp_path, [("CT", 2), ("MR", 2)])
    for path in study.files:
        _, fast = part10_to_json(path.read_bytes())
        assert fast == pydicom_header(str(path))


@pytest.mark.parametrize("cut", [133, 200, 1000, 5000])
def test_truncated_files_never_crash(tmp_path: Path, cut: int) -> None:
    data = Path(sample_file("CT_small.dcm")).read_bytes()[:cut]
    path = tmp_path / "truncated.dcm"
    path.write_bytes(data)
    try:
        read_header(path)
    except Exception as exc:  # pydicom may refuse it: that is a clean, catchable refusal
        assert not isinstance(exc, BufferError)

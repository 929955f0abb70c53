"""The fast header encoder equals the pydicom one wherever it applies, and gives way
to pydicom everywhere else."""

from __future__ import annotations

from pathlib import Path

import pytest

from scp.header import Header, Unreadable, extract_header, read_dataset, read_header
from scp.rawjson import Unsupported, part10_to_json
from tests.support import installed_charset_file, installed_dicom_files, make_study, sample_file

#: pydicom's and pydicom-data's files as installed: pydicom's own get_testdata_files()
#: would try to download the ones pydicom-data lists but does not ship.
CORPUS = installed_dicom_files()


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
        path = installed_charset_file(name)
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


def test_the_corpus_is_the_installed_files() -> None:
    # pydicom's test files, its character set files and pydicom-data's wheel, all present.
    names = {Path(path).name for path in CORPUS}
    assert {"CT_small.dcm", "chrH31.dcm", "emri_small_jpeg_2k_lossless.dcm"} <= names
    assert all(Path(path).is_file() for path in CORPUS)


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns about cut values
@pytest.mark.parametrize(
    "name", ["CT_small.dcm", "MR_small_bigendian.dcm", "JPEG2000.dcm", "image_dfl.dcm"]
)
def test_truncated_files_are_read_or_refused_as_unreadable(tmp_path: Path, name: str) -> None:
    """Every cut of the first 4 KB (little and big endian, encapsulated, deflated) gives a
    header or the one documented refusal, :class:`Unreadable`; nothing else escapes."""
    data = Path(sample_file(name)).read_bytes()
    path = tmp_path / "truncated.dcm"
    outcomes = {"read": 0, "refused": 0}
    for cut in range(0, min(len(data), 4096), 5):
        path.write_bytes(data[:cut])
        try:
            header = read_header(path)
        except Unreadable:
            outcomes["refused"] += 1
            continue
        assert isinstance(header, Header)
        outcomes["read"] += 1
    assert outcomes["read"] and outcomes["refused"], outcomes

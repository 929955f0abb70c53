"""Fuzzing (hypothesis) of header extraction and of summary, fold and mapping.

* Real datasets, encoded, then mutated byte-wise where it hurts (element lengths, VRs,
  values, truncation, insertions): the fast encoder (scp/rawjson.py) raises nothing but
  ``Unsupported``, agrees with pydicom's path (scp/header.py) wherever it accepts, and the
  SCP's two spool modes (file, memory) extract the same header.
* Real headers mutated as DICOM JSON (any value of any VR in the elements the workers
  read, removed elements, garbage items): ``summarize`` raises nothing but
  ``NotAnInstance``, and ``fold`` + ``imaging_study`` always give an ImagingStudy that
  fhir.resources validates (R4B for R4, R5 for R5).
"""

from __future__ import annotations

import base64
import functools
import io
import json
import os
import re
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.imagingstudy import ImagingStudy as ImagingStudyR5
from fhir.resources.R4B.imagingstudy import ImagingStudy as ImagingStudyR4B
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom import dcmread
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO

import workers.dicomjson
import workers.mapping
import workers.summary
from scp.header import extract_header, read_dataset, read_dataset_bytes, read_header
from scp.rawjson import Unsupported, part10_to_json
from tests.samples import enriched_ct, enriched_mr_knee
from tests.support import r4b_model_validate, sample_file
from workers.fold import StudyAggregate, fold
from workers.mapping import MappingOptions, imaging_study
from workers.summary import InstanceSummary, NotAnInstance, summarize

FUZZ = settings(
    max_examples=int(os.environ.get("SCP2FHIR_FUZZ_EXAMPLES", "250")),
    deadline=None,
    database=None,  # nothing written into the work tree; a failure prints its example
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _encoded(ds: Dataset) -> bytes:
    buffer = DicomBytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _seed_datasets() -> list[Dataset]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = [dcmread(sample_file(name)) for name in ("CT_small.dcm", "MR_small.dcm")]
        implicit = dcmread(sample_file("rtplan.dcm"))  # implicit VR, nested sequences
    return [*plain, implicit, enriched_ct(), enriched_mr_knee()]


class Seed:
    """A seed file and where its elements are: mutations aim at headers and lengths."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        meta = dcmread(io.BytesIO(data), stop_before_pixels=True)
        self.syntax = str(meta.file_meta.TransferSyntaxUID)
        self.implicit = meta.file_meta.TransferSyntaxUID.is_implicit_VR
        #: offset of the first byte after the file meta
        self.body_start = data.index(b"DICM") + 4 + _meta_length(data)
        #: (header offset, value offset) of each top-level element
        self.elements: list[tuple[int, int]] = []
        for tag in list(meta.keys()):
            raw: Any = meta.get_item(tag, keep_deferred=True)
            if isinstance(raw, RawDataElement) and raw.value_tell > self.body_start:
                long = not self.implicit and raw.VR in LONG_VRS
                self.elements.append((raw.value_tell - (12 if long else 8), raw.value_tell))


def _meta_length(data: bytes) -> int:
    # (0002,0000) File Meta Information Group Length is the first meta element.
    start = data.index(b"DICM") + 4
    return 12 + int.from_bytes(data[start + 8 : start + 12], "little")


LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"})
SEEDS = [Seed(_encoded(ds)) for ds in _seed_datasets()]
INTERESTING_LENGTHS = [0, 1, 2, 3, 7, 0xFF, 0xFFFF, 0x10000, 0x7FFFFFFF, 0xFFFFFFFE, 0xFFFFFFFF]
VRS = [
    "AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO", "LT", "OB", "OD", "OF",
    "OL", "OV", "OW", "PN", "SH", "SL", "SQ", "SS", "ST", "SV", "TM", "UC", "UI", "UL", "UN",
    "UR", "US", "UT", "UV",
]  # fmt: skip


class Mutated:
    """A mutated seed file, shown as its recipe (a failing example's bytes are ~100 kB)."""

    def __init__(self, seed: int, recipe: tuple[tuple[str, int, bytes], ...], data: bytes) -> None:
        self.seed = seed
        self.recipe = recipe
        self.data = data

    def __repr__(self) -> str:
        return f"Mutated(seed={self.seed}, recipe={self.recipe!r})"


@st.composite
def mutated_files(draw: st.DrawFn) -> Mutated:
    """A seed file with 1-4 mutations of its dataset (the file meta stays intact: the SCP
    writes that part itself)."""
    index = draw(st.integers(0, len(SEEDS) - 1))
    seed = SEEDS[index]
    data = bytearray(seed.data)
    recipe: list[tuple[str, int, bytes]] = []
    for _ in range(draw(st.integers(1, 4))):
        if len(data) <= seed.body_start + 1:
            break
        kind = draw(
            st.sampled_from(["length", "vr", "value", "truncate", "insert", "delete", "byte"])
        )
        if kind == "vr" and seed.implicit:
            kind = "byte"  # an implicit VR dataset has no VR to change
        anywhere = draw(st.integers(seed.body_start, len(data) - 1))
        header, value = draw(st.sampled_from(seed.elements))
        if header + 12 > len(data):
            header, value = anywhere, anywhere
        if kind == "length":
            length = draw(st.sampled_from(INTERESTING_LENGTHS) | st.integers(0, 2**32 - 1))
            if seed.implicit or value - header == 12:
                at, payload = value - 4, length.to_bytes(4, "little")
            else:
                at, payload = value - 2, (length & 0xFFFF).to_bytes(2, "little")
            data[at : at + len(payload)] = payload
        elif kind == "vr":
            at = header + 4
            payload = draw(st.sampled_from(VRS).map(str.encode) | st.binary(min_size=2, max_size=2))
            data[at : at + 2] = payload
        elif kind == "value":
            size = draw(st.integers(1, 16))
            at, payload = value, draw(st.binary(min_size=size, max_size=size))
            data[at : at + size] = payload
        elif kind == "truncate":
            at, payload = anywhere, b""
            del data[at:]
        elif kind == "insert":
            at = draw(st.sampled_from([anywhere, header]))
            payload = draw(st.binary(min_size=1, max_size=24))
            data[at:at] = payload
        elif kind == "delete":
            at, size = anywhere, draw(st.integers(1, 24))
            payload = bytes(size)
            del data[at : at + size]
        else:
            at, payload = anywhere, bytes([draw(st.integers(0, 255))])
            data[at] = payload[0]
        recipe.append((kind, at, payload))
    return Mutated(index, tuple(recipe), bytes(data))


_SCRATCH = Path(tempfile.mkdtemp(prefix="scp2fhir-fuzz-"))


def _as_file(data: bytes) -> Path:
    path = _SCRATCH / "mutated.dcm"
    path.write_bytes(data)
    return path


def _outcome(read: Callable[[], Any]) -> Any:
    """What a header read gives: the header, or the kind of refusal (the SCP answers
    0xC210 to any exception; what matters is that both spool modes agree)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            header = read()
    except Exception as exc:
        assert not isinstance(exc, BufferError), "the spool file's mapping was left exported"
        return type(exc).__name__
    return header.json, header.skipped


@FUZZ
@given(mutated_files())
def test_fast_path_raises_only_unsupported_and_agrees_with_pydicom(mutated: Mutated) -> None:
    data = mutated.data
    try:
        _, fast = part10_to_json(data)
    except Unsupported:
        return  # pydicom's path decides
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        slow = extract_header(read_dataset(io.BytesIO(data)))
    assert slow.skipped == []
    assert fast == slow.json


@FUZZ
@given(mutated_files())
def test_both_spool_modes_extract_the_same_header(mutated: Mutated) -> None:
    data = mutated.data
    seed_meta = dcmread(io.BytesIO(data[: data.index(b"DICM") + 4 + _meta_length(data)]))
    syntax = str(seed_meta.file_meta.TransferSyntaxUID)
    body = data[data.index(b"DICM") + 4 + _meta_length(data) :]
    from_file = _outcome(lambda: read_header(_as_file(data)))
    in_memory = _outcome(lambda: read_dataset_bytes(body, syntax, lambda: data))
    assert from_file == in_memory
    if isinstance(from_file, tuple):
        json.dumps(from_file[0])  # what the SCP pushes must serialize


# --- summary, fold and mapping ---------------------------------------------------------------


def _tags_read_by_workers() -> list[str]:
    """DICOM JSON keys of every keyword the worker modules name (kept current by reading
    their source: a new field is fuzzed as soon as it is mapped)."""
    sources = [Path(workers.summary.__file__), Path(workers.dicomjson.__file__)]
    sources += sorted(Path(workers.mapping.__file__).parent.glob("*.py"))
    words = set(re.findall(r"\"([A-Z][A-Za-z0-9]+)\"", "".join(p.read_text() for p in sources)))
    tags = {tag_for_keyword(word) for word in words}
    return sorted(f"{tag:08X}" for tag in tags if tag is not None)


WORKER_TAGS = _tags_read_by_workers()
TEXT_VRS = ["AE", "AS", "CS", "DA", "DT", "LO", "LT", "SH", "ST", "TM", "UC", "UI", "UR", "UT"]
SEED_HEADERS = [read_header(_as_file(seed.data)).json for seed in SEEDS]

_text = st.text(max_size=40) | st.sampled_from(
    ["", " ", "20231340", "1.2.3", "1..2", "^^^^", "R", "L", "ISO", "SCT", "\x00", "-0500"]
)


def _value(vr: str, depth: int) -> st.SearchStrategy[dict[str, Any]]:
    """A DICOM JSON element of ``vr`` as the SCP's encoders could make it."""
    if vr == "SQ":
        if depth >= 2:
            return st.just({"vr": "SQ"})
        items = st.lists(_dataset(depth + 1), max_size=3)
        return items.map(lambda values: {"vr": "SQ", "Value": values} if values else {"vr": "SQ"})
    if vr == "PN":
        groups = st.dictionaries(
            st.sampled_from(["Alphabetic", "Ideographic", "Phonetic"]), _text, min_size=1
        )
        values: st.SearchStrategy[Any] = st.lists(groups | st.none(), min_size=1, max_size=3)
    elif vr in ("IS", "SS", "US", "SL", "UL", "SV", "UV"):
        values = st.lists(st.integers(-(2**63), 2**64) | st.none(), min_size=1, max_size=3)
    elif vr in ("DS", "FL", "FD"):
        number = st.floats(allow_nan=vr != "DS", allow_infinity=vr != "DS") | st.integers()
        values = st.lists(number | st.none(), min_size=1, max_size=3)
    elif vr == "AT":
        values = st.lists(st.from_regex(r"\A[0-9A-F]{8}\Z"), min_size=1, max_size=2)
    elif vr in ("OB", "OW", "UN"):
        return st.binary(max_size=16).map(
            lambda raw: {"vr": vr, "InlineBinary": base64.b64encode(raw).decode()}
        )
    else:
        values = st.lists(_text, min_size=1, max_size=3)
    return values.map(lambda v: {"vr": vr, "Value": v}) | st.just({"vr": vr})


def _element(depth: int) -> st.SearchStrategy[dict[str, Any]]:
    return st.sampled_from([*TEXT_VRS, "PN", "IS", "DS", "US", "FD", "AT", "SQ", "OB"]).flatmap(
        lambda vr: _value(vr, depth)
    )


def _dataset(depth: int) -> st.SearchStrategy[dict[str, Any]]:
    return st.dictionaries(st.sampled_from(WORKER_TAGS), _element(depth), max_size=6)


_IDENTITY = ("0020000D", "0020000E", "00080018", "00080016")


@st.composite
def mutated_headers(draw: st.DrawFn, study_uid: str) -> dict[str, Any]:
    """A real header of study ``study_uid`` with elements the workers read replaced by
    anything, removed, or added; its UIDs mostly intact, so most are instances."""
    header: dict[str, Any] = json.loads(json.dumps(draw(st.sampled_from(SEED_HEADERS))))
    header["0020000D"] = {"vr": "UI", "Value": [study_uid]}
    header["00080018"] = {"vr": "UI", "Value": [f"1.2.3.{draw(st.integers(1, 10**6))}"]}
    header["0020000E"] = {"vr": "UI", "Value": [f"1.2.4.{draw(st.integers(1, 3))}"]}
    for _ in range(draw(st.integers(1, 12))):
        tag = draw(st.sampled_from(WORKER_TAGS))
        if tag in _IDENTITY and draw(st.integers(0, 9)):
            continue  # identity is broken now and then, not in every example
        if draw(st.booleans()):
            header.pop(tag, None)
        else:
            header[tag] = draw(_element(0))
    return header


def _summaries(headers: list[dict[str, Any]]) -> Iterator[InstanceSummary]:
    for header in headers:
        try:
            # with the technique the profiles read, so they are fuzzed too
            yield summarize(header, with_technique=True)
        except NotAnInstance:
            continue  # the dead-letter path: an instance without identity


@FUZZ
@given(st.lists(mutated_headers("1.2.826.0.1.3680043.8.498.99"), min_size=1, max_size=5))
def test_summary_fold_and_mapping_never_fail(headers: list[dict[str, Any]]) -> None:
    by_study: dict[str, list[InstanceSummary]] = {}
    for summary in _summaries(headers):
        by_study.setdefault(summary.study_uid, []).append(summary)
    for study_uid, summaries in by_study.items():
        aggregate = fold(StudyAggregate(study_uid), summaries)
        r4 = imaging_study(aggregate, "R4")
        ImagingStudyR4B.model_validate(r4)
        assert r4["numberOfInstances"] == len({s.sop_uid for s in summaries})
        ImagingStudyR5.model_validate(imaging_study(aggregate, "R5"))
        for profile in ("mii", "osiris", "qicore"):
            options = MappingOptions(profile=profile)
            r4b_model_validate(imaging_study(aggregate, "R4", options=options))


@FUZZ
@given(st.lists(mutated_files(), min_size=1, max_size=3))
def test_whatever_the_scp_stores_maps_to_a_valid_resource(files: list[Mutated]) -> None:
    headers = []
    for mutated in files:
        outcome = _outcome(functools.partial(read_header, _as_file(mutated.data)))
        if isinstance(outcome, tuple):
            headers.append(outcome[0])
    by_study: dict[str, list[InstanceSummary]] = {}
    for summary in _summaries(headers):
        by_study.setdefault(summary.study_uid, []).append(summary)
    for study_uid, summaries in by_study.items():
        ImagingStudyR4B.model_validate(
            imaging_study(fold(StudyAggregate(study_uid), summaries), "R4")
        )


@pytest.mark.parametrize("seed", range(len(SEEDS)))
def test_seeds_take_the_fast_path_where_expected(seed: int) -> None:
    # The fuzzing above is only worth as much as its seeds: most must be fast-path files,
    # and the fast path must agree with pydicom on them unmutated.
    data = SEEDS[seed].data
    try:
        _, fast = part10_to_json(data)
    except Unsupported:
        assert SEEDS[seed].implicit or seed >= 2, "a plain seed left the fast path"
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert fast == extract_header(read_dataset(io.BytesIO(data))).json


# --- what the fuzzing found, kept as plain regression tests ----------------------------------


def _agreement(
    body: bytes, syntax: str = "1.2.840.10008.1.2.1", with_pydicom: bool = True
) -> dict[str, Any]:
    """Both spool modes (and both encoders) on ``body``: they must say the same."""
    from tests.faults import write_part10

    path = write_part10(_SCRATCH / "case.dcm", body, "1.2.840.10008.5.1.4.1.1.2", "1.2.3", syntax)
    data = path.read_bytes()
    from_file = _outcome(functools.partial(read_header, path))
    in_memory = _outcome(functools.partial(read_dataset_bytes, body, syntax, lambda: data))
    assert from_file == in_memory
    assert isinstance(from_file, tuple)
    try:
        _, fast = part10_to_json(data)
    except Unsupported:
        return dict(from_file[0])
    if not with_pydicom:
        return fast
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        slow = extract_header(read_dataset(io.BytesIO(data)))
    assert (fast, []) == (slow.json, slow.skipped)
    return fast


def _el(tag: int, vr: str, value: bytes) -> bytes:
    from tests.faults import element

    return element(tag, vr, value)


_UIDS = _el(0x00080016, "UI", b"1.2.840.10008.5.1.4.1.1.2\0") + _el(0x00080018, "UI", b"1.2.3\0")


@pytest.mark.parametrize(
    ("vr", "tag", "value"),
    [
        ("SV", 0x0008041C, (-5).to_bytes(8, "little", signed=True)),  # 32-bit length VRs
        ("UV", 0x0008041D, (7).to_bytes(8, "little")),
        ("UI", 0x0020000D, b"\x001.2.3\0"),  # a leading NUL
        ("DS", 0x00181100, b"\x0038.6"),  # NUL inside a number
        ("IS", 0x00200013, b" \\1"),  # a blank value among several
        ("DS", 0x00281050, b"40\\"),  # an empty last value
        ("PN", 0x00100010, b"=="),  # only separators
        ("PN", 0x00100010, b"Doe^J\\"),  # an empty name among several
        ("PN", 0x00100010, b"Doe\tJ "),  # a control character
        ("UI", 0x0020000E, b"1.2\t3\0"),
    ],
)
def test_encoders_agree_on_odd_values(vr: str, tag: int, value: bytes) -> None:
    data = value + b" " if len(value) % 2 else value
    after = _el(0x00100020, "LO", b"ID")  # what follows must still be read right
    header = _agreement(_UIDS + _el(tag, vr, data) + after)
    assert header.get("00100020") == {"vr": "LO", "Value": ["ID"]}


def test_group_0002_in_a_dataset_is_not_file_meta() -> None:
    """A sender's dataset that begins with file meta elements of its own (a transfer syntax
    among them) is read with the negotiated syntax, and the meta elements are left out.
    (pydicom, reading the spooled file, would take them for the file's meta: only where
    the fast path gives way does that remain, see the faults report.)"""
    own_meta = _el(0x00020010, "UI", b"1.2.840.10008.1.2.2\0") + _el(0x00020013, "SH", b"OTHER ")
    header = _agreement(own_meta + _UIDS, with_pydicom=False)
    assert header["00080018"] == {"vr": "UI", "Value": ["1.2.3"]}
    assert not [key for key in header if key.startswith("0002")]

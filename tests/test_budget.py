"""What one instance's header may cost: ``SCP2FHIR_MAX_HEADER_BYTES`` of DICOM JSON at
most (identity and what the mapping reads kept first, the rest left out by name), and
``SCP2FHIR_MAX_INFLATED_BYTES`` of a deflated dataset inflated at most, a piece at a
time. Checked on both header encoders and on the real SCP process, with its memory and
what lands in Redis measured."""

from __future__ import annotations

import ast
import contextlib
import json
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, _config

from scp import header_budget, keys, statuses
from scp.header import HeaderTooLarge, Limits, read_dataset_bytes, read_header
from scp.header_rules import MAPPED_KEYWORDS
from tests.faults import (
    Child,
    big_text_dataset,
    deflate_bomb,
    element,
    identity_elements,
    item,
    peak_rss_kib,
    scp_process,
    text,
    write_part10,
)
from tests.support import sample_file

CT = "1.2.840.10008.5.1.4.1.1.2"
DEFLATED = DeflatedExplicitVRLittleEndian
MIB = 1024 * 1024
#: The README's status for a header beyond the limits.
HEADER_TOO_LARGE = 0xC230
WORKERS = Path(__file__).resolve().parent.parent / "workers"


def test_the_mapped_elements_are_all_the_workers_read() -> None:
    """Every DICOM keyword named in the workers' code is kept first under the budget."""
    named = set()
    for path in WORKERS.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and node.value.isidentifier()
                and tag_for_keyword(node.value) is not None
            ):
                named.add(node.value)
    assert named, "no keyword found: the scan is broken"
    assert named <= MAPPED_KEYWORDS, sorted(named - MAPPED_KEYWORDS)


# --- the budget on both encoders -----------------------------------------------------------


def _over_budget(charset: str) -> tuple[bytes, dict[int, bytes]]:
    """A dataset of about 1 MiB: identity, a few mapped elements (one after the bulk), a
    big Content Sequence and a small unmapped element after it."""
    study, series, sop = generate_uid(), generate_uid(), generate_uid()
    code = item(
        element(0x00080100, "SH", text("P-1"))
        + element(0x00080102, "SH", text("99X"))
        + element(0x00080104, "LO", text("a procedure"))
    )
    parts = identity_elements(study, series, sop)
    parts |= {
        0x00080005: element(0x00080005, "CS", text(charset)),
        0x00081030: element(0x00081030, "LO", text("Study description")),
        0x00081032: element(0x00081032, "SQ", code),  # Procedure Code Sequence
        0x00100020: element(0x00100020, "LO", text("PID-1")),
        0x0008103E: element(0x0008103E, "LO", text("Series description")),
        0x00700084: element(0x00700084, "PN", text("Creator^Content")),  # not mapped
        0x52009229: element(0x52009229, "SQ", item(element(0x00280030, "DS", b"0.5\\0.5 "))),
    }
    body = big_text_dataset(study, series, sop, MIB)
    content = body[body.index(b"\x40\x00\x30\xa7") :]  # the Content Sequence element
    parts[0x0040A730] = content
    return b"".join(parts[tag] for tag in sorted(parts)), parts


@pytest.mark.parametrize("charset", ["ISO_IR 100", "ISO_IR 144"], ids=["fast", "pydicom"])
@pytest.mark.parametrize("spool", ["file", "memory"])
def test_over_the_budget_identity_and_mapped_elements_are_kept(
    tmp_path: Path, charset: str, spool: str
) -> None:
    body, parts = _over_budget(charset)
    limits = Limits(header_bytes=64 * 1024)
    path = write_part10(tmp_path / "big.dcm", body, CT, generate_uid())
    if spool == "file":
        header = read_header(path, limits)
    else:
        data = path.read_bytes()
        header = read_dataset_bytes(body, "1.2.840.10008.1.2.1", lambda: data, limits)
    assert header.dropped == ["0040A730"]
    expected = {f"{tag:08X}" for tag in parts} - {"0040A730"}
    assert set(header.json) == expected
    payload, more = header_budget.encode(header.json, limits.header_bytes)
    assert more == [] and len(payload) <= limits.header_bytes
    within = read_header(path, Limits(header_bytes=8 * MIB))  # the same, within budget
    assert within.dropped == [] and "0040A730" in within.json


def test_pydicom_reads_at_most_twice_the_budget(tmp_path: Path) -> None:
    """A dataset only pydicom reads (here for its character set): beyond twice the budget
    read, only the identity and the mapped elements are read again; if even that is
    over (an undefined-length sequence pydicom must parse whole), it is refused."""
    study, series, sop = generate_uid(), generate_uid(), generate_uid()
    parts = identity_elements(study, series, sop)
    parts[0x00080005] = element(0x00080005, "CS", text("ISO_IR 144"))
    parts[0x00081030] = element(0x00081030, "LO", text("Study description"))
    comments = (0x00184000, 0x00204000, 0x00400280, 0x00401400, 0x00402400)
    for tag in comments:  # five unmapped texts of 40 KB: each small, 200 KB in all
        parts[tag] = element(tag, "LT", b"x" * 40_000)
    path = write_part10(tmp_path / "wide.dcm", b"".join(parts[t] for t in sorted(parts)), CT, sop)
    header = read_header(path, Limits(header_bytes=64 * 1024))
    assert set(header.json) == {f"{tag:08X}" for tag in parts} - {f"{t:08X}" for t in comments}
    assert header.dropped  # named: all but the identity and the mapped elements
    # Undefined length: pydicom parses the sequence even when not asked for it.
    body = big_text_dataset(study, series, sop, MIB)
    start = body.index(b"\x40\x00\x30\xa7SQ")
    undefined = (
        body[: start + 8] + b"\xff\xff\xff\xff" + body[start + 12 :] + b"\xfe\xff\xdd\xe0\0\0\0\0"
    )
    charset = element(0x00080005, "CS", text("ISO_IR 144"))
    deep = write_part10(tmp_path / "deep.dcm", charset + undefined, CT, sop)
    with pytest.raises(HeaderTooLarge):
        read_header(deep, Limits(header_bytes=64 * 1024))
    assert read_header(deep, Limits(header_bytes=8 * MIB)).dropped == []


def test_the_stored_header_never_exceeds_the_budget() -> None:
    """The last check is on the JSON text itself, whatever the encoders estimated:
    identity stays, the rest goes largest group last, and it fits."""
    header: dict[str, Any] = {
        "0020000D": {"vr": "UI", "Value": ["1.2.3"]},
        "00081030": {"vr": "LO", "Value": ["é" * 3000]},  # mapped; 2 bytes a character
        "00400254": {"vr": "LO", "Value": ["\n" * 3000]},  # not mapped; escaped: 6000 bytes
        "00700084": {"vr": "PN", "Value": [{"Alphabetic": "Small^Name"}]},
    }
    payload, dropped = header_budget.encode(header, 8000)
    assert dropped == ["00400254"]
    assert len(payload) <= 8000
    assert set(json.loads(payload)) == {"0020000D", "00081030", "00700084"}


# --- over the network ----------------------------------------------------------------------


@contextlib.contextmanager
def scp_and_redis(
    redis_url: str, tmp_path: Path, **env: str
) -> Iterator[tuple[int, Child, redis.Redis]]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        with scp_process(redis_url, tmp_path, **env) as (port, scp):
            yield port, scp, client
    finally:
        client.close()


def _store(port: int, path: Path, syntax: str = "1.2.840.10008.1.2.1") -> Dataset:
    """Send ``path`` as it is on disk; the whole C-STORE response status."""
    ae = AE(ae_title="BUDGETSCU")
    ae.dimse_timeout = ae.network_timeout = 120
    ae.add_requested_context(CT, syntax)
    _config.STORE_SEND_CHUNKED_DATASET = True
    assoc = ae.associate("127.0.0.1", port, ae_title="SCP2FHIR")
    assert assoc.is_established
    try:
        status: Dataset = assoc.send_c_store(path)
    finally:
        assoc.release()
    return status


def test_a_huge_header_is_stored_within_the_budget(redis_url: str, tmp_path: Path) -> None:
    """24 MiB of public text in small Content Sequence items (every element small, only
    the whole large), with the default budget: stored, the sequence named in the
    response, Redis holding at most the budget, the SCP's memory barely moving."""
    sop = generate_uid()
    body = big_text_dataset(generate_uid(), generate_uid(), sop, 24 * MIB)
    path = write_part10(tmp_path / "big.dcm", body, CT, sop)
    with scp_and_redis(redis_url, tmp_path) as (port, scp, data):
        before = peak_rss_kib(scp.pid)
        status = _store(port, path)
        grown = peak_rss_kib(scp.pid) - before
        entries: list[tuple[str, dict[str, str]]] = data.xrange(keys.INBOX)  # type: ignore[assignment]
    [(_, fields)] = entries
    assert status.Status == statuses.ELEMENTS_DISCARDED
    offending = status["OffendingElement"]
    assert 0x0040A730 in (offending.value if offending.VM > 1 else [offending.value])
    assert "header budget" in status.ErrorComment
    stored = len(fields["h"].encode())
    assert stored <= 4 * MIB, f"{stored} bytes in Redis"
    assert sop in fields["h"]
    assert grown < 64 * 1024, f"the SCP grew by {grown // 1024} MiB"
    assert "over the header budget, left out: 0040A730" in scp.output()


@pytest.mark.parametrize("spool", ["file", "memory"])
def test_deflate_bombs_are_inflated_only_as_far_as_the_limit(
    redis_url: str, tmp_path: Path, spool: str
) -> None:
    """Two deflated datasets of about 0.25 MB inflating to 256 MiB each, with
    SCP2FHIR_MAX_INFLATED_BYTES at 16 MiB: the one whose bulk is pixel data is stored
    (its header ends before), the one whose bulk comes before the pixel data is refused
    with 0xC230; neither costs the SCP more than a few MiB."""
    pixels = deflate_bomb(tmp_path / "pixels.dcm", 256 * MIB, "pixels")
    private = deflate_bomb(tmp_path / "private.dcm", 256 * MIB, "private")
    honest = Path(sample_file("image_dfl.dcm"))
    env = {"SCP2FHIR_MAX_INFLATED_BYTES": str(16 * MIB), "SCP2FHIR_SPOOL": spool}
    with scp_and_redis(redis_url, tmp_path, **env) as (port, scp, data):
        before = peak_rss_kib(scp.pid)
        assert _store(port, pixels, DEFLATED).Status == statuses.SUCCESS
        refused = _store(port, private, DEFLATED)
        grown = peak_rss_kib(scp.pid) - before
        assert refused.Status == HEADER_TOO_LARGE
        assert "0xC230" in scp.output() and "SCP2FHIR_MAX_INFLATED_BYTES" in scp.output()
        assert data.xlen(keys.INBOX) == 1
    assert grown < 48 * 1024, f"the SCP grew by {grown // 1024} MiB"
    # An ordinary deflated image reads as it always did.
    assert read_header(honest).json == read_header(honest, Limits(inflated_bytes=65536)).json


def test_inflation_stops_at_the_limit(tmp_path: Path) -> None:
    bomb = deflate_bomb(tmp_path / "bomb.dcm", 64 * MIB, "private")
    with pytest.raises(HeaderTooLarge):
        read_header(bomb, Limits(inflated_bytes=MIB, scratch=tmp_path))
    assert list(tmp_path.iterdir()) == [bomb], "the scratch file is gone"
    # Cut inside a value just past the limit, or exactly at an element's end: both are
    # a header that does not end within the limit.
    study, series, sop = generate_uid(), generate_uid(), generate_uid()
    parts = identity_elements(study, series, sop)
    head = b"".join(parts[tag] for tag in sorted(parts))
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = head + element(0x00204000, "LT", b"x" * 4000)
    squeezed = deflater.compress(body) + deflater.flush()
    for limit in (len(head) + 10, len(head)):
        with pytest.raises(HeaderTooLarge):
            read_dataset_bytes(squeezed, DEFLATED, bytes, Limits(inflated_bytes=limit))
    whole = read_dataset_bytes(squeezed, DEFLATED, bytes, Limits(inflated_bytes=len(body)))
    assert whole.json["0020000D"]["Value"] == [study]

"""One poisoned instance (huge code sequences and name lists) costs the worker linear,
bounded time, is folded without the offending elements (named by tag in the log) and is
never dead-lettered; an honest study in the same inbox is folded along with it."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import pytest

from scp import keys
from scp.header import read_header
from scp.inbox import Inbox
from tests.support import build_context, make_study
from workers.context import install
from workers.dicomjson import MAX_CODE_ITEMS, DicomJson
from workers.fold import StudyAggregate, fold
from workers.jobs import drain_inbox, ensure_group
from workers.mapping import imaging_study
from workers.summary import summarize


def code_items(count: int) -> list[dict[str, Any]]:
    return [
        {
            "00080100": {"vr": "SH", "Value": [f"C{i}"]},
            "00080102": {"vr": "SH", "Value": ["99LOCAL"]},
            "00080104": {"vr": "LO", "Value": [f"meaning {i}"]},
        }
        for i in range(count)
    ]


def poisoned(base: dict[str, Any], count: int) -> dict[str, Any]:
    """``base`` with ``count`` distinct codes in the procedure, requested procedure and
    reason sequences, and ``count`` operators."""
    items = code_items(count)
    header = dict(base)
    header["00081032"] = {"vr": "SQ", "Value": items}
    header["00400275"] = {
        "vr": "SQ",
        "Value": [
            {"00321064": {"vr": "SQ", "Value": items}, "0040100A": {"vr": "SQ", "Value": items}}
        ],
    }
    header["00081070"] = {"vr": "PN", "Value": [{"Alphabetic": f"Op{i}"} for i in range(count)]}
    return header


def test_100k_codes_are_left_out_by_tag_and_the_rest_maps(tmp_path: Path) -> None:
    study = make_study(tmp_path / "s", [("CT", 1)])
    header = poisoned(read_header(study.files[0]).json, 100_000)
    summary = summarize(header)
    assert {"00081032", "00400275.00321064", "00400275.0040100A", "00081070"} <= set(
        summary.warnings
    )
    assert "procedures" not in summary.study and "operators" not in summary.series
    resource = imaging_study(fold(StudyAggregate(summary.study_uid), [summary]), "R4")
    assert resource["numberOfInstances"] == 1 and resource["series"][0]["modality"]["code"]


def test_a_sequence_at_the_cap_is_kept_with_each_code_once() -> None:
    items = code_items(MAX_CODE_ITEMS // 2) * 2  # every code twice: de-duplicated
    dj = DicomJson({"00081032": {"vr": "SQ", "Value": items}})
    assert len(dj.codes("ProcedureCodeSequence")) == MAX_CODE_ITEMS // 2
    assert dj.warnings == []


def test_past_the_read_budget_sequences_are_left_out_and_named() -> None:
    dj = DicomJson(
        {"00081032": {"vr": "SQ", "Value": code_items(2)}}, deadline=time.monotonic() - 1
    )
    assert dj.codes("ProcedureCodeSequence") == []
    assert dj.warnings == ["00081032"]


def test_a_poisoned_instance_is_folded_not_dead_lettered(
    redis_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ctx = build_context(
        {"SCP2FHIR_REDIS_URL": redis_url, "SCP2FHIR_OUTPUT_DIR": str(tmp_path / "out")}
    )
    ensure_group(ctx.clients.data)
    install(ctx)
    bad = make_study(tmp_path / "bad", [("CT", 1)])
    honest = make_study(tmp_path / "ok", [("MR", 3)])
    inbox = Inbox(ctx.clients.data, ctx.clients.rq)
    inbox.push(bad.study_uid, poisoned(read_header(bad.files[0]).json, 50_000))
    for path in honest.files:
        inbox.push(honest.study_uid, read_header(path).json)
    with caplog.at_level(logging.WARNING, logger="workers.summary"):
        assert drain_inbox() == 4
    data = ctx.clients.data
    assert data.llen(keys.DEAD_LETTER) == 0
    assert len(ctx.store.load(bad.study_uid).instances) == 1
    assert len(ctx.store.load(honest.study_uid).instances) == 3
    line = next(r.getMessage() for r in caplog.records if bad.study_uid in r.getMessage())
    assert "00081032 ProcedureCodeSequence" in line and "00081070 OperatorsName" in line
    assert "Op1" not in line and "meaning" not in line
    assert json.loads(json.dumps(line))  # one plain line

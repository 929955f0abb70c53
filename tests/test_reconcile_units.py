"""The pure pieces of reconcile and backfill: addresses and settings, verdicts, the
ledger entry, C-FIND time windows, the progress line, dates."""

from __future__ import annotations

import argparse
import datetime as dt
import io

import pytest

from scp.pacs import PacsAddress, PacsSeries, PacsSettings, PacsStudy
from scp.pacs.query import _time_range
from scp.typed_settings import ConfigError
from workers.fold import Sourced, StudyAggregate
from workers.ledger import LedgerEntry, date_of, entry_for
from workers.reconcile import verdict
from workers.reconcile.command import date_range, parse_date
from workers.reconcile.holdings import Holding
from workers.reconcile.progress import Progress
from workers.reconcile.verdict import SeriesGap, State


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ORTHANC@pacs.example.org:4242", ("ORTHANC", "pacs.example.org", 4242)),
        ("DCM4CHEE@10.0.0.5:11112", ("DCM4CHEE", "10.0.0.5", 11112)),
        ("AE@[::1]:104", ("AE", "::1", 104)),
        ("A@B@host:104", ("A@B", "host", 104)),  # '@' is allowed in an AE title
    ],
)
def test_pacs_address_parses(text: str, expected: tuple[str, str, int]) -> None:
    address = PacsAddress.parse(text)
    assert (address.ae_title, address.host, address.port) == expected
    assert PacsAddress.parse(str(address)) == address


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("pacs.example.org:4242", "is not AET@host:port"),
        ("ORTHANC@pacs", "is not AET@host:port"),
        ("ORTHANC@:4242", "is not AET@host:port"),
        ("ORTHANC@pacs:http", "port 'http' is not a number"),
        ("ORTHANC@pacs:70000", "port 70000 is out of range"),
        ("WAY_TOO_LONG_AE_TITLE@pacs:104", "is not a DICOM AE title"),
        ("BACK\\SLASH@pacs:104", "is not a DICOM AE title"),
    ],
)
def test_pacs_address_refuses(text: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says.replace("(", r"\(")):
        PacsAddress.parse(text)


def test_pacs_settings_defaults_follow_the_ae_title() -> None:
    settings = PacsSettings.from_env({}, "BRIDGE")
    assert settings.pacs is None
    assert (settings.calling_ae, settings.move_destination) == ("BRIDGE", "BRIDGE")
    assert (settings.timeout, settings.move_timeout, settings.max_results) == (30, 600, 1000)
    assert (settings.moves, settings.reconcile_days, settings.reconcile_every_hours) == (2, 7, 0)
    with pytest.raises(ConfigError, match="no PACS: give --pacs"):
        settings.address(None)
    assert settings.address("X@h:1") == PacsAddress("X", "h", 1)


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"SCP2FHIR_PACS": "nonsense"}, "SCP2FHIR_PACS='nonsense' is not AET@host:port"),
        ({"SCP2FHIR_PACS_CALLING_AE": "A" * 17}, "SCP2FHIR_PACS_CALLING_AE="),
        ({"SCP2FHIR_PACS_MOVES": "0"}, "SCP2FHIR_PACS_MOVES=0 is out of range 1..32"),
        ({"SCP2FHIR_PACS_TIMEOUT": "-3"}, "must be above 0"),
        ({"SCP2FHIR_RECONCILE_EVERY_HOURS": "6"}, "needs SCP2FHIR_PACS"),
    ],
)
def test_pacs_settings_refuse(env: dict[str, str], says: str) -> None:
    with pytest.raises(ConfigError, match=says.replace("(", r"\(")):
        PacsSettings.from_env(env, "SCP2FHIR")


def _holding(aggregate: int = 0, emitted: int | None = None, waiting: int = 0) -> Holding:
    entry = LedgerEntry(emitted, {}, 0, 1) if emitted is not None else None
    return Holding("1.2.3", aggregate, waiting, False, entry)


def test_verdicts_by_study() -> None:
    pacs = PacsStudy("1.2.3", "20240105", 10)
    missing = verdict.by_study(pacs, _holding(waiting=2))
    assert missing is not None and missing.state is State.MISSING and missing.needs_fetch
    assert missing.series_to_move == () and missing.waiting == 2
    complete = verdict.by_study(pacs, _holding(emitted=10))  # aggregate expired: the ledger
    assert complete is not None and complete.state is State.COMPLETE and not complete.needs_fetch
    assert (complete.held, complete.emitted) == (10, 10)
    more = verdict.by_study(pacs, _holding(aggregate=12, emitted=10))
    assert more is not None and more.state is State.COMPLETE and more.held == 12
    # Fewer, or a PACS that gives no study count: the series decide.
    assert verdict.by_study(pacs, _holding(aggregate=7)) is None
    assert verdict.by_study(PacsStudy("1.2.3", "", None), _holding(aggregate=7)) is None


def test_verdicts_by_series_name_what_falls_short() -> None:
    pacs = PacsStudy("1.2.3", "20240105", 10)
    series = [PacsSeries("1.2.3.1", 6), PacsSeries("1.2.3.2", 4)]
    incomplete = verdict.by_series(
        pacs, _holding(aggregate=7), series, {"1.2.3.1": 6, "1.2.3.2": 1}
    )
    assert incomplete.state is State.INCOMPLETE
    assert incomplete.gaps == (SeriesGap("1.2.3.2", 4, 1),)
    assert incomplete.series_to_move == ("1.2.3.2",)
    # A series scp2fhir never saw is a gap with nothing held.
    absent = verdict.by_series(pacs, _holding(aggregate=6), series, {"1.2.3.1": 6})
    assert absent.gaps == (SeriesGap("1.2.3.2", 4, 0),)
    # Every series there: complete, whatever the study-level count said.
    counted = PacsStudy("1.2.3", "20240105", None)
    full = verdict.by_series(counted, _holding(aggregate=10), series, {"1.2.3.1": 6, "1.2.3.2": 4})
    assert full.state is State.COMPLETE and full.pacs == 10 and full.gaps == ()


def test_unknown_to_the_pacs() -> None:
    found = verdict.unknown_to_pacs(_holding(emitted=3), "20240105")
    assert found.state is State.UNKNOWN and found.pacs is None and not found.needs_fetch
    assert found.as_json()["state"] == "unknown to the PACS"


def test_ledger_entry_of_an_aggregate() -> None:
    aggregate = StudyAggregate(
        study_uid="1.2.3",
        study=Sourced("1.2.3.9", {"started": "2024-01-05T10:15:00+01:00"}),
        instances={
            "1.2.3.9.1": {"series_uid": "1.2.3.2"},
            "1.2.3.9.2": {"series_uid": "1.2.3.1"},
            "1.2.3.9.3": {"series_uid": "1.2.3.2"},
        },
    )
    entry = entry_for(aggregate, emitted_ms=1234)
    assert entry == LedgerEntry(3, {"1.2.3.1": 1, "1.2.3.2": 2}, 20240105, 1234)
    assert LedgerEntry.loads(entry.dumps(), 20240105) == entry
    assert date_of({}) == 0 and date_of({"started": "2024"}) == 0


def test_time_windows_of_a_split_day() -> None:
    end = 24 * 3600 - 1
    assert _time_range(0, 43200) == "-120000"  # open below: no StudyTime lost before it
    assert _time_range(43200, end) == "120000-"  # open above: 235959.5 is in
    assert _time_range(3600, 5400) == "010000-013000"


def test_progress_line_rates_and_eta() -> None:
    now = [100.0]
    out = io.StringIO()
    progress = Progress(days=4, stream=out, clock=lambda: now[0])
    progress.start_day(1, dt.date(2024, 1, 1), studies=10)
    for _ in range(10):
        progress.study(moved_instances=20)
    now[0] += 20  # one day of four in 20 s
    progress.end_day()
    progress.start_day(2, dt.date(2024, 1, 2), studies=4)
    progress.study(moved_instances=0)  # complete already
    progress.study(failed=True)
    line = progress.line()
    assert line.startswith("day 2/4 2024-01-02  studies 12 (moved 10, failed 1)")
    assert "0.6 studies/s" in line and "200 instances 10 instances/s" in line
    # 1.5 days done in 20 s: 2.5 to go take 33 s.
    assert line.endswith("ETA 0:00:33")
    written = out.getvalue().splitlines()
    assert written[-1].startswith("day 1/4 2024-01-01  studies 10 (moved 10, failed 0)")


def test_dates_and_the_default_range() -> None:
    assert parse_date("2024-03-01", "--since") == parse_date("20240301", "--since")
    with pytest.raises(ConfigError, match="--until='03/01/2024' is not a date"):
        parse_date("03/01/2024", "--until")
    settings = PacsSettings(reconcile_days=7)
    today = dt.date(2024, 3, 10)
    none = argparse.Namespace(since=None, until=None)
    assert date_range(none, settings, today) == (dt.date(2024, 3, 4), today)
    backwards = argparse.Namespace(since="2024-03-05", until="2024-03-01")
    with pytest.raises(ConfigError, match="is after --until"):
        date_range(backwards, settings, today)

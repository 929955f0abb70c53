"""The benchmark's pieces work (`python -m tests.bench`), so that it cannot rot.

These tests run the benchmark's own code on tiny studies and check that every receiver,
scenario and figure is there and plausible; they say nothing about speed (README
"Performance": speed is measured by the command, not tested).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests import bench
from tests.bench_receivers import SendFailed, Storescp
from tests.support import free_port

NUMBER = r"\d+(?:\.\d+)?"


def _rows(out: str, prefix: str) -> list[list[float]]:
    """The numeric columns of each ingest-table row whose receiver label starts so."""
    rows = []
    for text in out.splitlines():
        if text.startswith(f"  {prefix}"):
            # after the label column (42 wide): inst/s, ratio, CPU, CPU ratio "…x", RSS
            columns = [c.removesuffix("x") for c in text[44:].split()]
            rows.append([float("nan") if c == "-" else float(c) for c in columns])
    return rows


def test_ingest_runs_every_receiver_in_both_scenarios(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--quick", "--instances", "8", "--only", "1-association,4-associations"]
    assert bench.main(argv) == 0
    out = capsys.readouterr().out
    assert "load average at start:" in out and "load average at end:" in out
    assert "dcmtk storescp (to disk, --fork)" in out
    for prefix in ("dcmtk storescp", "Orthanc", "pynetdicom", "scp2fhir scp ", "scp2fhir up "):
        rows = _rows(out, prefix)
        assert len(rows) == 2, (prefix, out)  # one row per scenario
        for rate, ratio, cpu, _cpu_ratio, rss in rows:
            assert rate > 0 and cpu >= 0 and rss > 0, (prefix, out)
            if prefix == "dcmtk storescp":
                assert ratio == 1.0
    # scp2fhir's extra lines: its Redis, the whole of `up`, the ImagingStudy latency
    assert re.search(rf"Redis: CPU {NUMBER} ms/inst, peak RSS {NUMBER} MiB, \d+ bytes", out)
    assert re.search(rf"until the ImagingStudy is written: CPU {NUMBER} ms/inst \(.*scp", out)
    assert re.search(rf"scp {NUMBER} / worker {NUMBER} / redis {NUMBER}", out)
    assert re.search(rf"minus the 2 s quiet period: -?{NUMBER} s", out)


def test_only_selects_receivers_and_the_worker_and_spool_scenarios_run(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["--quick", "--instances", "4", "--build-instances", "40", "--large-mb", "4"]
    assert bench.main([*argv, "--only", "1-association", "--only", "scp,worker,spool"]) == 0
    out = capsys.readouterr().out
    assert len(_rows(out, "scp2fhir scp ")) == 1
    assert not _rows(out, "dcmtk storescp") and not _rows(out, "scp2fhir up ")
    for profile in ("base", "mii"):
        assert re.search(rf"\[{profile}\] fold instances/s per worker.*\s{NUMBER}$", out, re.M)
        assert re.search(rf"\[{profile}\] build ImagingStudy of 40 .*\s{NUMBER}$", out, re.M)
    for spool in ("file", "memory"):
        assert re.search(rf"SPOOL={spool}: 4 CT instances, inst/s \| CPU ms/inst .*\d", out)
        assert re.search(rf"SPOOL={spool}: 4 MiB object in {NUMBER} s, peak RSS MiB .*\d", out)


def test_unknown_names_are_refused() -> None:
    with pytest.raises(SystemExit, match="unknown nonsense"):
        bench.main(["--only", "nonsense"])


class _Forgetful(Storescp):
    """A real storescp whose count never moves: what a receiver that lost every instance
    would report."""

    def received(self) -> int | None:
        return 0


def test_a_send_the_receiver_did_not_keep_stops_the_run(tmp_path: Path) -> None:
    study = bench.bench_study(tmp_path, 3, 1)
    receiver = _Forgetful(fork=False)
    try:
        with pytest.raises(SendFailed, match="holds 0 of 3 instances"):
            bench.measure(receiver, study, bench.Measures())
    finally:
        receiver.stop()


def test_a_failed_storescu_stops_the_run(tmp_path: Path) -> None:
    study = bench.bench_study(tmp_path, 2, 1)
    with pytest.raises(SendFailed, match="storescu exit"):
        bench.send(free_port(), [study.parts])  # nobody listens there

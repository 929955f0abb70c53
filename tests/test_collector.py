"""The worker process sets the garbage collector's thresholds before its first job."""

from __future__ import annotations

import gc
from pathlib import Path

from scp.shared_settings import SharedSettings
from scp.typed_settings import from_env
from workers import collector, runner
from workers.delivery.settings import DeliverySettings
from workers.settings import WorkerSettings


def test_the_worker_set_up_tunes_the_collector(redis_url: str, tmp_path: Path) -> None:
    env = {"SCP2FHIR_REDIS_URL": redis_url, "SCP2FHIR_OUTPUT_DIR": str(tmp_path)}
    before = gc.get_threshold()
    assert before != collector.WORKER_THRESHOLDS  # pytest's process has the defaults
    try:
        context = runner._context(
            from_env(WorkerSettings, env), from_env(SharedSettings, env), DeliverySettings()
        )
        assert gc.get_threshold() == collector.WORKER_THRESHOLDS
        context.clients.close()
    finally:
        gc.set_threshold(*before)


def test_tune_returns_what_it_replaced() -> None:
    before = gc.get_threshold()
    try:
        assert collector.tune() == before
        assert collector.tune() == collector.WORKER_THRESHOLDS
    finally:
        gc.set_threshold(*before)

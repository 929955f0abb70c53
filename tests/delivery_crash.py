"""``python -m tests.delivery_crash worker``: ``scp2fhir worker`` that stops dead at the
worst moment for a delivery, right after an emission closed its study and before it queued
the delivery job, announcing itself in ``SCP2FHIR_TEST_PAUSE_MARKER`` and waiting to be
killed (``tests.faults.Child.kill9``). Everything else is the shipped worker."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any


def main(argv: Sequence[str]) -> int:
    from tests.faults import _pause
    from workers import delivery

    marker = os.environ["SCP2FHIR_TEST_PAUSE_MARKER"]

    def enqueue_delivery(*args: Any, **kwargs: Any) -> bool:
        _pause(marker)  # the study is closed and listed as pending; no job will be queued
        return False

    delivery.enqueue_delivery = enqueue_delivery  # emission's call: jobs.delivery.enqueue_...
    from scp.cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

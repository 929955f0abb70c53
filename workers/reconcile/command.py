"""The ``scp2fhir reconcile`` and ``scp2fhir backfill`` verbs.

Exit status: 0 nothing is missing (reconcile) / every study done (backfill); 1 studies
are missing or incomplete, or failed to fetch; 2 configuration error; 3 the PACS (or
Redis) could not be used: the line on stderr says why, and a rerun resumes; 130
interrupted (Ctrl-C), resumable.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING

from scp.settings import ScpSettings
from scp.shared_settings import SharedSettings
from scp.typed_settings import ConfigError

if TYPE_CHECKING:  # imported when run, so that `scp2fhir --help` does not load pynetdicom
    import redis

    from scp.pacs import PacsAddress, PacsSettings

OK, MISSING, CONFIG, FAULT, INTERRUPTED = 0, 1, 2, 3, 130


def add_arguments(parser: argparse.ArgumentParser, verb: str) -> None:
    parser.add_argument("--pacs", help="AET@host:port of the PACS; overrides SCP2FHIR_PACS")
    parser.add_argument(
        "--since",
        required=verb == "backfill",
        help="first Study Date, YYYY-MM-DD"
        + ("" if verb == "backfill" else " (default: SCP2FHIR_RECONCILE_DAYS days ago)"),
    )
    parser.add_argument("--until", help="last Study Date, YYYY-MM-DD (default: today)")
    if verb == "reconcile":
        parser.add_argument("--json", action="store_true", help="machine-readable output")
        parser.add_argument(
            "--fetch",
            action="store_true",
            help="C-MOVE missing and incomplete studies to scp2fhir's own AE title",
        )
    else:
        parser.add_argument(
            "--restart", action="store_true", help="forget this range's earlier run, start over"
        )


def parse_date(text: str, flag: str) -> dt.date:
    for form in ("%Y-%m-%d", "%Y%m%d"):
        try:
            return dt.datetime.strptime(text.strip(), form).date()
        except ValueError:
            continue
    raise ConfigError(f"{flag}={text!r} is not a date (YYYY-MM-DD)")


def date_range(
    args: argparse.Namespace, pacs_settings: PacsSettings, today: dt.date
) -> tuple[dt.date, dt.date]:
    until = parse_date(args.until, "--until") if args.until else today
    since = (
        parse_date(args.since, "--since")
        if args.since
        else until - dt.timedelta(days=pacs_settings.reconcile_days - 1)
    )
    if since > until:
        raise ConfigError(f"--since {since} is after --until {until}")
    return since, until


def run(
    verb: str,
    settings: ScpSettings,
    shared: SharedSettings,
    env: Mapping[str, str],
    args: argparse.Namespace,
) -> int:
    import redis

    from scp.connections import connect
    from scp.pacs import PacsSettings

    try:
        pacs_settings = PacsSettings.from_env(env, settings.ae_title)
        address = pacs_settings.address(args.pacs)
        since, until = date_range(args, pacs_settings, dt.date.today())
        url = shared.require_redis_url()
    except ConfigError as exc:
        print(f"scp2fhir: configuration error: {exc}", file=sys.stderr)
        return CONFIG
    if shared.log_level != "DEBUG":
        # pynetdicom logs each refused connection or abort as an ERROR; the one line this
        # command prints says the same, with the PACS's name and what to do.
        logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)
    clients = connect(url)
    try:
        if verb == "reconcile":
            return _reconcile(clients.data, address, pacs_settings, since, until, args)
        return _backfill(clients.data, address, pacs_settings, since, until, args.restart)
    except KeyboardInterrupt:
        print(f"scp2fhir: {verb}: interrupted; the same command resumes", file=sys.stderr)
        return INTERRUPTED
    except redis.RedisError as exc:
        print(
            f"scp2fhir: {verb}: Redis unavailable ({type(exc).__name__}); nothing received "
            "is lost, the same command resumes",
            file=sys.stderr,
        )
        return FAULT
    finally:
        clients.close()


def _reconcile(
    connection: redis.Redis,
    address: PacsAddress,
    pacs_settings: PacsSettings,
    since: dt.date,
    until: dt.date,
    args: argparse.Namespace,
) -> int:
    from scp.pacs import PacsError, Session
    from workers.reconcile.fetcher import Fetched, Fetcher
    from workers.reconcile.report import Report, render_text
    from workers.reconcile.survey import survey

    try:
        with Session(address, pacs_settings) as session:
            verdicts = survey(session, connection, since, until)
    except PacsError as exc:
        print(f"scp2fhir: reconcile: {exc}", file=sys.stderr)
        return FAULT
    report = Report(address, since, until, verdicts)
    fault: PacsError | None = None
    if args.fetch:

        def fetched(outcome: Fetched) -> None:
            report.fetched[outcome.verdict.study_uid] = outcome
            what = (
                f"failed: {outcome.error}"
                if outcome.error is not None
                else f"{outcome.result.completed + outcome.result.warning} instances moved"
                if outcome.result
                else "moved"
            )
            print(f"fetch study {outcome.verdict.study_uid}: {what}", file=sys.stderr)

        try:
            with Fetcher(address, pacs_settings) as fetcher:
                fetcher.fetch(report.unresolved(), fetched)
        except PacsError as exc:
            fault = exc
    print(json.dumps(report.as_json(), indent=2) if args.json else render_text(report))
    if fault is not None:
        print(f"scp2fhir: reconcile: {fault}", file=sys.stderr)
        return FAULT
    return MISSING if report.unresolved() else OK


def _backfill(
    connection: redis.Redis,
    address: PacsAddress,
    pacs_settings: PacsSettings,
    since: dt.date,
    until: dt.date,
    restart: bool,
) -> int:
    from scp.pacs import PacsError
    from workers.reconcile.backfill import RunLocked, backfill

    try:
        outcome = backfill(
            connection, address, pacs_settings, since, until, sys.stderr, restart=restart
        )
    except (PacsError, RunLocked) as exc:
        print(f"scp2fhir: backfill: {exc}; the same command resumes", file=sys.stderr)
        return FAULT
    print(
        f"backfill {address} {since}..{until}: {outcome.days} days, {outcome.studies} studies, "
        f"{outcome.moved} moved ({outcome.instances} instances), {len(outcome.failed)} failed"
    )
    return MISSING if outcome.failed else OK

"""The ``scp2fhir`` command: one verb per process kind.

Configuration comes from ``SCP2FHIR_*`` environment variables; a flag overrides
its variable. Invalid configuration stops the command with one line on stderr
and exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from scp.settings import VARIABLES, ConfigError, Settings

#: flag dest -> environment variable it overrides
_FLAG_VARIABLES = {
    "redis_url": "SCP2FHIR_REDIS_URL",
    "ae_title": "SCP2FHIR_AE_TITLE",
    "port": "SCP2FHIR_PORT",
    "quiet_seconds": "SCP2FHIR_QUIET_SECONDS",
    "output_dir": "SCP2FHIR_OUTPUT_DIR",
    "fhir_version": "SCP2FHIR_FHIR_VERSION",
    "workers": "SCP2FHIR_WORKERS",
}


def _parser() -> argparse.ArgumentParser:
    epilog = "environment:\n" + "\n".join(
        f"  {name:28} {default:>10}  {text}" for name, (default, text) in VARIABLES.items()
    )
    parser = argparse.ArgumentParser(
        prog="scp2fhir",
        description="DICOM storage SCP -> FHIR ImagingStudy bridge",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    verbs = parser.add_subparsers(dest="verb", required=True)

    def common(p: argparse.ArgumentParser, *flags: str) -> None:
        if "redis" in flags:
            p.add_argument("--redis-url", help="overrides SCP2FHIR_REDIS_URL")
        if "scp" in flags:
            p.add_argument("--ae-title", help="overrides SCP2FHIR_AE_TITLE")
            p.add_argument("--port", help="overrides SCP2FHIR_PORT")
        if "emit" in flags:
            p.add_argument("--quiet-seconds", help="overrides SCP2FHIR_QUIET_SECONDS")
            p.add_argument("--output-dir", help="overrides SCP2FHIR_OUTPUT_DIR")
        if "fhir" in flags:
            p.add_argument("--fhir-version", help="overrides SCP2FHIR_FHIR_VERSION (R4, R5)")

    common(verbs.add_parser("scp", help="run the storage SCP"), "redis", "scp")
    worker = verbs.add_parser("worker", help="run an RQ worker (with RQ's scheduler)")
    common(worker, "redis", "emit", "fhir")
    worker.add_argument("--burst", action="store_true", help="exit when the queues are empty")
    up = verbs.add_parser("up", help="run everything on this machine (private Redis if none set)")
    common(up, "redis", "scp", "emit", "fhir")
    up.add_argument("--workers", help="overrides SCP2FHIR_WORKERS")
    convert = verbs.add_parser("convert", help="DICOM files/folders -> ImagingStudy NDJSON")
    common(convert, "fhir")
    convert.add_argument("paths", nargs="+", type=Path)
    return parser


def _environment(args: argparse.Namespace) -> dict[str, str]:
    env = dict(os.environ)
    for dest, variable in _FLAG_VARIABLES.items():
        value = getattr(args, dest, None)
        if value is not None:
            env[variable] = str(value)
    return env


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    env = _environment(args)
    try:
        settings = Settings.from_env(env)
        if args.verb in ("scp", "worker"):
            settings.require_redis_url()
    except ConfigError as exc:
        print(f"scp2fhir: configuration error: {exc}", file=sys.stderr)
        return 2

    from scp import logs

    logs.configure(settings.log_level, args.verb)
    if args.verb == "scp":
        from scp.server import serve

        serve(settings)
        return 0
    if args.verb == "worker":
        from workers.runner import run

        run(settings, burst=args.burst)
        return 0
    if args.verb == "up":
        from scp.supervisor import up as run_up

        return run_up(settings, env)
    if args.verb == "convert":
        from workers.convert import convert

        studies, unreadable = convert(args.paths, settings.fhir_version, sys.stdout)
        logging.getLogger("scp2fhir.convert").info(
            "%d studies written, %d files unreadable", studies, unreadable
        )
        return 0 if studies or not unreadable else 1
    return 2


if __name__ == "__main__":
    raise SystemExit(main())

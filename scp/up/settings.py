"""Settings of ``scp2fhir up``, the supervisor: how many workers, where the private Redis
lives and how it syncs, and the RQ dashboard and status web it starts. Parsed once in
``main()`` by :func:`scp.typed_settings.from_env` and passed down."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from scp.typed_settings import ConfigError, choice, integer, is_loopback, path, setting, text


@dataclass(frozen=True)
class UpSettings:
    """What the supervisor (and the status web it starts) needs to know."""

    workers: int = setting(
        "SCP2FHIR_WORKERS",
        "2",
        "Worker processes started by `scp2fhir up`.",
        integer(1, 64),
        default=2,
    )
    data_dir: Path = setting(
        "SCP2FHIR_DATA_DIR",
        "./scp2fhir-data",
        "Where `scp2fhir up` keeps its private Redis (append-only file).",
        path,
        default=Path("scp2fhir-data"),
    )
    redis_fsync: str = setting(
        "SCP2FHIR_REDIS_FSYNC",
        "everysec",
        "appendfsync of the private Redis: always, everysec or no.",
        choice(("always", "everysec", "no"), "must be always, everysec or no"),
        default="everysec",
    )
    dashboard_bind: str = setting(
        "SCP2FHIR_DASHBOARD_BIND",
        "127.0.0.1",
        "Address of the RQ dashboard; any other than loopback requires "
        "SCP2FHIR_DASHBOARD_USERNAME and SCP2FHIR_DASHBOARD_PASSWORD.",
        text,
        default="127.0.0.1",
    )
    dashboard_username: str | None = setting(
        "SCP2FHIR_DASHBOARD_USERNAME",
        "(unset)",
        "HTTP basic-auth user of the RQ dashboard.",
        text,
        default=None,
    )
    dashboard_password: str | None = setting(
        "SCP2FHIR_DASHBOARD_PASSWORD",
        "(unset)",
        "HTTP basic-auth password of the RQ dashboard.",
        text,
        default=None,
        secret=True,
    )
    dashboard_port: int = setting(
        "SCP2FHIR_DASHBOARD_PORT",
        "9181",
        "Port of the RQ dashboard started by `scp2fhir up` (0 = none); binds 127.0.0.1.",
        integer(0, 65535),
        default=9181,
    )
    web_port: int = setting(
        "SCP2FHIR_WEB_PORT",
        "9464",
        "Port of `scp2fhir web` (/metrics, /healthz, /readyz, status page) under "
        "`scp2fhir up` (0 = none); binds SCP2FHIR_DASHBOARD_BIND.",
        integer(0, 65535),
        default=9464,
    )

    def __post_init__(self) -> None:
        if not is_loopback(self.dashboard_bind) and not (
            self.dashboard_username and self.dashboard_password
        ):
            raise ConfigError(
                f"SCP2FHIR_DASHBOARD_BIND={self.dashboard_bind} is reachable from other hosts: "
                "set SCP2FHIR_DASHBOARD_USERNAME and SCP2FHIR_DASHBOARD_PASSWORD"
            )

"""Process configuration, parsed once from the environment in ``main()``.

Every process (SCP, worker, supervisor, converter) builds exactly one
:class:`Settings` from ``os.environ`` (plus command-line overrides) and passes
it down. Nothing reads the environment at import time.

Each variable, its default and its meaning is listed in :data:`VARIABLES`, which
is also what the README's configuration table is checked against.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

FhirVersion = Literal["R4", "R5"]


class ConfigError(ValueError):
    """A configuration value is invalid; the message is one line for the operator."""


#: name -> (default shown to operators, description)
VARIABLES: dict[str, tuple[str, str]] = {
    "SCP2FHIR_REDIS_URL": (
        "(unset)",
        "Redis to use. Unset: `scp2fhir up` starts a private Redis; other verbs need it.",
    ),
    "SCP2FHIR_AE_TITLE": ("SCP2FHIR", "Called AE title the SCP answers to."),
    "SCP2FHIR_BIND": ("0.0.0.0", "Address the SCP listens on."),
    "SCP2FHIR_PORT": ("11112", "TCP port of the SCP."),
    "SCP2FHIR_QUIET_SECONDS": (
        "60",
        "A study is finished when no instance arrived for this long (may be fractional).",
    ),
    "SCP2FHIR_OUTPUT_DIR": ("./out", "ImagingStudy JSON is written to OUTPUT_DIR/ImagingStudy/."),
    "SCP2FHIR_FHIR_BASE_URL": (
        "(unset)",
        "FHIR server to PUT ImagingStudy resources to; unset: folder output only.",
    ),
    "SCP2FHIR_FHIR_VERSION": ("R4", "FHIR version of the output: R4 (4.0.1) or R5 (5.0.0)."),
    "SCP2FHIR_SPOOL": (
        "file",
        "Where the SCP holds a dataset while it arrives: `file` (a temporary file, memory "
        "stays flat for objects of any size) or `memory` (~25% faster, RAM per association "
        "= largest object).",
    ),
    "SCP2FHIR_SCP_PROCESSES": (
        "2",
        "SCP processes started by `scp2fhir up`; they share the port (SO_REUSEPORT), so "
        "parallel associations use several cores.",
    ),
    "SCP2FHIR_WORKERS": ("2", "Worker processes started by `scp2fhir up`."),
    "SCP2FHIR_DASHBOARD_PORT": (
        "9181",
        "Port of the RQ dashboard started by `scp2fhir up` (0 = none); binds 127.0.0.1.",
    ),
    "SCP2FHIR_DATA_DIR": (
        "./scp2fhir-data",
        "Where `scp2fhir up` keeps its private Redis (append-only file).",
    ),
    "SCP2FHIR_REDIS_FSYNC": (
        "everysec",
        "appendfsync of the private Redis: always, everysec or no.",
    ),
    "SCP2FHIR_RETENTION_SECONDS": (
        "604800",
        "How long a study's aggregate is kept after emission, so late instances "
        "produce a complete update.",
    ),
    "SCP2FHIR_LOG_LEVEL": ("INFO", "DEBUG, INFO, WARNING or ERROR."),
}

_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # DICOM AE VR: no backslash, no control


@dataclass(frozen=True)
class Settings:
    """Everything a scp2fhir process needs to know, validated."""

    redis_url: str | None = None
    ae_title: str = "SCP2FHIR"
    bind: str = "0.0.0.0"
    port: int = 11112
    quiet_seconds: float = 60.0
    output_dir: Path = Path("out")
    fhir_base_url: str | None = None
    fhir_version: FhirVersion = "R4"
    spool: str = "file"
    scp_processes: int = 2
    workers: int = 2
    dashboard_port: int = 9181
    data_dir: Path = Path("scp2fhir-data")
    redis_fsync: str = "everysec"
    retention_seconds: int = 604800
    log_level: str = "INFO"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """Build settings from ``env``; raise :class:`ConfigError` on the first bad value."""

        def get(name: str) -> str | None:
            value = env.get(name)
            return value.strip() if value is not None and value.strip() != "" else None

        defaults = cls()
        redis_url = get("SCP2FHIR_REDIS_URL")
        if redis_url is not None:
            _check_redis_url(redis_url)
        ae_title = get("SCP2FHIR_AE_TITLE") or defaults.ae_title
        if not _AE_TITLE.match(ae_title):
            raise ConfigError(
                f"SCP2FHIR_AE_TITLE={ae_title!r} is not a DICOM AE title "
                "(1-16 printable characters, no backslash)"
            )
        fhir_base_url = get("SCP2FHIR_FHIR_BASE_URL")
        if fhir_base_url is not None:
            parts = urlsplit(fhir_base_url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ConfigError(f"SCP2FHIR_FHIR_BASE_URL={fhir_base_url!r} is not an http(s) URL")
            fhir_base_url = fhir_base_url.rstrip("/")
        version = (get("SCP2FHIR_FHIR_VERSION") or defaults.fhir_version).upper()
        if version not in ("R4", "R5"):
            raise ConfigError(f"SCP2FHIR_FHIR_VERSION={version!r} must be R4 or R5")
        fsync = (get("SCP2FHIR_REDIS_FSYNC") or defaults.redis_fsync).lower()
        if fsync not in ("always", "everysec", "no"):
            raise ConfigError(f"SCP2FHIR_REDIS_FSYNC={fsync!r} must be always, everysec or no")
        spool = (get("SCP2FHIR_SPOOL") or defaults.spool).lower()
        if spool not in ("file", "memory"):
            raise ConfigError(f"SCP2FHIR_SPOOL={spool!r} must be file or memory")
        log_level = (get("SCP2FHIR_LOG_LEVEL") or defaults.log_level).upper()
        if log_level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ConfigError(
                f"SCP2FHIR_LOG_LEVEL={log_level!r} must be DEBUG, INFO, WARNING or ERROR"
            )
        return cls(
            redis_url=redis_url,
            ae_title=ae_title,
            bind=get("SCP2FHIR_BIND") or defaults.bind,
            port=_int(env, "SCP2FHIR_PORT", defaults.port, 1, 65535),
            quiet_seconds=_float(env, "SCP2FHIR_QUIET_SECONDS", defaults.quiet_seconds),
            output_dir=Path(get("SCP2FHIR_OUTPUT_DIR") or defaults.output_dir),
            fhir_base_url=fhir_base_url,
            fhir_version="R5" if version == "R5" else "R4",
            spool=spool,
            scp_processes=_int(env, "SCP2FHIR_SCP_PROCESSES", defaults.scp_processes, 1, 64),
            workers=_int(env, "SCP2FHIR_WORKERS", defaults.workers, 1, 64),
            dashboard_port=_int(env, "SCP2FHIR_DASHBOARD_PORT", defaults.dashboard_port, 0, 65535),
            data_dir=Path(get("SCP2FHIR_DATA_DIR") or defaults.data_dir),
            redis_fsync=fsync,
            retention_seconds=_int(
                env, "SCP2FHIR_RETENTION_SECONDS", defaults.retention_seconds, 60, 10**9
            ),
            log_level=log_level,
        )

    def require_redis_url(self) -> str:
        if self.redis_url is None:
            raise ConfigError(
                "SCP2FHIR_REDIS_URL is not set (only `scp2fhir up` starts a Redis of its own)"
            )
        return self.redis_url


def _check_redis_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ConfigError("SCP2FHIR_REDIS_URL must start with redis://, rediss:// or unix://")
    if parts.scheme != "unix" and not parts.hostname:
        raise ConfigError("SCP2FHIR_REDIS_URL has no host")


def _int(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = env.get(name, "").strip()
    if raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a whole number") from None
    if not low <= value <= high:
        raise ConfigError(f"{name}={value} is out of range {low}..{high}")
    return value


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None
    if not 0 < value <= 86400 * 7:
        raise ConfigError(f"{name}={value} must be above 0 and at most a week")
    return value

"""Settings every scp2fhir process shares: the Redis it uses, how long Redis keeps a
study's data, how it logs, and who may read the files it writes."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from scp.file_access import ACCESS_CHOICES
from scp.typed_settings import ConfigError, choice, flag, integer, setting


def _redis_url(name: str, raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in ("redis", "rediss", "unix", "redis+sentinel"):
        raise ConfigError(
            f"{name} must start with redis://, rediss://, unix:// or redis+sentinel://"
        )
    if parts.scheme != "unix" and not parts.hostname:
        raise ConfigError(f"{name} has no host")
    return raw


@dataclass(frozen=True)
class SharedSettings:
    """Redis, retention, logging and file modes: what the SCP, the workers, ``up`` and
    the operator verbs all read."""

    redis_url: str | None = setting(
        "SCP2FHIR_REDIS_URL",
        "(unset)",
        "Redis to use. Unset: `scp2fhir up` starts a private Redis; other verbs need it.",
        _redis_url,
        default=None,
    )
    # The SCP's signals and the workers' aggregates and indexes share this lifetime.
    retention_seconds: int = setting(
        "SCP2FHIR_RETENTION_SECONDS",
        "604800",
        "How long a study's aggregate is kept after emission, so late instances "
        "produce a complete update.",
        integer(60, 10**9),
        default=604800,
    )
    log_format: str = setting(
        "SCP2FHIR_LOG_FORMAT",
        "text",
        "`text` or `json` (one JSON object per line).",
        choice(("text", "json")),
        default="text",
    )
    log_hash_uids: bool = setting(
        "SCP2FHIR_LOG_HASH_UIDS",
        "0",
        "1: DICOM UIDs in logs are replaced by a short hash (uid:xxxxxxxxxxxx); IP "
        "addresses stay readable; a path with a UID is replaced whole.",
        flag,
        default=False,
    )
    log_level: str = setting(
        "SCP2FHIR_LOG_LEVEL",
        "INFO",
        "DEBUG, INFO, WARNING or ERROR.",
        choice(
            ("DEBUG", "INFO", "WARNING", "ERROR"),
            "must be DEBUG, INFO, WARNING or ERROR",
            upper=True,
        ),
        default="INFO",
    )
    # modes of the files (and new folders) holding patient data (scp.file_access): the
    # workers' output and the private Redis's append-only file
    file_access: str = setting(
        "SCP2FHIR_FILE_ACCESS",
        "private",
        "Who may read the ImagingStudy files and the private Redis's append-only file: "
        "`private` (files 0600, new folders 0700), `group` (0640/0750) or `umask` (as the "
        "process umask makes them).",
        choice(ACCESS_CHOICES),
        default="private",
    )

    def require_redis_url(self) -> str:
        if self.redis_url is None:
            raise ConfigError(
                "SCP2FHIR_REDIS_URL is not set (only `scp2fhir up` starts a Redis of its own)"
            )
        return self.redis_url

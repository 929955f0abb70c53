"""What ``scp2fhir up`` checks before it starts anything, so that a bad setting is one
line and exit 1 instead of children crash-looping behind a ``ready:`` line: the SCP's
(and the web page's and dashboard's) address and port can be bound, an external Redis
answers PING within :data:`REDIS_SECONDS`. ``scp2fhir scp`` and ``worker`` check their
Redis the same way."""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

import redis

#: How long an external Redis may take to answer PING.
REDIS_SECONDS = 5.0


class PreflightError(RuntimeError):
    """One line for the operator."""


def check_bind(what: str, variable: str, host: str, port: int) -> None:
    """``host``:``port`` can be bound now (released at once). SO_REUSEADDR as the servers
    set it, so a port in TIME_WAIT passes and one another process listens on does not."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
    except OSError as exc:  # socket.gaierror included
        reason = exc.strerror or str(exc)
        raise PreflightError(
            f"{what} cannot listen on {host}:{port} ({variable}): {reason}"
        ) from None


def where(url: str) -> str:
    """host:port/db of a Redis URL, without its password."""
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or 6379}{parts.path or ''}"


def check_redis(url: str, seconds: float = REDIS_SECONDS) -> None:
    client = redis.Redis.from_url(url, socket_connect_timeout=seconds, socket_timeout=seconds)
    try:
        client.ping()
    except redis.AuthenticationError as exc:
        raise PreflightError(f"Redis at {where(url)} refused the login: {exc}") from None
    except redis.BusyLoadingError:
        return  # it answers; it is loading its data, and clients wait for that
    except (redis.RedisError, OSError) as exc:
        raise PreflightError(
            f"Redis at {where(url)} does not answer PING within {seconds:g} s "
            f"(SCP2FHIR_REDIS_URL): {exc}"
        ) from None
    finally:
        client.close()

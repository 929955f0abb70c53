"""What ``scp2fhir up`` checks before it starts anything, so that a bad setting is one
line and exit 1 instead of children crash-looping behind a ``ready:`` line: the SCP's
(and the web page's and dashboard's) address and port can be bound, an external Redis
answers PING within :data:`REDIS_SECONDS`. ``scp2fhir scp`` and ``worker`` check their
Redis the same way."""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

import redis

from scp.connections import SENTINEL_SCHEME, connect

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
    if parts.scheme == SENTINEL_SCHEME:  # host:port,host:port/service/db
        return f"sentinel {parts.netloc.rsplit('@', 1)[-1]}{parts.path or ''}"
    try:
        return f"{parts.hostname}:{parts.port or 6379}{parts.path or ''}"
    except ValueError:  # a port that is not a number
        return f"{parts.hostname}{parts.path or ''}"


def check_redis(url: str, seconds: float = REDIS_SECONDS) -> None:
    """PING through the client the processes use (:func:`scp.connections.connect`), so a
    ``redis+sentinel://`` URL is asked of its Sentinels, and a URL that client cannot use is
    one line too."""
    try:
        clients = connect(url)
    except ValueError as exc:
        raise PreflightError(f"SCP2FHIR_REDIS_URL is not usable: {exc}") from None
    client = clients.rq
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
        clients.close()

"""Tests never reach beyond loopback: a guard on every Python socket of the test run.

Loaded by ``tests/conftest.py`` into the test process and, as the ``sitecustomize`` of
every Python child the tests start (this folder comes first on their ``PYTHONPATH``;
``SCP2FHIR_TEST_NETGUARD=1`` switches it on), into the SCPs, workers and CLIs too.

A connection (or datagram, or name lookup) to anything but this machine raises
:class:`NetworkGuardError` at once, past any retry loop, and is appended to the
file ``SCP2FHIR_TEST_NETGUARD_LOG``; the conftest fails the test that made it. Allowed:
Unix sockets, 127.0.0.0/8, ::1, the wildcard addresses and the names ``localhost``,
``*.localhost`` and this host's own name. Non-Python children (node, chromium, dcmtk,
redis) are not covered by this guard.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import ipaddress
import os
import socket
import sys
import traceback
from typing import Any

ENABLE = "SCP2FHIR_TEST_NETGUARD"
LOG = "SCP2FHIR_TEST_NETGUARD_LOG"


class NetworkGuardError(BaseException):
    """A test tried to reach beyond this machine.

    Not an :class:`OSError` on purpose: code that retries connection errors would swallow
    it (urllib wraps OSErrors in URLError, and pydicom's download retries those for 21 s
    per file: the 29-minute stall of a fresh venv). This one goes straight up."""


def _local_name(host: str) -> bool:
    name = host.rstrip(".").lower()
    return name in ("localhost", socket.gethostname().lower()) or name.endswith(".localhost")


def _local_address(host: str) -> bool:
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return _local_name(host)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback or ip.is_unspecified


def allowed(address: Any) -> bool:
    """Whether ``address`` (as given to ``connect``/``sendto``) stays on this machine."""
    if isinstance(address, (str, bytes)):  # AF_UNIX
        return True
    if isinstance(address, tuple) and address and isinstance(address[0], str):
        return _local_address(address[0])
    return True  # other families (netlink...) are not the internet


def refuse(what: str, target: Any) -> None:
    caller = "".join(traceback.format_stack(limit=8)[:-2]).replace("\n", " | ")
    line = f"pid={os.getpid()} argv={' '.join(sys.argv)[:200]} {what} {target!r} at {caller}"
    path = os.environ.get(LOG)
    if path:
        with open(path, "a", encoding="utf-8") as log:
            log.write(line[:4000] + "\n")
    raise NetworkGuardError(f"test network guard: {what} {target!r} is beyond loopback")


_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex
_real_sendto = socket.socket.sendto
_real_getaddrinfo = socket.getaddrinfo
_real_gethostbyname = socket.gethostbyname


def _connect(self: socket.socket, address: Any) -> None:
    if not allowed(address):
        refuse("connect to", address)
    _real_connect(self, address)


def _connect_ex(self: socket.socket, address: Any) -> int:
    if not allowed(address):
        refuse("connect to", address)
    return _real_connect_ex(self, address)


def _sendto(self: socket.socket, data: Any, *args: Any) -> int:
    if args and not allowed(args[-1]):
        refuse("datagram to", args[-1])
    return _real_sendto(self, data, *args)


def _lookup_allowed(host: Any) -> bool:
    if host is None or host in ("", b""):
        return True
    text = host.decode() if isinstance(host, bytes) else str(host)
    try:
        ipaddress.ip_address(text.split("%", 1)[0])
        return True  # a literal: no lookup; connect() judges the address
    except ValueError:
        return _local_name(text)


def _getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
    if not _lookup_allowed(host):
        refuse("name lookup of", host)
    return _real_getaddrinfo(host, *args, **kwargs)


def _gethostbyname(host: str) -> str:
    if not _lookup_allowed(host):
        refuse("name lookup of", host)
    return _real_gethostbyname(host)


def install() -> None:
    socket.socket.connect = _connect  # type: ignore[method-assign,assignment]
    socket.socket.connect_ex = _connect_ex  # type: ignore[method-assign,assignment]
    socket.socket.sendto = _sendto  # type: ignore[assignment]
    socket.getaddrinfo = _getaddrinfo
    socket.gethostbyname = _gethostbyname


def _chain() -> None:
    """Run the sitecustomize this file shadows (Debian's, for instance), if any."""
    here = os.path.dirname(os.path.abspath(__file__))
    path = [p for p in sys.path if os.path.abspath(p or ".") != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", path)
    if spec is not None and spec.loader is not None and spec.origin != os.path.abspath(__file__):
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)


if __name__ == "sitecustomize":
    if os.environ.get(ENABLE) == "1":
        install()
    _chain()

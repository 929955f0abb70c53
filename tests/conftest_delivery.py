"""Real parts for the delivery tests (imported by tests/test_delivery*.py).

* Real FHIR R4 servers, reset per test: the in-memory server of ``tests/fhirserver``
  (medplum's router, one per test module) and HAPI FHIR JPA of ``tests/hapi`` (one per
  test run). The ``fhir`` fixture runs a test once against each.
* :class:`FaultProxy`: a real HTTP(S) server between the bridge and that FHIR server.
  It forwards every request and, when told, answers 429/500/401 itself, answers late
  (after the server has done the work), refuses connections (server down), accepts
  gzip request bodies (the test server itself does not), edits the CapabilityStatement,
  and checks bearer tokens against a :class:`TokenServer`. It records what it saw.
* :class:`SilentServer`: accepts connections and never answers (a hung server).
* :class:`TokenServer`: a tiny OAuth2 token endpoint: client credentials with HTTP
  Basic, or SMART Backend Services (a JWT client assertion whose signature it verifies
  with the client's public key, plus audience, issuer, subject, lifetime and jti reuse).
* Studies pushed into Redis through the SCP's own :class:`scp.inbox.Inbox`, and
  ``scp2fhir worker`` processes configured for delivery.
"""

from __future__ import annotations

import base64
import copy
import gzip
import http.client
import json
import logging
import secrets
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, unquote_plus

import httpx
import jwt
import pytest
import redis
from pydicom.uid import generate_uid

from scp import keys
from scp.connections import connect
from scp.header import extract_header, read_dataset
from scp.inbox import Inbox
from tests.conftest import CHILD_PYTHONPATH, TEST_QUIET_SECONDS, start_worker, stop_process
from tests.fhirserver.harness import FhirServer
from tests.hapi.harness import HapiServer
from tests.support import GeneratedStudy, make_study, parse_configuration, wait_for
from workers.context import WorkerContext
from workers.summary import summarize

# The tests poll the FHIR server often; httpx would log every poll at INFO.
logging.getLogger("httpx").setLevel(logging.WARNING)

#: Quiet period of the delivery tests that push headers straight into Redis (no
#: association can split a study there, so it can be shorter than the pipeline's).
FAST_QUIET_SECONDS = 0.3


@pytest.fixture(scope="module")
def fhir_server() -> Iterator[FhirServer]:
    server = FhirServer().start()
    yield server
    server.stop()


class RealServer(Protocol):
    """What the delivery tests need of a real FHIR server (tests/fhirserver, tests/hapi)."""

    @property
    def root_url(self) -> str: ...

    @property
    def base_url(self) -> str: ...

    def reset(self) -> None: ...


@dataclass(frozen=True)
class Behaviour:
    """Where the real servers differ in what the tests can observe (README "Delivery to a
    FHIR server"): the status of an If-Match on an older version, and whether a
    gzip-compressed request body is read."""

    name: str
    conflict_status: int
    reads_gzip: bool


#: The R4 servers every delivery scenario runs against, by fixture parameter.
SERVERS = {
    "medplum": Behaviour("medplum", conflict_status=412, reads_gzip=False),
    "hapi": Behaviour("hapi", conflict_status=409, reads_gzip=True),
}
_SERVER_FIXTURES = {"medplum": "fhir_server", "hapi": "hapi_r4"}


@pytest.fixture(params=sorted(SERVERS))
def fhir(request: pytest.FixtureRequest) -> RealServer:
    """Each real R4 server in turn (the test runs once per server), emptied."""
    server: RealServer = request.getfixturevalue(_SERVER_FIXTURES[request.param])
    server.reset()
    return server


def behaviour(server: RealServer) -> Behaviour:
    return SERVERS["hapi" if isinstance(server, HapiServer) else "medplum"]


# --- the fault-injecting proxy ---------------------------------------------------------


@dataclass
class Fault:
    """Answer matching requests (``method``, path containing ``path``) ourselves."""

    status: int | None = None
    times: int = 1
    method: str | None = None
    path: str | None = None
    retry_after: str | None = None
    #: Forward the request, then hold the answer this long (the server did the work).
    delay: float | None = None
    outcome: dict[str, Any] | None = None

    def matches(self, method: str, path: str) -> bool:
        return (
            self.times > 0
            and (self.method is None or self.method == method)
            and (self.path is None or self.path in path)
        )


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    status: int
    at: float
    body_bytes: int = 0


@dataclass
class FaultProxy:
    upstream: str  # root URL of the FHIR server, e.g. http://127.0.0.1:PORT
    #: How the server behind the proxy answers (tests/conftest_delivery.SERVERS).
    behaviour: Behaviour = field(default_factory=lambda: SERVERS["medplum"])
    tls: ssl.SSLContext | None = None
    accept_gzip: bool = False
    #: Bearer tokens are checked with this (401 when it says no); None: no check.
    require_bearer: Callable[[str], bool] | None = None
    #: Applied to the CapabilityStatement on its way to the bridge.
    edit_capabilities: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    faults: list[Fault] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)
    port: int = 0
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def base_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}/fhir"

    def inject(self, **fault: Any) -> Fault:
        added = Fault(**fault)
        with self._lock:
            self.faults.append(added)
        return added

    def start(self) -> FaultProxy:
        proxy = self

        class Handler(_ProxyHandler):
            owner = proxy

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        if self.tls is not None:
            server.socket = self.tls.wrap_socket(server.socket, server_side=True)
        self.port = server.server_address[1]
        self._server = server
        threading.Thread(target=server.serve_forever, daemon=True, name="fault-proxy").start()
        return self

    def stop(self) -> None:
        """Close the listener: connections are refused until :meth:`start` again (same
        port), as when the server is down."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def writes(self, method: str | None = None) -> list[Seen]:
        with self._lock:
            return [
                s
                for s in self.seen
                if s.method in ("PUT", "POST") and (method is None or s.method == method)
            ]

    def _take_fault(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.matches(method, path):
                    fault.times -= 1
                    return fault
        return None

    def _record(self, seen: Seen) -> None:
        with self._lock:
            self.seen.append(seen)


class _ProxyHandler(BaseHTTPRequestHandler):
    owner: FaultProxy
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def _answer(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        try:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            pass  # the client gave up (timeout): what a late answer meets

    def _handle(self) -> None:
        proxy = self.owner
        method, path = self.command, self.path
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {k: v for k, v in self.headers.items()}
        seen = Seen(method, path, headers, 0, time.monotonic(), len(body))
        fault = proxy._take_fault(method, path)
        if fault is not None and fault.status is not None:
            seen.status = fault.status
            proxy._record(seen)
            extra = {"Content-Type": "application/fhir+json"}
            if fault.retry_after is not None:
                extra["Retry-After"] = fault.retry_after
            if fault.status == 401:
                extra["WWW-Authenticate"] = 'Bearer error="invalid_token"'
            outcome = fault.outcome or {
                "resourceType": "OperationOutcome",
                "issue": [{"severity": "error", "code": "transient", "diagnostics": "injected"}],
            }
            self._answer(fault.status, json.dumps(outcome).encode(), extra)
            return
        if proxy.require_bearer is not None:
            auth = headers.get("Authorization", "")
            token = auth[7:] if auth.startswith("Bearer ") else ""
            if not proxy.require_bearer(token):
                seen.status = 401
                proxy._record(seen)
                outcome = {
                    "resourceType": "OperationOutcome",
                    "issue": [{"severity": "error", "code": "login"}],
                }
                self._answer(
                    401,
                    json.dumps(outcome).encode(),
                    {
                        "Content-Type": "application/fhir+json",
                        "WWW-Authenticate": 'Bearer error="invalid_token"',
                    },
                )
                return
        # Accept-Encoding stays behind: answers come plain, so the proxy can read and edit
        # them (HAPI compresses its answers when asked to).
        forward = {
            k: v
            for k, v in headers.items()
            if k.lower()
            not in ("host", "connection", "content-length", "authorization", "accept-encoding")
        }
        if headers.get("Content-Encoding") == "gzip" and proxy.accept_gzip:
            body = gzip.decompress(body)
            forward.pop("Content-Encoding", None)
        # Recorded before it is forwarded: a test that sees the write upstream must find it
        # here too (its status follows when the answer is back).
        proxy._record(seen)
        host, port = proxy.upstream.split("//")[1].split(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=60)
        forward["Host"] = f"127.0.0.1:{proxy.port}"
        connection.request(method, path, body=body or None, headers=forward)
        response = connection.getresponse()
        answer = response.read()
        status = response.status
        out = {
            k: v
            for k, v in response.getheaders()
            if k.lower() not in ("connection", "content-length", "transfer-encoding", "keep-alive")
        }
        connection.close()
        if path.split("?")[0].endswith("/metadata") and proxy.edit_capabilities is not None:
            answer = json.dumps(proxy.edit_capabilities(json.loads(answer))).encode()
        with proxy._lock:
            seen.status = status
        if fault is not None and fault.delay is not None:
            time.sleep(fault.delay)
        self._answer(status, answer, out)


@pytest.fixture
def proxy(fhir: RealServer) -> Iterator[FaultProxy]:
    started = FaultProxy(fhir.root_url, behaviour=behaviour(fhir)).start()
    yield started
    started.stop()


class SilentServer:
    """A TCP server that accepts connections, reads what comes and never answers: a
    FHIR server hung on a lock, or a firewall that swallows the answers."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True, name="silent")
        self._thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/fhir"

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            self.connections.append(connection)

    def waiting(self) -> int:
        """Connections the client still holds open, waiting for an answer."""
        alive = 0
        for connection in self.connections:
            connection.setblocking(False)
            try:
                alive += connection.recv(65536, socket.MSG_PEEK) != b""
            except BlockingIOError:
                alive += 1  # open, nothing new sent: the client is waiting
            except OSError:
                pass
        return alive

    def close(self) -> None:
        self.listener.close()
        for connection in self.connections:
            connection.close()


# --- the token endpoint ----------------------------------------------------------------


@dataclass
class TokenServer:
    """An OAuth2 token endpoint that issues short-lived random tokens."""

    client_id: str
    secret: str | None = None
    #: PEM public key: SMART Backend Services (private_key_jwt) instead of a secret.
    public_key: bytes | None = None
    expires_in: int = 60
    port: int = 0
    issued: dict[str, float] = field(default_factory=dict)
    requests: int = 0
    refusals: list[str] = field(default_factory=list)
    assertion_headers: list[dict[str, Any]] = field(default_factory=list)
    _jtis: set[str] = field(default_factory=set)
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/oauth/token"

    def valid(self, token: str) -> bool:
        with self._lock:
            expiry = self.issued.get(token)
        return expiry is not None and expiry > time.monotonic()

    def expire_all(self) -> None:
        """The server forgets its tokens early (revocation, restart, clock skew): the
        bridge's cached token is now expired in the FHIR server's eyes."""
        with self._lock:
            self.issued.clear()

    def start(self) -> TokenServer:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
                status, body = owner._issue(form, self.headers.get("Authorization", ""))
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Cache-Control", "no-store")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        self.port = server.server_address[1]
        self._server = server
        threading.Thread(target=server.serve_forever, daemon=True, name="token-server").start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def _refuse(self, reason: str) -> tuple[int, dict[str, Any]]:
        self.refusals.append(reason)
        return 401, {"error": "invalid_client", "error_description": reason}

    def _issue(self, form: dict[str, str], authorization: str) -> tuple[int, dict[str, Any]]:
        with self._lock:
            self.requests += 1
        if form.get("grant_type") != "client_credentials":
            return 400, {"error": "unsupported_grant_type"}
        if self.public_key is None:
            if not authorization.startswith("Basic "):
                return self._refuse("no client authentication")
            pair = base64.b64decode(authorization[6:]).decode()
            client_id, _, secret = pair.partition(":")
            if unquote_plus(client_id) != self.client_id or unquote_plus(secret) != self.secret:
                return self._refuse("bad client id or secret")
        else:
            if authorization:
                return self._refuse("two client authentications")
            if form.get("client_assertion_type") != (
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
            ):
                return self._refuse("wrong client_assertion_type")
            assertion = form.get("client_assertion", "")
            try:
                header = jwt.get_unverified_header(assertion)
                claims = jwt.decode(
                    assertion,
                    self.public_key,
                    algorithms=["RS384", "ES384"],
                    audience=self.url,
                    issuer=self.client_id,
                    options={"require": ["exp", "jti", "sub", "iss", "aud"]},
                )
            except jwt.PyJWTError as exc:
                return self._refuse(f"assertion rejected: {type(exc).__name__}")
            if claims["sub"] != self.client_id:
                return self._refuse("sub is not the client id")
            if claims["exp"] > time.time() + 300 + 5:
                return self._refuse("assertion lives longer than five minutes")
            with self._lock:
                if claims["jti"] in self._jtis:
                    return self._refuse("jti replayed")
                self._jtis.add(claims["jti"])
                self.assertion_headers.append(header)
        token = secrets.token_urlsafe(24)
        with self._lock:
            self.issued[token] = time.monotonic() + self.expires_in
        return 200, {
            "access_token": token,
            "token_type": "bearer",
            "expires_in": self.expires_in,
            "scope": form.get("scope", ""),
        }


# --- studies and workers ---------------------------------------------------------------


def study_headers(
    folder: Path, spec: list[tuple[str, int]], study_uid: str | None = None
) -> tuple[GeneratedStudy, list[Any]]:
    """A generated study and the DICOM JSON headers the SCP would push for it."""
    study = make_study(folder, spec, study_uid=study_uid)
    return study, [extract_header(read_dataset(path)).json for path in study.files]


def clone_header(
    template: dict[str, Any], study_uid: str, series_uid: str, number: int
) -> dict[str, Any]:
    """The template header (a real file's, as the SCP extracted it) as another instance:
    new SOP Instance UID, the given study, series and instance number."""
    header = copy.deepcopy(template)
    header["0020000D"]["Value"] = [study_uid]
    header["0020000E"]["Value"] = [series_uid]
    header["00080018"]["Value"] = [generate_uid()]
    header["00200013"] = {"vr": "IS", "Value": [number]}
    return header


def cloned_study(
    template: dict[str, Any], series: int, per_series: int
) -> tuple[str, list[dict[str, Any]]]:
    """A large study without writing files: ``series`` x ``per_series`` clones of one
    header; returns its Study Instance UID and the headers."""
    study_uid = generate_uid()
    headers = []
    for s in range(series):
        series_uid = generate_uid()
        for n in range(1, per_series + 1):
            header = clone_header(template, study_uid, series_uid, n)
            header["00200011"] = {"vr": "IS", "Value": [s + 1]}
            headers.append(header)
    return study_uid, headers


def push(redis_url: str, headers: list[Any]) -> None:
    """Push headers as the SCP does (inbox stream, open study, drain request)."""
    data = redis.Redis.from_url(redis_url, decode_responses=True)
    rq = redis.Redis.from_url(redis_url)
    inbox = Inbox(data, rq)
    for header in headers:
        inbox.push(summarize(header).study_uid, header)
    data.close()
    rq.close()


def delivery_env(
    redis_url: str, output_dir: Path, fhir_base_url: str, **extra: str
) -> dict[str, str]:
    """Worker environment: short quiet period, short timeouts and backoffs."""
    import os

    env = {
        **os.environ,
        "SCP2FHIR_REDIS_URL": redis_url,
        "SCP2FHIR_QUIET_SECONDS": str(FAST_QUIET_SECONDS),
        "SCP2FHIR_OUTPUT_DIR": str(output_dir),
        "SCP2FHIR_FHIR_BASE_URL": fhir_base_url,
        "SCP2FHIR_FHIR_TIMEOUT_SECONDS": "2",
        "SCP2FHIR_FHIR_RETRY_BASE_SECONDS": "0.2",
        "SCP2FHIR_FHIR_RETRY_MAX_SECONDS": "1",
        "SCP2FHIR_FHIR_MAX_ATTEMPTS": "30",
        "SCP2FHIR_RETENTION_SECONDS": "3600",
        "PYTHONPATH": CHILD_PYTHONPATH,
    }
    env.update(extra)
    return env


class Worker:
    """One ``scp2fhir worker`` process; its log is kept for assertions."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.log = log
        self.process = start_worker(env, log)

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        """Warm shutdown; a second SIGTERM (RQ's cold shutdown) after a moment, so a
        job stuck waiting for an answer does not hold the test up."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(2)
            except subprocess.TimeoutExpired:
                self.process.terminate()
        stop_process(self.process)


def worker_context(env: dict[str, str]) -> WorkerContext:
    """The context ``scp2fhir worker`` builds from ``env`` (settings and destinations)."""
    parsed = parse_configuration(env)
    return WorkerContext.build(
        parsed.worker, parsed.shared, connect(parsed.shared.require_redis_url()), parsed.delivery
    )


def studies_by_identifier(base_url: str, study_uid: str) -> list[dict[str, Any]]:
    response = httpx.get(
        f"{base_url}/ImagingStudy",
        params={"identifier": f"urn:dicom:uid|urn:oid:{study_uid}"},
        timeout=10,
    )
    response.raise_for_status()
    return [entry["resource"] for entry in response.json().get("entry", [])]


def wait_delivered(
    base_url: str, study_uid: str, instances: int, timeout: float = 30, step: float = 0.05
) -> dict[str, Any]:
    """The study's one ImagingStudy once it has ``instances`` instances."""

    def ready() -> dict[str, Any] | None:
        found = studies_by_identifier(base_url, study_uid)
        assert len(found) <= 1, f"{len(found)} ImagingStudy resources for one study"
        if found and found[0].get("numberOfInstances") == instances:
            return found[0]
        return None

    result: dict[str, Any] = wait_for(ready, timeout, f"{instances} instances delivered", step)
    return result


def pending(redis_url: str) -> list[str]:
    data = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        result: Any = data.zrange(keys.DELIVER_PENDING, 0, -1)
        return list(result)
    finally:
        data.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


__all__ = [
    "FAST_QUIET_SECONDS",
    "SERVERS",
    "TEST_QUIET_SECONDS",
    "Behaviour",
    "FaultProxy",
    "RealServer",
    "SilentServer",
    "TokenServer",
    "Worker",
    "behaviour",
    "clone_header",
    "cloned_study",
    "delivery_env",
    "fhir",
    "fhir_server",
    "pending",
    "proxy",
    "push",
    "studies_by_identifier",
    "study_headers",
    "wait_delivered",
    "worker_context",
]

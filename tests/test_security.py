"""Who may talk to scp2fhir: AE titles, peers, limits, DICOM TLS, Redis auth and TLS."""

from __future__ import annotations

import logging
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
import redis
from pydicom.uid import generate_uid
from pynetdicom import AE

from scp import fastpath, keys, statuses
from scp import server as scp_server
from scp.connections import connect
from scp.inbox import Inbox
from scp.settings import ScpSettings
from scp.shared_settings import SharedSettings
from scp.typed_settings import ConfigError, from_env
from scp.up.settings import UpSettings
from tests.certs import Pair, make_pki
from tests.conftest import ScpThread
from tests.support import (
    DCMTK_ENV,
    RedisProcess,
    dcmtk,
    free_port,
    parse_configuration,
    sample_file,
    wait_for,
)

VERIFICATION = "1.2.840.10008.1.1"


def start(redis_url: str, **env: str) -> tuple[ScpThread, int]:
    port = free_port()
    server = ScpThread({"SCP2FHIR_REDIS_URL": redis_url, "SCP2FHIR_PORT": str(port), **env})
    server.thread.start()
    return server, port


def associate(port: int, calling: str = "TESTSCU", tls: ssl.SSLContext | None = None) -> Any:
    ae = AE(ae_title=calling)
    ae.add_requested_context(VERIFICATION)
    ct = pydicom.dcmread(sample_file("CT_small.dcm"))
    ae.add_requested_context(ct.SOPClassUID, ct.file_meta.TransferSyntaxUID)
    tls_args = (tls, "localhost") if tls else None
    return ae.associate("127.0.0.1", port, ae_title="SCP2FHIR", tls_args=tls_args)


def wait_listening(port: int, tls: ssl.SSLContext | None = None) -> None:
    def up() -> bool:
        assoc = associate(port, tls=tls)
        if assoc.is_established:
            assoc.release()
            return True
        return False

    wait_for(up, 10, "the SCP")


@pytest.fixture
def scp_with(redis_url: str) -> Iterator[Any]:
    servers: list[ScpThread] = []
    # pynetdicom at WARNING, as in production (scp.logs) and as ScpThread.start has it:
    # at INFO (pytest's log level) the SCP binds pynetdicom's per-PDU logging and the
    # C-STORE fast path (scp.fastpath) stays off.
    library = logging.getLogger("pynetdicom")
    level = library.level
    library.setLevel(logging.WARNING)

    def make(**env: str) -> int:
        server, port = start(redis_url, **env)
        servers.append(server)
        return port

    yield make
    for server in servers:
        server.stop()
    library.setLevel(level)


def test_calling_ae_allow_list(scp_with: Any) -> None:
    port = scp_with(SCP2FHIR_ALLOWED_CALLING_AETS="CT01, MR02")
    wait_for(lambda: _established_and_release(associate(port, "CT01")), 10, "the SCP")
    refused = associate(port, "INTRUDER")
    assert refused.is_rejected


def _established_and_release(assoc: Any) -> bool:
    if assoc.is_established:
        assoc.release()
        return True
    return False


def test_peer_allow_list_refuses_at_accept(scp_with: Any) -> None:
    port = scp_with(SCP2FHIR_ALLOWED_PEERS="10.0.0.0/8")
    wait_for(lambda: _accepting(port), 10, "the port to accept")
    assoc = associate(port)
    assert not assoc.is_established and not assoc.is_rejected  # closed before A-ASSOCIATE
    allowed = scp_with(SCP2FHIR_ALLOWED_PEERS="10.0.0.0/8, 127.0.0.1")
    wait_listening(allowed)


def _accepting(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_limit_per_calling_ae(scp_with: Any) -> None:
    port = scp_with(SCP2FHIR_MAX_ASSOCIATIONS_PER_AE="1")
    wait_listening(port)
    first = associate(port, "CT01")
    assert first.is_established
    second = associate(port, "CT01")
    assert second.is_rejected, "a second association of the same AE is over its limit"
    other = associate(port, "MR02")
    assert other.is_established, "other AEs are not affected"
    for assoc in (first, other):
        assoc.release()
    third = associate(port, "CT01")
    assert third.is_established, "the slot is free again after release"
    third.release()


def test_max_associations(scp_with: Any) -> None:
    port = scp_with(SCP2FHIR_MAX_ASSOCIATIONS="2")
    wait_listening(port)
    held = [associate(port, f"AE{n}") for n in range(2)]
    assert all(a.is_established for a in held)
    assert not associate(port, "AE3").is_established
    for assoc in held:
        assoc.release()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Pair, Pair]:
    return make_pki(tmp_path_factory.mktemp("pki"))


def client_context(
    ca: Path, client: Pair | None, maximum: ssl.TLSVersion | None = None
) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
    if client:
        context.load_cert_chain(client.cert, client.key)
    if maximum:
        context.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        context.maximum_version = maximum
    return context


def tls_env(pki: tuple[Path, Pair, Pair]) -> dict[str, str]:
    ca, server, _ = pki
    return {
        "SCP2FHIR_TLS_CERT": str(server.cert),
        "SCP2FHIR_TLS_KEY": str(server.key),
        "SCP2FHIR_TLS_CA": str(ca),
    }


@pytest.mark.parametrize("fast_path", ["1", "0"], ids=["fast", "pynetdicom"])
def test_dicom_tls_with_client_certificates(
    fast_path: str,
    scp_with: Any,
    pki: tuple[Path, Pair, Pair],
    data: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    served: list[int] = []
    serve = fastpath.FastStore._serve

    def counted(self: fastpath.FastStore) -> None:
        served.append(1)
        serve(self)

    monkeypatch.setattr(fastpath.FastStore, "_serve", counted)
    ca, _, client = pki
    port = scp_with(**tls_env(pki), SCP2FHIR_FAST_PATH=fast_path)
    good = client_context(ca, client)
    wait_listening(port, tls=good)
    # A stalled peer that never starts its handshake must not block anyone else.
    with socket.create_connection(("127.0.0.1", port)):
        assoc = associate(port, tls=good)
        assert assoc.is_established
        ds = pydicom.dcmread(sample_file("CT_small.dcm"))
        ds.SOPInstanceUID = generate_uid()
        assert assoc.send_c_store(ds).Status == statuses.SUCCESS
        assoc.release()
    assert data.xlen(keys.INBOX) == 1
    assert len(served) == (1 if fast_path == "1" else 0), "the C-STORE took the wrong path"
    assert not associate(port, tls=client_context(ca, None)).is_established, "no client cert"
    assert not associate(port).is_established, "plain TCP is not spoken"


def old_tls_client(ca: Path, client: Pair, version: ssl.TLSVersion) -> ssl.SSLContext:
    """A client that really offers only ``version`` (TLS 1.0 or 1.1): OpenSSL 3 allows
    those only at security level 0, so without ``@SECLEVEL=0`` a client capped at 1.1
    has no cipher and fails on its own side, before the server decides anything."""
    context = client_context(ca, client)
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    context.minimum_version = version
    context.maximum_version = version
    return context


def tls_handshake(port: int, context: ssl.SSLContext) -> str:
    """The TLS version one handshake with the SCP agrees on (raises ssl.SSLError)."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        return str(tls.version())


#: The SCP's own TLS context, as shipped.
SHIPPED_TLS_CONTEXT = scp_server.tls_context


def lenient_tls_context(settings: ScpSettings) -> ssl.SSLContext | None:
    """The control: the SCP's own context, but allowing TLS 1.0 (at security level 0)."""
    context = SHIPPED_TLS_CONTEXT(settings)
    assert context is not None
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    context.minimum_version = ssl.TLSVersion.TLSv1
    return context


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
@pytest.mark.parametrize("version", ["TLSv1", "TLSv1_1"])
def test_tls_older_than_1_2_is_refused(
    scp_with: Any, pki: tuple[Path, Pair, Pair], monkeypatch: pytest.MonkeyPatch, version: str
) -> None:
    ca, _, client = pki
    old = old_tls_client(ca, client, getattr(ssl.TLSVersion, version))
    modern = client_context(ca, client)
    port = scp_with(**tls_env(pki))
    wait_listening(port, tls=modern)
    assert tls_handshake(port, modern) in ("TLSv1.2", "TLSv1.3")
    # The server answers the old client's hello with a protocol_version alert: the
    # refusal is the SCP's (a client-side failure would be "no ciphers available").
    with pytest.raises(ssl.SSLError, match="ALERT_PROTOCOL_VERSION"):
        tls_handshake(port, old)
    assert not associate(port, tls=old).is_established

    # Control: the same client against an SCP that allows TLS 1.0 gets through, so the
    # refusal above is the SCP's rule, not this client's inability.
    monkeypatch.setattr(scp_server, "tls_context", lenient_tls_context)
    lenient = scp_with(**tls_env(pki))
    wait_listening(lenient, tls=modern)
    assert tls_handshake(lenient, old) == version.replace("_", ".")
    assoc = associate(lenient, tls=old)
    assert assoc.is_established
    assoc.release()


def test_dcmtk_storescu_over_tls(
    scp_with: Any, pki: tuple[Path, Pair, Pair], data: redis.Redis
) -> None:
    ca, _, client = pki
    port = scp_with(**tls_env(pki))
    wait_listening(port, tls=client_context(ca, client))
    result = subprocess.run(
        [
            dcmtk("storescu"),
            "+tls",
            str(client.key),
            str(client.cert),
            "+cf",
            str(ca),
            "-aec",
            "SCP2FHIR",
            "127.0.0.1",
            str(port),
            sample_file("CT_small.dcm"),
        ],
        env=DCMTK_ENV,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert data.xlen(keys.INBOX) == 1


def test_redis_with_acl_user_and_tls(tmp_path: Path, pki: tuple[Path, Pair, Pair]) -> None:
    ca, server, _ = pki
    tls_port = free_port()
    secured = RedisProcess(
        "--tls-port",
        str(tls_port),
        "--tls-cert-file",
        str(server.cert),
        "--tls-key-file",
        str(server.key),
        "--tls-ca-cert-file",
        str(ca),
        "--tls-auth-clients",
        "no",
        "--user",
        "default",
        "off",
        "--user",
        "scp2fhir",
        "on",
        ">s3cret",
        "~*",
        "&*",
        "+@all",
    )
    try:
        secured.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                "0",
                "--bind",
                "127.0.0.1",
                "--dir",
                str(secured.dir),
                "--save",
                "",
                *secured.extra,
            ],
            stdout=subprocess.DEVNULL,
        )
        url = f"rediss://scp2fhir:s3cret@127.0.0.1:{tls_port}/0?ssl_ca_certs={ca}"
        from_env(SharedSettings, {"SCP2FHIR_REDIS_URL": url})  # accepted as configuration
        clients = connect(url)
        wait_for(lambda: _pings(clients.data), 10, "TLS redis")
        Inbox(clients.data, clients.rq).push(
            "1.2.3", {"0020000D": {"vr": "UI", "Value": ["1.2.3"]}}
        )
        assert clients.data.xlen(keys.INBOX) == 1
        wrong = connect(f"rediss://scp2fhir:wrong@127.0.0.1:{tls_port}/0?ssl_ca_certs={ca}")
        with pytest.raises(redis.AuthenticationError):
            wrong.data.ping()
        clients.close()
    finally:
        secured.stop()


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SCP2FHIR_DASHBOARD_BIND": "0.0.0.0"}, "SCP2FHIR_DASHBOARD_USERNAME"),
        ({"SCP2FHIR_TLS_CERT": __file__}, "go together"),
        ({"SCP2FHIR_TLS_CERT": "/nonexistent.pem"}, "not a readable file"),
        ({"SCP2FHIR_ALLOWED_PEERS": "10.0.0.300"}, "SCP2FHIR_ALLOWED_PEERS"),
        ({"SCP2FHIR_ALLOWED_CALLING_AETS": "OK,BAD\\AE"}, "invalid AE title"),
    ],
)
def test_unsafe_or_broken_security_settings_fail_at_start(
    env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_configuration(env)


def test_exposed_dashboard_with_credentials_is_accepted() -> None:
    settings = from_env(
        UpSettings,
        {
            "SCP2FHIR_DASHBOARD_BIND": "0.0.0.0",
            "SCP2FHIR_DASHBOARD_USERNAME": "ops",
            "SCP2FHIR_DASHBOARD_PASSWORD": "pw",
        },
    )
    assert "pw" not in repr(settings)


def test_redis_sentinel_url_follows_the_master(tmp_path: Path) -> None:
    master = RedisProcess().start()
    sentinel_port = free_port()
    config = tmp_path / "sentinel.conf"
    config.write_text(
        f"port {sentinel_port}\nbind 127.0.0.1\n"
        f"sentinel monitor mymaster 127.0.0.1 {master.port} 1\n"
    )
    sentinel = subprocess.Popen(
        ["redis-server", str(config), "--sentinel"], stdout=subprocess.DEVNULL
    )
    try:
        url = f"redis+sentinel://127.0.0.1:{sentinel_port}/mymaster/0"
        from_env(SharedSettings, {"SCP2FHIR_REDIS_URL": url})
        clients = connect(url)
        wait_for(lambda: _pings(clients.data), 15, "the master through the sentinel")
        Inbox(clients.data, clients.rq).push(
            "1.2.3", {"0020000D": {"vr": "UI", "Value": ["1.2.3"]}}
        )
        direct = redis.Redis(port=master.port)
        assert direct.xlen(keys.INBOX) == 1, "the write went to the monitored master"
        direct.close()
        clients.close()
    finally:
        sentinel.terminate()
        sentinel.wait(10)
        master.stop()

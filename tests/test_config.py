"""The configuration file and the environment: one precedence rule, typos refused, errors
one line naming the variable or the file key; the destinations' typed settings."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from scp import config
from scp.settings import ScpSettings
from scp.typed_settings import ConfigError
from scp.variables import VARIABLES
from tests.conftest import ROOT, run_cli
from tests.support import parse_configuration
from workers.settings import WorkerSettings


def write(tmp_path: Path, text: str, name: str = "scp2fhir.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``scp2fhir`` with ``env`` as its only SCP2FHIR_* variables."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SCP2FHIR_")}
    return run_cli(*args, env={**clean, "PYTHONPATH": str(ROOT), **env})


# --- precedence -------------------------------------------------------------------------


def test_the_environment_wins_over_the_file_and_a_flag_over_both(tmp_path: Path) -> None:
    path = write(tmp_path, 'quiet_seconds = 5\nae_title = "FROMFILE"\nport = 104\n')
    env = {"SCP2FHIR_CONFIG": str(path), "SCP2FHIR_QUIET_SECONDS": "7", "SCP2FHIR_PORT": ""}
    loaded = config.load(env, {"SCP2FHIR_AE_TITLE": "FROMFLAG"})
    scp = config.settings(loaded, ScpSettings)
    assert config.settings(loaded, WorkerSettings).quiet_seconds == 7  # environment over file
    assert scp.ae_title == "FROMFLAG"  # flag over file (and environment)
    assert scp.port == 104  # an empty variable counts as not set: the file's value
    assert str(loaded.origin("SCP2FHIR_QUIET_SECONDS")) == "environment SCP2FHIR_QUIET_SECONDS"
    assert str(loaded.origin("SCP2FHIR_PORT")) == f"file {path}: port"
    assert str(loaded.origin("SCP2FHIR_AE_TITLE")).startswith("flag")
    assert str(loaded.origin("SCP2FHIR_BIND")) == "default"


def test_every_variable_has_its_file_key(tmp_path: Path) -> None:
    # Booleans and lists in TOML become what the variable would hold.
    path = write(
        tmp_path,
        'fhir_bundle = true\nallowed_calling_aets = ["CT1", "MR2"]\nmax_pdu = 65536\n'
        "log_hash_uids = false\nretention_seconds = 120\n",
    )
    parsed = parse_configuration({"SCP2FHIR_CONFIG": str(path)})
    assert parsed.worker.fhir_bundle is True and parsed.shared.log_hash_uids is False
    assert parsed.scp.allowed_calling_aets == ("CT1", "MR2")
    assert (parsed.scp.max_pdu, parsed.shared.retention_seconds) == (65536, 120)
    assert config.known_variables()["SCP2FHIR_FHIR_BASE_URL"] == "fhir_base_url"
    assert set(config.known_variables()) == set(VARIABLES)


def test_the_environments_one_destination_also_reads_the_files_top_level(tmp_path: Path) -> None:
    path = write(tmp_path, 'fhir_base_url = "http://fhir.example/fhir/"\nfhir_max_attempts = 3\n')
    delivery = parse_configuration(
        {"SCP2FHIR_CONFIG": str(path), "SCP2FHIR_FHIR_TIMEOUT_SECONDS": "9"}
    ).delivery
    (only,) = delivery.destinations
    assert (only.name, only.url) == ("default", "http://fhir.example/fhir")
    assert (only.retry.max_attempts, only.timeout_seconds) == (3, 9)
    assert str(only.origins["url"]) == f"file {path}: fhir_base_url"
    assert str(only.origins["timeout_seconds"]) == "environment SCP2FHIR_FHIR_TIMEOUT_SECONDS"


# --- errors: one line naming the variable or the file key -------------------------------


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        ("quiet_second = 5\n", {}, "unknown key 'quiet_second' (did you mean quiet_seconds?)"),
        ("[scp]\nport = 1\n", {}, "unknown key 'scp'"),
        ("port = 99999\n", {}, ": port=99999 is out of range 1..65535"),
        ("port = [1, 2]\n", {}, "port must be a string, a number, true/false or a list"),
        ('fhir_version = "R3"\n', {}, ": fhir_version='R3' must be R4 or R5"),
        ('config = "other.toml"\n', {}, "config names the file itself"),
        ("[[destinations]]\n", {}, "destinations[0].name is missing"),
        (
            '[[destinations]]\nname = "a"\nurl = "http://x/fhir"\ntimeout = 3\n',
            {},
            "unknown key destinations[0].timeout",
        ),
        (
            '[[destinations]]\nname = "a"\nurl = "http://x/fhir"\n'
            '[destinations.auth]\nmethod = "bearer"\ntoken = "t"\nscopes = "x"\n',
            {},
            "unknown key destinations[0].auth.scopes",
        ),
        (
            '[[destinations]]\nname = "a"\nurl = "http://x/fhir"\n'
            '[[destinations]]\nname = "a"\nfolder = "out-a"\n',
            {},
            "destinations[1].name='a' is already the name of destinations[0]",
        ),
        (
            '[[destinations]]\nname = "a"\nurl = "http://x/fhir"\nfolder = "x"\n',
            {},
            "destination 'a' needs one of url or folder",
        ),
        (
            '[[destinations]]\nname = "a b"\nurl = "http://x/fhir"\n',
            {},
            "destinations[0].name='a b' must be 1-40 letters",
        ),
        (
            '[[destinations]]\nname = "a"\nfolder = "x"\nwrite_mode = "client-id"\n',
            {},
            "destinations[0].write_mode is for url destinations, not folders",
        ),
        (
            '[[destinations]]\nname = "a"\nurl = "http://x/fhir"\nprofile = "mii"\n'
            'fhir_version = "R5"\n',
            {},
            "destinations[0].profile=mii is defined for FHIR R4, not "
            "destinations[0].fhir_version=R5",
        ),
        (
            '[[destinations]]\nname = "a"\nurl = "http://x/fhir"\nprofile = "mii"\n'
            'profile_version = "2027.0.0-ballot"\n',
            {},
            "destinations[0].profile_version='2027.0.0-ballot': this scp2fhir builds mii 2026.0.0",
        ),
        (
            '[[destinations]]\nname = "a"\nurl = "http://x/fhir"\n',
            {"SCP2FHIR_FHIR_MAX_ATTEMPTS": "3"},
            "SCP2FHIR_FHIR_MAX_ATTEMPTS is set, but",
        ),
        (
            '[[destinations]]\nname = "a"\nurl = "http://x/fhir"\n'
            '[destinations.auth]\nmethod = "bearer"\ntoken_file = "/nonexistent/token"\n',
            {},
            "destinations[0].auth.token_file='/nonexistent/token' cannot be read",
        ),
        (
            '[[destinations]]\nname = "a"\nurl = "http://x/fhir"\n'
            '[destinations.pseudonymize]\nkey_file = "/nonexistent/key"\n',
            {},
            "destinations[0].pseudonymize.key_file='/nonexistent/key' cannot be read",
        ),
        (
            '[[destinations]]\nname = "a"\nurl = "http://x/fhir"\n[destinations.pseudonymize]\n',
            {},
            "destinations[0].pseudonymize.key_file is missing",
        ),
        (
            '[[destinations]]\nname = "a"\nurl = "http://x/fhir"\n'
            '[destinations.pseudonymize]\nhook = "nope"\n',
            {},
            "destinations[0].pseudonymize.hook='nope': no entry point of that name",
        ),
        (
            '[[destinations]]\nname = "a"\nurl = "http://x/fhir"\n'
            '[destinations.leave_out]\nsop_classes = ["1.2.03"]\n',
            {},
            "destinations[0].leave_out.sop_classes has an invalid UID '1.2.03'",
        ),
        ("[[destinations]\n", {}, "not valid TOML: "),
        ("", {"SCP2FHIR_QUIET_SECOND": "5"}, "unknown environment variable SCP2FHIR_QUIET_SECOND"),
    ],
)
def test_a_configuration_error_is_one_line_naming_the_key(
    tmp_path: Path, text: str, env: dict[str, str], message: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        parse_configuration({"SCP2FHIR_CONFIG": str(path), **env})
    assert message in str(caught.value) and "\n" not in str(caught.value)
    if "environment variable" not in message and "SCP2FHIR_FHIR" not in message:
        assert str(caught.value).startswith(f"{path}: "), "the file is named first"


def test_a_missing_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"SCP2FHIR_CONFIG=.*cannot read the configuration file"):
        config.load({"SCP2FHIR_CONFIG": str(tmp_path / "absent.toml")})


def test_the_test_suites_own_variables_are_let_through() -> None:
    config.load({"SCP2FHIR_UPDATE_GOLDEN": "1", "SCP2FHIR_TEST_ANYTHING": "x"})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[destinations]\n", "not valid TOML"),
        (
            '[[destinations]]\nname = "a"\nurl = "http://x/fhir"\n'
            '[destinations.pseudonymize]\nkey_file = "/nonexistent/key"\n',
            "pseudonymize.key_file='/nonexistent/key' cannot be read",
        ),
        ('[[destinations]]\nname = "a"\nfolder = "x"\nquiet = 1\n', "unknown key"),
        (
            '[[destinations]]\nname = "a"\nfolder = "x"\n[[destinations]]\nname = "a"\n'
            'folder = "y"\n',
            "already the name of destinations[0]",
        ),
    ],
)
@pytest.mark.parametrize("verb", ["worker", "up", "config"])
def test_the_commands_stop_with_one_line_and_exit_2(
    tmp_path: Path, text: str, message: str, verb: str
) -> None:
    path = write(tmp_path, text)
    args = {"worker": ["worker"], "up": ["up"], "config": ["config", "check", "--offline"]}[verb]
    result = cli(*args, "--config", str(path), env={"SCP2FHIR_REDIS_URL": "redis://127.0.0.1:1/0"})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_an_unknown_variable_stops_every_command(tmp_path: Path) -> None:
    result = cli("convert", str(tmp_path), env={"SCP2FHIR_PROFLE": "mii"})
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "scp2fhir: configuration error: unknown environment variable SCP2FHIR_PROFLE "
        "(did you mean SCP2FHIR_PROFILE?)"
    )


# --- destinations -----------------------------------------------------------------------

EXAMPLE = """
fhir_version = "R4"
patient_id_system = "urn:oid:1.2.3.4"

[[destinations]]
name = "ehr"
url = "https://ehr.example.org/fhir/"
profile = "qicore"
[destinations.auth]
method = "bearer"
token_file = "{token}"
[destinations.retry]
max_attempts = 5
base_seconds = 1
max_seconds = 30

[[destinations]]
name = "research"
url = "https://dic.example.org/fhir"
profile = "mii"
profile_version = "2026.0.0"
bundle = true
[destinations.leave_out]
modalities = ["sr", "PR"]
calling_aets = ["QA_WS"]
[destinations.pseudonymize]
key_file = "{key}"
birth_date = "year"
patient_id_system = "https://dic.example.org/sid/pseudonym"

[[destinations]]
name = "repository"
folder = "{folder}"
fhir_version = "R5"
"""


def example(tmp_path: Path) -> Path:
    token = write(tmp_path, "the-token\n", "token")
    key = write(tmp_path, "0123456789abcdef0123456789abcdef\n", "key")
    return write(
        tmp_path,
        EXAMPLE.format(token=token, key=key, folder=tmp_path / "repository"),
    )


def test_three_destinations_from_the_file(tmp_path: Path) -> None:
    path = example(tmp_path)
    parsed = parse_configuration({"SCP2FHIR_CONFIG": str(path)})
    delivery = parsed.delivery
    assert delivery.names == ("ehr", "research", "repository")
    ehr, research, repository = delivery.destinations
    assert ehr.url == "https://ehr.example.org/fhir" and ehr.profile == "qicore"
    assert ehr.auth.method == "bearer" and ehr.auth.token is not None
    assert ehr.auth.token.reveal() == "the-token" and "the-token" not in repr(ehr)
    assert (ehr.retry.max_attempts, ehr.retry.base_seconds, ehr.retry.max_seconds) == (5, 1, 30)
    assert ehr.options.patient_id_system == "urn:oid:1.2.3.4", "the global default"
    assert ehr.queue == "scp2fhir-deliver-ehr" and ehr.fhir_version == "R4"
    assert research.bundle and research.options.bundle and research.profile == "mii"
    assert research.leave_out.modalities == {"SR", "PR"}
    assert research.leave_out.calling_aets == {"QA_WS"}
    assert research.pseudonymize is not None and research.pseudonymize.birth_date == "year"
    # A pseudonymized copy carries the pseudonym's system, never the clinical one.
    assert research.options.patient_id_system == "https://dic.example.org/sid/pseudonym"
    assert repository.folder == tmp_path / "repository" and repository.fhir_version == "R5"
    assert repository.kind == "folder" and repository.url is None
    assert parsed.worker.fhir_version == "R4"


def test_config_check_offline_prints_values_origins_and_masks_secrets(tmp_path: Path) -> None:
    path = example(tmp_path)
    result = cli(
        "config",
        "check",
        "--offline",
        "--config",
        str(path),
        env={
            "SCP2FHIR_REDIS_URL": "redis://bridge:redis-password@127.0.0.1:1/0",
            "SCP2FHIR_DASHBOARD_PASSWORD": "dashboard-password",
            "SCP2FHIR_QUIET_SECONDS": "30",
        },
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for secret in ("redis-password", "dashboard-password", "the-token", "0123456789abcdef"):
        assert secret not in out
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ")}
    assert "redis://bridge:***@127.0.0.1:1/0" in lines["SCP2FHIR_REDIS_URL"]
    assert lines["SCP2FHIR_QUIET_SECONDS"].split()[1:] == [
        "30",
        "environment",
        "SCP2FHIR_QUIET_SECONDS",
    ]
    assert lines["SCP2FHIR_FHIR_VERSION"].endswith(f"file {path}: fhir_version")
    assert lines["SCP2FHIR_PORT"].split()[1:] == ["11112", "default"]
    assert "destination research (fhir https://dic.example.org/fhir):" in out
    assert f"*** (file {tmp_path / 'key'})" in out
    assert f"file {path}: destinations[1].pseudonymize.key_file" in out
    assert f"file {path}: destinations[0].auth.token_file" in out


def test_the_readmes_example_file_is_a_valid_configuration(tmp_path: Path) -> None:
    """The Destinations section's file, with its secret files made here."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Destinations") :]
    text = section[section.index("```toml") + 7 : section.index("```\n", section.index("```toml"))]
    files = set(re.findall(r'"/etc/scp2fhir/([^"]+)"', text))
    assert files == {
        "ehr-client-secret",
        "hospital-ca.pem",
        "diz-client.pem",
        "diz-pseudonym.key",
        "repository-token",
    }
    key = rsa.generate_private_key(65537, 2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    for name in files:
        (tmp_path / name).write_bytes(pem if name == "diz-client.pem" else b"s3cret-0123456789ab\n")
    path = write(tmp_path, text.replace("/etc/scp2fhir/", f"{tmp_path}/"))
    parsed = parse_configuration({"SCP2FHIR_CONFIG": str(path)})
    delivery = parsed.delivery
    assert delivery.names == ("ehr", "research", "repository")
    ehr, research, repository = delivery.destinations
    assert (ehr.fhir_version, ehr.profile, ehr.auth.method) == (
        "R4",
        "qicore",
        "client-credentials",
    )
    assert (research.profile, research.bundle, research.auth.method) == (
        "mii",
        True,
        "smart-backend",
    )
    assert research.pseudonymize is not None and research.leave_out.modalities == {"PR", "KO"}
    assert (repository.fhir_version, repository.auth.method) == ("R5", "bearer")
    assert parsed.worker.quiet_seconds == 60
    assert parsed.shared.redis_url == "redis://redis:6379/0"


def test_the_top_level_reader_names_the_variable_or_the_file_key(tmp_path: Path) -> None:
    """What phase B's per-concern settings read: one key, from either source."""
    path = write(tmp_path, "port = 99999\n")
    reader = config.top_level(
        config.load({"SCP2FHIR_CONFIG": str(path), "SCP2FHIR_QUIET_SECONDS": "-1"})
    )
    with pytest.raises(ConfigError) as from_file:
        reader.integer("port", 11112, 1, 65535)
    assert str(from_file.value) == f"{path}: port=99999 is out of range 1..65535"
    with pytest.raises(ConfigError) as from_environment:
        reader.number("quiet_seconds", 60, high=7 * 86400)
    assert str(from_environment.value) == (
        "SCP2FHIR_QUIET_SECONDS=-1 must be above 0 and at most 604800"
    )
    assert reader.text("ae_title") is None and reader.origins == {
        "port": config.Origin("file", "port", path),
        "quiet_seconds": config.Origin("environment", "SCP2FHIR_QUIET_SECONDS"),
    }

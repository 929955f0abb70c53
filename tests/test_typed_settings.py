"""The one settings mechanism (scp.typed_settings): each concern's settings class declares
its variables, one generic parser builds any of them, and the registry of variables (what
scp.config accepts, what the README documents) is collected from the classes."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import pytest

from scp import config
from scp.pacs.settings import PacsSettings
from scp.settings import ScpSettings
from scp.shared_settings import SharedSettings
from scp.typed_settings import ConfigError, declared, from_env, registry
from scp.up.settings import UpSettings
from scp.variables import CONFIG_VARIABLES, SETTINGS_CLASSES, VARIABLES
from tests.conftest import ROOT, run_cli
from workers.delivery_environment import ENVIRONMENT_NAMES, ENVIRONMENT_VARIABLES
from workers.settings import WorkerSettings


def cli(*args: str, env: dict[str, str]) -> tuple[int, list[str]]:
    """``scp2fhir ARGS`` with ``env`` as its only SCP2FHIR_* variables: exit status and
    the lines on stderr."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SCP2FHIR_")}
    result = run_cli(*args, env={**clean, "PYTHONPATH": str(ROOT), **env}, timeout=60)
    return result.returncode, result.stderr.strip().splitlines()


# --- unknown names are errors -------------------------------------------------------------


def test_a_misspelt_variable_stops_the_worker_with_one_line() -> None:
    status, lines = cli(
        "worker", env={"SCP2FHIR_REDIS_URL": "redis://127.0.0.1:1/0", "SCP2FHIR_QUIET_SECOND": "5"}
    )
    assert status == 2
    assert lines == [
        "scp2fhir: configuration error: unknown environment variable SCP2FHIR_QUIET_SECOND "
        "(did you mean SCP2FHIR_QUIET_SECONDS?)"
    ]


def test_a_misspelt_file_key_stops_the_scp_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "scp2fhir.toml"
    path.write_text("max_associations_per_aet = 3\n")
    status, lines = cli(
        "scp", "--config", str(path), env={"SCP2FHIR_REDIS_URL": "redis://127.0.0.1:1/0"}
    )
    assert status == 2
    assert lines == [
        f"scp2fhir: configuration error: {path}: unknown key 'max_associations_per_aet' "
        "(did you mean max_associations_per_ae?)"
    ]


# --- one line naming the variable, or the file key ------------------------------------------

#: One bad value per settings class: (class, variable, value, the message's end).
BAD_VALUES = [
    (SharedSettings, "SCP2FHIR_LOG_LEVEL", "LOUD", "='LOUD' must be DEBUG, INFO, WARNING or ERROR"),
    (ScpSettings, "SCP2FHIR_MAX_PDU", "100", "=100 is out of range 4096..2147483647"),
    (WorkerSettings, "SCP2FHIR_QUIET_SECONDS", "soon", "='soon' is not a number"),
    (UpSettings, "SCP2FHIR_WORKERS", "0", "=0 is out of range 1..64"),
    (PacsSettings, "SCP2FHIR_PACS_MOVES", "many", "='many' is not a whole number"),
]


@pytest.mark.parametrize(("cls", "variable", "value", "end"), BAD_VALUES)
def test_a_bad_value_is_one_line_naming_the_variable(
    cls: type, variable: str, value: str, end: str
) -> None:
    loaded = config.load({variable: value})
    with pytest.raises(ConfigError) as caught:
        config.settings(loaded, cls)
    assert str(caught.value) == variable + end


@pytest.mark.parametrize(("cls", "variable", "value", "end"), BAD_VALUES)
def test_a_bad_file_value_is_one_line_naming_the_file_and_its_key(
    tmp_path: Path, cls: type, variable: str, value: str, end: str
) -> None:
    path = tmp_path / "scp2fhir.toml"
    path.write_text(f'{config.file_key(variable)} = "{value}"\n')
    loaded = config.load({"SCP2FHIR_CONFIG": str(path)})
    with pytest.raises(ConfigError) as caught:
        config.settings(loaded, cls)
    assert str(caught.value) == f"{path}: {config.file_key(variable)}{end}"


def test_cross_field_checks_run_when_built_from_the_environment(tmp_path: Path) -> None:
    cert = tmp_path / "cert.pem"
    cert.write_text("x")
    with pytest.raises(ConfigError, match=r"^SCP2FHIR_TLS_CERT and SCP2FHIR_TLS_KEY go together$"):
        from_env(ScpSettings, {"SCP2FHIR_TLS_CERT": str(cert)})
    with pytest.raises(ConfigError, match=r"^SCP2FHIR_DASHBOARD_BIND=0\.0\.0\.0 is reachable"):
        from_env(UpSettings, {"SCP2FHIR_DASHBOARD_BIND": "0.0.0.0"})


def test_an_empty_variable_is_the_default() -> None:
    assert from_env(ScpSettings, {"SCP2FHIR_PORT": "  "}).port == 11112
    assert from_env(WorkerSettings, {"SCP2FHIR_FHIR_VERSION": "r5"}).fhir_version == "R5"


# --- the registry is collected from the classes -------------------------------------------


def test_the_registry_is_every_class_field_plus_the_file_and_delivery_variables() -> None:
    collected = registry(*SETTINGS_CLASSES)
    assert {**CONFIG_VARIABLES, **collected, **ENVIRONMENT_VARIABLES} == VARIABLES
    declared_names = [decl.variable for cls in SETTINGS_CLASSES for _, decl in declared(cls)]
    assert len(declared_names) == len(set(declared_names)), "a variable declared twice"
    assert set(ENVIRONMENT_VARIABLES) == set(ENVIRONMENT_NAMES.values())
    assert not set(collected) & set(ENVIRONMENT_VARIABLES)
    for cls in SETTINGS_CLASSES:
        undeclared = {f.name for f in dataclasses.fields(cls)} - {n for n, _ in declared(cls)}
        assert not undeclared, f"{cls.__name__} fields without a variable: {undeclared}"


def test_each_shown_default_is_the_default_parsed() -> None:
    """The default the README and --help show is what a class really defaults to."""
    for cls in SETTINGS_CLASSES:
        defaults = cls()
        for name, decl in declared(cls):
            if decl.shown_default.startswith("("):  # (unset), (cores), (AE title)...
                continue
            expected = getattr(defaults, name)
            assert decl.parse(decl.variable, decl.shown_default) == expected, decl.variable


def test_the_readme_table_is_the_registry() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    rows = dict(re.findall(r"^\| `(SCP2FHIR_[A-Z0-9_]+)` \| ([^|]*) \|", readme, re.MULTILINE))
    assert set(rows) == set(VARIABLES)
    for name, (default, _) in VARIABLES.items():
        assert rows[name].strip() == default, name

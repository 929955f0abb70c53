"""What ships for Prometheus and Grafana (docker/prometheus, docker/grafana) is valid and
matches the metrics `scp2fhir web` really serves: promtool checks the rules and the config
and runs the rules' unit tests; every metric an alert or a dashboard panel uses exists."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ROOT
from tests.test_ops import web_on

PROMETHEUS = ROOT / "docker" / "prometheus"
DASHBOARD = ROOT / "docker" / "grafana" / "dashboards" / "scp2fhir.json"
METRIC = re.compile(r"\bscp2fhir_[a-z0-9_]+")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    assert binary, "promtool is installed by tests/run.sh (Debian package prometheus)"
    return subprocess.run(
        [binary, *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=120
    )


def test_alert_rules_pass_promtool_and_their_unit_tests() -> None:
    checked = promtool("check", "rules", "alerts.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = promtool("test", "rules", "alerts.test.yml")
    assert tested.returncode == 0, tested.stdout + tested.stderr
    config = promtool("check", "config", "prometheus.yml")
    assert config.returncode == 0, config.stdout + config.stderr


def test_the_issue_asks_for_these_alerts() -> None:
    rules = (PROMETHEUS / "alerts.yml").read_text()
    # The expressions: from each "expr:" to the next key of the rule.
    used = " ".join(re.findall(r"expr: (.*?)\n\s+for:", rules, re.S))
    wanted = {
        "dead letters": ["scp2fhir_inbox_dead_letters", "scp2fhir_delivery_dead_letters"],
        "backlog growing": ["scp2fhir_inbox_backlog"],
        "no emission past quiet": ["scp2fhir_open_studies_past_quiet", "scp2fhir_emissions_total"],
        "Redis unreachable": ["scp2fhir_redis_up"],
        "rejections spiking": ["scp2fhir_association_rejections_total"],
    }
    for what, names in wanted.items():
        assert all(name in used for name in names), what


def served_metrics(text: str) -> set[str]:
    """Every sample name a scrape can contain, families without samples included."""
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"]}
        for suffix in suffixes.get(family.type, [""]):
            names.add(family.name + suffix)
        names.update(sample.name for sample in family.samples)
    return names


def test_every_metric_of_the_alerts_and_the_dashboard_is_served(redis_url: str) -> None:
    # An empty system: whatever exists only after traffic would be missing here.
    with web_on(redis_url) as web:
        body = httpx.get(f"{web}/metrics", timeout=10).text
    served = served_metrics(body)
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    assert len(exprs) >= 15
    rules = (PROMETHEUS / "alerts.yml").read_text()
    used = {name for text in [*exprs, rules] for name in METRIC.findall(text)}
    missing = sorted(used - served)
    assert not missing, f"not served by `scp2fhir web`: {missing}"
    # And the dashboard covers what an operator watches.
    for name in (
        "scp2fhir_instances_received_total",
        "scp2fhir_emitted_after_quiet_seconds_bucket",
        "scp2fhir_association_rejections_total",
        "scp2fhir_inbox_dead_letters",
        "scp2fhir_delivery_dead_letters",
        "scp2fhir_redis_up",
    ):
        assert name in " ".join(exprs), name


def test_dashboard_is_grafana_json_on_a_chosen_datasource() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "scp2fhir" and dashboard["schemaVersion"] >= 36
    (variable,) = dashboard["templating"]["list"]
    assert variable["type"] == "datasource" and variable["query"] == "prometheus"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            assert panel["targets"], panel["title"]

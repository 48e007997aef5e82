"""The alert rules the chart ships, checked by Prometheus' own promtool (Debian's
`prometheus` package; scripts/test installs it): valid rules, and each alert firing on the
series that should fire it (tests/data/alerts-test.yaml), with its labels and text. The chart
renders them into a PrometheusRule unchanged."""

from __future__ import annotations

import shutil
import subprocess

import yaml

from tests.paths import CHART, ROOT
from tests.tools import binary

RULES = CHART / "alerts" / "freehold.rules.yaml"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    found = shutil.which("promtool")
    if found is None:
        raise AssertionError(
            "promtool is needed: apt-get install prometheus (scripts/test installs it)"
        )
    return subprocess.run(
        [found, *args], capture_output=True, text=True, check=False, timeout=120, cwd=ROOT
    )


def test_the_rules_are_valid() -> None:
    checked = promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS" in checked.stdout + checked.stderr


def test_each_alert_fires_when_it_should() -> None:
    tested = promtool("test", "rules", str(ROOT / "tests" / "data" / "alerts-test.yaml"))
    assert tested.returncode == 0, tested.stdout + tested.stderr
    names = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}
    tests_text = (ROOT / "tests" / "data" / "alerts-test.yaml").read_text()
    assert all(f"alertname: {name}" in tests_text for name in names)


def test_the_chart_ships_them_as_a_prometheus_rule() -> None:
    rendered = subprocess.run(
        [str(binary("helm")), "template", "t", str(CHART), "--set", "prometheusRule.enabled=true",
         "--set", "networkPolicy.apiServerCIDR=10.0.0.1/32", "-s", "templates/prometheusrule.yaml"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    rule = yaml.safe_load(rendered)
    assert rule["kind"] == "PrometheusRule"
    assert rule["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]

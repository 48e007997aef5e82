"""The Helm chart, rendered by the real helm binary: lint, schema, Pod Security, CRDs."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.paths import CHART, CRDS, ROOT
from tests.pss import pod_specs, violations
from tests.tools import binary

VALUES = sorted((ROOT / "tests" / "data" / "chart-values").glob("*.yaml"))
CASES = [None, *VALUES]


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(binary("helm")), *args], capture_output=True, text=True, check=check, timeout=120
    )


# `helm template` and `helm lint` have no cluster to look the API server up in.
API_SERVER = ["--set", "networkPolicy.apiServerCIDR=10.0.0.1/32"]


def render(values: Path | None, *sets: str) -> list[dict[str, Any]]:
    args = ["template", "freehold", str(CHART), "-n", "freehold-system", "--include-crds"]
    args += API_SERVER
    if values is not None:
        args += ["-f", str(values)]
    for s in sets:
        args += ["--set", s]
    return [d for d in yaml.safe_load_all(helm(*args).stdout) if d]


def test_chart_crds_are_the_generated_crds() -> None:
    chart = {p.name: p.read_text() for p in (CHART / "crds").glob("*.yaml")}
    assert chart == {p.name: p.read_text() for p in CRDS.glob("*.yaml")}, (
        "run `freehold crds` (it writes crds/ and charts/freehold/crds/)"
    )


@pytest.mark.parametrize("values", CASES, ids=lambda v: v.stem if v else "defaults")
def test_lint_strict(values: Path | None) -> None:
    args = ["lint", "--strict", str(CHART), *API_SERVER] + (["-f", str(values)] if values else [])
    result = helm(*args, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("values", CASES, ids=lambda v: v.stem if v else "defaults")
def test_rendered_objects_are_valid_and_restricted(values: Path | None) -> None:
    objects = render(values)
    kinds = {o["kind"] for o in objects}
    assert {"Deployment", "ServiceAccount", "NetworkPolicy", "CustomResourceDefinition"} <= kinds
    for obj in objects:
        if obj["kind"] in ("ServiceMonitor", "PodMonitor", "PrometheusRule"):  # CRDs of the
            # Prometheus Operator
            assert obj["apiVersion"] == "monitoring.coreos.com/v1"
            continue
        kubernetes_validate.validate(obj, "1.37.0", strict=True)
        for where, pod in pod_specs(obj):
            assert violations(pod) == [], f"{obj['kind']} {where}"


def test_operator_deployment_shape() -> None:
    (dep,) = [o for o in render(None) if o["kind"] == "Deployment"]
    spec = dep["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    container = spec["template"]["spec"]["containers"][0]
    assert container["command"] == ["freehold", "operator"]
    assert container["resources"]["limits"] and container["resources"]["requests"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["image"] == "ghcr.io/freehold-dev/freehold-operator:0.1.0"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["FREEHOLD_OPERATOR_NAMESPACES"] == '["freehold-system"]'


def test_image_digest_and_pull_secrets() -> None:
    (dep,) = [
        o
        for o in render(ROOT / "tests/data/chart-values/cluster-wide.yaml")
        if o["kind"] == "Deployment"
    ]
    pod = dep["spec"]["template"]["spec"]
    assert pod["containers"][0]["image"] == (
        "registry.gov.example/mirror/freehold-operator@sha256:"
        "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
    )
    assert pod["imagePullSecrets"] == [{"name": "mirror-pull"}]


def test_rbac_modes_and_no_wildcards() -> None:
    namespaced = render(ROOT / "tests/data/chart-values/namespaced.yaml")
    roles = [o for o in namespaced if o["kind"] == "Role"]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    # Namespaced mode: Roles for everything namespaced; the one ClusterRole is for what
    # has no namespace (SovereigntyPolicies, the admission policies made from them,
    # namespaces' labels).
    (cluster_role,) = [o for o in namespaced if o["kind"] == "ClusterRole"]
    assert {r for rule in cluster_role["rules"] for r in rule["resources"]} == {
        "sovereigntypolicies",
        "sovereigntypolicies/status",
        "sovereigntypolicies/finalizers",
        "namespaces",
        "validatingadmissionpolicies",
        "validatingadmissionpolicybindings",
    }
    cluster = render(ROOT / "tests/data/chart-values/cluster-wide.yaml")
    (binding,) = [o for o in cluster if o["kind"] == "ClusterRoleBinding"]
    assert binding["roleRef"]["name"] != "cluster-admin"
    for obj in namespaced + cluster:
        for rule in obj.get("rules", []):
            for key in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[key], rule


def test_observability_objects() -> None:
    objects = render(ROOT / "tests/data/chart-values/observability.yaml")
    monitors = [o for o in objects if o["kind"] in ("ServiceMonitor", "PodMonitor")]
    assert {m["metadata"]["name"] for m in monitors} == {
        "freehold-models",
        "freehold-memory-stores",
        "freehold-routers",
        "freehold-operator",
    }
    assert all(m["metadata"]["labels"]["release"] == "prometheus" for m in monitors)
    paths = {
        m["spec"]["selector"]["matchLabels"].get("app.kubernetes.io/name", "operator"): (
            m["spec"].get("endpoints") or m["spec"]["podMetricsEndpoints"]
        )[0]["path"]
        for m in monitors
    }
    assert paths["freehold-memory"] == "/v1/memory/metrics"
    dashboards = [o for o in objects if o["kind"] == "ConfigMap"]
    assert dashboards and all(
        d["metadata"]["labels"]["grafana_dashboard"] == "1" for d in dashboards
    )
    assert all(d["metadata"]["namespace"] == "monitoring" for d in dashboards)
    (policy,) = [o for o in objects if o["kind"] == "NetworkPolicy"]
    egress_ns = [
        peer.get("namespaceSelector", {}).get("matchLabels", {}).get("kubernetes.io/metadata.name")
        for rule in policy["spec"]["egress"]
        for peer in rule["to"]
    ]
    assert "observability" in egress_ns


@pytest.mark.parametrize(
    ("setting", "fragment"),
    [
        ("watch.mode=everything", "watch.mode"),
        ("image.digest=sha256:nothex", "image.digest"),
        ("resyncSeconds=1", "resyncSeconds"),
        ("unknownKey=1", "unknownKey"),
        ("vault.address=vault.local", "vault.address"),
    ],
)
def test_invalid_values_fail_at_install_time(setting: str, fragment: str) -> None:
    result = helm("template", "freehold", str(CHART), "--set", setting, check=False)
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr
    assert fragment.rsplit(".", maxsplit=1)[-1] in result.stderr


def test_vault_wiring() -> None:
    (dep,) = [
        o for o in render(ROOT / "tests/data/chart-values/vault.yaml") if o["kind"] == "Deployment"
    ]
    pod = dep["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["FREEHOLD_OPERATOR_VAULT_ADDRESS"] == "https://vault.vault.svc:8200"
    assert env["FREEHOLD_OPERATOR_VAULT_ROLE"] == "freehold-operator"
    token = next(v for v in pod["volumes"] if v["name"] == "vault-token")
    assert token["projected"]["sources"][0]["serviceAccountToken"]["audience"] == "vault"


def test_chart_rbac_is_generated_from_the_registered_kinds() -> None:
    """The chart's rules are what `freehold rbac` derives from the registry; the e2e suite
    runs the operator with exactly these rules on a real API server."""
    from freehold.rbac import render_rules_template

    assert (CHART / "templates" / "_rules.tpl").read_text() == render_rules_template()


def test_every_registered_kind_and_child_type_has_rules() -> None:
    from freehold.kinds import child_types, registry
    from freehold.rbac import rules

    kinds = registry()
    granted = {
        (g, r)
        for rule in rules(kinds) + rules(kinds, cluster=True)
        for g in rule["apiGroups"]
        for r in rule["resources"]
    }
    for kind in kinds:
        assert (kind.resource.group, kind.resource.plural) in granted
        assert (kind.resource.group, f"{kind.resource.plural}/status") in granted
    for t in child_types(kinds):
        assert (t.group, t.plural) in granted


def test_the_api_server_address_is_never_the_whole_internet() -> None:
    """No 0.0.0.0/0 default: set it, or `helm install` derives it from the cluster; a
    render without either fails and says what to set."""
    result = helm("template", "freehold", str(CHART), "-n", "freehold-system", check=False)
    assert result.returncode != 0 and "networkPolicy.apiServerCIDR is required" in result.stderr
    objects = render(None)
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    env = {
        e["name"]: e.get("value")
        for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["FREEHOLD_OPERATOR_API_SERVER_CIDR"] == "10.0.0.1/32"
    assert "0.0.0.0/0" not in yaml.safe_dump_all(objects)


def test_a_private_vault_ca_is_mounted_for_the_operator() -> None:
    pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    objects = render(None, "vault.address=https://vault.vault.svc:8200", f"vault.caBundle={pem}")
    (ca,) = [
        o
        for o in objects
        if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "freehold-vault-ca"
    ]
    assert ca["data"]["ca.crt"] == pem
    pod = next(o for o in objects if o["kind"] == "Deployment")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["FREEHOLD_OPERATOR_VAULT_CA_BUNDLE"] == "/etc/freehold/vault-ca/ca.crt"
    assert {
        "name": "vault-ca",
        "mountPath": "/etc/freehold/vault-ca",
        "readOnly": True,
    } in container["volumeMounts"]


def test_operator_metrics_port_and_who_may_scrape_it() -> None:
    (dep,) = [o for o in render(None) if o["kind"] == "Deployment"]
    container = dep["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "metrics", "containerPort": 9090, "protocol": "TCP"} in container["ports"]
    (closed,) = [o for o in render(None) if o["kind"] == "NetworkPolicy"]
    assert closed["spec"]["ingress"] == []
    (opened,) = [
        o
        for o in render(None, "telemetry.prometheusNamespace=monitoring")
        if o["kind"] == "NetworkPolicy"
    ]
    (rule,) = opened["spec"]["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 9090}]
    assert rule["from"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "monitoring"
    }

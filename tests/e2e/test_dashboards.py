"""The operator's dashboard against a real Prometheus (Debian's package) scraping the real
operator (on the real API server) after it did real work: passes, a problem, a repaired
child, a Vault failure. Every panel's query must evaluate and return data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.conftest import Operator, apply, condition, eventually, example, get, kubectl
from tests.e2e.test_eval_job import evaljob, finish_evaluation, make_ready
from tests.prometheus import DASHBOARDS, empty_panels, label_values, prometheus
from tests.vault_server import VaultServer

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("deployment_backend")]
OPERATOR_DASHBOARDS = ["operator.json", "fleet.json", "evaluations.json", "audit.json"]


def test_every_dashboard_is_checked_against_prometheus() -> None:
    from tests.integration.serving.test_dashboards import SERVING_DASHBOARDS
    from tests.integration.vllm.test_vllm_engine import VLLM_DASHBOARDS

    shipped = {p.name for p in DASHBOARDS.glob("*.json")}
    assert shipped == set(SERVING_DASHBOARDS) | set(OPERATOR_DASHBOARDS) | set(VLLM_DASHBOARDS)


def test_every_operator_panel_returns_data(
    namespace: str, operator: Operator, vault: VaultServer, tmp_path: Path
) -> None:
    from tests.ports import free_port

    jobs = {"freehold-operator": (f"127.0.0.1:{operator.metrics_port}", "/metrics")}
    with prometheus(tmp_path, free_port(), jobs) as url:
        # Real work: a deployment that serves and is evaluated, a repaired child, a bad
        # spec, a Vault outage (a checkpoint of the audit log cannot be signed).
        apply(example(namespace, "dash", residency={"region": "eu-gov-1"}))
        eventually(lambda: get("service", "dash", namespace))
        make_ready(namespace, "dash")
        apply(evaljob(namespace, "dash-eval", target={"modelDeploymentRef": {"name": "dash"}}))
        config = eventually(lambda: get("configmap", "dash-eval-eval-config", namespace))
        digest = json.loads(config["data"]["job.json"])["model_digest"]
        finish_evaluation(namespace, "dash-eval-eval", passed=False, digest=digest)
        eventually(
            lambda: (
                (get("evaljob", "dash-eval", namespace) or {}).get("status", {}).get("phase")
                in ("Succeeded", "Failed")
            ),
            timeout=60,
        )
        kubectl("delete", "service", "dash", "-n", namespace)
        eventually(lambda: get("service", "dash", namespace))
        bad = example(namespace, "dash-bad")
        bad["spec"]["secrets"] = [{"name": "HF", "path": f"{namespace}/hf"}]
        apply(bad)
        eventually(lambda: condition(get("modeldeployment", "dash-bad", namespace), "Ready"))
        vault.state.sealed = True
        try:
            apply(example(namespace, "dash-keys", auth={"apiKeys": {"path": f"{namespace}/k"}}))
            eventually(
                lambda: (
                    condition(
                        get("modeldeployment", "dash-keys", namespace), "SecretsUnavailable"
                    ).get("status")
                    == "True"
                )
            )
        finally:
            vault.state.sealed = False
        empty = [
            f"{name}: {panel}" for name in OPERATOR_DASHBOARDS for panel in empty_panels(url, name)
        ]
        regions = label_values(url, "freehold_model_deployment_info", "region")
    assert not empty, "panels without data:\n" + "\n".join(empty)
    assert "eu-gov-1" in regions

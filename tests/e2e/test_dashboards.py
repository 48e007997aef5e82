"""The operator's dashboard against a real Prometheus (Debian's package) scraping the real
operator (on the real API server) after it did real work: passes, a problem, a repaired
child, a Vault failure. Every panel's query must evaluate and return data."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.conftest import Operator, apply, condition, eventually, example, get, kubectl
from tests.prometheus import DASHBOARDS, empty_panels, prometheus
from tests.vault_server import VaultServer

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("deployment_backend")]
OPERATOR_DASHBOARDS = ["operator.json"]


def test_every_dashboard_is_checked_against_prometheus() -> None:
    from tests.integration.serving.test_dashboards import SERVING_DASHBOARDS

    shipped = {p.name for p in DASHBOARDS.glob("*.json")}
    assert shipped == set(SERVING_DASHBOARDS) | set(OPERATOR_DASHBOARDS)


@pytest.mark.parametrize("name", OPERATOR_DASHBOARDS)
def test_every_operator_panel_returns_data(
    namespace: str, operator: Operator, vault: VaultServer, tmp_path: Path, name: str
) -> None:
    from tests.e2e.conftest import free_port

    jobs = {"freehold-operator": (f"127.0.0.1:{operator.metrics_port}", "/metrics")}
    with prometheus(tmp_path, free_port(), jobs) as url:
        # Real work: a deployment, a repaired child, a bad spec, a Vault outage.
        apply(example(namespace, "dash"))
        eventually(lambda: get("service", "dash", namespace))
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
        empty = empty_panels(url, name)
    assert not empty, "panels without data:\n" + "\n".join(empty)

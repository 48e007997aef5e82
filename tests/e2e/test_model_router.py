"""ModelRouter on the real API server: its Deployment (admitted under restricted Pod
Security), Service and NetworkPolicies, targets resolved from live ModelDeployments, status
per target, and bad specs refused by CEL. (Its serving app runs against real models in
tests/integration/serving/test_router.py.) No kubelet runs here: pods are marked Ready by
writing their status, as the other e2e tests do."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from tests.e2e.conftest import Operator, apply, condition, eventually, example, get, kubectl
from tests.e2e.test_eval_job import make_ready, pods, set_status
from tests.vault_server import VaultServer

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("deployment_backend")]
NOW = "2026-01-01T00:00:00Z"


def router(namespace: str, name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "freehold.dev/v1alpha1",
        "kind": "ModelRouter",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "servedName": "assistant",
            "strategy": "least_cost",
            "targets": [
                {"name": "first", "modelDeploymentRef": {"name": "rt-a"}, "cost": {"input": 1}},
                {"name": "second", "modelDeploymentRef": {"name": "rt-missing"}},
            ],
            **spec,
        },
    }


def test_a_router_routes_to_live_targets_only(namespace: str, operator: Operator) -> None:
    apply(example(namespace, "rt-a"))
    make_ready(namespace, "rt-a")
    eventually(
        lambda: (
            condition(get("modeldeployment", "rt-a", namespace), "Ready").get("status") == "True"
        )
    )
    apply(router(namespace, "assistant"))
    deployment = eventually(lambda: get("deployment", "assistant", namespace))
    for kind, name in (
        ("service", "assistant"),
        ("serviceaccount", "assistant-router"),
        ("networkpolicy", "assistant-router-default-deny"),
        ("networkpolicy", "assistant-router-allow"),
    ):
        assert get(kind, name, namespace) is not None, f"{kind}/{name}"
    env = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    args = json.loads(next(e["value"] for e in env if e["name"] == "FREEHOLD_ROUTER_ARGS"))
    admitted = {t["name"]: (t["admitted"], t["url"]) for t in args["targets"]}
    assert admitted == {
        "first": (True, f"http://rt-a.{namespace}.svc:8000/v1"),
        "second": (False, None),
    }
    # The Deployment controller made the pod under the namespace's restricted profile.
    found = eventually(lambda: pods(namespace, "freehold.dev/model-router=assistant"))
    set_status(
        "pod",
        found[0]["metadata"]["name"],
        namespace,
        {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": NOW}],
        },
    )
    mr = eventually(
        lambda: (
            (m := get("modelrouter", "assistant", namespace))
            and condition(m, "Ready").get("status") == "True"
            and m
        )
    )
    assert condition(mr, "Degraded")["status"] == "True"  # one target is missing
    by_name = {t["name"]: t for t in mr["status"]["targets"]}
    assert by_name["first"]["admitted"] is True and by_name["second"]["ready"] is False
    assert mr["status"]["endpoint"] == f"http://assistant.{namespace}.svc:8000/v1"
    columns = kubectl("get", "modelrouter", "assistant", "-n", namespace).stdout
    assert "least_cost" in columns and "assistant" in columns

    # The missing target appears: the router's args follow (it is admitted now).
    apply(example(namespace, "rt-missing"))
    make_ready(namespace, "rt-missing")

    def second_admitted() -> bool:
        d = get("deployment", "assistant", namespace) or {}
        env = d["spec"]["template"]["spec"]["containers"][0]["env"]
        value = json.loads(next(e["value"] for e in env if e["name"] == "FREEHOLD_ROUTER_ARGS"))
        return bool(value["targets"][1]["admitted"])

    eventually(second_admitted, timeout=60)


def test_bad_router_specs_are_refused_by_the_api_server(namespace: str) -> None:
    external = router(namespace, "bad")
    external["spec"]["targets"].append(
        {"name": "ext", "external": {"provider": "openai", "model": "gpt-x"}}
    )
    refused = kubectl("apply", "-f", "-", input=yaml.safe_dump(external), check=False)
    assert refused.returncode != 0 and "allowExternal" in refused.stderr
    budget = router(namespace, "bad", budgets=[{"tenant": "acme", "tokens": 10}])
    refused = kubectl("apply", "-f", "-", input=yaml.safe_dump(budget), check=False)
    assert refused.returncode != 0 and "auth.apiKeys" in refused.stderr
    both = router(namespace, "bad")
    both["spec"]["targets"][0]["external"] = {"provider": "openai", "model": "x"}
    refused = kubectl("apply", "-f", "-", input=yaml.safe_dump(both), check=False)
    assert (
        refused.returncode != 0
        and "exactly one of modelDeploymentRef and external" in refused.stderr
    )


def test_a_budgeted_routers_targets_admit_only_the_router(
    namespace: str, operator: Operator
) -> None:
    """Issue 28: the router is the only way in while it governs (budgets or rate limits);
    the target's NetworkPolicy follows the router's spec, and the model's directAccess."""
    apply(example(namespace, "rt-gov"))

    def callers() -> list[dict[str, Any]]:
        policy = get("networkpolicy", "rt-gov-allow", namespace) or {"spec": {"ingress": [{}]}}
        found: list[dict[str, Any]] = policy["spec"]["ingress"][0].get("from") or []
        return found

    eventually(lambda: get("networkpolicy", "rt-gov-allow", namespace))
    assert not any("freehold.dev/model-router" in json.dumps(p) for p in callers())
    keys = {"apiKeys": {"path": f"{namespace}/gate/keys"}}
    gate = router(
        namespace,
        "gate",
        targets=[{"name": "only", "modelDeploymentRef": {"name": "rt-gov"}}],
        budgets=[{"tenant": "acme", "tokens": 1000}],
        auth=keys,
    )
    apply(gate)
    router_peer = {"podSelector": {"matchLabels": {"freehold.dev/model-router": "gate"}}}
    eventually(lambda: router_peer in callers(), timeout=60)
    assert not any("namespaceSelector" in p for p in callers())  # nobody else of the namespace
    # The model's spec says otherwise: its own callers again.
    apply(example(namespace, "rt-gov", network={"directAccess": True}))
    eventually(lambda: router_peer not in callers(), timeout=60)
    apply(example(namespace, "rt-gov"))
    eventually(lambda: router_peer in callers(), timeout=60)
    # The router no longer governs (no budget, no rate limit): its targets open again.
    ungoverned = router(namespace, "gate", targets=gate["spec"]["targets"], auth=keys)
    apply(ungoverned)
    eventually(lambda: router_peer not in callers(), timeout=60)


def test_a_keyed_target_needs_the_routers_own_key(
    namespace: str, operator: Operator, vault: VaultServer
) -> None:
    """A model requiring API keys would answer the router 401 without a key of the router's
    own: it is not routed to, and status says how to give it one. With spec.targets[].apiKey
    it is routed to: the router's args name where its key is (never the key), and its Vault
    policy may read exactly that field's secret."""
    apply(example(namespace, "rt-keyed", auth={"apiKeys": {"path": f"{namespace}/k/keys"}}))
    make_ready(namespace, "rt-keyed")
    apply(router(namespace, "keyed", targets=[
        {"name": "locked", "modelDeploymentRef": {"name": "rt-keyed"}}]))  # fmt: skip

    def target() -> dict[str, Any] | None:
        mr = get("modelrouter", "keyed", namespace) or {}
        found = ((mr.get("status") or {}).get("targets") or [{}])[0]
        return found if found.get("message") else None

    seen = eventually(target, timeout=60)
    assert seen["admitted"] is False and "spec.targets[0].apiKey" in seen["message"]
    ready = condition(get("modelrouter", "keyed", namespace), "Ready")
    assert ready["reason"] == "NoTargetAdmitted" and "freehold keys create" in ready["message"]

    own = {"path": f"{namespace}/router/keyed", "key": "rt-keyed"}
    locked = {"name": "locked", "modelDeploymentRef": {"name": "rt-keyed"}}
    apply(router(namespace, "keyed", targets=[{**locked, "apiKey": own}]))

    def routed() -> dict[str, Any] | None:
        deployment = get("deployment", "keyed", namespace) or {}
        containers = ((deployment.get("spec") or {}).get("template") or {}).get("spec", {})
        env = (containers.get("containers") or [{}])[0].get("env") or []
        raw = next((e["value"] for e in env if e["name"] == "FREEHOLD_ROUTER_ARGS"), None)
        found = json.loads(raw)["targets"][0] if raw else {}
        return found if found.get("admitted") else None

    args = eventually(routed, timeout=60)
    assert args["api_key_vault"] == {"mount": "secret", "path": own["path"], "field": "rt-keyed"}
    policy = eventually(
        lambda: vault.state.policies.get(f"freehold.{namespace}.router.keyed"), timeout=30
    )
    assert f'path "secret/data/{namespace}/router/keyed"' in policy
    eventually(lambda: target() is None, timeout=60)  # no complaint left
    # A key outside this namespace's Vault paths is refused with the field named.
    apply(router(namespace, "keyed", targets=[{**locked, "apiKey": {"path": "other/router"}}]))
    eventually(
        lambda: (
            "spec.targets[0].apiKey.path"
            in condition(get("modelrouter", "keyed", namespace), "Ready").get("message", "")
        ),
        timeout=60,
    )

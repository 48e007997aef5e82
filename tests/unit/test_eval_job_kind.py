"""EvalJob and promotion as pure functions: the Job and its companions, target
resolution, the outcome read from a termination message, and which model serves while a
new digest is evaluated. (The same flows run on a real API server in tests/e2e.)"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
import yaml

from freehold.api.eval_job import EvalJobSpec
from freehold.api.model_deployment import ModelDeploymentSpec
from freehold.builders.eval_job import EVALUATES_LABEL, job_name
from freehold.builders.model_workload import INSTANCE_LABEL, ClusterConfig
from freehold.builders.promotion import (
    MODEL_ANNOTATION,
    candidate_name,
    eval_job,
    eval_job_name,
    model_annotation,
    plan,
)
from freehold.evaluation.job import SUMMARY_LIMIT, summary
from freehold.kinds.eval_job import EvalJobKind
from freehold.kinds.model_deployment import ModelDeploymentKind
from freehold.reconciler import Facts, SpecProblemError, WaitingError
from freehold.validation import defaulted
from tests.paths import EXAMPLES
from tests.pss import violations

CONFIG = ClusterConfig(
    serving_image="registry.local/freehold-serving:0.1.0",
    ray_version="2.60.0",
    vault_address="https://vault.vault.svc:8200",
    operator_namespace="freehold-system",
    api_server_cidr="10.0.0.1/32",
)
META = {"name": "smoke", "namespace": "team", "uid": "ej-uid"}
OLD = "a" * 64
NEW = "b" * 64
TEMPLATE = {
    "suites": [
        {
            "name": "capitals",
            "task": "multiple_choice",
            "dataset": {"uri": "package://freehold/evals/capitals.jsonl", "sha256": "c" * 64},
            "metric": "accuracy",
        }
    ],
    "gates": [
        {"suite": "capitals", "metric": "accuracy", "threshold": 0.5},
        {"suite": "capitals", "metric": "accuracy", "maxRegression": 0.05},
    ],
}


def eval_spec(**changes: Any) -> EvalJobSpec:
    doc = {"target": {"modelDeploymentRef": {"name": "gemma"}}, **copy.deepcopy(TEMPLATE)}
    doc["gates"] = doc["gates"][:1]
    doc.update(changes)
    full = defaulted({"apiVersion": "freehold.dev/v1alpha1", "kind": "EvalJob", "spec": doc})
    return EvalJobSpec.model_validate(full["spec"])


def deployment(status: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((EXAMPLES / "modeldeployment.yaml").read_text())
    doc["metadata"] = {"name": "gemma", "namespace": "team", "uid": "md-uid"}
    doc["spec"].update(spec)
    doc["status"] = status or {}
    return doc


SERVING = {
    "conditions": [{"type": "Ready", "status": "True"}],
    "endpoint": "http://gemma.team.svc:8000/v1",
    "servedName": "gemma-3-270m",
    "servedDigest": f"sha256:{OLD}",
}


def by_kind(children: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {f"{c['kind']}/{c['metadata']['name']}": c for c in children}


def test_the_job_is_locked_down_and_reaches_only_its_target() -> None:
    kind = EvalJobKind(CONFIG)
    facts = Facts(kuberay=False, related={"target": [deployment(SERVING)]})
    desired = kind.build(eval_spec(), META, facts)
    objs = by_kind(desired.children)
    job = objs["Job/smoke-eval"]
    pod = job["spec"]["template"]["spec"]
    assert violations(pod) == []
    assert pod["automountServiceAccountToken"] is False and pod["restartPolicy"] == "Never"
    assert job["spec"]["backoffLimit"] == 0
    assert job["spec"]["activeDeadlineSeconds"] == 21600
    assert pod["containers"][0]["terminationMessagePolicy"] == "File"
    assert job["spec"]["template"]["metadata"]["labels"][EVALUATES_LABEL] == "gemma"
    assert objs["ServiceAccount/smoke-eval"]["automountServiceAccountToken"] is False
    assert "PersistentVolumeClaim/smoke-results" in objs
    # The pinned config: endpoint, served name and digest as the deployment serves them.
    config = json.loads(objs["ConfigMap/smoke-eval-config"]["data"]["job.json"])
    assert config["endpoint"] == "http://gemma.team.svc:8000/v1"
    assert (config["model"], config["model_digest"]) == ("gemma-3-270m", f"sha256:{OLD}")
    assert config["vault"]["key_name"] == "freehold-team-eval-signing"
    assert objs["ConfigMap/smoke-eval-config"]["immutable"] is True
    # Egress: DNS, the target's pods on the serving port, Vault. Ingress: the operator only.
    allow = objs["NetworkPolicy/smoke-eval-allow"]["spec"]
    targets = [r.get("to") for r in allow["egress"]]
    assert [{"podSelector": {"matchLabels": {INSTANCE_LABEL: "gemma"}}}] in targets
    assert len(allow["egress"]) == 3
    assert allow["ingress"][0]["ports"] == [{"protocol": "TCP", "port": 8080}]
    role = desired.externals[0]
    assert role.name == "freehold.team.evaljob.smoke"
    assert role.transit_keys == (("freehold-team-eval-signing", "ed25519"),)
    assert 'path "transit/sign/freehold-team-eval-signing"' in role.policy
    assert "secret/" not in role.policy
    # The Job comes last: what it mounts exists first.
    assert desired.children[-1]["kind"] == "Job"


def test_a_target_that_does_not_serve_yet_is_waited_for() -> None:
    kind = EvalJobKind(CONFIG)
    with pytest.raises(WaitingError) as waiting:
        kind.build(eval_spec(), META, Facts(kuberay=False, related={"target": []}))
    assert waiting.value.reason == "TargetNotFound"
    not_ready = deployment({"conditions": [{"type": "Ready", "status": "False"}]})
    with pytest.raises(WaitingError) as waiting:
        kind.build(eval_spec(), META, Facts(kuberay=False, related={"target": [not_ready]}))
    assert waiting.value.reason == "TargetNotReady"
    keyed = deployment(SERVING, auth={"apiKeys": {"path": "team/keys"}})
    with pytest.raises(SpecProblemError) as refused:
        kind.build(eval_spec(), META, Facts(kuberay=False, related={"target": [keyed]}))
    assert refused.value.reason == "TargetRequiresApiKey"
    assert "spec.target.apiKey" in refused.value.message
    assert "freehold keys create --of modeldeployment/gemma --tenant evaluation --into" in (
        refused.value.message
    )


def test_a_keyed_target_is_evaluated_with_a_key_the_pod_reads_from_vault() -> None:
    kind = EvalJobKind(CONFIG)
    keyed = deployment(SERVING, auth={"apiKeys": {"path": "team/keys"}})
    where = {"path": "team/eval/smoke", "key": "gemma"}
    judge = {"modelDeploymentRef": {"name": "gemma"}, "apiKey": {"path": "team/eval/judge"}}
    spec = eval_spec(target={"modelDeploymentRef": {"name": "gemma"}, "apiKey": where})
    facts = Facts(kuberay=False, related={"target": [keyed], "judge": [keyed]})
    desired = kind.build(spec, META, facts)
    objs = by_kind(desired.children)
    config = json.loads(objs["ConfigMap/smoke-eval-config"]["data"]["job.json"])
    # Where the key is, never the key: the pod reads it as its own workload.
    assert config["api_key"] == {"mount": "secret", "path": "team/eval/smoke", "field": "gemma"}
    assert config["judge_api_key"] is None
    (role,) = desired.externals
    assert 'path "secret/data/team/eval/smoke"' in role.policy
    assert role.policy.count('path "secret/') == 1  # that secret, nothing else of KV
    # The judge's key too, when the judge requires one.
    judged = eval_spec(target=spec.target.model_dump(by_alias=True, exclude_none=True), judge=judge)
    config = json.loads(
        by_kind(kind.build(judged, META, facts).children)["ConfigMap/smoke-eval-config"]["data"][
            "job.json"
        ]
    )
    assert config["judge_api_key"]["path"] == "team/eval/judge"
    # Another team's Vault paths are refused, naming the field.
    elsewhere = eval_spec(
        target={"modelDeploymentRef": {"name": "gemma"}, "apiKey": {"path": "other/keys"}}
    )
    with pytest.raises(SpecProblemError) as refused:
        kind.check(elsewhere, META)
    assert refused.value.message.startswith("spec.target.apiKey.path: 'other/keys' is outside")


def test_promotion_of_a_keyed_model_evaluates_what_serves_with_its_key() -> None:
    doc = deployment(auth={"apiKeys": {"path": "team/keys"}})
    doc["spec"]["promotion"] = {
        "evalTemplate": copy.deepcopy(TEMPLATE),
        "apiKey": {"path": "team/eval/gemma"},
    }
    spec = ModelDeploymentSpec.model_validate(defaulted(doc)["spec"])
    served = eval_job(spec, "gemma", "gemma-eval-1", candidate=False, baseline=None)
    assert served["spec"]["target"]["apiKey"] == {
        "mount": "secret",
        "path": "team/eval/gemma",
        "key": "api_key",
    }
    candidate = eval_job(spec, "gemma", "gemma-eval-2", candidate=True, baseline="gemma-eval-1")
    assert "apiKey" not in candidate["spec"]["target"]  # a candidate admits its evaluation
    doc["spec"]["promotion"]["apiKey"] = {"path": "other/eval"}
    outside = ModelDeploymentSpec.model_validate(defaulted(doc)["spec"])
    with pytest.raises(SpecProblemError) as refused:
        ModelDeploymentKind(CONFIG).check(outside, {"name": "gemma", "namespace": "team"})
    assert refused.value.message.startswith("spec.promotion.apiKey.path: 'other/eval'")


def test_file_datasets_are_refused_on_a_cluster() -> None:
    spec = eval_spec()
    spec.suites[0].dataset.uri = "file:///tmp/x.jsonl"
    with pytest.raises(SpecProblemError, match=r"spec.suites\[0\].dataset.uri"):
        EvalJobKind(CONFIG).check(spec, META)


def test_a_pinned_config_is_kept_whatever_the_target_does_since() -> None:
    kind = EvalJobKind(CONFIG)
    first = by_kind(
        kind.build(
            eval_spec(), META, Facts(kuberay=False, related={"target": [deployment(SERVING)]})
        ).children
    )
    config = first["ConfigMap/smoke-eval-config"]
    # The deployment went away: the pinned config still says what is evaluated.
    later = kind.build(
        eval_spec(), META, Facts(kuberay=False, related={"config": [config], "target": []})
    )
    assert ("v1", "ConfigMap", "smoke-eval-config") in later.keep
    assert "ConfigMap/smoke-eval-config" not in by_kind(later.children)


def summary_of(gates_passed: bool) -> dict[str, Any]:
    result = {
        "digest": "sha256:" + "d" * 64,
        "signature": {"keyId": "ed25519:0123456789abcdef"},
        "gatesPassed": gates_passed,
        "target": {"digest": f"sha256:{NEW}"},
        "suites": [
            {
                "name": "capitals",
                "metric": "accuracy",
                "samples": 20,
                "metrics": {"accuracy": {"value": 0.45, "low": 0.25, "high": 0.65}},
            }
        ],
        "gates": [
            {
                "suite": "capitals",
                "metric": "accuracy",
                "operator": ">=",
                "threshold": 0.5,
                "baseline": None,
                "value": 0.45,
                "passed": gates_passed,
            }
        ],
    }
    return summary(result)


def pod(message: dict[str, Any] | None, phase: str = "Succeeded") -> dict[str, Any]:
    state = {"terminated": {"exitCode": 0, "message": json.dumps(message)}} if message else {}
    return {
        "metadata": {"name": "smoke-eval-x"},
        "status": {"phase": phase, "containerStatuses": [{"name": "eval", "state": state}]},
    }


def test_the_outcome_comes_from_the_termination_message() -> None:
    kind = EvalJobKind(CONFIG)
    spec = eval_spec()
    facts = Facts(kuberay=False, related={"pods": [pod(summary_of(False))]})
    report = kind.status(spec, META, facts, {}, None)
    conds = {c.type: c for c in report.conditions}
    assert report.fields["phase"] == "Succeeded"
    assert conds["Completed"].status == "True"
    assert conds["GatesPassed"].status == "False"
    assert "capitals.accuracy 0.45" in conds["GatesPassed"].message
    assert report.fields["suites"][0] == {
        "name": "capitals",
        "metric": "accuracy",
        "value": 0.45,
        "low": 0.25,
        "high": 0.65,
        "samples": 20,
    }
    assert report.fields["artifact"] == "pvc://smoke-results/result.json"
    assert report.fields["modelDigest"] == f"sha256:{NEW}"
    # Once recorded, the status is the record: the pod may be gone.
    recorded = {**report.fields, "conditions": [vars(c) for c in report.conditions]}
    again = kind.status(spec, META, Facts(kuberay=False, status=recorded), {}, None)
    assert again.fields["suites"] == report.fields["suites"]
    assert [c.status for c in again.conditions] == ["True", "False"]
    assert kind.lookups(spec, META, Facts(kuberay=False, status=recorded)) == {}
    assert kind.build(spec, META, Facts(kuberay=False, status=recorded)).children == []


def test_a_failure_is_reported_with_its_reason() -> None:
    failed = {"v": 1, "state": "failed", "reason": "DatasetInvalid", "message": "sha256 mismatch"}
    report = EvalJobKind(CONFIG).status(
        eval_spec(), META, Facts(kuberay=False, related={"pods": [pod(failed, "Failed")]}), {}, None
    )
    assert report.fields["phase"] == "Failed"
    completed = report.conditions[0]
    assert (completed.status, completed.reason) == ("False", "DatasetInvalid")
    assert "sha256 mismatch" in completed.message


def test_progress_is_probed_from_the_running_pod() -> None:
    kind = EvalJobKind(CONFIG)
    running = {"metadata": {"name": "p"}, "status": {"phase": "Running", "podIP": "10.1.2.3"}}
    facts = Facts(kuberay=False, related={"pods": [running]})
    probe = kind.probe(eval_spec(), META, {}, facts)
    assert probe is not None and probe.url == "http://10.1.2.3:8080/progress"
    observed = Facts(
        kuberay=False, related={"pods": [running]}, observed={"completed": 3, "total": 9}
    )
    job = {"status": {"active": 1}}
    report = kind.status(
        eval_spec(), META, observed, {("batch/v1", "Job", job_name(kind.context(META))): job}, None
    )
    assert report.fields["phase"] == "Running"
    assert report.fields["progress"] == {"completed": 3, "total": 9}


def test_the_summary_fits_the_termination_message() -> None:
    suites = [
        {
            "name": f"suite-{n:02d}-with-a-long-name",
            "metric": "accuracy",
            "samples": 1000,
            "metrics": {"accuracy": {"value": 0.123456789, "low": 0.1, "high": 0.2}},
        }
        for n in range(32)
    ]
    gates = [
        {
            "suite": s["name"],
            "metric": "accuracy",
            "operator": ">=",
            "threshold": 0.5,
            "baseline": 0.6,
            "value": 0.123,
            "passed": n % 2 == 0,
        }
        for n, s in enumerate(suites * 2)
    ]
    result = {
        "digest": "sha256:" + "d" * 64,
        "signature": {"keyId": "ed25519:0123456789abcdef"},
        "gatesPassed": False,
        "target": {"digest": None},
        "suites": suites,
        "gates": gates,
    }
    out = summary(result)
    assert len(json.dumps(out, separators=(",", ":"))) <= SUMMARY_LIMIT
    assert out["truncated"] is True and all(not g[6] for g in out["gates"])


# -- promotion ----------------------------------------------------------------------


def md_spec(sha: str, promotion: bool = True) -> ModelDeploymentSpec:
    doc = deployment()
    doc["spec"]["model"]["sha256"] = sha
    if promotion:
        doc["spec"]["promotion"] = {"evalTemplate": copy.deepcopy(TEMPLATE)}
    return ModelDeploymentSpec.model_validate(defaulted(doc)["spec"])


def workload(sha: str) -> dict[str, Any]:
    model = md_spec(sha).model
    return {
        "metadata": {"name": "gemma", "annotations": {MODEL_ANNOTATION: model_annotation(model)}}
    }


def evaljob(name: str, phase: str, passed: bool, sha: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "status": {
            "phase": phase,
            "modelDigest": f"sha256:{sha}",
            "conditions": [
                {
                    "type": "GatesPassed",
                    "status": "True" if passed else "False",
                    "message": "x < 0.5",
                }
            ],
        },
    }


def test_promotion_plans() -> None:
    spec = md_spec(NEW)
    template = spec.promotion.eval_template  # type: ignore[union-attr]
    decider = eval_job_name("gemma", template, NEW)
    assert plan(md_spec(NEW, promotion=False), "gemma", None, {}).serve.sha256 == NEW
    # First version: served at once, and evaluated as the baseline of the next.
    first = plan(spec, "gemma", None, {})
    assert (first.serve.sha256, first.state, first.baseline_job) == (NEW, "Stable", decider)
    live = md_spec(OLD).model
    waiting = plan(spec, "gemma", live, {})
    assert (waiting.serve.sha256, waiting.state) == (OLD, "Evaluating")
    assert waiting.candidate is not None and waiting.candidate.sha256 == NEW
    assert waiting.candidate_job == decider
    assert waiting.baseline_job == eval_job_name("gemma", template, OLD)
    failed = plan(spec, "gemma", live, {decider: evaljob(decider, "Succeeded", False, NEW)})
    assert (failed.serve.sha256, failed.state, failed.candidate) == (OLD, "GatesFailed", None)
    assert "x < 0.5" in failed.verdict
    # Passed, but for another digest: not a pass for this one.
    other = plan(spec, "gemma", live, {decider: evaljob(decider, "Succeeded", True, OLD)})
    assert other.state == "GatesFailed" or other.serve.sha256 == OLD
    promoted = plan(spec, "gemma", live, {decider: evaljob(decider, "Succeeded", True, NEW)})
    assert (promoted.serve.sha256, promoted.state) == (NEW, "Promoting")
    assert len(decider) <= 53 and len(candidate_name("x" * 53)) <= 53


def test_a_new_digest_runs_as_a_candidate_beside_the_served_version() -> None:
    kind = ModelDeploymentKind(CONFIG)
    spec = md_spec(NEW)
    meta = {"name": "gemma", "namespace": "team", "uid": "md-uid"}
    facts = Facts(kuberay=False, related={"workload": [workload(OLD)], "evaljobs": []})
    desired = kind.build(spec, meta, facts)
    objs = by_kind(desired.children)
    main = objs["Deployment/gemma"]
    assert json.loads(main["metadata"]["annotations"][MODEL_ANNOTATION])["sha256"] == OLD
    assert OLD in json.dumps(main["spec"]) and NEW not in json.dumps(main["spec"])
    candidate = objs["Deployment/gemma-next"]
    assert NEW in json.dumps(candidate["spec"]) and candidate["spec"]["replicas"] == 1
    # Only the evaluation's pods may call the candidate.
    allow = objs["NetworkPolicy/gemma-next-allow"]["spec"]["ingress"]
    assert allow[0]["from"] == [{"podSelector": {"matchLabels": {EVALUATES_LABEL: "gemma"}}}]
    jobs = {k: v for k, v in objs.items() if k.startswith("EvalJob/")}
    assert len(jobs) == 2
    decider = next(j for j in jobs.values() if j["spec"]["target"]["candidate"])
    baseline = next(j for j in jobs.values() if not j["spec"]["target"]["candidate"])
    assert decider["spec"]["baseline"] == {"name": baseline["metadata"]["name"]}
    assert len(decider["spec"]["gates"]) == 2
    # The served version's evaluation has nothing to regress from: thresholds only.
    assert [g.get("maxRegression") for g in baseline["spec"]["gates"]] == [None]
    for job in jobs.values():  # each is a valid EvalJob
        EvalJobSpec.model_validate(defaulted(job)["spec"])

    # Status: Ready for the old digest, AwaitingEval naming the EvalJob.
    report = kind.status(spec, meta, facts, {}, None)
    conds = {c.type: c for c in report.conditions}
    assert conds["AwaitingEval"].status == "True" and conds["AwaitingEval"].reason == "Evaluating"
    assert decider["metadata"]["name"] in conds["AwaitingEval"].message
    assert report.fields["candidate"]["evalJob"] == decider["metadata"]["name"]
    assert report.fields["candidate"]["endpoint"] == "http://gemma-next.team.svc:8000/v1"


def test_existing_evaluations_are_kept_as_they_are() -> None:
    kind = ModelDeploymentKind(CONFIG)
    spec = md_spec(NEW)
    meta = {"name": "gemma", "namespace": "team", "uid": "md-uid"}
    template = spec.promotion.eval_template  # type: ignore[union-attr]
    decider = eval_job_name("gemma", template, NEW)
    passed = evaljob(decider, "Succeeded", True, NEW)
    facts = Facts(kuberay=False, related={"workload": [workload(OLD)], "evaljobs": [passed]})
    desired = kind.build(spec, meta, facts)
    objs = by_kind(desired.children)
    assert NEW in json.dumps(objs["Deployment/gemma"]["spec"])
    assert "Deployment/gemma-next" not in objs
    assert ("freehold.dev/v1alpha1", "EvalJob", decider) in desired.keep
    assert not any(k.startswith("EvalJob/") for k in objs)

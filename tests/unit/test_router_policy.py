"""The router's decisions as pure functions (the same app runs against real models in
tests/integration/serving/test_router.py), and the ModelRouter kind's children."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from typing import Any

import pytest
import yaml

from freehold.api.model_router import ModelRouterSpec
from freehold.kinds.model_router import ModelRouterKind, eval_state
from freehold.reconciler import Facts, SpecProblemError
from freehold.validation import defaulted, validate
from freehold_serving.router.args import RouterArgs
from freehold_serving.router.policy import Need, Router, failure_cause
from tests.paths import EXAMPLES
from tests.pss import violations
from tests.unit.test_eval_job_kind import CONFIG


def router(**spec: Any) -> Router:
    targets = spec.pop(
        "targets",
        [
            {"name": "a", "url": "http://a/v1", "priority": 0, "cost_input": 5, "cost_output": 5},
            {"name": "b", "url": "http://b/v1", "priority": 1, "cost_input": 1, "cost_output": 1},
        ],
    )
    args = RouterArgs.model_validate({"name": "r", "served_name": "m", "targets": targets, **spec})
    now = [100.0]
    return Router(args, clock=lambda: now[0], wall=lambda: now[0], rng=random.Random(1))


CHAT = Need(frozenset({"chat"}), 100, 100)


def names(r: Router, need: Need = CHAT) -> list[str]:
    return [t.name for t in r.order(need)[0]]


def test_failure_causes() -> None:
    assert failure_cause(None) == "5xx"  # unreachable
    assert failure_cause(503) == failure_cause(500) == "5xx"
    assert failure_cause(429) == "429"
    assert failure_cause(400, b'{"error":{"code":"context_length_exceeded"}}') == "context_length"
    assert failure_cause(400, b'{"error":{"code":"invalid_value"}}') is None
    assert failure_cause(200, timed_out=True) == "timeout"
    assert failure_cause(200) is None


def test_strategies() -> None:
    assert names(router(strategy="priority")) == ["a", "b"]
    assert names(router(strategy="least_cost")) == ["b", "a"]
    fast = router(strategy="least_latency")
    assert names(fast) == ["a", "b"]  # nothing measured: by priority
    fast.succeeded("a", 0.5)
    assert names(fast) == ["b", "a"]  # b is not measured yet: measured first
    fast.succeeded("b", 0.1)
    assert names(fast) == ["b", "a"]
    weighted = router(
        strategy="weighted",
        targets=[{"name": "a", "url": "u", "weight": 3}, {"name": "b", "url": "u", "weight": 1}],
    )
    firsts = [names(weighted)[0] for _ in range(400)]
    assert 0.65 < firsts.count("a") / 400 < 0.85
    capable = router(
        strategy="capability",
        targets=[
            {"name": "a", "url": "u", "capabilities": ["chat"]},
            {"name": "b", "url": "u", "capabilities": ["chat", "json_schema"], "priority": 1},
        ],
    )
    assert names(capable, Need(frozenset({"chat", "json_schema"}), 1, 1)) == ["b"]
    skipped = capable.order(Need(frozenset({"embeddings"}), 1, 1))[1]
    assert [s.why for s in skipped] == ["cannot do embeddings", "cannot do embeddings"]


def test_context_limit_cooldown_and_admission() -> None:
    r = router(
        targets=[
            {"name": "a", "url": "u", "context_limit": 150},
            {"name": "b", "url": "u", "priority": 1},
            {"name": "c", "url": "u", "priority": 2, "admitted": False},
        ],
        fallback={"cooldown_seconds": 10},
    )
    assert names(r) == ["b"]  # 200 tokens > a's 150; c not admitted
    assert names(r, Need(frozenset({"chat"}), 10, 10)) == ["a", "b"]
    r.failed("b")
    assert names(r, Need(frozenset({"chat"}), 10, 10)) == ["a"]
    r.clock = lambda: 111.0  # the cooldown is over
    assert names(r, Need(frozenset({"chat"}), 10, 10)) == ["a", "b"]


def example(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((EXAMPLES / "modelrouter.yaml").read_text())
    doc["spec"].update(changes)
    return doc


def md(name: str, ready: bool, digest: str = "sha256:" + "a" * 64) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "status": {
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            "endpoint": f"http://{name}.team.svc:8000/v1",
            "servedName": name,
            "servedDigest": digest,
        },
    }


def evaljob(
    target: str, passed: bool, created: str, digest: str = "sha256:" + "a" * 64
) -> dict[str, Any]:
    return {
        "metadata": {"name": f"{target}-{created}", "creationTimestamp": created},
        "spec": {"target": {"modelDeploymentRef": {"name": target}}},
        "status": {
            "phase": "Succeeded",
            "modelDigest": digest,
            "conditions": [{"type": "GatesPassed", "status": "True" if passed else "False"}],
        },
    }


def test_the_router_reaches_only_admitted_targets_and_says_why() -> None:
    doc = example()
    assert validate(doc) == []
    spec = ModelRouterSpec.model_validate(defaulted(doc)["spec"])
    kind = ModelRouterKind(CONFIG)
    meta = {"name": "assistant", "namespace": "team", "uid": "u"}
    jobs = [
        evaljob("smollm2-135m", False, "2026-01-01T00:00:00Z"),
        evaljob("smollm2-135m", True, "2026-01-02T00:00:00Z"),  # the latest passed
        evaljob("gemma-270m", False, "2026-01-02T00:00:00Z"),
    ]
    facts = Facts(
        kuberay=False,
        related={
            "md:smollm2": [md("smollm2-135m", True)],
            "md:gemma": [md("gemma-270m", True)],
            "evaljobs": jobs,
        },
    )
    desired = kind.build(spec, meta, facts)
    objs = {f"{c['kind']}/{c['metadata']['name']}": c for c in desired.children}
    deployment = objs["Deployment/assistant"]
    pod = deployment["spec"]["template"]["spec"]
    assert violations(pod) == [] and pod["automountServiceAccountToken"] is False
    args = json.loads(pod["containers"][0]["env"][-1]["value"])
    admitted = {t["name"]: t["admitted"] for t in args["targets"]}
    assert admitted == {"smollm2": True, "gemma": False}
    assert args["targets"][0]["url"] == "http://smollm2-135m.team.svc:8000/v1"
    assert args["rate_limits"] == [
        {"tenant": "acme", "requests_per_minute": 600, "tokens_per_minute": 200000,
         "key_requests_per_minute": 120, "key_tokens_per_minute": None}
    ]  # fmt: skip
    allow = objs["NetworkPolicy/assistant-router-allow"]["spec"]
    peers = [r.get("to") for r in allow["egress"]]
    assert [
        {"podSelector": {"matchLabels": {"freehold.dev/model-deployment": "gemma-270m"}}}
    ] in peers
    report = kind.status(spec, meta, facts, {}, None)
    by_name = {t["name"]: t for t in report.fields["targets"]}
    assert by_name["gemma"]["evalState"] == "Failed" and by_name["smollm2"]["evalState"] == "Passed"
    assert report.fields["readyTargets"] == 1
    assert eval_state("gemma-270m", None, []) is None


def test_a_keyed_target_is_routed_to_only_with_the_routers_own_key_from_vault() -> None:
    kind = ModelRouterKind(CONFIG)
    # The example's keys are in freehold-demo's Vault paths.
    meta = {"name": "assistant", "namespace": "freehold-demo", "uid": "u"}
    keyed = md("smollm2-135m", True)
    keyed["spec"] = {"auth": {"apiKeys": {"path": "freehold-demo/model-keys"}}}
    facts = Facts(kuberay=False, related={"md:smollm2": [keyed]})
    one = [{"name": "smollm2", "modelDeploymentRef": {"name": "smollm2-135m"}}]

    def built(targets: list[dict[str, Any]]) -> tuple[dict[str, Any], Any, Any]:
        doc = example(targets=targets, requirePassingEval=False)
        assert validate(doc) == []
        spec = ModelRouterSpec.model_validate(defaulted(doc)["spec"])
        kind.check(spec, meta)
        desired = kind.build(spec, meta, facts)
        pod = next(c for c in desired.children if c["kind"] == "Deployment")
        args = json.loads(pod["spec"]["template"]["spec"]["containers"][0]["env"][-1]["value"])
        return args["targets"][0], desired.externals, kind.resolve(spec, facts)["smollm2"]

    target, _, resolved = built(one)
    assert target["admitted"] is False and target["api_key_vault"] is None
    assert "spec.targets[0].apiKey" in resolved["message"]
    assert "--of modeldeployment/smollm2-135m" in resolved["message"]

    own = {"path": "freehold-demo/router/assistant", "key": "smollm2"}
    target, externals, resolved = built([{**one[0], "apiKey": own}])
    assert target["admitted"] is True and resolved["message"] is None
    # Where the key is, never the key; the router's own Vault policy reads exactly that.
    assert target["api_key_vault"] == {"mount": "secret", "path": own["path"], "field": "smollm2"}
    (role,) = externals
    assert 'path "secret/data/freehold-demo/router/assistant"' in role.policy

    # The router says its own key was refused (its /router/status): the status names the
    # field and what to do, and the router is Degraded for it.
    doc = example(targets=[{**one[0], "apiKey": own}], requirePassingEval=False)
    spec = ModelRouterSpec.model_validate(defaulted(doc)["spec"])
    seen = {"targets": [{"name": "smollm2", "ownKey": "was refused by the target"}]}
    report = kind.status(spec, meta, replace(facts, observed=seen), {}, None)
    message = report.fields["targets"][0]["message"]
    assert "spec.targets[0].apiKey" in message and "was refused" in message
    degraded = next(c for c in report.conditions if c.type == "Degraded")
    assert degraded.status == "True" and degraded.reason == "OwnKeyRefused"

    with pytest.raises(SpecProblemError, match=r"spec.targets\[0\].apiKey.path"):
        built([{**one[0], "apiKey": {"path": "other-team/key"}}])
    # An external target's key has its own place.
    ext = {"name": "ext", "external": {"provider": "openai", "model": "x"}, "apiKey": own}
    doc = example(allowExternal=True, targets=[ext])
    assert any("external.apiKey" in str(e) for e in validate(doc))


def test_external_targets_need_allow_external() -> None:
    doc = example()
    doc["spec"]["targets"].append(
        {"name": "ext", "external": {"provider": "openai", "model": "gpt-x"}}
    )
    assert any("allowExternal" in str(e) for e in validate(doc))
    doc["spec"]["allowExternal"] = True
    assert validate(doc) == []


def test_replicas_share_budgets_in_postgresql_and_one_replica_keeps_them_in_memory() -> None:
    doc = example(replicas=2)
    assert any("state.postgres" in str(e) for e in validate(doc))  # per-replica budgets
    doc["spec"]["state"] = {
        "postgres": {
            "host": "10.9.8.7",
            "database": "routers",
            "ownerRole": "freehold_router",
            "caConfigMapRef": {"name": "routers-db-ca"},
            "credentials": {"databaseRole": "freehold-demo-routers"},
        }
    }
    assert validate(doc) == []
    spec = ModelRouterSpec.model_validate(defaulted(doc)["spec"])
    kind = ModelRouterKind(CONFIG)
    meta = {"name": "assistant", "namespace": "freehold-demo", "uid": "u"}
    kind.check(spec, meta)
    facts = Facts(kuberay=False, related={"md:smollm2": [md("smollm2-135m", True)]})
    desired = kind.build(spec, meta, facts)
    objs = {f"{c['kind']}/{c['metadata']['name']}": c for c in desired.children}
    deployment = objs["Deployment/assistant"]["spec"]
    assert deployment["replicas"] == 2 and deployment["strategy"]["type"] == "RollingUpdate"
    pod = deployment["template"]["spec"]
    assert violations(pod) == []
    args = RouterArgs.model_validate_json(pod["containers"][0]["env"][-1]["value"])
    assert args.replicas == 2 and args.state_postgres is not None
    assert args.state_postgres.model_dump(include={"host", "db_schema", "credentials",
                                                   "vault_path", "owner_role", "ca_cert"}) == {
        "host": "10.9.8.7", "db_schema": "assistant", "credentials": "vault-database",
        "vault_path": "freehold-demo-routers", "owner_role": "freehold_router",
        "ca_cert": "/etc/freehold/postgres-ca/ca.crt",
    }  # fmt: skip
    mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["postgres-ca"] == "/etc/freehold/postgres-ca"
    egress = objs["NetworkPolicy/assistant-router-allow"]["spec"]["egress"]
    assert {"to": [{"ipBlock": {"cidr": "10.9.8.7/32"}}],
            "ports": [{"protocol": "TCP", "port": 5432}]} in egress  # fmt: skip
    (role,) = desired.externals
    assert 'path "database/creds/freehold-demo-routers"' in role.policy
    # Another team's database role is refused, naming the field.
    other = spec.model_copy(deep=True)
    assert other.state.postgres is not None
    other.state.postgres.credentials.database_role = "other-team-db"
    with pytest.raises(SpecProblemError, match=r"spec\.state\.postgres\.credentials\.databaseRole"):
        kind.check(other, meta)
    # One replica without state: budgets in memory, replaced (not overlapped) on a change.
    single = ModelRouterSpec.model_validate(defaulted(example())["spec"])
    objs = {f"{c['kind']}/{c['metadata']['name']}": c
            for c in kind.build(single, meta, facts).children}  # fmt: skip
    assert objs["Deployment/assistant"]["spec"]["strategy"] == {"type": "Recreate"}


def test_the_router_replica_runs_at_nice_0_without_rays_access_log() -> None:
    from freehold_serving.router.app import router_options

    args = RouterArgs.model_validate(
        {"name": "r", "served_name": "m", "replicas": 2,
         "targets": [{"name": "a", "url": "http://a:8000/v1"}]}
    )  # fmt: skip
    options = router_options(args)
    assert options["num_replicas"] == 2
    # Beside a model replica at nice 0, a router at Ray's nice 15 would wait for the cores.
    assert options["ray_actor_options"]["runtime_env"]["env_vars"]["RAY_worker_niceness"] == "0"
    # Its own access records name key, tenant and target; Ray's line would repeat them.
    assert options["logging_config"].enable_access_log is False

"""The reconciler's decisions under faults a real API server will not produce on demand
(an injected 500, 409 or 422 on one call), and the work queue's guarantees.

`InjectingKube` is a test double of the Kubernetes adapter, used only to inject faults;
every behaviour without injected faults is tested on a real API server in tests/e2e.
"""

from __future__ import annotations

import asyncio
import copy
from datetime import UTC, datetime
from typing import Any

import pytest
import yaml

from freehold.adapters.kubernetes import Applied, KubeError, Ref
from freehold.builders.model_workload import ClusterConfig
from freehold.controller import Controller, WorkQueue
from freehold.kinds.model_deployment import ModelDeploymentKind
from freehold.reconciler import OwnedChild, Reconciler, shape_of
from tests.paths import EXAMPLES

NOW = datetime(2026, 1, 1, tzinfo=UTC)


class InjectingKube:
    """Answers like an API server holding nothing but the parent; `fail` maps a
    (verb, kind) to the KubeError to raise once."""

    def __init__(self, fail: dict[tuple[str, str], KubeError] | None = None) -> None:
        self.fail = dict(fail or {})
        self.applied: list[str] = []
        self.deleted: list[str] = []
        self.statuses: list[dict[str, Any]] = []
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.read: list[str] = []  # objects read from the watch cache

    def _maybe_fail(self, verb: str, kind: str) -> None:
        error = self.fail.pop((verb, kind), None)
        if error is not None:
            raise error

    def serves(self, group_version: str, plural: str) -> bool:
        return False

    def get(self, ref: Ref, *, cached: bool = False) -> dict[str, Any] | None:
        if cached:
            self.read.append(f"{ref.kind}/{ref.name}")
        return self.objects.get((ref.kind, ref.name))

    def list(self, type_: Any, namespace: str, labels: dict[str, str]) -> list[dict[str, Any]]:
        return [
            o
            for (kind, _), o in self.objects.items()
            if kind == type_.kind
            and all((o["metadata"].get("labels") or {}).get(k) == v for k, v in labels.items())
        ]

    def apply(self, desired: dict[str, Any]) -> Applied:
        self._maybe_fail("apply", desired["kind"])
        self.applied.append(f"{desired['kind']}/{desired['metadata']['name']}")
        body = copy.deepcopy(desired)
        key = (desired["kind"], desired["metadata"]["name"])
        known = self.objects.get(key)
        uid = known["metadata"]["uid"] if known else f"uid-{len(self.applied)}"
        body["metadata"].update(uid=uid, resourceVersion="7")
        self.objects[key] = body
        return Applied(body, created=known is None, changed=True)

    def delete(self, ref: Ref, uid: str) -> bool:
        self.deleted.append(f"{ref.kind}/{ref.name}")
        return True

    def patch_metadata(self, obj: dict[str, Any], metadata: dict[str, Any]) -> dict[str, Any]:
        return obj

    def patch_status(self, obj: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
        self._maybe_fail("status", obj["kind"])
        self.statuses.append(status)
        return {**obj, "status": status, "metadata": {**obj["metadata"], "resourceVersion": "9"}}

    def post_event(self, about: dict[str, Any], type_: str, reason: str, message: str) -> None:
        pass


def parent(**spec: Any) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((EXAMPLES / "modeldeployment.yaml").read_text())
    doc["metadata"].update(uid="parent-uid", generation=3, resourceVersion="5")
    doc["spec"].update(spec)
    return doc


def run(kube: InjectingKube, body: dict[str, Any], owned: list[OwnedChild] | None = None) -> Any:
    kind = ModelDeploymentKind(
        ClusterConfig(serving_image="img", ray_version="2.60.0", api_server_cidr="10.0.0.1/32")
    )
    return Reconciler(kube, clock=lambda: NOW).reconcile(kind, body, owned or [])  # type: ignore[arg-type]


def ready(status: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == "Ready")


def test_a_server_error_on_one_child_applies_the_others_reports_and_retries() -> None:
    kube = InjectingKube({("apply", "Service"): KubeError(500, "InternalError", "range is full")})
    outcome = run(kube, parent())
    assert "Service/gemma-270m" not in kube.applied
    assert "Deployment/gemma-270m" in kube.applied and len(kube.applied) == 6  # all but one
    assert outcome.retry and outcome.problem.reason == "ApplyFailed"
    (status,) = kube.statuses
    assert ready(status)["reason"] == "ApplyFailed" and "range is full" in ready(status)["message"]
    assert status["observedGeneration"] == 3
    assert kube.deleted == []  # never prune while the desired state is not in place


def test_a_refused_child_is_reported_not_retried() -> None:
    kube = InjectingKube({("apply", "Deployment"): KubeError(422, "Invalid", "field is immutable")})
    outcome = run(kube, parent())
    assert not outcome.retry and outcome.problem.reason == "ApplyFailed"
    assert "immutable" in ready(kube.statuses[0])["message"]


def test_a_status_conflict_is_retried_not_lost() -> None:
    kube = InjectingKube({("status", "ModelDeployment"): KubeError(409, "Conflict", "modified")})
    outcome = run(kube, parent())
    assert outcome.retry and outcome.problem.reason == "ApiError"
    assert kube.statuses == []
    again = run(kube, parent())  # the work queue's retry, with no fault left
    assert not again.retry and len(kube.statuses) == 1


@pytest.mark.security
def test_a_stranger_at_a_child_name_is_never_applied_onto() -> None:
    kube = InjectingKube()
    kube.objects[("NetworkPolicy", "gemma-270m-allow")] = {
        "metadata": {"name": "gemma-270m-allow", "ownerReferences": []}
    }
    outcome = run(kube, parent())
    assert "NetworkPolicy/gemma-270m-allow" not in kube.applied
    assert outcome.problem.reason == "NameConflict" and not outcome.retry
    assert "NetworkPolicy gemma-270m-allow" in ready(kube.statuses[0])["message"]


def test_children_no_longer_wanted_are_pruned_by_uid() -> None:
    kube = InjectingKube()
    stale = OwnedChild("v1", "ConfigMap", "gemma-270m-old", "stale-uid", "1")
    run(kube, parent(), [stale])
    assert kube.deleted == ["ConfigMap/gemma-270m-old"]


def test_an_unchanged_status_is_not_written() -> None:
    kube = InjectingKube()
    run(kube, parent())
    body = parent()
    body["status"] = kube.statuses[0]
    run(kube, body)
    assert len(kube.statuses) == 1


def test_a_child_at_the_version_our_apply_left_is_not_applied_again() -> None:
    kube = InjectingKube()
    first = run(kube, parent())
    children = {(c.kind, c.name): c for c in first.applied}
    assert all(c.intent for c in first.applied)
    kube.applied.clear()
    kube.read.clear()
    steady = parent()
    steady["status"] = kube.statuses[-1]  # observedGeneration: the spec is the one applied
    # The same intent, the children as the last apply left them: nothing is written; the
    # Deployment, whose status the pass reads, is read from the API server's watch cache.
    again = run(kube, steady, list(children.values()))
    assert kube.applied == []
    assert kube.read == ["Deployment/gemma-270m"]
    assert {(c.kind, c.name) for c in again.applied} == set(children)
    # A child changed since (a watch event: its new version, no intent) is applied again.
    (sa,) = [c for c in children.values() if c.kind == "ServiceAccount"]
    changed = OwnedChild(sa.api_version, sa.kind, sa.name, sa.uid, "8", sa.shape)
    run(kube, steady, [*(c for c in children.values() if c is not sa), changed])
    assert kube.applied == [f"ServiceAccount/{sa.name}"]
    # A status-read child whose live shape is not the one our apply left (a label changed
    # behind our back) is applied again, not just read.
    kube.applied.clear()
    kube.objects[("Deployment", "gemma-270m")]["metadata"]["labels"]["team"] = "other"
    run(kube, steady, list(children.values()))
    assert kube.applied == ["Deployment/gemma-270m"]
    # A new generation applies every child (a watch event missed during an outage would
    # otherwise leave a deleted child unrepaired).
    kube.applied.clear()
    renewed = parent()
    renewed["status"] = {**kube.statuses[-1], "observedGeneration": 2}
    run(kube, renewed, list(children.values()))
    assert len(kube.applied) == len(children)


@pytest.mark.security
def test_a_spec_the_crd_admits_but_no_parser_reads_is_invalid_not_a_crash() -> None:
    kube = InjectingKube()
    outcome = run(kube, parent(resources={"cpu": "1e1.5", "memory": "1Gi"}))
    assert outcome.problem.reason == "InvalidSpec" and not outcome.retry
    assert kube.applied == [] and "spec.resources.cpu" in ready(kube.statuses[0])["message"]


async def test_queue_dedupes_and_reruns_a_key_changed_while_active() -> None:
    queue = WorkQueue()
    key = ("ModelDeployment", "ns", "a")
    queue.add(key)
    queue.add(key)
    assert len(queue) == 1
    got = await queue.get()
    queue.add(key)  # changed while being processed: once more afterwards, not in parallel
    assert len(queue) == 0
    queue.done(got)
    assert len(queue) == 1


async def test_queue_delayed_adds_keep_the_earliest() -> None:
    queue = WorkQueue()
    key = ("ModelDeployment", "ns", "a")
    queue.add(key, delay=10)
    queue.add(key, delay=0.05)
    await asyncio.sleep(0.1)
    assert len(queue) == 1
    queue.forget(key)


@pytest.mark.parametrize("field", ["secrets"])
def test_what_this_build_cannot_do_is_refused_at_reconcile(field: str) -> None:
    spec = {
        "secrets": {"secrets": [{"name": "HF", "path": "freehold-demo/hf"}]},
    }[field]
    kube = InjectingKube()
    outcome = run(kube, parent(**spec))
    assert outcome.problem.reason.endswith("Unsupported") and kube.applied == []
    assert f"spec.{field}" in ready(kube.statuses[0])["message"]


class NoVault:
    """Externals that are always in place (the Vault adapter has its own tests)."""

    def check(self) -> None:
        pass

    def ensure(self, external: Any) -> bool:
        return False

    def remove(self, name: str) -> None:
        pass


class ServingKube(InjectingKube):
    """A StatefulSet that is already serving."""

    def apply(self, desired: dict[str, Any]) -> Applied:
        applied = super().apply(desired)
        if desired["kind"] == "StatefulSet":
            applied.body["status"] = {"replicas": 1, "readyReplicas": 1}
        return applied


def memory_parent() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((EXAMPLES / "memorystore.yaml").read_text())
    doc["metadata"].update(uid="store-uid", generation=2, resourceVersion="5")
    return doc


def test_a_serving_memory_store_reports_its_counts_and_asks_again_in_a_minute() -> None:
    from freehold.kinds.memory_store import MemoryStoreKind

    kind = MemoryStoreKind(
        ClusterConfig(serving_image="img", ray_version="2.60.0", api_server_cidr="10.0.0.1/32")
    )
    asked: list[str] = []

    def prober(url: str) -> dict[str, Any]:
        asked.append(url)
        return {
            "records": {"total": 5, "user": 3, "agent": 1, "session": 1},
            "subjects": 2,
            "lastExport": {"time": "2026-01-01T00:00:00+00:00", "records": 2, "digest": None},
            "lastImport": None,
            "signer": "ed25519:0123456789abcdef",
            "signerPublicKey": "MCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=",
            "secret": "never copied into status",
        }

    kube = ServingKube()
    outcome = Reconciler(kube, NoVault(), clock=lambda: NOW, prober=prober).reconcile(
        kind,  # type: ignore[arg-type]
        memory_parent(),
        [],
    )
    assert asked == ["http://assistant-memory.freehold-demo.svc:8000/v1/memory/status"]
    status = kube.statuses[-1]
    assert status["records"] == {"total": 5, "user": 3, "agent": 1, "session": 1}
    assert status["subjects"] == 2 and status["signer"] == "ed25519:0123456789abcdef"
    assert status["lastExport"]["records"] == 2 and "secret" not in status
    assert status["signerPublicKey"].startswith("MCow")  # published: a verifier's anchor
    assert ready(status)["status"] == "True" and outcome.requeue_after == 60.0

    # A store that answers nonsense (or nothing) changes no field but its conditions.
    kube = ServingKube()
    Reconciler(
        kube, NoVault(), clock=lambda: NOW, prober=lambda url: {"records": "lots"}
    ).reconcile(
        kind,  # type: ignore[arg-type]
        memory_parent(),
        [],
    )
    assert "records" not in kube.statuses[-1]


def test_lookups_of_watched_kinds_are_read_from_the_watch_not_listed() -> None:
    """Every ModelDeployment pass looks at its namespace's ModelRouters (a budgeted one
    governs who may call it): held by the controller's watch, not listed each pass."""
    kube = InjectingKube()
    listed: list[str] = []
    real_list = kube.list

    def counting(type_: Any, namespace: str, labels: dict[str, str]) -> list[dict[str, Any]]:
        listed.append(type_.kind)
        return real_list(type_, namespace, labels)

    kube.list = counting  # type: ignore[method-assign]
    written: dict[str, dict[str, Any]] = {}
    real_apply = kube.apply

    def keeping(desired: dict[str, Any]) -> Applied:
        written[f"{desired['kind']}/{desired['metadata']['name']}"] = desired
        return real_apply(desired)

    kube.apply = keeping  # type: ignore[method-assign]
    gate = {
        "metadata": {"name": "gate", "namespace": "freehold-demo"},
        "spec": {"targets": [{"name": "t", "modelDeploymentRef": {"name": "gemma-270m"}}],
                 "budgets": [{"tenant": "acme", "tokens": 10}]},
    }  # fmt: skip
    asked: list[tuple[str, str]] = []

    def watched(kind: str, namespace: str) -> list[dict[str, Any]] | None:
        asked.append((kind, namespace))
        return [gate] if kind == "ModelRouter" else None

    kind = ModelDeploymentKind(
        ClusterConfig(serving_image="img", ray_version="2.60.0", api_server_cidr="10.0.0.1/32")
    )
    Reconciler(kube, clock=lambda: NOW, watched=watched).reconcile(kind, parent(), [])  # type: ignore[arg-type]
    assert ("ModelRouter", "freehold-demo") in asked and "ModelRouter" not in listed
    peers = written["NetworkPolicy/gemma-270m-allow"]["spec"]["ingress"][0]["from"]
    assert {"podSelector": {"matchLabels": {"freehold.dev/model-router": "gate"}}} in peers


def test_a_status_write_keeps_our_intent_and_an_edit_is_drift() -> None:
    class Owner:
        class api:  # noqa: N801 - mirrors KindController.api
            kind = "ModelDeployment"

        status_from: frozenset[str] = frozenset()

    controller = Controller(Reconciler(InjectingKube()), [Owner()], workers=1, resync_seconds=60)  # type: ignore[arg-type,list-item]
    woken: list[Any] = []
    controller._wake = lambda key, signal: woken.append(signal)  # type: ignore[method-assign]
    controller._keys["parent-uid"] = ("ModelDeployment", "ns", "parent")

    def child(kind: str, rv: str, **changes: Any) -> dict[str, Any]:
        body: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": kind,
            "metadata": {
                "name": "m",
                "uid": f"{kind}-uid",
                "resourceVersion": rv,
                "labels": {"app.kubernetes.io/managed-by": "freehold-operator"},
                "ownerReferences": [{"uid": "parent-uid", "controller": True}],
            },
        }
        if kind == "PodDisruptionBudget":
            body["metadata"]["generation"] = 1
            body["spec"] = {"maxUnavailable": 1}
        else:  # a ConfigMap has no generation: its content stands for it
            body["data"] = {"bom.json": "{}"}
        for path, value in changes.items():
            section, key = path.split("__")
            body.setdefault(section, {})[key] = value
        return body

    for kind in ("PodDisruptionBudget", "ConfigMap"):
        applied = child(kind, "5")
        ours = OwnedChild("v1", kind, "m", f"{kind}-uid", "5", shape_of(applied), "digest")
        controller._owned["parent-uid"] = {("v1", kind, "m"): ours}
        woken.clear()
        # Another controller's status write: a newer version of the same shape keeps our
        # intent (the next recheck applies nothing) and wakes nobody.
        controller.child_event("MODIFIED", child(kind, "6", status__currentHealthy=1))
        assert controller._owned["parent-uid"][("v1", kind, "m")].intent == "digest"
        assert woken == []
        # A label changed behind our back: drift, repaired by the pass it wakes.
        labels = {"app.kubernetes.io/managed-by": "freehold-operator", "team": "x"}
        controller.child_event("MODIFIED", child(kind, "7", metadata__labels=labels))
        assert controller._owned["parent-uid"][("v1", kind, "m")].intent == ""
        assert len(woken) == 1
    # A ConfigMap's data edited (an ML-BOM rewritten): drift too, though no generation moved.
    controller._owned["parent-uid"] = {("v1", "ConfigMap", "m"): ours}
    woken.clear()
    controller.child_event("MODIFIED", child("ConfigMap", "8", data__extra="tampered"))
    assert controller._owned["parent-uid"][("v1", "ConfigMap", "m")].intent == ""
    assert len(woken) == 1

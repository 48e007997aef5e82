"""The operator's audit events: what is recorded for a resource's life and a pass's work,
in a chain `freehold audit verify` accepts, with no spec value in it. (The same log on the
real API server: tests/e2e/test_audit.py.)"""

from __future__ import annotations

from pathlib import Path

from freehold.adapters.audit import OperatorAudit
from freehold.reconciler import Outcome, Problem
from freehold_serving.audit import verify
from freehold_serving.signing import FileSigner

CANARY = "canary-d41b"


def body(generation: int) -> dict[str, object]:
    return {
        "metadata": {
            "name": "gemma",
            "namespace": "team",
            "uid": "u1",
            "generation": generation,
            "managedFields": [{"manager": "kubectl"}, {"manager": "freehold-operator"}],
        },
        "spec": {"model": {"sha256": "a" * 64, "servedName": CANARY}},
    }


def test_a_resource_life_and_a_pass_are_audited(tmp_path: Path) -> None:
    audit = OperatorAudit.open(tmp_path, FileSigner(tmp_path / "k.pem"))
    audit.resource("ModelDeployment", "ADDED", body(1))
    audit.resource("ModelDeployment", "MODIFIED", body(1))  # status only: nothing
    audit.resource("ModelDeployment", "MODIFIED", body(2))
    outcome = Outcome(
        changes=[("created", "Deployment", "gemma"), ("deleted", "PodDisruptionBudget", "gemma")],
        vault=[("written", "freehold.team.gemma")],
        problem=Problem("ApplyFailed", f"quota: {CANARY}", True),
    )
    key = ("ModelDeployment", "team", "gemma")
    audit.outcome(key, outcome)
    audit.outcome(key, outcome)  # the same reason again: no new outcome event
    audit.resource("ModelDeployment", "DELETED", body(2))
    audit.close()
    log = tmp_path / "operator.jsonl"
    text = log.read_text()
    types = [line.split('"type":"')[1].split('"')[0] for line in text.splitlines()]
    recorded = [t for t in types if t != "checkpoint"]
    assert recorded == [
        "log.opened",
        "resource.observed",
        "resource.updated",
        "child.created",
        "child.deleted",
        "vault.written",
        "reconcile.outcome",
        "child.created",
        "child.deleted",
        "vault.written",
        "resource.deleted",
    ]
    assert types[-1] == "checkpoint"
    assert '"managers":["freehold-operator","kubectl"]' in text
    assert CANARY not in text
    assert verify(log, {FileSigner(tmp_path / "k.pem").public_key()}).exit_code == 0


def test_promotions_and_evaluation_results_are_audited(tmp_path: Path) -> None:
    audit = OperatorAudit.open(tmp_path, None)
    md = body(1)
    md["spec"] = {"residency": {"region": "eu-gov-1"}}
    for digest in ("sha256:" + "a" * 64, "sha256:" + "a" * 64, "sha256:" + "b" * 64):
        md["status"] = {"servedDigest": digest, "backend": "Deployment"}
        audit.resource("ModelDeployment", "MODIFIED", md)
    job = {
        "metadata": {"name": "ev", "namespace": "team", "uid": "u2", "generation": 1},
        "status": {
            "phase": "Succeeded",
            "modelDigest": "sha256:" + "b" * 64,
            "gates": [{"suite": "s", "metric": "accuracy", "value": 0.4, "passed": False}],
        },
    }
    audit.resource("EvalJob", "ADDED", job)
    audit.resource("EvalJob", "MODIFIED", job)  # the same result again: one event
    audit.close()
    import json

    events = [json.loads(line) for line in (tmp_path / "operator.jsonl").read_text().splitlines()]
    served = [e["data"] for e in events if e["type"] == "model.served"]
    assert [(s["previousDigest"], s["modelDigest"][-1]) for s in served] == [
        (None, "a"),
        ("sha256:" + "a" * 64, "b"),
    ]
    assert served[0]["region"] == "eu-gov-1"
    (finished,) = [e["data"] for e in events if e["type"] == "evaluation.finished"]
    assert finished["gates"][0]["passed"] is False and finished["phase"] == "Succeeded"

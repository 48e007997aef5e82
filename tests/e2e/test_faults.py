"""Faults on the real control plane: the operator killed mid-reconcile, the API server
restarted under it, status conflicts, and many objects deleted at once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import (
    KUBE_START,
    Operator,
    apply,
    condition,
    eventually,
    example,
    get,
    kubectl,
)
from tests.vault_server import VaultServer

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("deployment_backend")]
CHILD_KINDS = "serviceaccounts,services,deployments,networkpolicies,poddisruptionbudgets"


def mds(namespace: str, prefix: str) -> list[dict[str, Any]]:
    items = json.loads(kubectl("get", "modeldeployments", "-n", namespace, "-o", "json").stdout)
    return [m for m in items["items"] if m["metadata"]["name"].startswith(prefix)]


def owned_children(namespace: str) -> list[dict[str, Any]]:
    listed = json.loads(
        kubectl(
            "get",
            CHILD_KINDS,
            "-n",
            namespace,
            "-l",
            "app.kubernetes.io/managed-by=freehold-operator",
            "-o",
            "json",
        ).stdout
    )
    items: list[dict[str, Any]] = listed["items"]
    return items


def all_converged(namespace: str, prefix: str, count: int) -> bool:
    found = mds(namespace, prefix)
    return len(found) == count and all(
        (m.get("status") or {}).get("observedGeneration") == m["metadata"]["generation"]
        for m in found
    )


def context_length(namespace: str, name: str) -> str:
    dep = get("deployment", name, namespace)
    env = {
        e["name"]: e.get("value", "")
        for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]
    }  # type: ignore[index]
    return env["FREEHOLD_SERVING_ARGS"]


def test_sigkill_mid_reconcile_then_restart(namespace: str, operator: Operator) -> None:
    count = 30
    apply(
        [
            example(namespace, f"kill-{i:02d}", scaling={"minReplicas": 1, "maxReplicas": 1})
            for i in range(count)
        ]
    )
    time.sleep(1.0)  # some reconciled, some in flight, some not started
    assert operator.proc is not None
    operator.stop(signal.SIGKILL)
    # A change made while the operator is down must not be lost.
    doc = example(namespace, "kill-00", scaling={"minReplicas": 1, "maxReplicas": 1})
    doc["spec"]["engine"]["contextLength"] = 1024
    apply(doc)
    operator.start()
    eventually(lambda: all_converged(namespace, "kill-", count), timeout=90)
    eventually(lambda: '"context_length":1024' in context_length(namespace, "kill-00"))
    children = [c for c in owned_children(namespace) if c["metadata"]["name"].startswith("kill-")]
    names = [(c["kind"], c["metadata"]["name"]) for c in children]
    assert len(names) == len(set(names)) == count * 5  # SA, Service, Deployment, 2 policies
    uids = {m["metadata"]["uid"] for m in mds(namespace, "kill-")}
    assert all(c["metadata"]["ownerReferences"][0]["uid"] in uids for c in children)
    kubectl(
        "delete",
        "modeldeployments",
        "-n",
        namespace,
        *[f"kill-{i:02d}" for i in range(count)],
        "--wait=false",
    )


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_api_server_restart_while_the_operator_runs(namespace: str, operator: Operator) -> None:
    if os.environ.get("FREEHOLD_E2E_KUBECONFIG"):
        pytest.skip("restarts only the test control plane this suite started itself")
    state = Path(os.environ.get("FREEHOLD_KUBE_STATE", "/tmp/freehold-kube"))
    apply(example(namespace, "outage"))
    eventually(lambda: get("deployment", "outage", namespace))
    pid = int((state / "run" / "kube-apiserver.pid").read_text())
    os.kill(pid, signal.SIGKILL)  # a crash: no graceful goodbye to the watches
    eventually(lambda: not _running(pid), timeout=60)
    time.sleep(3)  # the operator's watches and a pass or two fail meanwhile
    subprocess.run(["bash", str(KUBE_START)], check=True, capture_output=True, timeout=300)
    # Changes right after the outage: a spec update and a deleted child.
    doc = example(namespace, "outage")
    doc["spec"]["engine"]["contextLength"] = 1024
    apply(doc)
    kubectl("delete", "networkpolicy", "outage-allow", "-n", namespace)
    eventually(lambda: '"context_length":1024' in context_length(namespace, "outage"), timeout=60)
    eventually(lambda: get("networkpolicy", "outage-allow", namespace), timeout=60)
    md = get("modeldeployment", "outage", namespace)
    assert md["status"]["observedGeneration"] == md["metadata"]["generation"]  # type: ignore[index]
    assert operator.proc is not None and operator.proc.poll() is None


def test_status_survives_concurrent_writers(namespace: str, operator: Operator) -> None:
    """Status is written with the resourceVersion it was computed from: a concurrent change
    (here: annotation edits racing every pass) answers 409, and the pass is retried."""
    apply(example(namespace, "racy"))
    eventually(lambda: condition(get("modeldeployment", "racy", namespace), "Ready"))
    doc = example(namespace, "racy")
    doc["spec"]["engine"]["contextLength"] = 2048
    apply(doc)
    for n in range(25):
        kubectl("annotate", "modeldeployment", "racy", "-n", namespace, f"race={n}", "--overwrite")
    md = eventually(
        lambda: (
            (m := get("modeldeployment", "racy", namespace))
            and m["status"].get("observedGeneration") == 2
            and m
        ),
        timeout=30,
    )
    assert all(c["observedGeneration"] == 2 for c in md["status"]["conditions"])
    assert '"context_length":2048' in context_length(namespace, "racy")


def test_many_deleted_at_once_leave_nothing_behind(
    namespace: str, operator: Operator, vault: VaultServer
) -> None:
    count = 60
    docs = [
        example(
            namespace,
            f"bulk-{i:03d}",
            scaling={"minReplicas": 1, "maxReplicas": 1},
            auth={"apiKeys": {"path": f"{namespace}/bulk/{i}"}},
        )
        for i in range(count)
    ]
    apply(docs)
    eventually(lambda: all_converged(namespace, "bulk-", count), timeout=120)
    roles = {f"freehold.{namespace}.bulk-{i:03d}" for i in range(count)}
    assert roles <= set(vault.state.roles)
    kubectl(
        "delete",
        "modeldeployments",
        "-n",
        namespace,
        *[f"bulk-{i:03d}" for i in range(count)],
        "--wait=false",
    )
    eventually(lambda: mds(namespace, "bulk-") == [], timeout=120)
    assert not roles & set(vault.state.roles) and not roles & set(vault.state.policies)
    eventually(
        lambda: (
            not [c for c in owned_children(namespace) if c["metadata"]["name"].startswith("bulk-")]
        ),
        timeout=180,
        interval=2,
    )

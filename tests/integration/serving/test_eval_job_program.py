"""The EvalJob's pod program (`freehold eval job`) against the real SmolLM2 served by Ray
Serve: progress while it runs, a judge suite scored by a second model call with JSON-schema
output, a regression gate against baseline values, the signed result on the results
volume, the summary the operator reads, and no connection anywhere but loopback."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from freehold_serving.signing import FileSigner
from tests.integration.serving.conftest import API_KEY, MODEL, SMOL, Stack
from tests.ports import free_port

pytestmark = pytest.mark.slow

CAPITALS_SHA = "7f1dd083279d7386ec5e2bc13aa2ef065db1405461ccd1e74166bde4bf2b7c6b"
# Records every outgoing connection of the process (an audit hook), then runs the CLI.
WATCHED = """
import socket, sys
log = open(sys.argv.pop(1), "a")
def hook(event, args):
    if event == "socket.connect" and args[0].family in (socket.AF_INET, socket.AF_INET6):
        log.write(str(args[1][0]) + "\\n"); log.flush()
sys.addaudithook(hook)
from freehold.cli import main
sys.argv[0] = "freehold"
main()
"""


def capitals(limit: int) -> dict[str, Any]:
    """The packaged capitals suite, its first `limit` items."""
    dataset = {"uri": "package://freehold/evals/capitals.jsonl", "sha256": CAPITALS_SHA}
    return {
        "name": "capitals",
        "task": "multiple_choice",
        "dataset": dataset,
        "metric": "accuracy",
        "limit": limit,
    }


def judge_dataset(tmp: Path) -> tuple[str, str]:
    path = tmp / "judged.jsonl"
    lines = [
        {"input": "Q: What is the capital of France?\nA:", "reference": "Paris"},
        {"input": "Q: What is the capital of Italy?\nA:", "reference": "Rome"},
        {"input": "Q: What is the capital of Spain?\nA:", "reference": "Madrid"},
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return f"file://{path}", hashlib.sha256(path.read_bytes()).hexdigest()


def config(stack: Stack, tmp: Path, **changes: Any) -> Path:
    uri, sha = judge_dataset(tmp)
    spec = {
        "target": {"endpoint": stack.base("smol").removesuffix("/v1")},
        "suites": [
            capitals(6),
            {
                "name": "judged",
                "task": "judge",
                "dataset": {"uri": uri, "sha256": sha},
                "metric": "judge_score",
                "rubric": "5 if the answer names the reference city, 1 if it names another.",
                "generation": {"maxTokens": 8, "temperature": 0, "stop": ["\n"]},
            },
        ],
        "gates": [
            {"suite": "capitals", "metric": "accuracy", "operator": ">=", "threshold": 0.3},
            {"suite": "capitals", "metric": "accuracy", "maxRegression": 0.5},
        ],
        "concurrency": 2,
        "seed": 3,
        "offline": True,
        "baseline": {"name": "previous"},
    }
    body = {
        "name": "smoke",
        "namespace": "test",
        "spec": spec,
        "endpoint": stack.base("smol"),
        "model": SMOL,
        "model_digest": "sha256:b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        "judge_endpoint": stack.base("smol"),
        "judge_model": SMOL,
        "baseline": {"capitals": 0.5},
        "signing_key_file": str(tmp / "keys" / "eval.pem"),
        "file_root": str(tmp),  # the judged dataset is a file:// one, in this folder
        **changes,
    }
    path = tmp / "job.json"
    path.write_text(json.dumps(body))
    return path


def start(cfg: Path, tmp: Path, port: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            WATCHED,
            str(tmp / "connections.log"),
            "eval",
            "job",
            "--config",
            str(cfg),
            "--out",
            str(tmp / "results"),
            "--listen",
            f"127.0.0.1:{port}",
            "--termination-log",
            str(tmp / "termination-log"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=os.environ,
    )


def test_the_job_program_evaluates_signs_and_reports(stack: Stack, tmp_path: Path) -> None:
    port = free_port()
    proc = start(config(stack, tmp_path), tmp_path, port)
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + 600
    while proc.poll() is None and time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            seen.append(httpx.get(f"http://127.0.0.1:{port}/progress", timeout=2).json())
        time.sleep(0.2)
    output = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0, output
    running = [p for p in seen if p["state"] == "running"]
    assert running and running[-1]["total"] == 9 and running[-1]["completed"] <= 9

    outcome = json.loads((tmp_path / "termination-log").read_text())
    assert len((tmp_path / "termination-log").read_bytes()) <= 4096
    assert outcome["state"] == "done" and outcome["signer"].startswith("ed25519:")
    result = json.loads((tmp_path / "results" / "result.json").read_text())
    assert outcome["digest"] == result["digest"]
    assert result["target"]["digest"].startswith("sha256:b179")
    by_name = {s["name"]: s for s in result["suites"]}
    judged = by_name["judged"]["metrics"]["judge_score"]
    assert 0 <= judged["low"] <= judged["value"] <= judged["high"] <= 1
    regression = result["gates"][1]
    assert regression["baseline"] == 0.5 and regression["threshold"] == 0.0
    assert regression["passed"] is True

    # The signed file verifies offline against the job's key; an edited one does not.
    key = base64.b64encode(FileSigner(tmp_path / "keys" / "eval.pem").public_key()).decode()
    verified = subprocess.run(
        [
            sys.executable,
            "-m",
            "freehold",
            "eval",
            "verify",
            str(tmp_path / "results" / "result.json"),
            "--public-key",
            key,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert verified.returncode == 0 and outcome["signer"] in verified.stdout
    result["gatesPassed"] = not result["gatesPassed"]
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(result))
    refused = subprocess.run(
        [sys.executable, "-m", "freehold", "eval", "verify", str(edited), "--public-key", key],
        capture_output=True,
        text=True,
        check=False,
    )
    assert refused.returncode == 1 and "changed after signing" in refused.stderr

    # Offline: every connection it opened went to loopback (the model and the judge).
    connections = set((tmp_path / "connections.log").read_text().split())
    assert connections and connections <= {"127.0.0.1", "::1"}, connections


def test_a_tampered_dataset_fails_the_job_before_any_request(stack: Stack, tmp_path: Path) -> None:
    cfg = config(stack, tmp_path)
    (tmp_path / "judged.jsonl").write_text('{"input": "changed", "reference": "x"}\n')
    proc = start(cfg, tmp_path, free_port())
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == 2, output
    outcome = json.loads((tmp_path / "termination-log").read_text())
    assert outcome["state"] == "failed" and outcome["reason"] == "DatasetInvalid"
    assert "sha256 mismatch" in outcome["message"]
    assert not (tmp_path / "results" / "result.json").exists()
    assert (
        not (tmp_path / "connections.log").exists()
        or not (tmp_path / "connections.log").read_text().strip()
    )


def keyed_job(stack: Stack, tmp: Path, where: dict[str, str] | None) -> Path:
    """The config the operator writes for an EvalJob of the keyed model ("locked": its key
    set in Vault), with the Vault role and policy it builds for that EvalJob made in the
    Vault stand-in, and the pod's projected token as a file."""
    from freehold.adapters.vault import VaultApi
    from freehold.api.eval_job import EvalJobSpec
    from freehold.builders.eval_job import Resolved, build_vault_role, job_config
    from freehold.builders.model_workload import BuildContext
    from freehold.validation import defaulted

    assert stack.vault is not None
    target: dict[str, Any] = {"modelDeploymentRef": {"name": "gemma-270m"}}
    if where is not None:
        target["apiKey"] = where
    doc = {
        "apiVersion": "freehold.dev/v1alpha1",
        "kind": "EvalJob",
        "spec": {
            "target": target,
            "suites": [capitals(3)],
            "gates": [{"suite": "capitals", "metric": "accuracy", "threshold": 0.0}],
            "offline": True,
        },
    }
    spec = EvalJobSpec.model_validate(defaulted(doc)["spec"])
    ctx = BuildContext(
        name="keyed",
        namespace="test",
        serving_image="-",
        ray_version="-",
        api_server_cidr="10.0.0.1/32",
        vault_address=stack.vault_url,
    )
    VaultApi.connect(stack.vault_url, stack.vault_token).ensure(build_vault_role(spec, ctx))
    jwt = tmp / "token"
    jwt.write_text("projected-token-keyed-eval")
    stack.vault.state.service_accounts["projected-token-keyed-eval"] = ("keyed-eval", "test")
    resolved = Resolved(
        endpoint=stack.base("locked"), model=MODEL, model_digest=None, target_pods=None
    )
    config = job_config(spec, ctx, resolved)
    assert config.vault is not None
    config.vault.jwt_path = str(jwt)
    config.ready_timeout = 60
    path = tmp / "job.json"
    path.write_text(config.model_dump_json())
    assert API_KEY not in path.read_text()  # where the key is, never the key
    return path


def test_a_keyed_model_is_evaluated_with_a_key_the_pod_reads_from_vault(
    stack: Stack, tmp_path: Path
) -> None:
    """The pod program logs in to Vault as the EvalJob's workload (the role and policy the
    operator builds for it), reads the target's key from the named field, evaluates the
    keyed model and signs with transit. Without the key the model refuses the evaluation
    (401); a field that is not there fails before any request, naming the secret."""
    assert stack.vault is not None
    stack.vault.state.kv["secret/data/test/eval/keyed"] = {"gemma": API_KEY}
    where = {"path": "test/eval/keyed", "key": "gemma"}
    proc = start(keyed_job(stack, tmp_path, where), tmp_path, free_port())
    output = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, output
    outcome = json.loads((tmp_path / "termination-log").read_text())
    assert outcome["state"] == "done" and outcome["signer"].startswith("ed25519:")
    result = json.loads((tmp_path / "results" / "result.json").read_text())
    assert result["suites"][0]["samples"] == 3

    # The same evaluation with no key: the model refuses it.
    unkeyed = tmp_path / "unkeyed"
    unkeyed.mkdir()
    proc = start(keyed_job(stack, unkeyed, None), unkeyed, free_port())
    output = proc.communicate(timeout=600)[0]
    assert proc.returncode == 3, output
    refused = json.loads((unkeyed / "termination-log").read_text())
    assert refused["reason"] == "EndpointFailed" and "401" in refused["message"]

    # A field that is not in the secret: no request is made, and no value is shown.
    missing = tmp_path / "missing"
    missing.mkdir()
    wrong = {"path": "test/eval/keyed", "key": "other"}
    proc = start(keyed_job(stack, missing, wrong), missing, free_port())
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == 5, output
    failed = json.loads((missing / "termination-log").read_text())
    assert failed["reason"] == "ApiKeyUnavailable"
    assert "secret/test/eval/keyed has no field 'other'" in failed["message"]
    assert API_KEY not in failed["message"] and API_KEY not in output
    connections = (missing / "connections.log").read_text().split()
    assert set(connections) <= {"127.0.0.1"}  # the Vault stand-in (on loopback)

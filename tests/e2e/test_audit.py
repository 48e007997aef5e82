"""The operator's audit log on the real API server: what it saw and did, hash-chained, its
checkpoints signed in Vault (tests/vault_server.py's transit), verified offline by
`freehold audit verify`; no spec value in it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import Operator, apply, eventually, example, get, kubectl
from tests.vault_server import VaultServer, transit_public_keys

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("deployment_backend")]
CANARY = "canary-audit-5d1e"


def events(path: Path) -> list[dict[str, object]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def test_the_operator_audits_what_it_sees_and_does(
    namespace: str, operator: Operator, vault: VaultServer
) -> None:
    log = Path(operator.env["FREEHOLD_OPERATOR_AUDIT_DIR"]) / "operator.jsonl"
    doc = example(namespace, "audited")
    doc["metadata"]["annotations"] = {"note": CANARY}
    doc["spec"]["model"]["servedName"] = CANARY
    apply(doc)
    eventually(lambda: get("deployment", "audited", namespace))

    def mine(kind: str) -> list[dict[str, object]]:
        out = []
        for e in events(log):
            data = e["data"]
            assert isinstance(data, dict)
            owner = data.get("owner") or data.get("resource") or {}
            if e["type"] == kind and owner.get("name") == "audited":
                out.append(e)
        return out

    observed = eventually(lambda: mine("resource.observed"))[0]["data"]
    assert observed["generation"] == 1 and str(observed["specHash"]).startswith("sha256:")
    assert observed["modelDigest"] == f"sha256:{doc['spec']['model']['sha256']}"
    assert "kubectl-client-side-apply" in observed["managers"] or observed["managers"]
    wanted = {"Deployment", "Service", "ServiceAccount", "NetworkPolicy"}

    def created() -> set[str]:
        kinds = {e["data"]["child"]["kind"] for e in mine("child.created")}  # type: ignore[index]
        return kinds if wanted <= kinds else set()

    # The writer thread appends (and fsyncs) one event at a time: wait for them all.
    assert eventually(created)
    one = json.dumps({"spec": {"scaling": {"minReplicas": 1, "maxReplicas": 1}}})
    kubectl("patch", "modeldeployment", "audited", "-n", namespace, "--type=merge", "-p", one)
    updated = eventually(lambda: mine("resource.updated"))[0]["data"]
    assert updated["generation"] == 2
    eventually(lambda: mine("child.deleted"))  # the PodDisruptionBudget, pruned
    kubectl("delete", "modeldeployment", "audited", "-n", namespace, "--wait=true")
    eventually(lambda: mine("resource.deleted"))

    text = log.read_text()
    assert CANARY not in text  # spec values and annotations are hashed, never written
    assert '"type":"checkpoint"' in text  # signed in Vault transit
    # Verified against the operator's key as published by Vault, never one the log names.
    keys = transit_public_keys(vault.url, vault.state.root_token, "freehold-operator-audit")
    trusted = [arg for key in keys for arg in ("--trusted-key", key)]
    verified = subprocess.run(
        [sys.executable, "-m", "freehold", "audit", "verify", str(log), *trusted],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert verified.returncode == 0, verified.stdout + verified.stderr
    unanchored = subprocess.run(
        [sys.executable, "-m", "freehold", "audit", "verify", str(log)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert unanchored.returncode == 4, unanchored.stderr

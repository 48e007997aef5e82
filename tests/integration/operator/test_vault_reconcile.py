"""The operator with Vault: policy and role per workload, SecretsUnavailable while Vault
is sealed and recovery after, a finalizer that holds deletion until Vault is cleaned up,
and no secret anywhere but Vault. Vault is tests/vault_server.py (see its docstring)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.operator.conftest import (
    MD_PATH,
    NS,
    Cluster,
    eventually,
    example,
    run_operator,
)
from tests.vault_server import VaultServer

CANARY = "canary-key-93ad"  # a test API key; must never leave Vault
ROLE = f"freehold.{NS}.gemma-270m"


@pytest.fixture
def vault() -> Iterator[VaultServer]:
    with VaultServer() as server:
        server.state.kv[f"secret/data/{NS}/gemma/api-keys"] = {"key": CANARY}
        yield server


@pytest.fixture
async def vault_operator(
    cluster: Cluster, vault: VaultServer, tmp_path: Path
) -> AsyncIterator[subprocess.Popen[str]]:
    async for proc in run_operator(
        cluster,
        tmp_path,
        FREEHOLD_OPERATOR_VAULT_ADDRESS=vault.url,
        VAULT_TOKEN=vault.state.root_token,
    ):
        yield proc


def with_vault(manifest: dict[str, Any]) -> dict[str, Any]:
    manifest["spec"]["auth"] = {"apiKeys": {"path": f"{NS}/gemma/api-keys"}}
    return manifest


def condition(md: dict[str, Any], type_: str) -> dict[str, Any]:
    for cond in (md.get("status") or {}).get("conditions", []):
        if cond["type"] == type_:
            return dict(cond)
    return {}


async def test_vault_lifecycle(
    cluster: Cluster, vault: VaultServer, vault_operator: subprocess.Popen[str], tmp_path: Path
) -> None:
    await cluster.create_md(with_vault(example()))
    await eventually(lambda: ROLE in vault.state.roles and ROLE in vault.state.policies)
    role = vault.state.roles[ROLE]
    assert role["bound_service_account_names"] == ["gemma-270m-model"]
    assert role["bound_service_account_namespaces"] == [NS]
    assert f'path "secret/data/{NS}/gemma/api-keys"' in vault.state.policies[ROLE]

    async def vault_ready() -> bool:
        md = await cluster.md()
        return condition(md, "SecretsUnavailable").get("status") == "False"

    await eventually(vault_ready)
    md = await cluster.md()
    assert md["metadata"]["finalizers"] == ["freehold.dev/vault-cleanup"]

    # Vault sealed: a condition, a retry, and no fallback Kubernetes Secret
    vault.state.sealed = True
    await cluster.request(
        "PATCH",
        f"{MD_PATH}/gemma-270m",
        {"spec": {"secrets": [{"name": "HF_TOKEN", "path": f"{NS}/gemma/hf"}]}},
        merge=True,
    )

    async def reported() -> dict[str, Any]:
        cond = condition(await cluster.md(), "SecretsUnavailable")
        return cond if cond.get("status") == "True" else {}

    cond = await eventually(reported)
    assert cond["reason"] == "VaultSealed"
    assert condition(await cluster.md(), "Ready")["reason"] == "SecretsUnavailable"
    assert not [key for key in cluster.emulator.objects if key[0].plural == "secrets"]

    # Vault back: recovers by itself, with the new path in the policy
    vault.state.sealed = False
    await eventually(vault_ready)
    assert f'path "secret/data/{NS}/gemma/hf"' in vault.state.policies[ROLE]

    # Delete while Vault is sealed: the finalizer holds, nothing is left in Vault after
    vault.state.sealed = True
    await cluster.request("DELETE", f"{MD_PATH}/gemma-270m")
    await eventually(lambda: cluster.get(f"{MD_PATH}/gemma-270m"))  # still there
    assert ROLE in vault.state.roles
    vault.state.sealed = False

    async def gone() -> bool:
        return await cluster.get(f"{MD_PATH}/gemma-270m") is None

    await eventually(gone)
    assert ROLE not in vault.state.roles and ROLE not in vault.state.policies

    # the canary is nowhere outside Vault: not in objects, status, events or logs
    everything = json.dumps(
        [cluster.emulator.objects[key] for key in cluster.emulator.objects], default=str
    )
    assert CANARY not in everything
    assert CANARY not in (tmp_path / "operator.log").read_text()


async def test_models_without_vault_get_no_finalizer(
    cluster: Cluster, vault_operator: subprocess.Popen[str]
) -> None:
    await cluster.create_md(example())
    await eventually(lambda: cluster.get(f"/apis/apps/v1/namespaces/{NS}/deployments/gemma-270m"))
    md = await cluster.md()
    assert not md["metadata"].get("finalizers")
    assert condition(md, "SecretsUnavailable") == {}

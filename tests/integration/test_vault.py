"""The operator's Vault adapter, and what its policies allow a workload.

Runs against tests/vault_server.py (Vault cannot be installed here), or against a real
Vault or OpenBao dev server when VAULT_ADDR and VAULT_TOKEN are set; on a real server the
workload's token comes from token auth with the role's policies (Kubernetes auth needs a
cluster's TokenReview), so role bindings are checked against the test server only.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import hvac
import pytest
from hvac import exceptions as vault_errors

from freehold.adapters.vault import VaultApi, VaultUnavailableError
from freehold.builders.model_workload import BuildContext
from freehold.builders.vault import build_role
from tests.unit.test_builders import SPECS
from tests.vault_server import VaultServer

CANARY = "canary-secret-6b1f"  # a test value: must never leave Vault


@dataclass
class Vault:
    url: str
    token: str
    server: VaultServer | None

    def client(self, token: str | None = None) -> hvac.Client:
        return hvac.Client(url=self.url, token=token or self.token)

    def workload_token(self, role: str, sa: str, namespace: str) -> str:
        if self.server is not None:
            jwt = f"jwt-{namespace}-{sa}"
            self.server.state.service_accounts[jwt] = (sa, namespace)
            login = hvac.Client(url=self.url).auth.kubernetes.login(role=role, jwt=jwt)
            return str(login["auth"]["client_token"])
        created = self.client().auth.token.create(policies=[role], ttl="10m")
        return str(created["auth"]["client_token"])


@pytest.fixture
def vault() -> Iterator[Vault]:
    if os.environ.get("VAULT_ADDR") and os.environ.get("VAULT_TOKEN"):
        yield Vault(os.environ["VAULT_ADDR"], os.environ["VAULT_TOKEN"], None)
        return
    with VaultServer() as server:
        yield Vault(server.url, server.state.root_token, server)


def ctx(name: str) -> BuildContext:
    return BuildContext(
        name=name,
        namespace="freehold-demo",
        serving_image="i",
        ray_version="2.60.0",
        api_server_cidr="10.0.0.1/32",
    )


def test_ensure_is_idempotent_and_follows_the_spec(vault: Vault) -> None:
    api = VaultApi.connect(vault.url, vault.token)
    api.check()
    role = build_role(SPECS["gpu-vllm-vault"], ctx("llama-8b"))
    assert api.ensure(role) is True
    assert api.ensure(role) is False
    fewer = build_role(SPECS["gpu-vllm-vault"].model_copy(update={"secrets": []}), ctx("llama-8b"))
    assert api.ensure(fewer) is True
    assert vault.client().sys.read_acl_policy(role.name)["data"]["policy"] == fewer.policy
    api.remove(role.name)
    with pytest.raises(vault_errors.InvalidPath):
        vault.client().sys.read_acl_policy(role.name)
    api.remove(role.name)  # removing twice is fine


def test_workload_reads_only_its_own_paths(vault: Vault) -> None:
    root = vault.client()
    root.secrets.kv.v2.create_or_update_secret(
        path="freehold-demo/llama-8b/api-keys", secret={"key": CANARY}, mount_point="secret"
    )
    root.secrets.kv.v2.create_or_update_secret(
        path="other-team/model/api-keys", secret={"key": "not-yours"}, mount_point="secret"
    )
    api = VaultApi.connect(vault.url, vault.token)
    role = build_role(SPECS["gpu-vllm-vault"], ctx("llama-8b"))
    api.ensure(role)
    token = vault.workload_token(role.name, "llama-8b-model", "freehold-demo")
    workload = vault.client(token)
    mine = workload.secrets.kv.v2.read_secret_version(
        path="freehold-demo/llama-8b/api-keys", mount_point="secret", raise_on_deleted_version=True
    )
    assert mine["data"]["data"] == {"key": CANARY}
    with pytest.raises(vault_errors.Forbidden):
        workload.secrets.kv.v2.read_secret_version(
            path="other-team/model/api-keys", mount_point="secret", raise_on_deleted_version=True
        )
    with pytest.raises(vault_errors.Forbidden):  # nor write its own
        workload.secrets.kv.v2.create_or_update_secret(
            path="freehold-demo/llama-8b/api-keys", secret={"k": "v"}, mount_point="secret"
        )
    api.remove(role.name)


def test_role_admits_only_its_service_account(vault: Vault) -> None:
    if vault.server is None:
        pytest.skip("Kubernetes auth login needs a cluster's TokenReview on a real Vault")
    api = VaultApi.connect(vault.url, vault.token)
    role = build_role(SPECS["gpu-vllm-vault"], ctx("llama-8b"))
    api.ensure(role)
    for sa, namespace in (("other-model", "freehold-demo"), ("llama-8b-model", "elsewhere")):
        with pytest.raises(vault_errors.Forbidden):
            vault.workload_token(role.name, sa, namespace)


def test_sealed_and_unreachable_are_reported_as_such() -> None:
    with VaultServer() as server:
        api = VaultApi.connect(server.url, server.state.root_token, timeout=2)
        server.state.sealed = True
        with pytest.raises(VaultUnavailableError) as sealed:
            api.check()
        assert sealed.value.reason == "VaultSealed"
        url = server.url
    api = VaultApi.connect(url, "root-test-token", timeout=2)
    with pytest.raises(VaultUnavailableError) as down:
        api.check()
    assert down.value.reason == "VaultUnreachable"
    assert CANARY not in str(down.value)


@pytest.mark.security
def test_workload_reads_its_api_keys_and_fails_closed(tmp_path: Path) -> None:
    from freehold_serving.args import ApiKeysConfig, VaultKeySource
    from freehold_serving.auth import ApiKeys, load_api_keys
    from freehold_serving.vault_keys import NoKeysError, VaultKeysError, read_api_keys

    with VaultServer() as server:
        server.state.kv["secret/data/freehold-demo/llama-8b/api-keys"] = {
            "primary": CANARY,
            "secondary": "second-key",
        }
        api = VaultApi.connect(server.url, server.state.root_token)
        role = build_role(SPECS["gpu-vllm-vault"], ctx("llama-8b"))
        api.ensure(role)
        jwt = tmp_path / "token"
        jwt.write_text("projected-jwt-llama")
        server.state.service_accounts["projected-jwt-llama"] = ("llama-8b-model", "freehold-demo")
        config = ApiKeysConfig(
            vault=VaultKeySource(
                path="freehold-demo/llama-8b/api-keys",
                address=server.url,
                role=role.name,
                jwt_path=str(jwt),
            )
        )
        keys = load_api_keys(config, read_api_keys)
        assert keys is not None and keys.accepts(CANARY) and keys.accepts("second-key")
        # another workload's ServiceAccount cannot use this role: no keys, no start
        jwt.write_text("projected-jwt-other")
        server.state.service_accounts["projected-jwt-other"] = ("other-model", "freehold-demo")
        with pytest.raises(VaultKeysError) as refused:
            read_api_keys(config)
        assert CANARY not in str(refused.value) and "projected-jwt" not in str(refused.value)
        # emptied, then deleted in Vault: every key is revoked (issue 16)
        jwt.write_text("projected-jwt-llama")
        rotating = ApiKeys(read_api_keys(config))
        assert rotating.accepts(CANARY)
        server.state.kv["secret/data/freehold-demo/llama-8b/api-keys"] = {}
        rotating.replace(read_api_keys(config))
        assert len(rotating) == 0 and not rotating.accepts(CANARY)
        del server.state.kv["secret/data/freehold-demo/llama-8b/api-keys"]
        with pytest.raises(NoKeysError):
            read_api_keys(config)


def test_transit_envelope_encryption_rotation_and_signing(vault: Vault) -> None:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from freehold_serving.transit import Transit

    root = vault.client()
    transit = Transit(root)
    transit.create_key("store-freehold-demo-memory")
    # envelope: a data key encrypts a record locally; only its wrapped form is stored
    key = transit.data_key("store-freehold-demo-memory")
    assert key.ciphertext.startswith("vault:v1:") and len(key.plaintext) == 32
    assert key.plaintext.hex() not in repr(key)
    nonce = b"\0" * 12
    record = AESGCM(key.plaintext).encrypt(nonce, b"user prefers Welsh", None)
    unwrapped = transit.unwrap("store-freehold-demo-memory", key.ciphertext)
    assert AESGCM(unwrapped).decrypt(nonce, record, None) == b"user prefers Welsh"
    # rotation: new wraps use v2, rewrap moves old wraps forward, data still opens
    transit.rotate("store-freehold-demo-memory")
    assert transit.wrapped_data_key("store-freehold-demo-memory").startswith("vault:v2:")
    moved = transit.rewrap("store-freehold-demo-memory", key.ciphertext)
    assert moved.startswith("vault:v2:")
    assert transit.unwrap("store-freehold-demo-memory", moved) == key.plaintext
    # signatures for bundles and audit checkpoints
    transit.create_key("signing-freehold-demo", key_type="ed25519")
    signature = transit.sign("signing-freehold-demo", b"bundle-digest")
    assert transit.verify("signing-freehold-demo", b"bundle-digest", signature)
    assert not transit.verify("signing-freehold-demo", b"tampered", signature)


def test_transit_is_subject_to_policy(vault: Vault) -> None:
    from freehold_serving.transit import Transit

    root = vault.client()
    Transit(root).create_key("store-a")
    Transit(root).create_key("store-b")
    root.sys.create_or_update_acl_policy(
        name="store-a-only",
        policy=(
            'path "transit/datakey/plaintext/store-a" {\n  capabilities = ["update"]\n}\n'
            'path "transit/decrypt/store-a" {\n  capabilities = ["update"]\n}\n'
        ),
    )
    token = (
        root.auth.token.create(policies=["store-a-only"], ttl="10m")["auth"]["client_token"]
        if vault.server is None
        else _server_token(vault, "store-a-only")
    )
    mine = Transit(vault.client(token))
    assert len(mine.data_key("store-a").plaintext) == 32
    with pytest.raises(vault_errors.Forbidden):
        mine.data_key("store-b")


def _server_token(vault: Vault, policy: str) -> str:
    assert vault.server is not None
    token = f"hvs.test-{policy}"
    vault.server.state.tokens[token] = [policy]
    return token


def test_the_audit_signer_asks_vault_only_when_it_signs(vault: Vault) -> None:
    """The operator's audit checkpoints are signed in transit; building the signer needs no
    Vault (an operator starting while Vault is away still starts), the first signature
    creates the key."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    key = "freehold-operator-audit-test"
    unreachable = VaultApi.connect("http://127.0.0.1:9", "t").signer(key)  # nothing listens
    assert unreachable is not None
    signer = VaultApi.connect(vault.url, vault.token).signer(key)
    signature = signer.sign(b"7:abc")
    Ed25519PublicKey.from_public_bytes(signer.public_key()).verify(signature, b"7:abc")
    assert vault.client().secrets.transit.read_key(name=key)["data"]["type"] == "ed25519"

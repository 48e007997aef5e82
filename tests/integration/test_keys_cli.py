"""`freehold keys`, the real CLI in a subprocess, against tests/vault_server.py (Vault
cannot be installed here; the test double) or a real Vault/OpenBao when VAULT_ADDR and
VAULT_TOKEN are set: keys stored as digests only, shown once, listed without secrets,
rotated and revoked with check-and-set, errors naming the option and exiting non-zero."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import hvac
import pytest

from freehold_serving.auth import ApiKeys
from freehold_serving.key_records import key_id
from freehold_serving.vault_keys import parse_key_set
from tests.vault_server import VaultServer


@dataclass
class Vault:
    url: str
    token: str

    def fields(self, path: str) -> dict[str, Any]:
        secret = hvac.Client(url=self.url, token=self.token).secrets.kv.v2.read_secret_version(
            path=path, mount_point="secret", raise_on_deleted_version=True
        )
        return dict(secret["data"]["data"])


@pytest.fixture
def vault() -> Iterator[Vault]:
    if os.environ.get("VAULT_ADDR") and os.environ.get("VAULT_TOKEN"):
        yield Vault(os.environ["VAULT_ADDR"], os.environ["VAULT_TOKEN"])
        return
    with VaultServer() as server:
        yield Vault(server.url, server.state.root_token)


def keys(vault: Vault, *args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "VAULT_ADDR": vault.url, "VAULT_TOKEN": token or vault.token,
           "COLUMNS": "200"}  # fmt: skip
    return subprocess.run(
        [sys.executable, "-m", "freehold", "keys", *args],
        env=env, capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip


def test_create_list_rotate_revoke(vault: Vault) -> None:
    path = f"t-{uuid.uuid4().hex[:8]}/router-keys"
    made = keys(vault, "create", "--path", path, "--tenant", "acme", "--name", "ci", "--model",
                "assistant", "--budget-tokens", "5000", "--expires-in", "90d")  # fmt: skip
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert key.startswith("fh_") and "\n" not in key and key_id(key) in made.stderr
    stored = vault.fields(path)
    assert key not in repr(stored) and list(stored) == [key_id(key)]
    info = ApiKeys(parse_key_set(stored)).lookup(key)
    assert info is not None and info.tenant == "acme" and info.models == {"assistant"}
    assert info.budget is not None and info.budget.tokens == 5000 and info.expires

    other = keys(vault, "create", "--path", path, "--tenant", "globex").stdout.strip()
    listed = keys(vault, "list", "--path", path, "--json")
    assert listed.returncode == 0 and key not in listed.stdout and other not in listed.stdout
    assert stored[key_id(key)]["sha256"] not in listed.stdout
    assert key_id(key) in listed.stdout and key_id(other) in listed.stdout
    only = keys(vault, "list", "--path", path, "--tenant", "globex", "--json").stdout
    assert key_id(other) in only and key_id(key) not in only
    table = keys(vault, "list", "--path", path)
    assert table.returncode == 0 and "acme" in table.stdout and "5000 tokens / day" in table.stdout

    # Rotation: the new key inherits everything; the old one ends after the overlap.
    turned = keys(vault, "rotate", key_id(key), "--path", path, "--overlap", "2h")
    assert turned.returncode == 0, turned.stderr
    fresh = turned.stdout.strip()
    accepted = ApiKeys(parse_key_set(vault.fields(path)))
    new, old = accepted.lookup(fresh), accepted.lookup(key)
    assert new is not None and old is not None and new.models == {"assistant"}
    assert new.budget == info.budget and old.expires is not None and new.expires is None
    assert keys(vault, "rotate", key_id(fresh), "--path", path, "--overlap", "0s").returncode == 0
    assert ApiKeys(parse_key_set(vault.fields(path))).lookup(fresh) is None

    gone = keys(vault, "revoke", key_id(other).removeprefix("key:"), "--path", path)
    assert gone.returncode == 0, gone.stderr
    assert ApiKeys(parse_key_set(vault.fields(path))).lookup(other) is None


def test_concurrent_admins_lose_nothing(vault: Vault) -> None:
    """Check-and-set: eight creates at once, every key lands."""
    path = f"t-{uuid.uuid4().hex[:8]}/keys"
    with ThreadPoolExecutor(8) as pool:
        made = list(pool.map(lambda n: keys(vault, "create", "--path", path, "--tenant",
                                            f"t{n}"), range(8)))  # fmt: skip
    assert all(m.returncode == 0 for m in made), [m.stderr for m in made]
    accepted = ApiKeys(parse_key_set(vault.fields(path)))
    assert len(accepted) == 8
    assert all(accepted.lookup(m.stdout.strip()) is not None for m in made)


def test_sixteen_writers_at_once_each_land_with_backoff(vault: Vault) -> None:
    """The adapter itself under heavier contention than the CLI test: sixteen threads edit
    one secret at once. Each lost check-and-set round is redone on the winner's set after a
    jittered wait, so every edit lands and none overwrites another."""
    from pydantic import SecretStr

    from freehold.keys_cli import VaultKeySet
    from freehold.settings import VaultCliSettings

    settings = VaultCliSettings(VAULT_ADDR=vault.url, VAULT_TOKEN=SecretStr(vault.token))
    path = f"t-{uuid.uuid4().hex[:8]}/keys"

    def add(n: int) -> None:
        VaultKeySet(settings, "secret", path).change(lambda fields: {**fields, f"w{n}": {"n": n}})

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(add, range(16)))
    assert vault.fields(path) == {f"w{n}": {"n": n} for n in range(16)}


def test_errors_name_the_option_and_exit_non_zero(vault: Vault) -> None:
    path = f"t-{uuid.uuid4().hex[:8]}/keys"
    nowhere = keys(vault, "create", "--tenant", "acme")
    assert nowhere.returncode == 2 and "--of or --path" in nowhere.stderr
    bad = keys(vault, "create", "--path", path, "--tenant", "acme", "--expires-in", "soon")
    assert bad.returncode == 2 and "--expires-in" in bad.stderr
    budget = keys(vault, "create", "--path", path, "--tenant", "a", "--budget-tokens", "0")
    assert budget.returncode == 2 and "--budget-tokens" in budget.stderr
    period = keys(vault, "create", "--path", path, "--tenant", "a", "--budget-tokens", "5",
                  "--budget-period", "week")  # fmt: skip
    assert period.returncode == 2 and "--budget-period" in period.stderr
    missing = keys(vault, "revoke", "key:ffffffffffff", "--path", path)
    assert missing.returncode == 2 and "KEY_ID" in missing.stderr
    denied = keys(vault, "create", "--path", path, "--tenant", "a", token="not-a-token")
    assert denied.returncode == 1 and "permission denied" in denied.stderr
    assert "not-a-token" not in denied.stderr
    kind = keys(vault, "list", "--of", "pod/x")
    assert kind.returncode == 2 and "--of" in kind.stderr


def test_into_writes_the_key_into_a_secret_and_never_prints_it(vault: Vault) -> None:
    """A ModelRouter's own key for a keyed model (spec.targets[].apiKey): made into the
    router's secret, beside what that secret already holds; rotated into it the same way."""
    base = f"t-{uuid.uuid4().hex[:8]}"
    hvac.Client(url=vault.url, token=vault.token).secrets.kv.v2.create_or_update_secret(
        path=f"{base}/router", secret={"other": "kept"}, mount_point="secret"
    )
    into = f"secret/{base}/router#gemma"
    made = keys(vault, "create", "--path", f"{base}/keys", "--tenant", "router", "--into", into)
    assert made.returncode == 0 and made.stdout == "", made.stderr
    held = vault.fields(f"{base}/router")
    key = held["gemma"]
    assert held["other"] == "kept" and key not in made.stderr
    assert ApiKeys(parse_key_set(vault.fields(f"{base}/keys"))).tenant_of(key) == "router"
    turned = keys(vault, "rotate", key_id(key), "--path", f"{base}/keys", "--overlap", "0s",
                  "--into", into)  # fmt: skip
    assert turned.returncode == 0 and turned.stdout == "", turned.stderr
    fresh = vault.fields(f"{base}/router")["gemma"]
    accepted = ApiKeys(parse_key_set(vault.fields(f"{base}/keys")))
    assert fresh != key and accepted.tenant_of(fresh) == "router"
    assert accepted.lookup(key, now=time.time() + 1) is None  # ended at once
    for bad in ("secret", "secret/", "/x/y", "se*cret/x"):
        refused = keys(vault, "create", "--path", f"{base}/keys", "--tenant", "r", "--into", bad)
        assert refused.returncode == 2 and "--into" in refused.stderr, bad
    # A rotation of an unknown key writes nothing into the destination.
    unknown = keys(vault, "rotate", "key:ffffffffffff", "--path", f"{base}/keys", "--into", into)
    assert unknown.returncode == 2 and vault.fields(f"{base}/router")["gemma"] == fresh

"""Keys made with `freehold keys` (the real CLI, in a subprocess), used at once by a real
model and a real router in Ray Serve that read them from Vault themselves: allowlists,
per-key budgets at the router (refused at a model, which keeps none), revocation and
rotation without a restart. Vault is tests/vault_server.py (the one test double: Vault
cannot be installed here)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from freehold_serving.key_records import key_id
from tests.integration.serving.conftest import API_KEY, MODEL, SMOL, Stack
from tests.integration.serving.test_router import deploy, target

pytestmark = pytest.mark.slow
KEYS_PATH = "test/gemma/api-keys"  # the "locked" app's key set (and this test's router's)


def keys(stack: Stack, *args: str) -> str:
    env = {**os.environ, "VAULT_ADDR": stack.vault_url, "VAULT_TOKEN": stack.vault_token}
    done = subprocess.run(
        [sys.executable, "-m", "freehold", "keys", *args, "--path", KEYS_PATH],
        env=env, capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def ask(base: str, key: str, model: str = MODEL, **extra: object) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "Hi."}], "max_tokens": 4,
            "temperature": 0, **extra}  # fmt: skip
    headers = {"Authorization": f"Bearer {key}"}
    return httpx.post(f"{base}/chat/completions", json=body, headers=headers, timeout=120)


def until(check: Callable[[], bool], seconds: float = 60) -> float:
    """Seconds until `check()` holds (the servers re-read their keys every second; the
    bound is generous because each check is a real request to a model that shares two
    cores with the rest of the suite)."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < seconds, "not within the bound"
        time.sleep(0.25)
    return time.monotonic() - started


def test_a_model_honours_allowlists_and_refuses_budgeted_keys(stack: Stack) -> None:
    locked = stack.base("locked")
    allowed = keys(stack, "create", "--tenant", "acme", "--model", MODEL)
    elsewhere = keys(stack, "create", "--tenant", "acme", "--model", "another-model")
    budgeted = keys(stack, "create", "--tenant", "acme", "--budget-tokens", "100")
    seen: list[str] = []

    def served(key: str) -> bool:
        answer = ask(locked, key)
        seen.append(f"{answer.status_code} {answer.text[:200]}")
        return answer.status_code == 200

    # The three keys were written one after another, possibly across one of the server's
    # one-second re-reads: wait until it has read the last of them (refused for its budget,
    # not unknown) before judging the others.
    until(lambda: ask(locked, budgeted).status_code != 401)
    try:
        until(lambda: served(allowed))
    except AssertionError:
        raise AssertionError(f"the new key was never accepted: {seen[-3:]}") from None
    refused = ask(locked, elsewhere)
    assert refused.status_code == 404, refused.text
    assert refused.json()["error"]["code"] == "model_not_found"
    models = httpx.get(
        f"{locked}/models", headers={"Authorization": f"Bearer {elsewhere}"}, timeout=60
    )
    assert models.status_code == 200 and models.json()["data"] == []
    over = ask(locked, budgeted)
    assert over.status_code == 403, over.text
    assert over.json()["error"]["code"] == "budget_requires_router"
    # The key written by hand beside them still works.
    assert ask(locked, API_KEY).status_code == 200


def test_revocation_rotation_and_expiry_without_a_restart(stack: Stack) -> None:
    locked = stack.base("locked")
    key = keys(stack, "create", "--tenant", "acme")
    until(lambda: ask(locked, key).status_code == 200)
    fresh = keys(stack, "rotate", key_id(key), "--overlap", "0s")
    until(lambda: ask(locked, key).status_code == 401)
    assert ask(locked, fresh).status_code == 200
    keys(stack, "revoke", key_id(fresh))
    until(lambda: ask(locked, fresh).status_code == 401)
    # Long enough to be seen by a server re-reading its keys every second on a busy
    # machine before it expires; refused once it has, without a restart.
    short = keys(stack, "create", "--tenant", "acme", "--expires-in", "10s")
    until(lambda: ask(locked, short).status_code == 200, seconds=10)
    until(lambda: ask(locked, short).status_code == 401, seconds=20)


def test_a_router_keeps_each_keys_budget_and_allowlist(stack: Stack) -> None:
    base = deploy(
        stack,
        "r-keys",
        targets=[
            target("gemma", stack.base(), MODEL, priority=0),
            target("smol", stack.base("smol"), SMOL, priority=1),
        ],
        budgets=[{"tenant": "acme", "tokens": 100000}],
        api_keys={"vault": stack.locked_keys},
    )
    capped = keys(stack, "create", "--tenant", "acme", "--budget-tokens", "300")
    free = keys(stack, "create", "--tenant", "acme")
    smol_only = keys(stack, "create", "--tenant", "acme", "--model", "smol")
    nothing = keys(stack, "create", "--tenant", "acme", "--model", "not-a-target")

    def routed(key: str) -> httpx.Response:
        return ask(base, key, model="assistant")

    until(lambda: routed(nothing).status_code != 401, seconds=60)
    gone = routed(nothing)
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "model_not_found"
    # The allowlist names a target: the key is routed only there, whatever the priority.
    assert routed(free).headers["X-Freehold-Target"] == "gemma"
    assert {routed(smol_only).headers["X-Freehold-Target"] for _ in range(3)} == {"smol"}
    # The key's budget holds on its own, beside its tenant's (each request holds its
    # prompt's bound, ~90 tokens, and is charged its usage, ~15).
    spent = 0
    for _ in range(40):
        answer = routed(capped)
        if answer.status_code != 200:
            break
        spent += answer.json()["usage"]["total_tokens"]
    assert answer.status_code == 429, answer.text
    error = answer.json()["error"]
    assert error["code"] == "budget_exceeded" and key_id(capped) in error["message"]
    status = httpx.get(base.removesuffix("/v1") + "/router/status", timeout=30).json()
    mine = next(b for b in status["budgets"] if b.get("key") == key_id(capped))
    assert mine["tenant"] == "acme" and mine["committedTokens"] == spent <= 300
    assert routed(free).status_code == 200  # the tenant's other key is not capped
    # Revoked at the router without a restart.
    keys(stack, "revoke", key_id(free))
    until(lambda: routed(free).status_code == 401)


def test_a_router_presents_its_own_key_from_vault_and_follows_its_rotation(
    stack: Stack, tmp_path: Path
) -> None:
    """A router in front of the keyed model with a key of its own, made by `freehold keys
    create --into` (never printed) and read by the router from Vault as its own workload:
    callers need no key of the model's; a rotation reaches the router without a restart;
    a revoked router key is the router's error (502), never passed on as the caller's 401."""
    from freehold.adapters.vault import VaultApi
    from freehold.builders.vault import VaultRole, acl_policy, role_body

    assert stack.vault is not None
    role = "freehold.test.router.r-own"
    secret = "secret/data/test/router/r-own"
    VaultApi.connect(stack.vault_url, stack.vault_token).ensure(
        VaultRole(role, acl_policy({secret: "read"}), role_body(role, "r-own-router", "test"))
    )
    jwt = tmp_path / "token"
    jwt.write_text("projected-token-r-own")
    stack.vault.state.service_accounts["projected-token-r-own"] = ("r-own-router", "test")
    into = "secret/test/router/r-own#locked"
    printed = keys(stack, "create", "--tenant", "router", "--name", "r-own", "--into", into)
    assert printed == ""  # written into Vault, not shown

    def own_key() -> str:
        return str(stack.vault.state.kv[secret]["locked"])  # type: ignore[union-attr]

    first = own_key()
    where = {"path": "test/router/r-own", "field": "locked"}
    base = deploy(
        stack,
        "r-own",
        targets=[target("locked", stack.base("locked"), MODEL, api_key_vault=where)],
        vault_address=stack.vault_url,
        vault_role=role,
        vault_jwt_path=str(jwt),
    )

    def routed() -> httpx.Response:
        body = {"model": "assistant", "messages": [{"role": "user", "content": "Hi."}],
                "max_tokens": 4, "temperature": 0}  # fmt: skip
        return httpx.post(f"{base}/chat/completions", json=body, timeout=120)

    until(lambda: routed().status_code == 200)
    assert ask(stack.base("locked"), first).status_code == 200  # the model's own key set
    # Rotated with no overlap: the model refuses the old key within its refresh; the
    # router, refused once, re-reads its key and is served again, without a restart.
    keys(stack, "rotate", key_id(first), "--overlap", "0s", "--into", into)
    assert own_key() != first
    answers: list[int] = []

    def served_again() -> bool:
        answers.append(routed().status_code)
        return answers[-1] == 200 and own_key() != first

    until(served_again, seconds=60)
    assert set(answers) <= {200, 502}, answers  # never the model's 401 as the caller's

    def own_key_problem() -> object:
        found = httpx.get(base.removesuffix("/v1") + "/router/status", timeout=30).json()
        return next(t for t in found["targets"] if t["name"] == "locked")["ownKey"]

    assert own_key_problem() is None  # cleared by the answer after the rotation
    # Revoked: the router answers with its own error, naming its key, not the caller's.
    keys(stack, "revoke", key_id(own_key()))
    # (Each of the model's replicas re-reads its keys on its own clock: judged on the
    # first refusal, not on the next request, which the other replica may still serve.)
    seen: list[httpx.Response] = []

    def refused() -> bool:
        seen.append(routed())
        return seen[-1].status_code == 502

    until(refused)
    error = seen[-1].json()["error"]
    assert error["code"] == "upstream_credential" and "spec.targets[].apiKey" in error["message"]
    # What the operator reads for the resource's status (never the key).
    assert own_key_problem() == "was refused by the target"

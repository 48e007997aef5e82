"""The operator's door to Vault (or OpenBao): ACL policies and Kubernetes-auth roles.

It writes policies and roles only; it never reads a secret, so no secret value can
reach the operator's logs, events or status.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import hvac
import requests
from hvac import exceptions as vault_errors

from freehold.builders.vault import TRANSIT_KEY, VaultRole

log = logging.getLogger(__name__)


class VaultUnavailableError(Exception):
    """Vault cannot be used now; retry later. `reason` is a CamelCase condition reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def _role_matches(current: dict[str, Any], wanted: dict[str, Any]) -> bool:
    for key, value in wanted.items():
        have = current.get(key)
        if isinstance(value, list):
            if sorted(map(str, have or [])) != sorted(map(str, value)):
                return False
        elif key in ("token_ttl", "token_max_ttl"):
            continue  # Vault answers in seconds; compared through the policies and bindings
        elif have != value:
            return False
    return True


class VaultApi:
    def __init__(
        self, client: hvac.Client, auth_mount: str = "kubernetes", login: Any = None
    ) -> None:
        self._client = client
        self._auth_mount = auth_mount
        # Re-login when the token expired (Kubernetes auth); None with a static token.
        self._login = login

    @classmethod
    def connect(
        cls,
        address: str,
        token: str,
        *,
        ca_bundle: str | None = None,
        auth_mount: str = "kubernetes",
        timeout: float = 10.0,
    ) -> VaultApi:
        verify: bool | str = ca_bundle or True
        client = hvac.Client(url=address, token=token, verify=verify, timeout=timeout)
        return cls(client, auth_mount)

    @classmethod
    def kubernetes_login(
        cls,
        address: str,
        role: str,
        jwt_path: str,
        *,
        ca_bundle: str | None = None,
        login_mount: str = "kubernetes",
        auth_mount: str = "kubernetes",
        timeout: float = 10.0,
    ) -> VaultApi:
        """The operator's own identity: its ServiceAccount token, Kubernetes auth."""
        client = hvac.Client(url=address, verify=ca_bundle or True, timeout=timeout)

        def login() -> None:
            with open(jwt_path, encoding="utf-8") as handle:
                jwt = handle.read().strip()
            client.auth.kubernetes.login(role=role, jwt=jwt, mount_point=login_mount)

        api = cls(client, auth_mount, login)
        try:
            login()
        except (
            requests.exceptions.ConnectionError,
            requests.exceptions.Timeout,
            vault_errors.VaultError,
        ) as exc:
            log.warning("Vault login failed, will retry: %s", type(exc).__name__)
        return api

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            try:
                return fn(*args, **kwargs)
            except vault_errors.Forbidden:
                if self._login is None:
                    raise
                self._login()  # the token may have expired: log in again, once
                return fn(*args, **kwargs)
        except vault_errors.VaultDown as exc:
            raise VaultUnavailableError(
                "VaultSealed", f"Vault is sealed or in standby ({what})"
            ) from exc
        except vault_errors.Forbidden as exc:
            raise VaultUnavailableError(
                "VaultForbidden", f"the operator's Vault token may not {what}"
            ) from exc
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
            raise VaultUnavailableError(
                "VaultUnreachable", f"cannot reach Vault to {what}"
            ) from exc
        except vault_errors.InvalidPath:
            raise  # "not there": callers decide what that means
        except vault_errors.VaultError as exc:
            # 400, 429, 500 and the rest: a condition and a retry, never a crash or a
            # reconcile that stops. The type only: Vault's text may quote our request.
            raise VaultUnavailableError(
                "VaultError", f"Vault refused to {what} ({type(exc).__name__})"
            ) from exc

    def check(self) -> None:
        """Raises VaultUnavailableError unless Vault is reachable, initialised and unsealed."""
        status = self._call("read its health", self._client.sys.read_health_status, method="GET")
        if isinstance(status, requests.Response):  # non-200 health codes come back raw
            try:
                status = status.json()
            except ValueError:
                status = {}
        if status.get("sealed") or not status.get("initialized", True):
            raise VaultUnavailableError("VaultSealed", "Vault is sealed")

    def _read_policy(self, name: str) -> str | None:
        try:
            result = self._call("read a policy", self._client.sys.read_acl_policy, name)
        except vault_errors.InvalidPath:
            return None
        data = result.get("data", result)
        policy: str | None = data.get("policy")
        return policy

    def _read_role(self, name: str) -> dict[str, Any] | None:
        try:
            result = self._call(
                "read a role", self._client.adapter.get, f"/v1/auth/{self._auth_mount}/role/{name}"
            )
        except vault_errors.InvalidPath:
            return None
        data: dict[str, Any] = result.get("data", {}) if result else {}
        return data

    def ensure(self, role: VaultRole) -> bool:
        """Create or update the policy and the role; True when anything changed."""
        changed = False
        if self._read_policy(role.name) != role.policy:
            self._call(
                "write a policy",
                self._client.sys.create_or_update_acl_policy,
                name=role.name,
                policy=role.policy,
            )
            changed = True
        current = self._read_role(role.name)
        if current is None or not _role_matches(current, role.body):
            self._call(
                "write a role",
                self._client.adapter.post,
                f"/v1/auth/{self._auth_mount}/role/{role.name}",
                json=role.body,
            )
            changed = True
        for key, key_type in role.transit_keys:
            path = f"/v1/{role.transit_mount}/keys/{key}"
            try:
                self._call("read a transit key", self._client.adapter.get, path)
            except vault_errors.InvalidPath:
                self._call(
                    "create a transit key", self._client.adapter.post, path, json={"type": key_type}
                )
                changed = True
        if changed:
            log.info("vault policy and role %s written", role.name)
        return changed

    def signer(self, key: str, mount: str = "transit") -> Any:
        """An ed25519 transit key as a Signer (the audit log's checkpoints are signed in
        Vault; the private key never leaves it). Nothing is asked of Vault until the first
        signature, and the key is created then if missing: an operator starting while Vault
        is away still starts."""
        from freehold_serving.signing import TransitSigner
        from freehold_serving.transit import Transit

        api = self

        class EnsuredSigner:
            def __init__(self) -> None:
                self._inner = TransitSigner(Transit(api._client, mount), key)
                self._ready = False

            def _ensure(self) -> None:
                if self._ready:
                    return
                path = f"/v1/{mount}/keys/{key}"
                try:
                    api._call("read a transit key", api._client.adapter.get, path)
                except vault_errors.InvalidPath:
                    api._call(
                        "create a transit key",
                        api._client.adapter.post,
                        path,
                        json={"type": "ed25519"},
                    )
                self._ready = True

            def public_key(self) -> bytes:
                self._ensure()
                return self._inner.public_key()

            def sign(self, message: bytes) -> bytes:
                self._ensure()
                return self._inner.sign(message)

        return EnsuredSigner()

    def remove(self, name: str) -> None:
        """Delete the role, then the policy; or a transit key (TRANSIT_KEY prefix). Missing
        ones are fine."""
        if name.startswith(TRANSIT_KEY):
            mount, _, key = name.removeprefix(TRANSIT_KEY).partition("/")
            with contextlib.suppress(vault_errors.InvalidPath):
                self._call(
                    "allow deleting a transit key",
                    self._client.adapter.post,
                    f"/v1/{mount}/keys/{key}/config",
                    json={"deletion_allowed": True},
                )
                self._call(
                    "delete a transit key", self._client.adapter.delete, f"/v1/{mount}/keys/{key}"
                )
                log.info("transit key %s/%s deleted (crypto-shredded)", mount, key)
            return
        for what, fn, arg in (
            (
                "delete a role",
                self._client.adapter.delete,
                f"/v1/auth/{self._auth_mount}/role/{name}",
            ),
            ("delete a policy", self._client.sys.delete_acl_policy, name),
        ):
            with contextlib.suppress(vault_errors.InvalidPath):
                self._call(what, fn, arg)

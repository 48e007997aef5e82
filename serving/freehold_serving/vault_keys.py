"""API keys read by the workload itself from Vault (KV v2), never from the args.

The pod logs in with its projected ServiceAccount token (audience "vault") through
Kubernetes auth; the role only admits this workload's ServiceAccount, and its policy only
reads this workload's paths. Keys live in this process's memory only.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import hvac
from pydantic import ValidationError

from freehold_serving.args import ApiKeysConfig, VaultKeySource
from freehold_serving.auth import ApiKeys, KeyEntry, load_api_keys
from freehold_serving.key_records import KeyRecord

log = logging.getLogger(__name__)


class VaultKeysError(RuntimeError):
    """The keys cannot be read; the message never holds a key or a token."""


class NoKeysError(VaultKeysError):
    """Vault answered: the secret is not there (deleted). Every key is revoked."""


def read_api_keys(config: ApiKeysConfig) -> list[KeyEntry]:
    """The keys in the secret: managed keys' records (key_records.py: digest, tenant,
    allowlist, budget, expiry), and keys written by hand, where a field named
    `TENANT.NAME` is a key of tenant TENANT and any other field name is its own tenant."""
    source = config.vault
    if source is None:
        raise VaultKeysError("no Vault source configured")
    return parse_key_set(read_secret(source, "API keys"))


def parse_key_set(values: dict[str, object]) -> list[KeyEntry]:
    out: list[KeyEntry] = []
    for field, value in values.items():
        if isinstance(value, dict):
            try:
                out.append(KeyRecord.model_validate(value))
            except ValidationError as exc:
                # One damaged record revokes that key, not the whole set; the message
                # names the field (a key id), never a value.
                log.error("the key record %s is not valid, so not accepted: %s", field,
                          exc.errors(include_input=False, include_url=False))  # fmt: skip
        elif value:
            out.append((str(value), str(field).split(".", 1)[0]))
    return out


def read_secret(source: VaultKeySource, what: str) -> dict[str, object]:
    """A KV v2 secret's fields, read as this workload (Kubernetes auth, its own role)."""

    def kv(client: hvac.Client) -> dict[str, object]:
        secret = client.secrets.kv.v2.read_secret_version(
            path=source.path, mount_point=source.mount, raise_on_deleted_version=True
        )
        values: dict[str, object] = (secret.get("data") or {}).get("data") or {}
        return values

    return read_as_workload(source, what, kv)


def read_as_workload(
    source: VaultKeySource, what: str, read: Callable[[hvac.Client], dict[str, object]]
) -> dict[str, object]:
    """`read(client)` with a client logged in as this workload (Kubernetes auth with the
    pod's projected token, its own role): errors name the path and role, never a value."""
    address = source.address
    if not address or not source.role:
        raise VaultKeysError(f"Vault address and role are required to read {what}")
    try:
        with open(source.jwt_path, encoding="utf-8") as handle:
            jwt = handle.read().strip()
    except OSError as exc:
        raise VaultKeysError(f"cannot read the Vault token file {source.jwt_path}") from exc
    client = hvac.Client(url=address, verify=source.ca_cert or True, timeout=10)
    try:
        client.auth.kubernetes.login(role=source.role, jwt=jwt, mount_point=source.auth_mount)
        return read(client)
    except hvac.exceptions.InvalidPath:
        raise NoKeysError(f"no {what} at {source.mount}/{source.path}") from None
    except Exception as exc:  # hvac and requests errors alike; their text may quote input
        raise VaultKeysError(
            f"reading {what} from Vault ({source.mount}/{source.path} as role "
            f"{source.role}) failed: {type(exc).__name__}"
        ) from None
    finally:
        client.adapter.close()


def load_keys(config: ApiKeysConfig | None) -> ApiKeys | None:
    """The keys a server accepts (a key file, or Vault through the pod's identity); None
    when it requires none. Raises when they cannot be read: a server must not start open."""
    vault = config is not None and config.vault is not None
    return load_api_keys(config, read_api_keys if vault else None)


def follow_keys(keys: ApiKeys | None, config: ApiKeysConfig | None) -> asyncio.Task[None] | None:
    """Keys from Vault are re-read in the background (rotation, revocation); call inside
    the server's event loop and keep the task."""
    if keys is None or config is None or config.vault is None:
        return None
    return asyncio.get_running_loop().create_task(_refresh(keys, config))


async def _refresh(keys: ApiKeys, config: ApiKeysConfig) -> None:
    """Re-read the keys so a rotation or a revocation in Vault reaches every replica."""
    source = config.vault
    assert source is not None
    loop = asyncio.get_running_loop()
    last_read = loop.time()
    while True:
        await asyncio.sleep(source.refresh_seconds)
        try:
            keys.replace(await asyncio.to_thread(read_api_keys, config))
            last_read = loop.time()
        except NoKeysError as exc:
            log.warning("%s: every API key is revoked", exc)
            keys.replace([])
            last_read = loop.time()
        except Exception as exc:
            stale = loop.time() - last_read
            if stale > source.grace_seconds:
                log.error("API keys unreadable for %.0f s: accepting none: %s", stale, exc)
                keys.replace([])
            else:
                log.warning("API keys not refreshed, keeping the last ones: %s", exc)

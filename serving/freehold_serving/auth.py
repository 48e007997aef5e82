"""API keys for the inference endpoint.

Keys are compared as SHA-256 digests in constant time; a managed key (key_records.py)
reaches the server as its digest only, a key written by hand is held only in this
process's memory, never logged and never put in an error message.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from freehold_serving.args import ApiKeysConfig
from freehold_serving.key_records import KeyInfo, KeyRecord, key_id

DEFAULT_TENANT = "default"
# A key, (key, tenant), or a managed key's record (its digest, tenant, allowlist, budget,
# expiry). The tenant is who the key acts for: the memory API shows a key only its own
# tenant's subjects.
KeyEntry = str | tuple[str, str] | KeyRecord


def _digests(keys: Iterable[KeyEntry]) -> list[tuple[bytes, KeyInfo]]:
    out = []
    for entry in keys:
        if isinstance(entry, KeyRecord):
            out.append((bytes.fromhex(entry.sha256), KeyInfo.of(entry)))
            continue
        key, tenant = (entry, DEFAULT_TENANT) if isinstance(entry, str) else entry
        if key:
            out.append((hashlib.sha256(key.encode()).digest(), KeyInfo(key_id(key), tenant)))
    return out


class ApiKeys:
    def __init__(self, keys: Iterable[KeyEntry]) -> None:
        self._digests = _digests(keys)

    def replace(self, keys: Iterable[KeyEntry]) -> None:
        """The keys now in the source. Empty (the secret was emptied or deleted) means
        every key was revoked: none is accepted any more."""
        self._digests = _digests(keys)

    def infos(self) -> list[KeyInfo]:
        """Every key's id, tenant, allowlist and budget (never a key or a digest)."""
        return [info for _, info in self._digests]

    def __len__(self) -> int:
        return len(self._digests)

    def lookup(self, presented: str, now: float | None = None) -> KeyInfo | None:
        """Who a valid key is; None for an unknown or expired key."""
        digest = hashlib.sha256(presented.encode()).digest()
        found: KeyInfo | None = None
        for known, info in self._digests:
            # No early exit: the time taken does not say which key came close.
            if hmac.compare_digest(digest, known):
                found = info
        expires = None if found is None else found.expires
        if expires is not None and (time.time() if now is None else now) >= expires:
            return None  # expiry is exact, not bounded by the key set's refresh
        return found

    def tenant_of(self, presented: str) -> str | None:
        """The tenant of a valid key; None for an unknown key."""
        info = self.lookup(presented)
        return None if info is None else info.tenant

    def accepts(self, presented: str) -> bool:
        return self.tenant_of(presented) is not None


def read_key_file(path: str) -> list[str | tuple[str, str]]:
    """One key per line, optionally followed by whitespace and its tenant."""
    out: list[str | tuple[str, str]] = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        key, _, tenant = line.strip().partition(" ")
        out.append((key, tenant.strip()) if tenant.strip() else key)
    return out


def load_api_keys(
    config: ApiKeysConfig | None,
    vault_reader: Callable[[ApiKeysConfig], list[KeyEntry]] | None = None,
) -> ApiKeys | None:
    """The accepted keys, or None when the endpoint requires none."""
    if config is None:
        return None
    if config.file is not None:
        keys: list[KeyEntry] = list(read_key_file(config.file))
    elif config.vault is not None:
        if vault_reader is None:
            raise RuntimeError("API keys are in Vault but no Vault client is configured")
        keys = vault_reader(config)
    else:
        raise RuntimeError("api_keys names no source")
    if not keys:
        # Fail closed: a configured but empty key source must not open the endpoint.
        raise RuntimeError("the API key source holds no keys; refusing to serve without auth")
    return ApiKeys(keys)

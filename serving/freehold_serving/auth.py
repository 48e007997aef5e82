"""API keys for the inference endpoint.

Keys are compared as SHA-256 digests in constant time; the keys themselves are held
only in this process's memory, never logged and never put in an error message.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterable
from pathlib import Path

from freehold_serving.args import ApiKeysConfig

DEFAULT_TENANT = "default"
# A key, or (key, tenant). The tenant is who the key acts for: the memory API shows a key
# only its own tenant's subjects.
KeyEntry = str | tuple[str, str]


def _digests(keys: Iterable[KeyEntry]) -> list[tuple[bytes, str]]:
    out = []
    for entry in keys:
        key, tenant = (entry, DEFAULT_TENANT) if isinstance(entry, str) else entry
        if key:
            out.append((hashlib.sha256(key.encode()).digest(), tenant))
    return out


class ApiKeys:
    def __init__(self, keys: Iterable[KeyEntry]) -> None:
        self._digests = _digests(keys)

    def replace(self, keys: Iterable[KeyEntry]) -> None:
        """The keys now in the source. Empty (the secret was emptied or deleted) means
        every key was revoked: none is accepted any more."""
        self._digests = _digests(keys)

    def __len__(self) -> int:
        return len(self._digests)

    def tenant_of(self, presented: str) -> str | None:
        """The tenant of a valid key; None for an unknown key."""
        digest = hashlib.sha256(presented.encode()).digest()
        found: str | None = None
        for known, tenant in self._digests:
            # No early exit: the time taken does not say which key came close.
            if hmac.compare_digest(digest, known):
                found = tenant
        return found

    def accepts(self, presented: str) -> bool:
        return self.tenant_of(presented) is not None


def read_key_file(path: str) -> list[KeyEntry]:
    """One key per line, optionally followed by whitespace and its tenant."""
    out: list[KeyEntry] = []
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
        keys = read_key_file(config.file)
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


def key_id(presented: str) -> str:
    """A stable, non-reversible name for a key in audit records: the first 48 bits of its
    SHA-256 (keys are random; this names one without letting anyone rebuild it)."""
    return "key:" + hashlib.sha256(presented.encode()).hexdigest()[:12]

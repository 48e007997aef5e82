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


class ApiKeys:
    def __init__(self, keys: Iterable[str]) -> None:
        self._digests = [hashlib.sha256(k.encode()).digest() for k in keys if k]

    def replace(self, keys: Iterable[str]) -> None:
        """The keys now in the source. Empty (the secret was emptied or deleted) means
        every key was revoked: none is accepted any more."""
        self._digests = [hashlib.sha256(k.encode()).digest() for k in keys if k]

    def __len__(self) -> int:
        return len(self._digests)

    def accepts(self, presented: str) -> bool:
        digest = hashlib.sha256(presented.encode()).digest()
        found = False
        for known in self._digests:
            # No early exit: the time taken does not say which key came close.
            found |= hmac.compare_digest(digest, known)
        return found


def read_key_file(path: str) -> list[str]:
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def load_api_keys(
    config: ApiKeysConfig | None,
    vault_reader: Callable[[ApiKeysConfig], list[str]] | None = None,
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

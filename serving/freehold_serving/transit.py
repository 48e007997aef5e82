"""Vault transit, as MemoryStore uses it: envelope encryption and signatures.

A data key encrypts records locally; Vault keeps the key-encryption key and only ever
returns the data key wrapped (stored beside the data) or, on demand, unwrapped into this
process's memory. Rotation makes new wraps use the new key version; rewrap moves old
wraps forward without exposing the data key. Signing keys sign export bundles and audit
checkpoints.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Literal

import hvac

KeyType = Literal["aes256-gcm96", "ed25519", "ecdsa-p256"]


@dataclass(frozen=True)
class DataKey:
    plaintext: bytes  # use, then drop: never persist or log it
    ciphertext: str  # "vault:vN:..." — safe to store beside the data

    def __repr__(self) -> str:  # keep the key out of tracebacks and logs
        return f"DataKey(ciphertext={self.ciphertext[:16]}…)"


def login(
    address: str,
    role: str,
    jwt_path: str,
    *,
    auth_mount: str = "kubernetes",
    ca_cert: str | None = None,
    mount: str = "transit",
) -> Transit:
    """Transit as a workload uses it: logged in with its projected ServiceAccount token."""
    from pathlib import Path

    client = hvac.Client(url=address, verify=ca_cert or True, timeout=10)
    jwt = Path(jwt_path).read_text(encoding="utf-8").strip()
    client.auth.kubernetes.login(role=role, jwt=jwt, mount_point=auth_mount)
    return Transit(client, mount)


class Transit:
    def __init__(self, client: hvac.Client, mount: str = "transit") -> None:
        self._client = client
        self._mount = mount

    def _post(self, path: str, body: dict[str, object] | None = None) -> dict[str, object]:
        result = self._client.adapter.post(f"/v1/{self._mount}/{path}", json=body or {})
        if not isinstance(result, dict):  # 204 No Content comes back as a raw response
            return {}
        data: dict[str, object] = result.get("data") or {}
        return data

    def create_key(self, name: str, key_type: KeyType = "aes256-gcm96") -> None:
        self._post(f"keys/{name}", {"type": key_type})

    def rotate(self, name: str) -> None:
        self._post(f"keys/{name}/rotate")

    def data_key(self, name: str, bits: int = 256) -> DataKey:
        data = self._post(f"datakey/plaintext/{name}", {"bits": bits})
        return DataKey(base64.b64decode(str(data["plaintext"])), str(data["ciphertext"]))

    def wrapped_data_key(self, name: str, bits: int = 256) -> str:
        """A new data key, returned wrapped only (for a writer that encrypts later)."""
        return str(self._post(f"datakey/wrapped/{name}", {"bits": bits})["ciphertext"])

    def encrypt(self, name: str, plaintext: bytes) -> str:
        data = self._post(f"encrypt/{name}", {"plaintext": base64.b64encode(plaintext).decode()})
        return str(data["ciphertext"])

    def delete_key(self, name: str) -> None:
        """Crypto-shred: everything the key wrapped is unreadable from now on."""
        self._post(f"keys/{name}/config", {"deletion_allowed": True})
        self._client.adapter.delete(f"/v1/{self._mount}/keys/{name}")

    def unwrap(self, name: str, ciphertext: str) -> bytes:
        data = self._post(f"decrypt/{name}", {"ciphertext": ciphertext})
        return base64.b64decode(str(data["plaintext"]))

    def rewrap(self, name: str, ciphertext: str) -> str:
        return str(self._post(f"rewrap/{name}", {"ciphertext": ciphertext})["ciphertext"])

    def sign(self, name: str, message: bytes) -> str:
        data = self._post(f"sign/{name}", {"input": base64.b64encode(message).decode()})
        return str(data["signature"])

    def public_key(self, name: str) -> str:
        """The latest version's public key (base64) of an asymmetric key."""
        result = self._client.adapter.get(f"/v1/{self._mount}/keys/{name}")
        data = result.get("data") or {}
        versions = data.get("keys") or {}
        latest = str(data.get("latest_version") or max(int(v) for v in versions))
        return str(versions[latest]["public_key"])

    def verify(self, name: str, message: bytes, signature: str) -> bool:
        data = self._post(
            f"verify/{name}", {"input": base64.b64encode(message).decode(), "signature": signature}
        )
        return bool(data.get("valid"))

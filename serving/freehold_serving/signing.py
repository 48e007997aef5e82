"""Ed25519 signing and verification, one place for every signed thing Freehold writes:
memory bundles, audit checkpoints, evaluation results.

A signer is a local key file (`FileSigner`, PEM PKCS#8, created 0600) or a Vault transit key
(`TransitSigner`: the private key never leaves Vault). What is signed is canonical JSON
(sorted keys, no spaces, UTF-8), so the same content gives the same bytes and signature.
Verification always takes the public keys the verifier trusts: a key that a signed document
names itself proves nothing (anyone can sign with a key of their own).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from freehold_serving.private_files import private_dir

if TYPE_CHECKING:  # hvac (and requests) load only where a transit key signs
    from freehold_serving.transit import Transit

ALGORITHM = "ed25519"


class SigningKeyError(Exception):
    """A signing key cannot be used; the message names the file and the fix."""


def canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def key_id(public: bytes) -> str:
    return "ed25519:" + hashlib.sha256(public).hexdigest()[:16]


class Signer(Protocol):
    def public_key(self) -> bytes: ...

    def sign(self, message: bytes) -> bytes: ...


class FileSigner:
    """An Ed25519 private key in a file (PEM, PKCS#8), created with mode 0600 if absent."""

    def __init__(self, path: Path) -> None:
        if not path.exists():
            private_dir(path.parent)
            pem = Ed25519PrivateKey.generate().private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(pem)
        if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise SigningKeyError(f"{path} is readable by others; chmod 600 it")
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise SigningKeyError(f"{path} is not an Ed25519 private key")
        self._key = key

    def public_key(self) -> bytes:
        return self._key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)


class TransitSigner:
    """A Vault transit ed25519 key: the private key never leaves Vault."""

    def __init__(self, transit: Transit, key_name: str) -> None:
        self._transit = transit
        self._key = key_name

    def public_key(self) -> bytes:
        return base64.b64decode(self._transit.public_key(self._key))

    def sign(self, message: bytes) -> bytes:
        return base64.b64decode(self._transit.sign(self._key, message).split(":", 2)[2])


def signature_block(signer: Signer, message: bytes) -> dict[str, str]:
    """What a signed document carries: the algorithm, the key's id and public key, and the
    signature (base64)."""
    public = signer.public_key()
    return {
        "algorithm": ALGORITHM,
        "keyId": key_id(public),
        "publicKey": base64.b64encode(public).decode(),
        "signature": base64.b64encode(signer.sign(message)).decode(),
    }


def verifies(public: bytes, signature: bytes, message: bytes) -> bool:
    """Whether `signature` is `public`'s Ed25519 signature of `message` (never raises)."""
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


def trusted_signer(public: bytes, trusted: Iterable[bytes]) -> bool:
    return public in set(trusted)


class DocumentSignatureError(Exception):
    """A signed JSON document is not what its signer wrote; the message says why."""


def sign_document(document: dict[str, Any], signer: Signer) -> dict[str, Any]:
    """A JSON document (evaluation result, migration report) with a `signature` block:
    Ed25519 over the canonical JSON of everything else."""
    body = {k: v for k, v in document.items() if k != "signature"}
    public = signer.public_key()
    return {
        **body,
        "signature": {
            "algorithm": ALGORITHM,
            "keyId": key_id(public),
            "publicKey": base64.b64encode(public).decode(),
            "value": base64.b64encode(signer.sign(canonical(body))).decode(),
        },
    }


def verify_document(document: dict[str, Any], trusted: list[bytes] | None = None) -> str:
    """The signer's key id, or DocumentSignatureError. `trusted`: raw public keys; when
    given, a valid signature by any other key is refused too."""
    block = document.get("signature")
    if not isinstance(block, dict) or block.get("algorithm") != ALGORITHM:
        raise DocumentSignatureError("the document is not signed (no ed25519 signature block)")
    try:
        public = base64.b64decode(str(block["publicKey"]), validate=True)
        value = base64.b64decode(str(block["value"]), validate=True)
    except (KeyError, ValueError) as exc:
        raise DocumentSignatureError(f"the signature block is malformed: {exc}") from None
    body = {k: v for k, v in document.items() if k != "signature"}
    if not verifies(public, value, canonical(body)):
        raise DocumentSignatureError(
            "the signature does not match the content: the document was changed after signing"
        )
    if trusted is not None and public not in trusted:
        raise DocumentSignatureError(f"signed by {key_id(public)}, which is not a trusted key")
    return key_id(public)

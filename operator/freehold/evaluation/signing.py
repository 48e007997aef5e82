"""Signed evaluation results: Ed25519 over the canonical JSON, like the memory bundle.

The signature block names the key (id and public key); `verify` checks the signature and,
when the caller trusts specific keys, that the signer is one of them. The digest in the
result (sha256 of its canonical JSON without times, digest and signature) identifies the
evaluation; the signature binds the whole file, times included.
"""

from __future__ import annotations

import base64
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from freehold_serving.signing import Signer, canonical, key_id

ALGORITHM = "ed25519"


class ResultSignatureError(Exception):
    """The result is not what its signer wrote; the message says why."""


def sign(result: dict[str, Any], signer: Signer) -> dict[str, Any]:
    body = {k: v for k, v in result.items() if k != "signature"}
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


def verify(result: dict[str, Any], trusted: list[bytes] | None = None) -> str:
    """The signer's key id, or ResultSignatureError. `trusted`: raw public keys; when
    given, a valid signature by any other key is refused too."""
    block = result.get("signature")
    if not isinstance(block, dict) or block.get("algorithm") != ALGORITHM:
        raise ResultSignatureError("the result is not signed (no ed25519 signature block)")
    try:
        public = base64.b64decode(str(block["publicKey"]), validate=True)
        value = base64.b64decode(str(block["value"]), validate=True)
        key = Ed25519PublicKey.from_public_bytes(public)
    except (KeyError, ValueError) as exc:
        raise ResultSignatureError(f"the signature block is malformed: {exc}") from None
    body = {k: v for k, v in result.items() if k != "signature"}
    try:
        key.verify(value, canonical(body))
    except InvalidSignature:
        raise ResultSignatureError(
            "the signature does not match the content: the result was changed after signing"
        ) from None
    if trusted is not None and public not in trusted:
        raise ResultSignatureError(f"signed by {key_id(public)}, which is not a trusted key")
    return key_id(public)

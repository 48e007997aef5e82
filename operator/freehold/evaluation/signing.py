"""Signed evaluation results: Ed25519 over the canonical JSON, like the memory bundle.

The signature block names the key (id and public key); `verify` checks the signature and,
when the caller trusts specific keys, that the signer is one of them. The digest in the
result (sha256 of its canonical JSON without times, digest and signature) identifies the
evaluation; the signature binds the whole file, times included. The format is the one
every signed JSON document of Freehold uses (freehold_serving.signing).
"""

from __future__ import annotations

from freehold_serving.signing import (
    DocumentSignatureError as ResultSignatureError,
)
from freehold_serving.signing import (
    sign_document as sign,
)
from freehold_serving.signing import (
    verify_document as verify,
)

__all__ = ["ResultSignatureError", "sign", "verify"]

"""Model signatures in the OpenSSF model-signing format (a Sigstore bundle over an in-toto
statement of the model's digests), verified air-gapped: against a public key, or against a
certificate chain plus the signing certificate's expected identity. No transparency log is
consulted at run time.

Verification runs where the model is loaded (the serving process, `freehold up`), before the
engine opens the file. Beyond the signature itself, the digest the signature covers must be
the spec's sha256: the pinned digest and the signer then vouch for the same bytes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from freehold_serving.args import SignatureConfig


class SignatureError(Exception):
    """The model's signature is missing, does not verify, or is not by the expected signer."""


@dataclass(frozen=True)
class Verified:
    signer: str  # "key sha256:<fingerprint>" or the certificate identity
    method: str  # "key" or "certificate"


def key_fingerprint(public_pem: str | bytes) -> str:
    """sha256 of the public key's DER (SubjectPublicKeyInfo, the PEM's body): how a key is
    named in status, policy and the ML-BOM. Standard library only: the operator uses it."""
    text = public_pem.decode() if isinstance(public_pem, bytes) else public_pem
    body = "".join(line for line in text.strip().splitlines() if not line.startswith("-----"))
    return "sha256:" + hashlib.sha256(base64.b64decode(body)).hexdigest()


VERIFICATION_FAILED = "model verification failed: "


def _bundle(signature: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(signature.read_bytes())
    except (OSError, ValueError) as exc:
        raise SignatureError(f"signature {signature} cannot be read as a Sigstore bundle") from exc
    return data


def signed_digest(bundle: dict[str, Any]) -> str | None:
    """The digest the statement covers, as Freehold pins models: the sha256 of the single
    file (its resource named "."), or for a signed directory, the directory digest over
    the files it lists (model_files.manifest_digest)."""
    from freehold_serving.model_files import manifest_digest

    try:
        statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
        resources = statement["predicate"]["resources"]
    except (KeyError, ValueError, TypeError):
        return None
    files: list[tuple[str, str]] = []
    for resource in resources:
        if resource.get("algorithm") != "sha256":
            return None
        if resource.get("name") == ".":
            return str(resource.get("digest"))
        files.append((str(resource.get("name")), str(resource.get("digest"))))
    return manifest_digest(files) if files else None


def certificate_identities(bundle: dict[str, Any]) -> list[str]:
    """Subject alternative names (emails, URIs, DNS names) of the signing certificate."""
    from cryptography import x509

    material = bundle.get("verificationMaterial") or {}
    chain = (material.get("x509CertificateChain") or {}).get("certificates") or []
    raw = chain[0]["rawBytes"] if chain else (material.get("certificate") or {}).get("rawBytes")
    if not raw:
        return []
    cert = x509.load_der_x509_certificate(base64.b64decode(raw))
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(name.value) for name in names]


def verify_model(
    model: Path, signature: Path, config: SignatureConfig, expected_sha256: str
) -> Verified:
    """Raise SignatureError naming what failed; return who signed."""
    import model_signing

    if not signature.is_file():
        raise SignatureError(
            f"the signature {signature} does not exist; a signature is required for this model"
        )
    bundle = _bundle(signature)
    verifier = model_signing.verifying.Config()  # type: ignore[no-untyped-call]
    with tempfile.TemporaryDirectory(prefix="freehold-sig-") as tmp:
        if config.public_key is not None:
            key_file = Path(tmp) / "key.pub"
            key_file.write_text(config.public_key)
            verifier = verifier.use_elliptic_key_verifier(public_key=key_file)
            method, signer = "key", f"key {key_fingerprint(config.public_key)}"
        else:
            chain = []
            for n, pem in enumerate(config.certificate_chain):
                path = Path(tmp) / f"chain-{n}.pem"
                path.write_text(pem)
                chain.append(path)
            verifier = verifier.use_certificate_verifier(certificate_chain=chain)
            method, signer = "certificate", str(config.identity)
        try:
            verifier.verify(model, signature)
        except Exception as exc:  # the library raises ValueError and others; all mean "no"
            text = str(exc)
            if "Hash mismatch" in text or "Signature mismatch" in text:
                what = "the file is not the one that was signed (tampered or replaced)"
            elif method == "key":
                what = "it was not made with the trusted key (wrong key or forged)"
            else:
                what = "its certificate does not chain to the trusted certificates"
            raise SignatureError(
                f"the signature {signature.name} does not verify: {what}"
            ) from None
    if method == "certificate":
        identities = certificate_identities(bundle)
        if config.identity not in identities:
            raise SignatureError(
                f"the signature {signature.name} is valid but signed by "
                f"{', '.join(identities) or 'a certificate without an identity'}, not the "
                f"expected {config.identity}"
            )
    digest = signed_digest(bundle)
    if digest != expected_sha256:
        raise SignatureError(
            f"the signature {signature.name} covers another file (sha256 {digest}) than the "
            f"spec's sha256 {expected_sha256}"
        )
    return Verified(signer=signer, method=method)


def sign_model(
    model: Path,
    signature: Path,
    private_key: Path,
    certificate: Path | None = None,
    chain: list[Path] | None = None,
) -> None:
    import model_signing

    config = model_signing.signing.Config()  # type: ignore[no-untyped-call]
    if certificate is not None:
        config = config.use_certificate_signer(
            private_key=private_key, signing_certificate=certificate, certificate_chain=chain or []
        )
    else:
        config = config.use_elliptic_key_signer(private_key=private_key)
    config.sign(model, signature)

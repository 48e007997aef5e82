"""Model signatures (OpenSSF model-signing), as a serving pod checks them before loading:
good, tampered, wrong key, missing, a signature over another digest than the spec's, and
certificate chains with the right and a wrong identity. Keys and certificates are made
here; nothing is fetched (no transparency log)."""

from __future__ import annotations

import datetime
import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from freehold_serving.args import ModelConfig, SignatureConfig
from freehold_serving.model_files import ModelSignatureError, verify_file
from freehold_serving.signatures import key_fingerprint, sign_model

pytestmark = pytest.mark.security
WEIGHTS = b"GGUF" + bytes(range(256)) * 64


def keypair(folder: Path) -> tuple[Path, str]:
    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    private = folder / "signing.key"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, public.decode()


def config(path: Path, sig: Path, sha: str, **signature: object) -> ModelConfig:
    return ModelConfig(
        uri=f"file://{path}",
        sha256=sha,
        served_name="m",
        signature=SignatureConfig(ref=f"file://{sig}", **signature),  # type: ignore[arg-type]
    )


@pytest.fixture
def signed(tmp_path: Path) -> tuple[Path, Path, str, Path]:
    model = tmp_path / "m.gguf"
    model.write_bytes(WEIGHTS)
    private, public = keypair(tmp_path / "keys")
    sig = tmp_path / "m.gguf.sig"
    sign_model(model, sig, private)
    return model, sig, public, private


def test_a_good_signature_names_its_signer(signed: tuple[Path, Path, str, Path]) -> None:
    model, sig, public, _ = signed
    sha = hashlib.sha256(WEIGHTS).hexdigest()
    path, verified = verify_file(config(model, sig, sha, public_key=public))
    assert path == model and verified is not None
    assert verified.signer == f"key {key_fingerprint(public)}"


def test_tampered_wrong_key_missing_and_other_digest_are_refused(
    signed: tuple[Path, Path, str, Path], tmp_path: Path
) -> None:
    model, sig, public, _ = signed
    sha = hashlib.sha256(WEIGHTS).hexdigest()
    _, other_public = keypair(tmp_path / "other")
    with pytest.raises(ModelSignatureError, match="not made with the trusted key"):
        verify_file(config(model, sig, sha, public_key=other_public))
    with pytest.raises(ModelSignatureError, match="does not exist"):
        verify_file(config(model, tmp_path / "none.sig", sha, public_key=public))
    with pytest.raises(ModelSignatureError, match="covers another file"):
        verify_file(config(model, sig, "f" * 64, public_key=public))
    model.write_bytes(WEIGHTS[:-1] + b"\x00")  # one byte changed after signing
    with pytest.raises(ModelSignatureError, match="tampered or replaced") as caught:
        verify_file(config(model, sig, sha, public_key=public))
    assert str(caught.value).startswith("model verification failed: ")


def certificate_chain(folder: Path, identity: str) -> tuple[Path, Path, Path]:
    """A root CA and a code-signing leaf for `identity`: (leaf key, leaf cert, root cert)."""
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    root_key = ec.generate_private_key(ec.SECP256R1())
    root_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"Root {folder.name}")])
    usage = {
        "content_commitment": False,
        "key_encipherment": False,
        "data_encipherment": False,
        "key_agreement": False,
        "encipher_only": False,
        "decipher_only": False,
        "crl_sign": True,
    }
    root = (
        x509.CertificateBuilder()
        .subject_name(root_name)
        .issuer_name(root_name)
        .public_key(root_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, **usage), critical=True
        )
        .sign(root_key, hashes.SHA256())
    )
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "model releases")]))
        .issuer_name(root_name)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.RFC822Name(identity)]), critical=False)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=False, **{**usage, "crl_sign": False}
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
        .sign(root_key, hashes.SHA256())
    )
    paths = folder / "leaf.key", folder / "leaf.pem", folder / "root.pem"
    paths[0].write_bytes(
        leaf_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    paths[1].write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(root.public_bytes(serialization.Encoding.PEM))
    return paths


def test_certificate_chain_and_identity(tmp_path: Path) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(WEIGHTS)
    sha = hashlib.sha256(WEIGHTS).hexdigest()
    key, leaf, root = certificate_chain(tmp_path / "ours", "release@models.gov.example")
    sig = tmp_path / "m.gguf.sig"
    sign_model(model, sig, key, leaf, [root])
    chain = [root.read_text()]
    _, verified = verify_file(
        config(model, sig, sha, certificate_chain=chain, identity="release@models.gov.example")
    )
    assert verified is not None and verified.signer == "release@models.gov.example"
    with pytest.raises(ModelSignatureError, match="not the expected intern@models"):
        verify_file(
            config(model, sig, sha, certificate_chain=chain, identity="intern@models.gov.example")
        )
    _, _, foreign_root = certificate_chain(tmp_path / "theirs", "release@models.gov.example")
    with pytest.raises(ModelSignatureError, match="does not chain to the trusted"):
        verify_file(
            config(
                model,
                sig,
                sha,
                certificate_chain=[foreign_root.read_text()],
                identity="release@models.gov.example",
            )
        )


def freehold(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "freehold", "model", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_the_packaged_model_signed_and_verified_with_the_cli(tmp_path: Path) -> None:
    """keygen, sign and verify on SmolLM2 as shipped in its Python package."""
    from freehold.local.up import SMOLLM2_SHA256, load_stack, local_args
    from freehold.settings import LocalSettings
    from freehold_serving.model_files import resolve

    stack = load_stack([])
    args = local_args(stack.deployment, LocalSettings(data_dir=tmp_path), cpus=2)
    packaged = resolve(args.model)
    assert freehold("keygen", str(tmp_path / "keys")).returncode == 0
    sig = tmp_path / "smollm2.sig"
    signing = freehold(
        "sign", str(packaged), "--key", str(tmp_path / "keys/signing.key"), "-o", str(sig)
    )
    assert signing.returncode == 0, signing.stderr
    pub = str(tmp_path / "keys/signing.pub")
    ok = freehold("verify", str(packaged), "--signature", str(sig), "--public-key", pub,
                  "--sha256", SMOLLM2_SHA256)  # fmt: skip
    assert ok.returncode == 0 and "signed by key sha256:" in ok.stdout, ok.stderr
    assert freehold("keygen", str(tmp_path / "other")).returncode == 0
    wrong = freehold("verify", str(packaged), "--signature", str(sig), "--public-key",
                     str(tmp_path / "other/signing.pub"))  # fmt: skip
    assert wrong.returncode == 1 and "not made with the trusted key" in wrong.stderr
    usage = freehold("verify", str(packaged), "--signature", str(sig))
    assert usage.returncode == 2 and "--public-key or --chain" in usage.stderr
    # What `freehold up` does before Ray starts, with the signature in the spec.
    from freehold.local.up import verify_model_and_signer

    signature = SignatureConfig(
        ref=f"file://{sig}", public_key=(tmp_path / "keys/signing.pub").read_text()
    )
    signed_args = args.model_copy(
        update={"model": args.model.model_copy(update={"signature": signature})}
    )
    _, signer = verify_model_and_signer(signed_args, lambda _n: None)
    assert signer is not None and signer.startswith("key sha256:")

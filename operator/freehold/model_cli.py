"""`freehold model keygen | sign | verify | digest | fetch | to-hf`: OpenSSF model-signing
signatures, air-gapped (a key pair, or a certificate chain and identity; no transparency
log); the digest that pins a model file or directory; Hugging Face directories for vLLM."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

model = typer.Typer(help="Sign and verify model files.", no_args_is_help=True)
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)
EXIT_FAILED, EXIT_USAGE = 1, 2


@model.command()
def keygen(
    directory: Annotated[Path, typer.Argument(help="Where to write signing.key and signing.pub.")],
) -> None:
    """Make an ECDSA P-256 key pair: signing.key (private, mode 0600) signs, signing.pub
    goes into spec.model.signature.publicKey."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from freehold_serving.signatures import key_fingerprint

    directory.mkdir(parents=True, exist_ok=True)
    private, public = directory / "signing.key", directory / "signing.pub"
    if private.exists():
        err.print(f"[red]error[/red] {private} exists; not overwriting a key")
        raise typer.Exit(EXIT_USAGE)
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    public.write_bytes(public_pem)
    out.print(f"wrote {private} and {public} (key {key_fingerprint(public_pem)})")


@model.command()
def sign(
    path: Annotated[Path, typer.Argument(help="The model file or directory.")],
    key: Annotated[Path, typer.Option(help="Private key (PEM, EC).")],
    certificate: Annotated[
        Path | None, typer.Option(help="Signing certificate (PEM) for the key; optional.")
    ] = None,
    chain: Annotated[
        list[Path] | None, typer.Option(help="Certificates above it (PEM); repeatable.")
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Signature file; default PATH.sig.")
    ] = None,
) -> None:
    """Sign a model file or directory (OpenSSF model-signing: a Sigstore bundle over its
    files' sha256). Keep a directory's signature outside the directory."""
    from freehold_serving.model_files import model_digest
    from freehold_serving.signatures import sign_model

    if not path.exists():
        err.print(f"[red]error[/red] {escape(str(path))}: no such file or directory")
        raise typer.Exit(EXIT_USAGE)
    target = output or path.with_name(path.name + ".sig")
    if path.is_dir() and target.resolve().is_relative_to(path.resolve()):
        err.print("[red]error[/red] --output: a directory's signature must lie outside it")
        raise typer.Exit(EXIT_USAGE)
    try:
        sign_model(path, target, key, certificate, chain)
    except (OSError, ValueError) as exc:
        err.print(f"[red]error[/red] cannot sign: {escape(str(exc))}")
        raise typer.Exit(EXIT_FAILED) from None
    out.print(f"signed {path} (sha256 {model_digest(path)}) -> {target}", highlight=False)


@model.command()
def verify(
    path: Annotated[Path, typer.Argument(help="The model file or directory.")],
    signature: Annotated[Path, typer.Option(help="The signature bundle.")],
    public_key: Annotated[Path | None, typer.Option(help="Trusted public key (PEM).")] = None,
    chain: Annotated[
        list[Path] | None, typer.Option(help="Trusted certificates (PEM); repeatable.")
    ] = None,
    identity: Annotated[
        str | None, typer.Option(help="With --chain: the signing certificate's required SAN.")
    ] = None,
    sha256: Annotated[
        str | None, typer.Option(help="The digest the signature must cover (the spec's).")
    ] = None,
) -> None:
    """Verify as a serving pod does. Exit 0: valid, by the trusted key or identity, over this
    file (and --sha256). 1: it does not verify (the reason is printed). 2: bad usage."""
    from freehold_serving.args import SignatureConfig
    from freehold_serving.model_files import ModelFileError, model_digest
    from freehold_serving.signatures import SignatureError, verify_model

    if (public_key is None) == (not chain):
        err.print("[red]error[/red] give exactly one of --public-key or --chain")
        raise typer.Exit(EXIT_USAGE)
    if chain and not identity:
        err.print("[red]error[/red] --chain needs --identity (the signer you trust)")
        raise typer.Exit(EXIT_USAGE)
    if not path.exists():
        err.print(f"[red]error[/red] {escape(str(path))}: no such file or directory")
        raise typer.Exit(EXIT_USAGE)
    try:
        config = SignatureConfig(
            ref=f"file://{signature.resolve()}",
            public_key=public_key.read_text() if public_key else None,
            certificate_chain=[c.read_text() for c in chain or []],
            identity=identity,
        )
    except OSError as exc:
        err.print(f"[red]error[/red] {escape(str(exc))}")
        raise typer.Exit(EXIT_USAGE) from None
    try:
        verified = verify_model(path, signature, config, sha256 or model_digest(path))
    except (SignatureError, ModelFileError) as exc:
        err.print(f"[red]refused[/red] {escape(str(exc))}", highlight=False)
        raise typer.Exit(EXIT_FAILED) from None
    out.print(f"[green]ok[/green] {path}: signed by {verified.signer}", highlight=False)


@model.command()
def digest(
    path: Annotated[Path, typer.Argument(help="A model file, or a Hugging Face directory.")],
) -> None:
    """Print the sha256 that pins a model in spec.model.sha256: of a file, or a directory's
    digest (sha256 over `sha256sum` lines of its files in byte order of their paths)."""
    from freehold_serving.model_files import ModelFileError, model_digest

    if not path.exists():
        err.print(f"[red]error[/red] {escape(str(path))}: no such file or directory")
        raise typer.Exit(EXIT_USAGE)
    try:
        out.print(model_digest(path), highlight=False)
    except ModelFileError as exc:
        err.print(f"[red]error[/red] {escape(str(exc))}", highlight=False)
        raise typer.Exit(EXIT_FAILED) from None


@model.command("to-hf")
def to_hf(
    gguf: Annotated[
        str,
        typer.Argument(help="A GGUF file: a path or package://DISTRIBUTION/FILE."),
    ],
    output: Annotated[Path, typer.Argument(help="The Hugging Face directory to write.")],
) -> None:
    """Write a GGUF model as a Hugging Face directory (config, tokenizer, safetensors in
    bfloat16) that engine vllm serves, and print its directory digest. Offline; needs the
    vllm extra (transformers, gguf, accelerate)."""
    from freehold.hf_export import ExportError, export_gguf

    try:
        result = export_gguf(gguf, output)
    except ExportError as exc:
        err.print(f"[red]error[/red] {escape(str(exc))}", highlight=False)
        raise typer.Exit(EXIT_FAILED) from None
    out.print(f"wrote {output}; sha256 (directory digest) {result}", highlight=False)


@model.command()
def fetch(
    uri: Annotated[
        str | None, typer.Option(help="oci://REGISTRY/REPOSITORY:TAG (or @sha256:...).")
    ] = None,
    sha256: Annotated[str | None, typer.Option(help="The digest the file must have.")] = None,
    to: Annotated[
        Path, typer.Option(help="Models folder: the file lands at TO/SCHEME/SHA256.")
    ] = Path("/models"),
    from_env: Annotated[
        bool,
        typer.Option(
            "--from-env",
            help="Read the model (oci:// or s3://, with its store and where its access key "
            "is in Vault) from FREEHOLD_MODEL, and its oci:// and s3:// LoRA adapters from "
            "FREEHOLD_ADAPTERS (a JSON list), as the operator writes them.",
        ),
    ] = False,
) -> None:
    """Fetch a model (and its adapters) and keep each only if its sha256 matches (the
    serving pod's init container runs this). Plain HTTP only to loopback or
    FREEHOLD_INSECURE_REGISTRIES. Exit 0 fetched; 1 cannot fetch; 3 a digest does not
    match (nothing of it is kept)."""
    import os

    from pydantic import TypeAdapter, ValidationError

    from freehold_serving.args import ModelConfig
    from freehold_serving.fetch import fetch_model, insecure_registries
    from freehold_serving.model_files import DigestMismatchError, ModelFileError

    configs: list[ModelConfig]
    if from_env:
        try:
            config = ModelConfig.model_validate_json(os.environ.get("FREEHOLD_MODEL", ""))
            adapters = TypeAdapter(list[ModelConfig]).validate_json(
                os.environ.get("FREEHOLD_ADAPTERS") or "[]"
            )
        except ValidationError as exc:
            err.print(f"[red]error[/red] FREEHOLD_MODEL/FREEHOLD_ADAPTERS: {escape(str(exc))}")
            raise typer.Exit(EXIT_USAGE) from None
        configs = [config, *adapters]
    elif uri is None or sha256 is None or not uri.startswith("oci://") or len(sha256) != 64:
        err.print(
            "[red]error[/red] give --uri oci://... and --sha256 (64 hex digits), or --from-env"
        )
        raise typer.Exit(EXIT_USAGE)
    else:
        configs = [ModelConfig(uri=uri, sha256=sha256, served_name="-", models_root=str(to))]
    for config in configs:
        try:
            path = fetch_model(config, insecure_registries())
        except DigestMismatchError as exc:
            err.print(f"[red]refused[/red] {escape(str(exc))}", highlight=False)
            _termination_message(str(exc))
            raise typer.Exit(3) from None
        except ModelFileError as exc:
            err.print(f"[red]error[/red] {escape(str(exc))}", highlight=False)
            _termination_message(str(exc))
            raise typer.Exit(EXIT_FAILED) from None
        if path.exists():  # a pvc://, file:// or package:// model is not fetched
            out.print(f"fetched {config.uri} -> {path} (sha256 verified)", highlight=False)


def _termination_message(text: str) -> None:
    """In a pod, the reason becomes the container's termination message (the operator
    reports it in ModelVerified)."""
    import contextlib

    log = Path("/dev/termination-log")
    if log.exists():  # the kubelet makes it; never create one outside a pod
        with contextlib.suppress(OSError):
            log.write_text(text[:4000], encoding="utf-8")

"""Fetch an oci:// model (an OCI artifact, as air-gapped sites mirror content in their
registries; pushed with `oras push`) or an s3:// model (any S3-compatible store) into the
model folder, checking its sha256 before anything can load it.

On a cluster this runs as the serving pod's init container, into the pod's model volume;
under `freehold up` it runs before Ray starts. The file lands at MODELS_ROOT/oci/SHA256
(model_files.resolve looks there), moved into place only once its digest matched: a
tampered or wrong artifact never sits where a server would read it. A store's access key
is read from Vault by this process (never a Kubernetes Secret, never in args).
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from freehold_serving.args import ModelConfig
from freehold_serving.model_files import (
    FETCHED_SCHEMES,
    DigestMismatchError,
    ModelFileError,
    fetched_path,
    is_directory_model,
    model_digest,
    signature_path,
)


def endpoint_of(model: ModelConfig) -> tuple[str, int]:
    """(host, port) the fetch talks to: an oci:// model's registry, an s3:// model's store
    (port 443 unless given; 80 for plain http)."""
    if model.uri.startswith("s3://") and model.s3 is not None:
        store = urlparse(model.s3.endpoint)
        return store.hostname or "", store.port or (80 if store.scheme == "http" else 443)
    parsed = urlparse(model.uri)
    return parsed.hostname or "", parsed.port or 443


def _plain_http_allowed(host: str, port: int, insecure: Iterable[str]) -> bool:
    """Plain HTTP only to loopback (as container runtimes allow) or to registries the
    platform team listed (FREEHOLD_INSECURE_REGISTRIES: HOST, or HOST:PORT as container
    runtimes list them)."""
    listed = set(insecure)
    if host in listed or f"{host}:{port}" in listed or host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def insecure_registries() -> list[str]:
    listed = os.environ.get("FREEHOLD_INSECURE_REGISTRIES", "")
    return [host.strip() for host in listed.split(",") if host.strip()]


def fetch_signature(model: ModelConfig, insecure: Iterable[str] = ()) -> Path | None:
    """A signature kept in a registry (oci://, an artifact holding the bundle) or in the
    model's store (s3://), fetched beside the model. Not checked here: the serving process
    verifies it against the trusted key or chain before loading."""
    signature = model.signature
    if signature is None or signature.ref.split("://", 1)[0] not in FETCHED_SCHEMES:
        return None
    target = signature_path(model)
    target.parent.mkdir(parents=True, exist_ok=True)
    source = model.model_copy(update={"uri": signature.ref})
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".pull-") as tmp:
        if signature.ref.startswith("s3://"):
            pulled = _get_s3(source, Path(tmp), insecure)
        else:
            pulled = _pull_oci(source, Path(tmp), insecure)
        os.replace(pulled, target)
    return target


def fetch_model(model: ModelConfig, insecure: Iterable[str] = ()) -> Path:
    """Fetch an oci:// or s3:// model (and a signature kept beside it in a registry or
    store), check the model's sha256, move it into place; return its path. Already there
    and intact: the model is not fetched again."""
    fetch_signature(model, insecure)
    target = fetched_path(model)
    if model.uri.split("://", 1)[0] not in FETCHED_SCHEMES:
        return target
    directory = is_directory_model(model)
    if (target.is_dir() if directory else target.is_file()) and _intact(target, model.sha256):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".pull-") as tmp:
        if model.uri.startswith("s3://"):
            pulled = (_get_s3_dir if directory else _get_s3)(model, Path(tmp), insecure)
        else:
            pulled = _pull_oci(model, Path(tmp), insecure, directory)
        actual = model_digest(pulled)
        if actual != model.sha256:
            raise DigestMismatchError(model.uri, model.sha256, actual)
        if target.is_dir():  # a damaged earlier copy (its digest did not match)
            shutil.rmtree(target)
        os.replace(pulled, target)
    return target


def _intact(path: Path, sha256: str) -> bool:
    try:
        return model_digest(path) == sha256
    except ModelFileError:
        return False


def _s3_keys(model: ModelConfig) -> tuple[str | None, str | None]:
    store = model.s3
    if store is None or store.credentials is None:
        return None, None  # anonymous reads
    from freehold_serving.vault_keys import VaultKeysError, read_secret

    try:
        fields = read_secret(store.credentials, "the object store's access key")
    except VaultKeysError as exc:
        raise ModelFileError(f"{model.uri}: {exc}") from None
    access, secret = str(fields.get("accessKey") or ""), str(fields.get("secretKey") or "")
    if not access or not secret:
        raise ModelFileError(
            f"{model.uri}: the Vault secret {store.credentials.path} needs the fields "
            "accessKey and secretKey"
        )
    return access, secret


def _s3_client(model: ModelConfig, insecure: Iterable[str]) -> Any:
    from minio import Minio

    store = model.s3
    if store is None:
        raise ModelFileError(f"{model.uri}: no store given (spec.model.s3)")
    endpoint = urlparse(store.endpoint)
    host, port = endpoint_of(model)
    if endpoint.scheme == "http" and not _plain_http_allowed(host, port, insecure):
        raise ModelFileError(
            f"{store.endpoint}: plain http only to loopback or a host listed in "
            "FREEHOLD_INSECURE_REGISTRIES; use https"
        )
    access, secret = _s3_keys(model)
    return Minio(
        endpoint.netloc,
        access_key=access,
        secret_key=secret,
        secure=endpoint.scheme == "https",
        region=store.region,
    )


def _s3_failure(model: ModelConfig, what: str, exc: Exception) -> ModelFileError:
    from minio.error import S3Error

    # The store's own code says what is wrong (NoSuchKey, AccessDenied, ...); the message
    # never carries a key.
    code = exc.code if isinstance(exc, S3Error) else type(exc).__name__
    return ModelFileError(f"{model.uri}: cannot {what}: {code}")


def _get_s3(model: ModelConfig, tmp: Path, insecure: Iterable[str]) -> Path:
    client = _s3_client(model, insecure)
    location = urlparse(model.uri)
    out = tmp / "model"
    try:
        client.fget_object(location.netloc, location.path.lstrip("/"), str(out))
    except Exception as exc:  # S3Error, urllib3's retries exhausted, OSError, ...
        raise _s3_failure(model, "get the object", exc) from None
    return out


def _get_s3_dir(model: ModelConfig, tmp: Path, insecure: Iterable[str]) -> Path:
    """A Hugging Face directory kept under a prefix (s3://BUCKET/PREFIX): every object
    below it, at its path relative to the prefix."""
    client = _s3_client(model, insecure)
    location = urlparse(model.uri)
    prefix = location.path.strip("/") + "/"
    out = tmp / "model"
    try:
        keys = [
            o.object_name
            for o in client.list_objects(location.netloc, prefix=prefix, recursive=True)
            if not o.is_dir
        ]
        if not keys:
            raise ModelFileError(f"{model.uri}: no objects under this prefix")
        for key in keys:
            relative = key[len(prefix) :]
            target = _inside(out, relative, model.uri)
            client.fget_object(location.netloc, key, str(target))
    except ModelFileError:
        raise
    except Exception as exc:
        raise _s3_failure(model, "get the directory's objects", exc) from None
    return out


def _inside(root: Path, relative: str, uri: str) -> Path:
    """ROOT/RELATIVE, refused when RELATIVE would leave ROOT (a hostile name)."""
    parts = Path(relative).parts
    if not relative or Path(relative).is_absolute() or ".." in parts:
        raise ModelFileError(f"{uri}: refusing the file name {relative!r}")
    return root / relative


def _pull_oci(
    model: ModelConfig, tmp: Path, insecure: Iterable[str], directory: bool = False
) -> Path:
    """The artifact's one file; for a Hugging Face model, the directory of its files
    (`oras push REF config.json tokenizer.json model.safetensors ...`)."""
    import oras.client

    parsed = urlparse(model.uri)
    reference = f"{parsed.netloc}{parsed.path}"
    host, port = endpoint_of(model)
    plain = _plain_http_allowed(host, port, insecure)
    client = oras.client.OrasClient(hostname=parsed.netloc, insecure=plain)
    out = tmp / "model"
    out.mkdir()
    try:
        files = [Path(f) for f in client.pull(target=reference, outdir=str(out))]
    except Exception as exc:  # oras raises ValueError, requests errors, ...
        raise ModelFileError(f"{model.uri}: cannot pull the artifact: {exc}") from None
    for file in files:  # oras names files by their title annotation: keep them inside
        if not file.resolve().is_relative_to(out.resolve()):
            raise ModelFileError(f"{model.uri}: the artifact names a file outside its folder")
    if directory:
        return out
    files = [f for f in files if f.is_file()]
    if len(files) != 1:
        raise ModelFileError(
            f"{model.uri}: the artifact holds {len(files)} files; a model artifact holds "
            "exactly one (oras push REF model.gguf)"
        )
    return files[0]

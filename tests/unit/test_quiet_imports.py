"""The CLI's validator imports jsonschema without its slow optional format probe, and the
probed module stays importable for everyone else."""

from __future__ import annotations

import subprocess
import sys

import pytest

from freehold.quiet_imports import without_optional


def test_a_hidden_module_fails_to_import_inside_the_block_only() -> None:
    name = "json.tool"  # in the standard library, so importable after the block
    sys.modules.pop(name, None)
    with without_optional(name), pytest.raises(ImportError):
        __import__(name)
    assert name not in sys.modules
    __import__(name)


def test_a_module_already_imported_is_left_alone() -> None:
    import json

    with without_optional("json"):
        import json as again
    assert again is json and sys.modules["json"] is json


def test_validation_does_not_run_the_rfc3987_syntax_probe() -> None:
    code = (
        "import sys, freehold.validation\n"
        "assert 'rfc3987_syntax' not in sys.modules, 'probed'\n"
        "assert sys.modules.get('rfc3987_syntax', 0) is not None\n"
    )
    done = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr

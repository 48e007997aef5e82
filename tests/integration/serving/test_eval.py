"""`freehold eval run` with the built-in suites against the real SmolLM2 served by Ray Serve:
every task type scores, gates decide the exit code, the result file is complete."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from freehold.evaluation.report import BAR, FAIL, PASS
from tests.chromium import pixels_near, screenshot
from tests.integration.serving.conftest import Stack
from tests.paths import EXAMPLES

pytestmark = pytest.mark.slow


def run(manifest: Path, stack: Stack, out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "freehold",
            "eval",
            "run",
            "-f",
            str(manifest),
            "--endpoint",
            f"{stack.root}/smol",
            "-o",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env=os.environ,
    )


def test_every_task_type_against_the_real_model(stack: Stack, tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    done = run(EXAMPLES / "evaljob-builtin.yaml", stack, out)
    assert done.returncode in (0, 1), done.stderr
    result = json.loads(out.read_text())
    assert result["target"]["model"] == "smollm2-135m-instruct"
    by_task = {s["task"]: s for s in result["suites"]}
    assert set(by_task) == {
        "exact_match",
        "multiple_choice",
        "json_schema",
        "generation",
        "latency",
    }
    for suite in result["suites"]:
        assert suite["samples"] == len(suite["items"]) > 0
        for name, metric in suite["metrics"].items():
            assert metric["low"] <= metric["value"] <= metric["high"], (suite["name"], name)
            if not name.startswith(("ttft", "tokens")):
                assert 0 <= metric["value"] <= 1
    # A 135M model knows some capitals: log-likelihood scoring is not at chance by accident.
    assert by_task["multiple_choice"]["metrics"]["accuracy"]["value"] >= 0.5
    assert by_task["latency"]["metrics"]["tokens_per_s"]["value"] > 1
    assert [g["passed"] for g in result["gates"]] == [True, True]
    assert done.returncode == 0 and result["gatesPassed"] is True
    assert "capitals" in done.stdout and result["digest"].startswith("sha256:")
    report_is_rendered(result, out, tmp_path)


def report_is_rendered(result: dict[str, Any], out: Path, tmp: Path) -> None:
    """`freehold eval report` against a baseline where one suite was better and one
    worse: the page renders in headless Chromium with its plots, gates and regressions."""
    baseline = json.loads(json.dumps(result))
    baseline["job"] = "last-week"
    for suite in baseline["suites"]:
        metric = suite["metrics"][suite["metric"]]
        if suite["name"] == "capitals":
            metric["value"] = min(1.0, metric["value"] + 0.2)  # we regressed here
        elif suite["name"] == "rewrite":
            metric["value"] = max(0.0, metric["value"] - 0.2)  # and improved here
    base_file = tmp / "baseline.json"
    base_file.write_text(json.dumps(baseline))
    page = tmp / "report.html"
    done = subprocess.run(
        [sys.executable, "-m", "freehold", "eval", "report", str(out), "--baseline",
         str(base_file), "-o", str(page)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    html = page.read_text()
    # Self-contained: nothing is fetched when it is opened.
    assert "<script" not in html and "src=" not in html and "href=" not in html
    assert "Change from the baseline (last-week)" in html
    image = screenshot(page, tmp / "report.png")
    width, height = image.size
    assert (width, height) == (900, 2400)
    # Score bars (blue), passed gates and the improvement (green), the regression (red).
    assert pixels_near(image, BAR) > 2000
    assert pixels_near(image, PASS) > 300
    assert pixels_near(image, FAIL) > 300
    # The latency histogram and the tables are drawn: much of the page is not background.
    assert sum(1 for px in image.getdata() if px != (255, 255, 255)) > 0.03 * width * height


def test_a_failed_gate_exits_1(stack: Stack, tmp_path: Path) -> None:
    doc = yaml.safe_load((EXAMPLES / "evaljob-builtin.yaml").read_text())
    doc["spec"]["suites"] = [s for s in doc["spec"]["suites"] if s["name"] == "capitals"]
    doc["spec"]["suites"][0]["limit"] = 4
    doc["spec"]["gates"] = [
        {"suite": "capitals", "metric": "accuracy", "operator": ">", "threshold": 1.0}
    ]
    manifest = tmp_path / "ej.yaml"
    manifest.write_text(yaml.safe_dump(doc))
    out = tmp_path / "result.json"
    done = run(manifest, stack, out)
    assert done.returncode == 1 and "FAIL capitals.accuracy" in done.stdout
    assert json.loads(out.read_text())["gatesPassed"] is False

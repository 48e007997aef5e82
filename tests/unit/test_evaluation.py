"""The evaluation runner's pure parts: datasets pinned by digest, normalisation, metrics
with intervals, gates. (Scoring against a real model: tests/integration/serving.)"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from freehold.api.eval_job import EvalJobSpec, Gate, Normalize
from freehold.evaluation import datasets
from freehold.evaluation.runner import MetricValue, SuiteOutcome, check_gates, summarise
from freehold.evaluation.tasks import normalize
from freehold.validation import defaulted, validate
from tests.paths import EXAMPLES


def builtin() -> EvalJobSpec:
    doc = yaml.safe_load((EXAMPLES / "evaljob-builtin.yaml").read_text())
    return EvalJobSpec.model_validate(defaulted(doc)["spec"])


def test_builtin_suites_are_pinned_and_load() -> None:
    for suite in builtin().suites:
        items = datasets.load(suite.dataset.uri, suite.dataset.sha256)
        assert items and all(isinstance(i.data["input"], str) for i in items)


def test_a_tampered_dataset_is_refused_naming_the_pinned_digest(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"input": "a", "target": "b"}\n')
    pinned = hashlib.sha256(path.read_bytes()).hexdigest()
    assert len(datasets.load(f"file://{path}", pinned, file_root=tmp_path)) == 1
    path.write_text('{"input": "a", "target": "c"}\n')
    actual = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(datasets.DatasetError) as refused:
        datasets.load(f"file://{path}", pinned, file_root=tmp_path)
    # The pinned digest is named; the file's own is not (issue 25: no digest oracle).
    assert pinned in str(refused.value) and actual not in str(refused.value)


def test_nothing_is_fetched() -> None:
    with pytest.raises(datasets.DatasetError, match="not fetched"):
        datasets.locate("https://example.org/data.jsonl")
    with pytest.raises(datasets.DatasetError, match="leaves its root"):
        datasets.locate("pvc://claim/../../etc/passwd")


def test_normalisation() -> None:
    assert normalize("  The  Answer: 42! ", Normalize()) == "the answer 42"
    strict = Normalize(lowercase=False, strip_punctuation=False, collapse_whitespace=False)
    assert normalize(" A! ", strict) == " A! "


def test_metric_interval_is_seeded_and_contains_the_mean() -> None:
    values = [1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0]
    first, again = summarise("accuracy", values, 7), summarise("accuracy", values, 7)
    assert first == again and first.value == 0.75 and first.low <= 0.75 <= first.high
    assert summarise("ttft_p50_ms", [10.0, 30.0, 20.0], 1).value == 20.0


def test_gates() -> None:
    outcome = SuiteOutcome(
        "capitals",
        "multiple_choice",
        "accuracy",
        10,
        {},
        {"accuracy": MetricValue(0.6, 0.3, 0.9, 0.1)},
    )
    gates = check_gates(
        [
            Gate(suite="capitals", metric="accuracy", operator=">=", threshold=0.5),
            Gate(suite="capitals", metric="accuracy", operator=">", threshold=0.6),
        ],
        [outcome],
    )
    assert [g.passed for g in gates] == [True, False]


def test_regression_gates_compare_with_the_baseline() -> None:
    accuracy = SuiteOutcome(
        "capitals",
        "multiple_choice",
        "accuracy",
        10,
        {},
        {"accuracy": MetricValue(0.6, 0.3, 0.9, 0.1)},
    )
    latency = SuiteOutcome(
        "speed", "latency", "ttft_p50_ms", 10, {}, {"ttft_p50_ms": MetricValue(120, 100, 140, 5)}
    )
    gates = [
        Gate(suite="capitals", metric="accuracy", max_regression=0.05),
        Gate(suite="speed", metric="ttft_p50_ms", max_regression=10),
    ]
    # 0.6 >= 0.62 - 0.05 holds; 120 ms <= 100 + 10 does not (lower is better for latency).
    out = check_gates(gates, [accuracy, latency], {"capitals": 0.62, "speed": 100.0})
    assert [(g.passed, g.operator, g.threshold, g.baseline) for g in out] == [
        (True, ">=", pytest.approx(0.57), 0.62),
        (False, "<=", 110.0, 100.0),
    ]
    # No baseline value: the gate fails and says why.
    missing = check_gates(gates[:1], [accuracy], {})
    assert not missing[0].passed and "no baseline" in missing[0].reason


def test_results_are_signed_and_tampering_is_named(tmp_path: Path) -> None:
    from freehold.evaluation.signing import ResultSignatureError, sign, verify
    from freehold_serving.signing import FileSigner

    signer = FileSigner(tmp_path / "k.pem")
    signed = sign({"digest": "sha256:x", "gatesPassed": True}, signer)
    assert verify(signed).startswith("ed25519:")
    assert verify(signed, [signer.public_key()])
    with pytest.raises(ResultSignatureError, match="changed after signing"):
        verify({**signed, "gatesPassed": False})
    other = FileSigner(tmp_path / "other.pem")
    with pytest.raises(ResultSignatureError, match="not a trusted key"):
        verify(signed, [other.public_key()])
    with pytest.raises(ResultSignatureError, match="not signed"):
        verify({"digest": "sha256:x"})


def test_a_metric_the_task_does_not_compute_is_refused() -> None:
    doc = yaml.safe_load((EXAMPLES / "evaljob-builtin.yaml").read_text())
    doc["spec"]["suites"][1]["metric"] = "chrf"  # capitals is multiple_choice
    doc["spec"]["gates"] = []
    errors = validate(doc)
    assert any("metric must be one the task computes" in str(e) for e in errors)


def test_cli_refuses_a_bad_digest_before_anything_runs(tmp_path: Path) -> None:
    doc = yaml.safe_load((EXAMPLES / "evaljob-builtin.yaml").read_text())
    doc["spec"]["suites"][0]["dataset"]["sha256"] = "0" * 64
    manifest = tmp_path / "ej.yaml"
    manifest.write_text(yaml.safe_dump(doc))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "freehold",
            "eval",
            "run",
            "-f",
            str(manifest),
            "--endpoint",
            "http://127.0.0.1:9",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "0" * 64 in result.stderr and "sha256 mismatch" in result.stderr

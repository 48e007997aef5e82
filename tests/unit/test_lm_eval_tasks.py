"""lm-evaluation-harness task YAML read as the harness reads it (bench/eval.py checks the
outputs item by item against the harness itself on a live endpoint)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from freehold.api.eval_job import EvalJobSpec
from freehold.evaluation.datasets import DatasetError
from freehold.evaluation.runner import load_suites
from freehold.validation import defaulted, validate
from tests.paths import ROOT

TASKS = ROOT / "bench" / "tasks"


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def job(task_yaml: Path, data: Path, task: str = "exact_match", **dataset: Any) -> dict[str, Any]:
    metric = "accuracy" if task == "multiple_choice" else "exact_match"
    return {
        "apiVersion": "freehold.dev/v1alpha1",
        "kind": "EvalJob",
        "metadata": {"name": "t", "namespace": "n"},
        "spec": {
            "target": {"endpoint": "http://127.0.0.1:1"},
            "suites": [
                {
                    "name": "s",
                    "task": task,
                    "metric": metric,
                    "dataset": {
                        "uri": task_yaml.as_uri(),
                        "sha256": sha(task_yaml),
                        "format": "lm-eval",
                        "dataSha256": sha(data),
                        **dataset,
                    },
                }
            ],
        },
    }


def load(doc: dict[str, Any]) -> tuple[EvalJobSpec, list[Any]]:
    assert validate(doc) == []
    # file:// task files, read from where they are (the CLI's --data-root): root /
    spec, loaded = load_suites(
        EvalJobSpec.model_validate(defaulted(doc)["spec"]), file_root=Path("/")
    )
    return spec, loaded["s"]


def test_a_generate_until_task_is_run_as_the_harness_runs_it() -> None:
    spec, items = load(job(TASKS / "arithmetic.yaml", TASKS / "arithmetic.jsonl"))
    assert len(items) == 120
    assert items[0].data == {"input": "Question: What is 32 - 19?\nAnswer:", "target": "13"}
    suite = spec.suites[0]
    assert suite.generation.stop == ["\n", "Question:"] and suite.generation.max_tokens == 8
    assert suite.normalize.ignore == ["^\\s+", "\\s+$"]
    assert suite.normalize.lowercase and suite.normalize.strip_punctuation
    assert not suite.normalize.collapse_whitespace


def write(tmp: Path, task: str, lines: list[dict[str, Any]]) -> tuple[Path, Path]:
    data = tmp / "data.jsonl"
    data.write_text("".join(json.dumps(line) + "\n" for line in lines))
    task_yaml = tmp / "task.yaml"
    task_yaml.write_text(task)
    return task_yaml, data


MC = """
task: capitals_mc
dataset_path: json
dataset_kwargs: {data_files: {test: data.jsonl}}
output_type: multiple_choice
doc_to_text: "The capital of {{country}} is"
doc_to_choice: "{{options}}"
doc_to_target: answer
metric_list: [{metric: acc}]
"""


def test_a_multiple_choice_task(tmp_path: Path) -> None:
    task_yaml, data = write(
        tmp_path, MC, [{"country": "France", "options": ["Lyon", "Paris"], "answer": 1}]
    )
    _, items = load(job(task_yaml, data, task="multiple_choice"))
    assert items[0].data == {
        "input": "The capital of France is",
        "choices": [" Lyon", " Paris"],
        "answer": 1,
    }


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ("doc_to_text: !function utils.doc_to_text", "!function"),
        ("num_fewshot: 3", "num_fewshot must be 0"),
        ("include: other.yaml", "`include` is not supported"),
        ("output_type: loglikelihood_rolling", "only generate_until and multiple_choice"),
        ("dataset_path: cais/mmlu", "dataset_path must be json"),
    ],
)
def test_what_is_not_supported_is_named(tmp_path: Path, change: str, says: str) -> None:
    key = change.split(":", maxsplit=1)[0]
    task = "\n".join(line for line in MC.splitlines() if not line.startswith(key)) + f"\n{change}\n"
    task_yaml, data = write(tmp_path, task, [{"country": "F", "options": ["a"], "answer": 0}])
    with pytest.raises(DatasetError, match=says):
        load(job(task_yaml, data, task="multiple_choice"))


def test_the_data_file_is_pinned_and_the_task_type_must_agree(tmp_path: Path) -> None:
    task_yaml, data = write(tmp_path, MC, [{"country": "F", "options": ["a"], "answer": 0}])
    doc = job(task_yaml, data, task="multiple_choice")
    doc["spec"]["suites"][0]["dataset"]["dataSha256"] = "0" * 64
    with pytest.raises(DatasetError, match="data file: sha256 mismatch"):
        load(doc)
    with pytest.raises(DatasetError, match="set the suite's task to multiple_choice"):
        load(job(task_yaml, data, task="exact_match"))
    # The schema: an lm-eval dataset needs dataSha256, a JSONL one may not have it.
    doc = job(task_yaml, data, task="multiple_choice")
    del doc["spec"]["suites"][0]["dataset"]["dataSha256"]
    assert any("dataSha256" in str(e) for e in validate(doc))

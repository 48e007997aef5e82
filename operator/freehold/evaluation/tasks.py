"""How each task asks the model and scores the answer. Item fields by task:

- exact_match, contains, generation: {"input": str, "target": str | [str]}
- regex: {"input": str, "pattern": str}
- multiple_choice: {"input": str, "choices": [str], "answer": int}
- json_schema: {"input": str, "schema": {...}}
- latency: {"input": str}
- judge: {"input": str, "reference": str (optional)}
"""

from __future__ import annotations

import json
import re
import string
from dataclasses import dataclass
from typing import Any

from freehold.api.eval_job import Normalize, Suite
from freehold.evaluation.client import Endpoint
from freehold.evaluation.datasets import DatasetError, Item

REQUIRED: dict[str, tuple[str, ...]] = {
    "exact_match": ("input", "target"),
    "contains": ("input", "target"),
    "generation": ("input", "target"),
    "regex": ("input", "pattern"),
    "multiple_choice": ("input", "choices", "answer"),
    "json_schema": ("input", "schema"),
    "latency": ("input",),
    "judge": ("input",),
}
JUDGE_SYSTEM = (
    "You grade an answer to a task. Follow the rubric exactly. Reply with JSON only: "
    '{"score": N} where N is an integer from 1 (worst) to 5 (best).'
)
VERDICT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"score": {"type": "integer", "enum": [1, 2, 3, 4, 5]}},
    "required": ["score"],
    "additionalProperties": False,
}
_PUNCT = str.maketrans("", "", string.punctuation)


@dataclass
class Scored:
    index: int
    output: str
    scores: dict[str, float]  # metric -> per-item score (0/1 or a value)


def check_items(suite: Suite, items: list[Item]) -> None:
    for item in items:
        for field in REQUIRED[suite.task]:
            if field not in item.data:
                raise DatasetError(
                    f"{suite.dataset.uri} item {item.index + 1}: task {suite.task} needs '{field}'"
                )
        if suite.task == "regex":
            try:
                re.compile(item.data["pattern"])
            except re.error as exc:
                raise DatasetError(
                    f"{suite.dataset.uri} item {item.index + 1}: bad pattern: {exc}"
                ) from None


def normalize(text: str, how: Normalize) -> str:
    for pattern in how.ignore:
        text = re.sub(pattern, "", text)
    if how.lowercase:
        text = text.lower()
    if how.strip_punctuation:
        text = text.translate(_PUNCT)
    if how.collapse_whitespace:
        text = " ".join(text.split())
    return text


def targets(item: Item) -> list[str]:
    value = item.data["target"]
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def prompt(suite: Suite, item: Item, shots: list[Item]) -> str:
    """Few-shot examples (input + first target), then the item's input."""
    parts = []
    for shot in shots:
        answer = targets(shot)[0] if "target" in shot.data else ""
        if suite.task == "multiple_choice":
            answer = shot.data["choices"][shot.data["answer"]]
        parts.append(f"{shot.data['input']}{answer}")
    parts.append(str(item.data["input"]))
    return "\n\n".join(parts)


def few_shot(suite: Suite, items: list[Item], item: Item) -> list[Item]:
    """The first `few_shot` other items, in dataset order: deterministic."""
    return [i for i in items if i.index != item.index][: suite.few_shot]


def score(
    suite: Suite, endpoint: Endpoint, item: Item, items: list[Item], judge: Endpoint | None = None
) -> Scored:
    text = prompt(suite, item, few_shot(suite, items, item))
    gen = suite.generation
    if suite.task == "multiple_choice":
        choices = [str(c) for c in item.data["choices"]]
        logprobs = [endpoint.loglikelihood(text, c) for c in choices]
        best = max(range(len(choices)), key=lambda i: logprobs[i])
        # acc_norm: per-character normalised likelihood (lm-evaluation-harness's acc_norm)
        normed = [lp / max(len(c), 1) for lp, c in zip(logprobs, choices, strict=True)]
        best_norm = max(range(len(choices)), key=lambda i: normed[i])
        answer = int(item.data["answer"])
        return Scored(
            item.index,
            choices[best],
            {"accuracy": float(best == answer), "acc_norm": float(best_norm == answer)},
        )
    if suite.task == "latency":
        timing = endpoint.stream(text, gen.max_tokens, gen.temperature, gen.top_p, gen.stop)
        return Scored(
            item.index,
            timing.text,
            {
                "ttft_p50_ms": timing.ttft_ms,
                "ttft_p95_ms": timing.ttft_ms,
                "tokens_per_s": timing.tokens_per_s,
            },
        )
    output = endpoint.complete(text, gen.max_tokens, gen.temperature, gen.top_p, gen.stop)
    if suite.task in ("exact_match", "contains"):
        got = normalize(output, suite.normalize)
        wanted = [normalize(t, suite.normalize) for t in targets(item)]
        if suite.task == "exact_match":
            hit = any(got == w for w in wanted)
        else:
            hit = any(w in got for w in wanted)
        return Scored(item.index, output, {suite.task: float(hit)})
    if suite.task == "regex":
        return Scored(
            item.index,
            output,
            {"regex_match": float(bool(re.search(item.data["pattern"], output)))},
        )
    if suite.task == "json_schema":
        return Scored(item.index, output, {"json_valid": json_valid(output, item.data["schema"])})
    if suite.task == "judge":
        if judge is None:
            raise DatasetError(f"suite {suite.name}: judge suites need a judge endpoint")
        return Scored(item.index, output, {"judge_score": judged(suite, judge, item, output)})
    return Scored(item.index, output, generation_scores(output, targets(item)))


def judged(suite: Suite, judge: Endpoint, item: Item, output: str) -> float:
    """The judge's 1-5 verdict on 0-1 ((score - 1) / 4), asked with a JSON schema so the
    verdict always parses."""
    parts = [f"Rubric:\n{suite.rubric}", f"Task:\n{item.data['input']}"]
    if "reference" in item.data:
        parts.append(f"Reference answer:\n{item.data['reference']}")
    parts.append(f"Answer to grade:\n{output}")
    verdict = judge.chat_json(JUDGE_SYSTEM, "\n\n".join(parts), VERDICT_SCHEMA)
    value = verdict.get("score")
    if not isinstance(value, int) or not 1 <= value <= 5:
        raise DatasetError(f"suite {suite.name}: the judge answered {verdict!r}, not a 1-5 score")
    return (value - 1) / 4


def generation_scores(output: str, references: list[str]) -> dict[str, float]:
    """Sentence-level chrF and BLEU (sacrebleu) and ROUGE-L F1 (rouge-score), on 0-1; the
    suite's value is their mean over items."""
    try:
        import sacrebleu
        from rouge_score import rouge_scorer
    except ImportError as exc:
        raise DatasetError(
            "generation suites need the 'eval' extra (sacrebleu, rouge-score): "
            "pip install 'freehold[eval]'"
        ) from exc
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    rouge = max(scorer.score(ref, output)["rougeL"].fmeasure for ref in references)
    return {
        "chrf": sacrebleu.sentence_chrf(output, references).score / 100,
        "bleu": sacrebleu.sentence_bleu(output, references).score / 100,
        "rouge_l": float(rouge),
    }


def json_valid(output: str, schema: dict[str, Any]) -> float:
    import jsonschema

    try:
        jsonschema.validate(json.loads(output.strip()), schema)
    except (ValueError, jsonschema.ValidationError, jsonschema.SchemaError):
        return 0.0
    return 1.0

"""lm-evaluation-harness task YAML, read as lm-evaluation-harness reads it, into a suite.

Supported: `generate_until` (scored with exact_match and its options) and
`multiple_choice` (acc, acc_norm) tasks whose test split is a local JSON Lines file
(`dataset_path: json` with `dataset_kwargs.data_files`), with Jinja templates or field
names for doc_to_text / doc_to_target / doc_to_choice, zero-shot. Templates render in a
sandbox. Refused with the key named: `!function` (Python code), `include`, few-shot,
other output types, remote datasets.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import yaml
from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import SandboxedEnvironment

from freehold.api.eval_job import Generation, Normalize, Suite
from freehold.evaluation.datasets import DatasetError, Item, parse, read_pinned

_ENV = SandboxedEnvironment(undefined=StrictUndefined, keep_trailing_newline=True)
_ENV.filters["regex_replace"] = lambda s, pattern, repl, count=0: re.sub(
    pattern, repl, s, count=count
)
TASKS = {"generate_until": ("exact_match",), "multiple_choice": ("multiple_choice",)}


MAX_TASK_BYTES = 256 * 1024


class _Loader(yaml.SafeLoader):
    """Safe YAML that names `!function` instead of failing on an unknown tag, and refuses
    aliases: a few lines of nested `*alias` lists stand for billions of items to whatever
    walks them ("billion laughs"); lm-evaluation-harness task files do not need them."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise DatasetError(
                f"line {event.start_mark.line + 1}: YAML aliases (*name) are not accepted "
                "in a task file"
            )
        return super().compose_node(parent, index)


def _function(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    raise DatasetError(
        f"line {node.start_mark.line + 1}: !function (Python code in a task file) is not "
        "run: only template tasks are accepted"
    )


_Loader.add_constructor("!function", _function)


def _render(template: Any, doc: dict[str, Any], where: str) -> Any:
    """lm-evaluation-harness's rule: an int as is; a string naming a field, that field;
    otherwise a Jinja template over the document."""
    if isinstance(template, int | list):
        return template
    if not isinstance(template, str):
        raise DatasetError(f"{where}: expected a template string, got {type(template).__name__}")
    if template in doc:
        return doc[template]
    try:
        return _ENV.from_string(template).render(**doc)
    except TemplateError as exc:
        raise DatasetError(f"{where}: {exc}") from None


def _target(template: Any, doc: dict[str, Any], choices: bool) -> Any:
    value = _render(template, doc, "doc_to_target")
    if isinstance(value, str):
        if value.isdigit() and choices:
            return int(value)
        if len(value) >= 2 and value[0] == "[" and value[-1] == "]":
            try:
                return ast.literal_eval(value)
            except (SyntaxError, ValueError):
                return value
    return value


def _choices(template: Any, doc: dict[str, Any]) -> list[str]:
    if isinstance(template, list):
        return [str(c) for c in template]
    if isinstance(template, dict):
        return [str(c) for c in template.values()]
    value = _render(template, doc, "doc_to_choice")
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value)
        except (SyntaxError, ValueError):
            raise DatasetError(f"doc_to_choice rendered {value[:80]!r}, not a list") from None
    if not isinstance(value, list):
        raise DatasetError("doc_to_choice must give a list of choices")
    return [str(c) for c in value]


def read_task(raw: bytes, where: str) -> dict[str, Any]:
    if len(raw) > MAX_TASK_BYTES:
        raise DatasetError(f"{where}: a task file larger than {MAX_TASK_BYTES} bytes")
    try:
        task = yaml.load(raw.decode("utf-8"), Loader=_Loader)  # a SafeLoader subclass
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{where}: not UTF-8 (byte {exc.start + 1})") from None
    except DatasetError as exc:
        raise DatasetError(f"{where}: {exc}") from None
    except (yaml.YAMLError, RecursionError) as exc:
        raise DatasetError(f"{where}: not YAML ({str(exc)[:200]})") from None
    if not isinstance(task, dict):
        raise DatasetError(f"{where}: expected a task mapping")
    for key in ("include", "group", "process_docs", "process_results", "filter_list"):
        if key in task:
            raise DatasetError(f"{where}: `{key}` is not supported in an lm-eval task here")
    output_type = task.get("output_type", "generate_until")
    if output_type not in TASKS:
        raise DatasetError(
            f"{where}: output_type {output_type!r}: only generate_until and multiple_choice"
        )
    if int(task.get("num_fewshot") or 0) != 0:
        raise DatasetError(f"{where}: num_fewshot must be 0 (few-shot sampling is planned)")
    if task.get("dataset_path") != "json":
        raise DatasetError(f"{where}: dataset_path must be json (a local JSON Lines file)")
    return task


def data_file(task: dict[str, Any], yaml_path: Path, where: str) -> Path:
    split = task.get("test_split") or "test"
    files = (task.get("dataset_kwargs") or {}).get("data_files")
    chosen = files.get(split) if isinstance(files, dict) else files
    if isinstance(chosen, list) and len(chosen) == 1:
        chosen = chosen[0]
    if not isinstance(chosen, str):
        raise DatasetError(
            f"{where}: dataset_kwargs.data_files must name one file for split {split!r}"
        )
    if "://" in chosen:
        raise DatasetError(f"{where}: data file {chosen!r} is not local")
    path = Path(chosen)
    folder = yaml_path.parent.resolve()
    resolved = (folder / path).resolve()
    if path.is_absolute() or not resolved.is_relative_to(folder):
        # Refused by name, before anything is read: the data file lives beside its task.
        raise DatasetError(
            f"{where}: data file {chosen!r} must be a relative path inside the task's folder"
        )
    return resolved


def load(
    suite: Suite, raw_yaml: bytes, yaml_path: Path, data_sha256: str
) -> tuple[Suite, list[Item]]:
    """The suite as lm-evaluation-harness would run it, and its items in our fields."""
    where = suite.dataset.uri
    task = read_task(raw_yaml, where)
    output_type = task.get("output_type", "generate_until")
    if suite.task not in TASKS[output_type]:
        raise DatasetError(
            f"{where}: the task's output_type is {output_type}; set the suite's task to "
            f"{' or '.join(TASKS[output_type])}"
        )
    path = data_file(task, yaml_path, where)
    data = read_pinned(f"{where}: data file", path, data_sha256)
    docs = parse(path.name, data)  # one JSON object a line, as our own datasets
    return adapted(suite, task), _bounded(_items, task, docs, output_type)


# Templates are the task author's code: rendered in a child process with a deadline and
# an address-space cap, so a loop, a huge output or a backtracking regex ends the
# evaluation with a clear error (exit 2) instead of hanging or exhausting the pod.
RENDER_SECONDS = 60.0
RENDER_MEMORY_BYTES = 1024 * 1024 * 1024
MAX_TEMPLATE_CHARS = 8192
MAX_RENDERED_CHARS = 65536


def _bounded(work: Any, task: dict[str, Any], docs: list[Item], output_type: str) -> list[Item]:
    import multiprocessing
    import resource

    for key in ("doc_to_text", "doc_to_target", "doc_to_choice"):
        if isinstance(task.get(key), str) and len(task[key]) > MAX_TEMPLATE_CHARS:
            raise DatasetError(f"{key}: a template longer than {MAX_TEMPLATE_CHARS} characters")
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)

    def child() -> None:
        # The cap is on top of what the forked process already maps (libraries loaded).
        with open("/proc/self/statm") as statm:
            mapped = int(statm.read().split()[0]) * resource.getpagesize()
        cap = mapped + RENDER_MEMORY_BYTES
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
        try:
            send.send(("ok", work(task, docs, output_type)))
        except DatasetError as exc:
            send.send(("error", str(exc)))
        except MemoryError:
            send.send(("error", "rendering the templates needed more than the memory limit"))
        except Exception as exc:  # the author's template: any failure is bad input
            send.send(("error", f"a template failed: {type(exc).__name__}: {exc}"))

    process = context.Process(target=child, daemon=True)
    process.start()
    send.close()
    try:
        if not receive.poll(RENDER_SECONDS):
            raise DatasetError(
                f"rendering the task's templates took longer than {RENDER_SECONDS:.0f} s (a "
                "loop or a backtracking regex?): nothing was evaluated"
            )
        try:
            state, value = receive.recv()
        except EOFError:
            raise DatasetError(
                "rendering the task's templates failed (the renderer ran out of memory?)"
            ) from None
    finally:
        process.kill()
        process.join(5)
        receive.close()
    if state != "ok":
        raise DatasetError(str(value))
    result: list[Item] = value
    return result


def _items(task: dict[str, Any], docs: list[Item], output_type: str) -> list[Item]:
    items: list[Item] = []
    choices = output_type == "multiple_choice"
    for parsed in docs:
        doc = parsed.data
        text = str(_render(task.get("doc_to_text", ""), doc, "doc_to_text"))
        target = _target(task.get("doc_to_target", ""), doc, choices)
        if choices:
            options = _choices(task.get("doc_to_choice"), doc)
            delimiter = str(task.get("target_delimiter", " "))
            answer = target if isinstance(target, int) else options.index(str(target))
            item = {"input": text, "choices": [delimiter + c for c in options], "answer": answer}
        else:
            if task.get("doc_to_choice") is not None and isinstance(target, int):
                target = _choices(task["doc_to_choice"], doc)[target]
            item = {"input": text, "target": target if isinstance(target, list) else str(target)}
        for value in (text, target):
            if isinstance(value, str) and len(value) > MAX_RENDERED_CHARS:
                raise DatasetError(
                    f"line {parsed.index + 1}: a template rendered more than "
                    f"{MAX_RENDERED_CHARS} characters"
                )
        items.append(Item(parsed.index, item))
    return items


def adapted(suite: Suite, task: dict[str, Any]) -> Suite:
    """The task's generation arguments and exact_match options replace the suite's."""
    if suite.task == "multiple_choice":
        return suite
    gen = task.get("generation_kwargs") or {}
    until = gen.get("until", [])
    until = [until] if isinstance(until, str) else list(until)
    generation = Generation(
        max_tokens=int(gen.get("max_gen_toks", 256)),
        temperature=float(gen.get("temperature", 0.0)),
        top_p=float(gen.get("top_p", 1.0)),
        stop=until[:4],
    )
    metric = next(
        (m for m in task.get("metric_list") or [] if m.get("metric") == "exact_match"), None
    )
    if metric is None:
        raise DatasetError(f"{suite.dataset.uri}: metric_list needs exact_match")
    normalize = Normalize(
        ignore=list(metric.get("regexes_to_ignore") or []),
        lowercase=bool(metric.get("ignore_case", False)),
        strip_punctuation=bool(metric.get("ignore_punctuation", False)),
        collapse_whitespace=False,
    )
    return suite.model_copy(
        update={"generation": generation, "normalize": normalize, "few_shot": 0}
    )

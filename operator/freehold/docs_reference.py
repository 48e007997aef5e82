"""The documentation site's reference pages, generated from the code so they cannot drift:
every CRD field (from the pydantic models, through the generated CRDs: type, default,
validation, CEL rules, description), every CLI command (from the Typer app), and every
metric and audit event type (read from the source: they are declared where they are used).

    python -m freehold.docs_reference docs/reference

tests/docs fails when the committed pages differ from what this writes.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path
from typing import Any

import typer

from freehold.api.kinds import KINDS
from freehold.crdgen import crd_for

Schema = dict[str, Any]


def _cell(text: object) -> str:
    """Text for a Markdown table cell: one line, pipes escaped."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _type(schema: Schema) -> str:
    kind = schema.get("type")
    if kind == "array":
        return f"[]{_type(schema.get('items') or {})}"
    if kind == "object" and "additionalProperties" in schema:
        return f"map[string]{_type(schema.get('additionalProperties') or {})}"
    if schema.get("x-kubernetes-int-or-string"):
        return "int-or-string"
    return str(kind or "any")


def _rules(schema: Schema) -> list[str]:
    """What the API server checks on a field, in words."""
    found = []
    for key, word in (
        ("enum", "one of"),
        ("pattern", "pattern"),
        ("minimum", ">="),
        ("maximum", "<="),
        ("exclusiveMinimum", ">"),
        ("minLength", "min length"),
        ("maxLength", "max length"),
        ("minItems", "min items"),
        ("maxItems", "max items"),
        ("maxProperties", "max entries"),
        ("format", "format"),
    ):
        if key in schema:
            value = schema[key]
            shown = ", ".join(f"`{v}`" for v in value) if isinstance(value, list) else f"`{value}`"
            found.append(f"{word} {shown}")
    for rule in schema.get("x-kubernetes-validations") or []:
        found.append(f"CEL `{rule['rule']}`: {rule.get('message', '')}")
    return found


def _fields(schema: Schema, path: str, rows: list[list[str]]) -> None:
    required = set(schema.get("required") or [])
    for name, child in (schema.get("properties") or {}).items():
        here = f"{path}.{name}" if path else name
        default = child.get("default")
        rows.append(
            [
                f"`{here}`" + (" (required)" if name in required else ""),
                _type(child),
                "" if default is None else f"`{_cell(default)}`",
                _cell("; ".join(_rules(child))),
                _cell(child.get("description", "")),
            ]
        )
        target = child.get("items") if child.get("type") == "array" else child
        if isinstance(target, dict) and target.get("properties"):
            _fields(target, here + ("[]" if child.get("type") == "array" else ""), rows)


def crd_page(crd: Schema) -> str:
    names = crd["spec"]["names"]
    version = crd["spec"]["versions"][0]
    schema = version["schema"]["openAPIV3Schema"]
    lines = [
        f"# {names['kind']}",
        "",
        f"`{crd['spec']['group']}/{version['name']}`, {crd['spec']['scope']}; "
        f"`kubectl get {names['plural']}`"
        + (f" (short: {', '.join(names['shortNames'])})" if names.get("shortNames") else "")
        + ".",
        "",
        _cell(schema.get("description", "")),
        "",
    ]
    for rule in schema.get("x-kubernetes-validations") or []:
        lines += [f"- CEL on the object: `{rule['rule']}`: {rule.get('message', '')}"]
    for part in ("spec", "status"):
        sub = (schema.get("properties") or {}).get(part)
        if not sub:
            continue
        lines += ["", f"## {part}", ""]
        for rule in sub.get("x-kubernetes-validations") or []:
            lines += [f"- CEL on {part}: `{rule['rule']}`: {rule.get('message', '')}"]
        rows: list[list[str]] = []
        _fields(sub, part, rows)
        lines += ["", "| Field | Type | Default | Validation | Description |"]
        lines += ["|---|---|---|---|---|"]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
    columns = version.get("additionalPrinterColumns") or []
    if columns:
        lines += ["", "## kubectl get columns", "", "| Column | From |", "|---|---|"]
        lines += [f"| {c['name']} | `{c['jsonPath']}` |" for c in columns]
    return "\n".join(lines) + "\n"


def _command_lines(command: Any, words: list[str], lines: list[str]) -> None:
    """A click command (Typer's own copy of click: read by shape, not by class)."""
    if getattr(command, "commands", None) is not None:
        for name in sorted(command.commands):
            _command_lines(command.commands[name], [*words, name], lines)
        return
    lines += ["", f"## `{' '.join(words)}`", ""]
    if command.help:
        lines += [" ".join(command.help.split()), ""]
    params = [p for p in command.params if p.name != "help"]
    if not params:
        return
    lines += ["| Argument or option | Default | Help |", "|---|---|---|"]
    for param in params:
        if param.param_type_name == "option":
            shown = ", ".join(f"`{o}`" for o in [*param.opts, *param.secondary_opts])
            if param.envvar:
                shown += f" (env `{param.envvar}`)"
            helped = param.help or ""
            default = param.default
        else:
            shown = f"`{(param.metavar or param.name or '').upper()}`"
            helped = getattr(param, "help", "") or ""
            default = None
        default_text = "" if default in (None, False, ()) or callable(default) else f"`{default}`"
        lines.append(f"| {shown} | {_cell(default_text)} | {_cell(helped)} |")


def cli_page(app: typer.Typer) -> str:
    lines = [
        "# Command line",
        "",
        "Every `freehold` command, generated from the CLI itself. Errors name the option at "
        "fault and exit non-zero (2 for usage).",
    ]
    _command_lines(typer.main.get_command(app), ["freehold"], lines)
    return "\n".join(lines) + "\n"


PROMETHEUS = {
    "Counter": "counter",
    "Gauge": "gauge",
    "Histogram": "histogram",
    # Computed at scrape time from the resources the operator holds (adapters/fleet_metrics.py).
    "GaugeMetricFamily": "gauge",
    "CounterMetricFamily": "counter",
}
OTEL = {"create_histogram": "histogram", "create_counter": "counter"}
EVENT = re.compile(r"^[a-z_]+\.[a-z_.]*$")


def _text(node: ast.AST | None, constants: dict[str, str]) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Name):
        return constants.get(node.id)
    if isinstance(node, ast.JoinedStr):  # f"vault.{action}": the prefix, then any
        head = node.values[0] if node.values else None
        if isinstance(head, ast.Constant) and isinstance(head.value, str):
            return head.value + "*"
    return None


def _keyword(call: ast.Call, name: str) -> ast.AST | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def telemetry_page(sources: list[Path], root: Path) -> str:
    """Metrics (Prometheus and OpenTelemetry) and audit event types, found in the source."""
    metrics: dict[str, tuple[str, str, str, str]] = {}
    events: dict[str, set[str]] = {}
    for path in sources:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        constants = {
            t.id: n.value.value
            for n in ast.walk(tree)
            if isinstance(n, ast.Assign) and isinstance(n.value, ast.Constant)
            and isinstance(n.value.value, str)
            for t in n.targets
            if isinstance(t, ast.Name)
        }  # fmt: skip
        where = path.relative_to(root).as_posix()
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            first = _text(node.args[0], constants) if node.args else None
            if called in PROMETHEUS and first and first.startswith("freehold_"):
                kind = PROMETHEUS[called]
                suffix = "_total" if kind == "counter" and not first.endswith("_total") else ""
                name = first + suffix
                help_text = _text(node.args[1], constants) if len(node.args) > 1 else ""
                labels_node = (
                    node.args[2]
                    if len(node.args) > 2
                    else _keyword(node, "labelnames") or _keyword(node, "labels")
                )
                labels = (
                    [str(e.value) for e in labels_node.elts if isinstance(e, ast.Constant)]
                    if isinstance(labels_node, ast.List | ast.Tuple)
                    else []
                )
                metrics[name] = (kind, ", ".join(labels), help_text or "", where)
            elif called in OTEL and first:
                description = _text(_keyword(node, "description"), constants) or ""
                unit = _text(_keyword(node, "unit"), constants) or ""
                # As the Prometheus exporter names it: dots to underscores, the unit as a
                # suffix (seconds), counters ending in _total.
                exported = first.replace(".", "_") + ("_seconds" if unit == "s" else "")
                exported += "_total" if OTEL[called] == "counter" else ""
                shown = f"{OTEL[called]} (OpenTelemetry, unit {unit}; Prometheus `{exported}`)"
                metrics[first] = (shown, "", description, where)
            elif first and (
                (called == "record" and EVENT.match(first.rstrip("*")))
                or (called == "_append" and re.fullmatch(r"[a-z_.]+", first))  # the log's own
            ):
                events.setdefault(first, set()).add(where)
    lines = [
        "# Metrics and audit events",
        "",
        "Generated from the source. Prometheus metrics are served on each component's "
        "`/metrics`; OpenTelemetry instruments follow the GenAI semantic conventions and are "
        "exported by the serving pods (and, through the Prometheus exporter, on `/metrics`). "
        "No series carries a prompt, a completion or a key.",
        "",
        "## Metrics",
        "",
        "| Name | Type | Labels | Help | Declared in |",
        "|---|---|---|---|---|",
    ]
    for name in sorted(metrics):
        kind, label_names, help_text, where = metrics[name]
        lines.append(f"| `{name}` | {kind} | {label_names} | {_cell(help_text)} | `{where}` |")
    lines += [
        "",
        "With `engine: vllm`, a model's `/metrics` also carries vLLM's own engine metrics "
        "for that model (`serving/freehold_serving/engine_metrics.py`): vLLM's `vllm:*` "
        "series as Ray's metrics export them, `ray_vllm_*` (for example "
        "`ray_vllm_num_requests_running`, `ray_vllm_num_requests_waiting`, "
        "`ray_vllm_kv_cache_usage_perc`, `ray_vllm_prefix_cache_hits_total`, "
        "`ray_vllm_prefix_cache_queries_total`, `ray_vllm_request_queue_time_seconds`), "
        "labelled `model_name` and `ReplicaId` (the replica running the engine). Their meaning is "
        "vLLM's (its production metrics documentation).",
        "",
        "## Audit event types",
        "",
        "Hash-chained JSON lines (see [audit logs](../audit.md)); `*` stands for a suffix "
        "chosen at run time.",
        "",
        "| Type | Written by |",
        "|---|---|",
    ]
    for name in sorted(events):
        lines.append(f"| `{name}` | {', '.join(f'`{w}`' for w in sorted(events[name]))} |")
    return "\n".join(lines) + "\n"


def pages() -> dict[str, str]:
    """File name -> content of every reference page."""
    from freehold.cli import app

    root = Path(__file__).resolve().parents[2]
    sources = sorted(
        [*(root / "operator" / "freehold").rglob("*.py"),
         *(root / "serving" / "freehold_serving").rglob("*.py")]
    )  # fmt: skip
    found = {"cli.md": cli_page(app), "telemetry.md": telemetry_page(sources, root)}
    for kind in KINDS:
        crd = crd_for(kind)
        found[f"{crd['spec']['names']['singular']}.md"] = crd_page(crd)
    return found


def write(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in pages().items():
        path = directory / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


if __name__ == "__main__":
    write(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/reference"))

"""`freehold eval run`: an EvalJob's suites against an OpenAI-compatible endpoint, here.

Exit codes: 0 every gate passed; 1 a gate failed; 2 the manifest or a dataset is invalid
(a digest mismatch names both digests; nothing is evaluated); 3 the endpoint failed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

evaluation = typer.Typer(help="Evaluate models on pinned datasets.", no_args_is_help=True)
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


@evaluation.command("run")
def run_command(
    filename: Annotated[Path, typer.Option("--filename", "-f", help="An EvalJob manifest.")],
    endpoint: Annotated[
        str | None,
        typer.Option(help="Base URL of the endpoint (before /v1); default: spec.target.endpoint."),
    ] = None,
    model: Annotated[str | None, typer.Option(help="Model name; default: the spec's.")] = None,
    api_key: Annotated[str | None, typer.Option(envvar="FREEHOLD_API_KEY")] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Result file (JSON).")
    ] = None,
    pvc_root: Annotated[
        Path, typer.Option(help="Where pvc://CLAIM/... datasets are mounted.")
    ] = Path("/data"),
) -> None:
    """Run the suites, check the gates, write the result file."""
    from freehold.api.eval_job import EvalJobSpec
    from freehold.evaluation.client import Endpoint, EndpointError
    from freehold.evaluation.datasets import DatasetError
    from freehold.evaluation.runner import chosen_items, load_suites, run
    from freehold.manifests import ManifestError, load_documents
    from freehold.validation import defaulted, validate

    try:
        docs = [d for d in load_documents(filename) if d.body.get("kind") == "EvalJob"]
    except ManifestError as exc:
        err.print(f"[red]error[/red] {escape(str(exc))}", highlight=False)
        raise typer.Exit(2) from None
    if len(docs) != 1:
        err.print(f"[red]error[/red] {filename}: expected one EvalJob, found {len(docs)}")
        raise typer.Exit(2)
    errors = validate(docs[0].body)
    if errors:
        for error in errors:
            err.print(f"[red]error[/red] {escape(f'{docs[0].label}: {error}')}", highlight=False)
        raise typer.Exit(2)
    full = defaulted(docs[0].body)
    spec = EvalJobSpec.model_validate(full["spec"])
    base = endpoint or spec.target.endpoint
    if base is None:
        err.print(
            "[red]error[/red] spec.target names a ModelDeployment: give its endpoint here with "
            "--endpoint (on a cluster the EvalJob's Job finds it; planned)"
        )
        raise typer.Exit(2)
    try:
        loaded = load_suites(spec, pvc_root)  # every digest checked before anything runs
    except DatasetError as exc:
        err.print(f"[red]error[/red] {escape(str(exc))}", highlight=False)
        raise typer.Exit(2) from None
    try:
        target = Endpoint(f"{base.rstrip('/')}/v1", model or spec.target.model, api_key, spec.seed)
        with Progress(
            TextColumn("Evaluating"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err,
            transient=True,
        ) as progress:
            total = sum(len(chosen_items(s, loaded[s.name])) for s in spec.suites)
            task = progress.add_task("items", total=total)
            result = run(
                spec, loaded, target, full["metadata"]["name"], lambda n: progress.advance(task, n)
            )
    except (EndpointError, DatasetError) as exc:
        err.print(f"[red]error[/red] {escape(str(exc))}", highlight=False)
        raise typer.Exit(3 if isinstance(exc, EndpointError) else 2) from None
    table = Table("suite", "task", "metric", "value", "95% interval", "n")
    for suite in result["suites"]:
        for name, m in suite["metrics"].items():
            table.add_row(
                suite["name"],
                suite["task"],
                name,
                f"{m['value']:.3f}",
                f"{m['low']:.3f}-{m['high']:.3f}",
                str(suite["samples"]),
            )
    out.print(table)
    for gate in result["gates"]:
        mark = "[green]pass[/green]" if gate["passed"] else "[red]FAIL[/red]"
        out.print(
            f"{mark} {gate['suite']}.{gate['metric']} {gate['operator']} {gate['threshold']} "
            f"(measured {gate['value']:.3f})"
        )
    target_file = output or Path(f"{full['metadata']['name']}.result.json")
    target_file.write_text(json.dumps(result, indent=2), encoding="utf-8")
    out.print(f"wrote {target_file} ({result['digest']})")
    if not result["gatesPassed"]:
        raise typer.Exit(1)

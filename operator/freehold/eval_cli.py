"""`freehold eval run`: an EvalJob's suites against an OpenAI-compatible endpoint, here.

Exit codes: 0 every gate passed; 1 a gate failed; 2 the manifest or a dataset is invalid
(a digest mismatch names both digests; nothing is evaluated); 3 the endpoint failed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from freehold.signed_cli import PublicKeys, verify_signed

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
    data_root: Annotated[
        Path | None,
        typer.Option(
            help="The only folder file:// datasets may be read from (symlinks resolved); "
            "default: the manifest's folder."
        ),
    ] = None,
    baseline: Annotated[
        Path | None,
        typer.Option(help="A result file whose suite values maxRegression gates compare with."),
    ] = None,
    judge_endpoint: Annotated[
        str | None, typer.Option(help="Judge base URL (before /v1); default: spec.judge.")
    ] = None,
    judge_model: Annotated[str | None, typer.Option(help="Judge model name.")] = None,
    sign_key: Annotated[
        Path | None,
        typer.Option(help="Ed25519 key (PEM) to sign the result with; created 0600 if absent."),
    ] = None,
) -> None:
    """Run the suites, check the gates, write the result file."""
    from freehold.api.eval_job import EvalJobSpec
    from freehold.evaluation.client import Endpoint, EndpointError
    from freehold.evaluation.datasets import DatasetError
    from freehold.evaluation.runner import chosen_items, load_suites, run

    full = load_manifest(filename)
    spec = EvalJobSpec.model_validate(full["spec"])
    base = endpoint or spec.target.endpoint
    if base is None:
        err.print(
            "[red]error[/red] spec.target names a ModelDeployment: give its endpoint here with "
            "--endpoint (on a cluster the EvalJob's Job finds it)"
        )
        raise typer.Exit(2)
    judge_base = judge_endpoint or (spec.judge.endpoint if spec.judge else None)
    for name, url in (("--endpoint", base), ("--judge-endpoint", judge_base)):
        if url is not None and url.rstrip("/").endswith("/v1"):
            err.print(
                f"[red]error[/red] {name} {escape(url)}: give the base URL without /v1 "
                f"({escape(url.rstrip('/').removesuffix('/v1'))}); /v1/completions is added"
            )
            raise typer.Exit(2)
    try:
        # Every digest is checked before anything runs.
        spec, loaded = load_suites(spec, pvc_root, data_root or filename.resolve().parent)
        baseline_values = baseline_of(baseline) if baseline else None
    except DatasetError as exc:
        err.print(f"[red]error[/red] {escape(str(exc))}", highlight=False)
        raise typer.Exit(2) from None
    if any(s.task == "judge" for s in spec.suites) and judge_base is None:
        err.print("[red]error[/red] judge suites need --judge-endpoint (or spec.judge.endpoint)")
        raise typer.Exit(2)
    try:
        target = Endpoint(f"{base.rstrip('/')}/v1", model or spec.target.model, api_key, spec.seed)
        judge = (
            Endpoint(
                f"{judge_base.rstrip('/')}/v1",
                judge_model or (spec.judge.model if spec.judge else None),
                api_key,
                spec.seed,
            )
            if judge_base
            else None
        )
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
                spec,
                loaded,
                target,
                full["metadata"]["name"],
                lambda n: progress.advance(task, n),
                judge=judge,
                baseline=baseline_values,
            )
    except (EndpointError, DatasetError) as exc:
        err.print(f"[red]error[/red] {escape(str(exc))}", highlight=False)
        raise typer.Exit(3 if isinstance(exc, EndpointError) else 2) from None
    print_result(result)
    if sign_key is not None:
        from freehold.evaluation.signing import sign
        from freehold_serving.signing import FileSigner

        result = sign(result, FileSigner(sign_key))
    target_file = output or Path(f"{full['metadata']['name']}.result.json")
    target_file.write_text(json.dumps(result, indent=2), encoding="utf-8")
    out.print(f"wrote {target_file} ({result['digest']})")
    if not result["gatesPassed"]:
        raise typer.Exit(1)


def load_manifest(filename: Path) -> dict[str, Any]:
    """The one EvalJob in the file, validated and defaulted (exit 2 otherwise)."""
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
    return defaulted(docs[0].body)


def print_result(result: dict[str, Any]) -> None:
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
        measured = "-" if gate["value"] is None else f"{gate['value']:.3f}"
        bound = gate["reason"] or f"{gate['operator']} {gate['threshold']:.3f}"
        if gate["baseline"] is not None:
            bound += f" (baseline {gate['baseline']:.3f})"
        out.print(f"{mark} {gate['suite']}.{gate['metric']} {bound} (measured {measured})")


def baseline_of(path: Path) -> dict[str, float]:
    """Suite -> value of its gated metric, from a result file."""
    from freehold.evaluation.datasets import DatasetError

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return {s["name"]: float(s["metrics"][s["metric"]]["value"]) for s in data["suites"]}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DatasetError(f"--baseline {path}: not a result file ({exc})") from None


@evaluation.command("job", hidden=True)
def job_command(
    config: Annotated[Path, typer.Option(help="The job's config (JSON, from the operator).")],
    out_dir: Annotated[Path, typer.Option("--out", help="Results volume.")] = Path("/results"),
    listen: Annotated[str, typer.Option(help="HOST:PORT for /progress.")] = "0.0.0.0:8080",
    termination_log: Annotated[Path, typer.Option()] = Path("/dev/termination-log"),
) -> None:
    """An EvalJob's pod: evaluate, sign, write the result and a summary for the operator."""
    import logging

    from freehold.evaluation.job import JobConfig, Progress, execute, serve_progress

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    parsed = JobConfig.model_validate_json(config.read_text(encoding="utf-8"))
    host, _, port = listen.rpartition(":")
    progress = Progress()
    server = serve_progress(progress, host, int(port))
    try:
        code, outcome = execute(parsed, out_dir, progress)
    finally:
        server.shutdown()
    termination_log.write_text(json.dumps(outcome, separators=(",", ":")), encoding="utf-8")
    logging.getLogger("freehold.eval").info(
        "%s: %s", outcome["state"], outcome.get("message") or outcome.get("digest")
    )
    raise typer.Exit(code)


@evaluation.command("verify")
def verify_command(
    result: Annotated[Path, typer.Argument(help="A result file (JSON).")],
    public_key: PublicKeys = None,
) -> None:
    """Check a result's signature against a key you trust (exit 0), say what is wrong
    (exit 1), or exit 2 on unreadable input or when no --public-key is given."""
    data, signer = verify_signed(
        result,
        public_key,
        err,
        "an EvalJob's is its Vault transit signing key, `vault read transit/keys/NAME`; a "
        "local key file's: freehold audit key FILE",
    )
    out.print(f"valid: {result} signed by {signer} ({data.get('digest')})")


@evaluation.command("report")
def report_command(
    result: Annotated[Path, typer.Argument(help="A result file (JSON).")],
    baseline: Annotated[
        Path | None, typer.Option(help="Another result to compare with, suite by suite.")
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="HTML file; default RESULT.html.")
    ] = None,
) -> None:
    """Write a self-contained HTML report (no script, no external request)."""
    from freehold.evaluation.report import render

    try:
        data = json.loads(result.read_text(encoding="utf-8"))
        base = json.loads(baseline.read_text(encoding="utf-8")) if baseline else None
    except (OSError, ValueError) as exc:
        err.print(f"[red]error[/red] {escape(str(exc))}", highlight=False)
        raise typer.Exit(2) from None
    if not isinstance(data, dict) or "suites" not in data:
        err.print(f"[red]error[/red] {escape(str(result))}: not an evaluation result")
        raise typer.Exit(2)
    target = output or result.with_suffix(".html")
    target.write_text(render(data, base), encoding="utf-8")
    out.print(f"wrote {target}")

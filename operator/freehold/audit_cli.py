"""`freehold audit verify`: check hash-chained audit logs offline."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

audit = typer.Typer(help="Audit trail tools.", no_args_is_help=True)
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


@audit.command()
def verify(
    paths: Annotated[list[Path], typer.Argument(help="Audit log files (JSON Lines).")],
    trusted_key: Annotated[
        list[str] | None,
        typer.Option(help="Ed25519 public key (base64) whose checkpoints count; repeatable."),
    ] = None,
    anchor: Annotated[
        list[str] | None,
        typer.Option(
            help="SEQ:HASH of an event known from outside the file (a previous verify's "
            "last event, a collector's copy): shows events cut off the end; repeatable."
        ),
    ] = None,
) -> None:
    """Exit 0: intact and every event signed by a checkpoint. 1: tampered (an event edited,
    deleted or reordered, or a checkpoint that does not verify). 2: intact, but events after
    the last checkpoint or a cut-short last line. 3: a file cannot be read."""
    from freehold_serving.audit import verify as check

    trusted = {base64.b64decode(k) for k in trusted_key} if trusted_key else None
    anchors = []
    for given in anchor or []:
        seq, _, digest = given.partition(":")
        if not seq.isdigit() or len(digest) != 64:
            err.print(f"[red]error[/red] --anchor {escape(given)}: use SEQ:HASH (64 hex digits)")
            raise typer.Exit(3)
        anchors.append((int(seq), digest))
    worst = 0
    for path in paths:
        try:
            verdict = check(path, trusted, anchors)
        except OSError as exc:
            err.print(f"[red]error[/red] {path}: {exc.strerror}")
            worst = max(worst, 3)
            continue
        for problem in verdict.problems:
            err.print(
                f"[red]tampered[/red] {escape(str(path))}: {escape(problem)}", highlight=False
            )
        for warning in verdict.warnings:
            err.print(
                f"[yellow]warning[/yellow] {escape(str(path))}: {escape(warning)}", highlight=False
            )
        if verdict.exit_code == 0:
            out.print(
                f"[green]ok[/green] {path}: {verdict.events} events, all covered by checkpoints; "
                f"last event {verdict.last[0]}:{verdict.last[1]} (keep it as an --anchor)",
                highlight=False,
            )
        worst = max(worst, verdict.exit_code) if worst != 3 else 3
    raise typer.Exit(worst)


@audit.command()
def report(
    paths: Annotated[
        list[Path], typer.Argument(help="Audit log files or folders (every *.jsonl inside).")
    ],
    since: Annotated[
        str | None, typer.Option(help="Start: ISO 8601 (UTC unless given) or 30m, 24h, 7d.")
    ] = None,
    until: Annotated[str | None, typer.Option(help="End (excluded), as --since.")] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="HTML file to write.")] = Path(
        "audit-report.html"
    ),
) -> None:
    """Write a self-contained HTML report of a period: deployments (who, which digest,
    where), evaluations and gates, memory exports and erasures, access per API key. Every
    log is verified first and the verdict heads the page. Exit codes as verify's."""
    from freehold.audit_report import parse_time, read_log, render, select

    try:
        start = parse_time(since) if since else None
        end = parse_time(until) if until else None
    except ValueError:
        err.print("[red]error[/red] --since/--until: use ISO 8601 (2026-11-26T09:00) or 24h, 7d")
        raise typer.Exit(2) from None
    files: list[Path] = []
    for path in paths:
        files += sorted(path.rglob("*.jsonl")) if path.is_dir() else [path]
    logs = []
    worst = 0
    for path in files:
        try:
            verdict, events = read_log(path)
        except OSError as exc:
            err.print(f"[red]error[/red] {path}: {exc.strerror}")
            raise typer.Exit(3) from None
        worst = max(worst, 1 if verdict.problems else 2 if verdict.warnings else 0)
        logs.append((verdict, events))
    made = select(logs, start, end)
    output.write_text(render(made), encoding="utf-8")
    out.print(f"wrote {output}: {len(made.events)} events from {len(files)} logs", highlight=False)
    if worst == 1:
        err.print("[red]tampered[/red] at least one log does not verify: see the report's top")
    raise typer.Exit(worst)

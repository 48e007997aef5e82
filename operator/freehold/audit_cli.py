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
) -> None:
    """Exit 0: intact and every event signed by a checkpoint. 1: tampered (an event edited,
    deleted or reordered, or a checkpoint that does not verify). 2: intact, but events after
    the last checkpoint or a cut-short last line. 3: a file cannot be read."""
    from freehold_serving.audit import verify as check

    trusted = {base64.b64decode(k) for k in trusted_key} if trusted_key else None
    worst = 0
    for path in paths:
        try:
            verdict = check(path, trusted)
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
                f"[green]ok[/green] {path}: {verdict.events} events, all covered by checkpoints",
                highlight=False,
            )
        worst = max(worst, verdict.exit_code) if worst != 3 else 3
    raise typer.Exit(worst)

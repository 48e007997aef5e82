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


TrustedKey = Annotated[
    list[str] | None,
    typer.Option(
        help="Ed25519 public key (base64, raw 32 bytes) whose checkpoints count; repeatable. "
        "The operator's is its Vault transit key; a memory store's is signerPublicKey in its "
        "/status; a local key file's: freehold audit key FILE."
    ),
]
TrustedKeysFile = Annotated[
    Path | None,
    typer.Option(help="A file of trusted public keys, one base64 key per line (# comments)."),
]


def trusted_keys(keys: list[str] | None, keys_file: Path | None) -> set[bytes] | None:
    """The trust anchor the verifier supplies; None when it gave none. Exits 3 naming the
    option when a key is not a base64 Ed25519 public key."""
    given = list(keys or [])
    if keys_file is not None:
        try:
            lines = keys_file.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            err.print(f"[red]error[/red] --trusted-keys-file {escape(str(keys_file))}: {exc}")
            raise typer.Exit(3) from None
        given += [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    if not given:
        return None
    out = set()
    for key in given:
        try:
            raw = base64.b64decode(key, validate=True)
        except ValueError:
            raw = b""
        if len(raw) != 32:
            err.print(
                f"[red]error[/red] --trusted-key {escape(key[:60])}: not a base64 Ed25519 "
                "public key (32 bytes)"
            )
            raise typer.Exit(3)
        out.add(raw)
    return out


@audit.command()
def key(
    signing_key_file: Annotated[
        Path, typer.Argument(help="An Ed25519 private key file (PEM), e.g. a store's signing.pem.")
    ],
) -> None:
    """Print the public key of a local signing key (base64): give it to --trusted-key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        private = serialization.load_pem_private_key(signing_key_file.read_bytes(), None)
    except (OSError, ValueError, TypeError) as exc:
        err.print(f"[red]error[/red] {escape(str(signing_key_file))}: {exc}")
        raise typer.Exit(3) from None
    if not isinstance(private, Ed25519PrivateKey):
        err.print(f"[red]error[/red] {escape(str(signing_key_file))}: not an Ed25519 key")
        raise typer.Exit(3)
    public = private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    out.print(base64.b64encode(public).decode(), highlight=False)


@audit.command()
def verify(
    paths: Annotated[list[Path], typer.Argument(help="Audit log files (JSON Lines).")],
    trusted_key: TrustedKey = None,
    trusted_keys_file: TrustedKeysFile = None,
    anchor: Annotated[
        list[str] | None,
        typer.Option(
            help="SEQ:HASH of an event known from outside the file (a previous verify's "
            "last event, a collector's copy): shows events cut off the end; repeatable."
        ),
    ] = None,
) -> None:
    """Exit 0: intact and every event covered by a checkpoint of a trusted key. 1: tampered
    (an event edited, deleted or reordered, an empty log, a checkpoint that does not verify
    or is signed by another key). 2: intact, but events after the last checkpoint or a
    cut-short last line. 3: a file or key cannot be read. 4: unverified: no trusted key
    was given, so nothing says who signed (a rewritten log re-signed with any key would
    pass the chain check)."""
    from freehold_serving.audit import verify as check

    trusted = trusted_keys(trusted_key, trusted_keys_file)
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
        if verdict.exit_code == 4:
            err.print(
                f"[yellow]unverified[/yellow] {escape(str(path))}: the chain of "
                f"{verdict.events} events holds together, but no trusted key was given "
                "(--trusted-key, --trusted-keys-file): anyone could have re-signed it",
                highlight=False,
            )
        if verdict.exit_code == 0:
            out.print(
                f"[green]ok[/green] {path}: {verdict.events} events, all covered by checkpoints; "
                f"last event {verdict.last[0]}:{verdict.last[1]} (keep it as an --anchor)",
                highlight=False,
            )
        worst = _worse(worst, verdict.exit_code)
    raise typer.Exit(worst)


def _worse(a: int, b: int) -> int:
    """The exit code that says more is wrong: tampered, unreadable, unverified, unsigned."""
    rank = {0: 0, 2: 1, 4: 2, 3: 3, 1: 4}
    return a if rank[a] >= rank[b] else b


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
    trusted_key: TrustedKey = None,
    trusted_keys_file: TrustedKeysFile = None,
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
    trusted = trusted_keys(trusted_key, trusted_keys_file)
    files: list[Path] = []
    for path in paths:
        files += sorted(path.rglob("*.jsonl")) if path.is_dir() else [path]
    logs = []
    worst = 0
    for path in files:
        try:
            verdict, events = read_log(path, trusted)
        except OSError as exc:
            err.print(f"[red]error[/red] {path}: {exc.strerror}")
            raise typer.Exit(3) from None
        worst = _worse(worst, verdict.exit_code)
        logs.append((verdict, events))
    made = select(logs, start, end)
    output.write_text(render(made), encoding="utf-8")
    out.print(f"wrote {output}: {len(made.events)} events from {len(files)} logs", highlight=False)
    if worst == 1:
        err.print("[red]tampered[/red] at least one log does not verify: see the report's top")
    elif worst == 4:
        err.print(
            "[yellow]unverified[/yellow] no trusted key given (--trusted-key, "
            "--trusted-keys-file): the report cannot say who signed the logs"
        )
    raise typer.Exit(worst)

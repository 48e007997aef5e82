"""Checking a signed JSON document from the CLI (an evaluation result, a memory
migration report) against keys the user trusts: exit 0 valid, 1 invalid, 2 unreadable
input or no trusted key given."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from freehold_serving.signing import DocumentSignatureError, verify_document

PublicKeys = Annotated[
    list[str] | None,
    typer.Option(
        help="Trusted Ed25519 public key (base64); repeatable. Required: a signature by a key "
        "the document itself names proves nothing."
    ),
]


def verify_signed(
    path: Path, public_key: list[str] | None, err: Console, where_keys: str
) -> tuple[dict[str, Any], str]:
    """The document and its signer's key id; exits as above on anything else.
    `where_keys` tells the user where the signer's public key is found."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        err.print(f"[red]error[/red] {escape(f'{path}: {exc}')}", highlight=False)
        raise typer.Exit(2) from None
    if not isinstance(data, dict):
        err.print(f"[red]error[/red] {escape(str(path))}: not a signed JSON document")
        raise typer.Exit(2)
    if not public_key:
        err.print(
            f"[red]unverified[/red] give --public-key: the signer's Ed25519 public key "
            f"({where_keys}). Anyone can sign a document with a key of their own"
        )
        raise typer.Exit(2)
    try:
        trusted = [base64.b64decode(k, validate=True) for k in public_key]
    except ValueError:
        err.print("[red]error[/red] --public-key: not base64")
        raise typer.Exit(2) from None
    try:
        return data, verify_document(data, trusted)
    except DocumentSignatureError as exc:
        err.print(f"[red]invalid[/red] {escape(f'{path}: {exc}')}", highlight=False)
        raise typer.Exit(1) from None

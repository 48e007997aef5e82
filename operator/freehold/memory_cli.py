"""`freehold memory ...`: talk to a memory API (local `freehold up` or a cluster's Service).

Every failure names what failed (the server's OpenAI-style message and its field) and
exits non-zero; long imports and exports show progress.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn
from rich.table import Table

from freehold.signed_cli import PublicKeys, verify_signed

memory = typer.Typer(help="Add, search, export, import and erase memory.", no_args_is_help=True)
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

Endpoint = Annotated[
    str,
    typer.Option("--endpoint", envvar="FREEHOLD_MEMORY_URL", help="Base URL of the memory API."),
]
ApiKey = Annotated[
    str | None,
    typer.Option("--api-key", envvar="FREEHOLD_API_KEY", help="Bearer key (its tenant)."),
]
Subject = Annotated[str, typer.Option("--subject", "-s", help="The user the memory is about.")]
DEFAULT_URL = "http://127.0.0.1:8000/v1/memory"
CHUNK = 256 * 1024


def _client(endpoint: str, api_key: str | None) -> Any:
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return httpx.Client(base_url=endpoint.rstrip("/"), headers=headers, timeout=300)


def _answer(response: Any) -> Any:
    if response.status_code >= 400:
        try:
            error = response.json()["error"]
            where = f" ({error['param']})" if error.get("param") else ""
            message = f"{error['message']}{where}"
        except (ValueError, KeyError, TypeError):
            message = response.text[:500]
        err.print(f"[red]error[/red] {response.status_code}: {escape(message)}", highlight=False)
        raise typer.Exit(1)
    return response


def _call(method: str, endpoint: str, api_key: str | None, path: str, **kw: Any) -> Any:
    import httpx

    try:
        with _client(endpoint, api_key) as client:
            return _answer(client.request(method, path, **kw))
    except httpx.HTTPError as exc:
        err.print(f"[red]error[/red] cannot reach {endpoint}: {exc}", highlight=False)
        raise typer.Exit(1) from None


@memory.command()
def add(
    text: Annotated[str, typer.Argument(help="The memory.")],
    subject: Subject,
    type_: Annotated[
        str, typer.Option("--type", "-t", help="preference, fact, task, ...")
    ] = "note",
    endpoint: Endpoint = DEFAULT_URL,
    api_key: ApiKey = None,
) -> None:
    """Add one record."""
    body = {"records": [{"subject": subject, "text": text, "type": type_}]}
    record = _call("POST", endpoint, api_key, "/records", json=body).json()["data"][0]
    out.print(record["id"])


@memory.command()
def search(
    query: Annotated[str, typer.Argument(help="What to look for.")],
    subject: Subject,
    top_k: Annotated[int, typer.Option("--top-k", "-k")] = 10,
    as_of: Annotated[str | None, typer.Option(help="ISO time: what was known then.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    endpoint: Endpoint = DEFAULT_URL,
    api_key: ApiKey = None,
) -> None:
    """Hybrid (semantic + keyword) search of a subject's memory."""
    body: dict[str, Any] = {"subject": subject, "query": query, "top_k": top_k}
    if as_of:
        body["as_of"] = as_of
    found = _call("POST", endpoint, api_key, "/search", json=body).json()["data"]
    if as_json:
        out.print_json(json.dumps(found))
        return
    table = Table("score", "type", "text", "id")
    for r in found:
        table.add_row(f"{r['score']:.4f}", r["type"], escape(r["text"] or ""), r["id"])
    out.print(table)


@memory.command()
def export(
    subject: Subject,
    output: Annotated[Path, typer.Option("--output", "-o", help="Bundle file to write.")],
    embeddings: Annotated[bool | None, typer.Option(help="Include vectors.")] = None,
    endpoint: Endpoint = DEFAULT_URL,
    api_key: ApiKey = None,
) -> None:
    """Export a subject's memory as a signed bundle (.tar.gz)."""
    import httpx

    body: dict[str, Any] = {"subject": subject}
    if embeddings is not None:
        body["include_embeddings"] = embeddings
    try:
        with _client(endpoint, api_key) as client, client.stream("POST", "/export", json=body) as r:
            if r.status_code >= 400:
                r.read()
                _answer(r)
            total = int(r.headers.get("content-length") or 0) or None
            with _progress() as progress, output.open("wb") as handle:
                task = progress.add_task("Exporting", total=total)
                for chunk in r.iter_bytes(CHUNK):
                    handle.write(chunk)
                    progress.advance(task, len(chunk))
            digest = r.headers.get("x-freehold-bundle-digest", "")
            records = r.headers.get("x-freehold-bundle-records", "?")
    except httpx.HTTPError as exc:
        err.print(f"[red]error[/red] cannot reach {endpoint}: {exc}", highlight=False)
        raise typer.Exit(1) from None
    out.print(f"wrote {output}: {records} record(s), {digest}")


@memory.command("import")
def import_(
    path: Annotated[Path, typer.Argument(help="A bundle, a mem0 export (JSON) or JSONL.")],
    fmt: Annotated[str, typer.Option("--format", help="bundle, mem0 or jsonl.")] = "bundle",
    subject: Annotated[str | None, typer.Option(help="mem0/jsonl: put every record here.")] = None,
    endpoint: Endpoint = DEFAULT_URL,
    api_key: ApiKey = None,
) -> None:
    """Import memory. A bundle is verified (signature, digests) before anything changes."""
    if not path.is_file():
        err.print(f"[red]error[/red] {path}: no such file")
        raise typer.Exit(2)
    size = path.stat().st_size
    params = {"format": fmt, **({"subject": subject} if subject else {})}

    def chunks() -> Any:
        with _progress() as progress, path.open("rb") as handle:
            task = progress.add_task("Uploading", total=size)
            while block := handle.read(CHUNK):
                progress.advance(task, len(block))
                yield block

    result = _call(
        "POST",
        endpoint,
        api_key,
        "/import",
        params=params,
        content=chunks(),
        headers={"content-length": str(size)},
    ).json()
    out.print(
        f"imported {result['imported']} record version(s), skipped {result.get('skipped', 0)}"
        + (f", signed by {result['signer']}" if result.get("signer") else "")
    )


@memory.command()
def erase(
    subject: Subject,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask.")] = False,
    endpoint: Endpoint = DEFAULT_URL,
    api_key: ApiKey = None,
) -> None:
    """Erase everything about a subject (right to be forgotten). Irreversible."""
    if not yes and not typer.confirm(f"Erase all memory of {subject!r}? This cannot be undone"):
        raise typer.Exit(1)
    result = _call("POST", endpoint, api_key, "/erase", json={"subject": subject}).json()
    out.print(f"erased {result['erased_versions']} record version(s) of {subject}")


@memory.command()
def stats(endpoint: Endpoint = DEFAULT_URL, api_key: ApiKey = None) -> None:
    """Records, subjects, embedding model and the last export and import."""
    out.print_json(json.dumps(_call("GET", endpoint, api_key, "/stats").json()))


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=err,
        transient=True,
        disable=not os.isatty(2),
    )


@memory.command("mcp")
def mcp_stdio(endpoint: Endpoint = DEFAULT_URL, api_key: ApiKey = None) -> None:
    """Serve this memory to a desktop agent over MCP (stdio): tools to add, search, update,
    erase and export, with your API key (its tenant). The store itself also serves MCP over
    Streamable HTTP at ENDPOINT/mcp."""
    try:
        from freehold_serving.memory.agent_tools import HttpOps, build_tools
    except ImportError as exc:
        err.print(
            f"[red]error[/red] MCP needs the mcp package ({exc.name}): pip install 'freehold[mcp]'",
            highlight=False,
        )
        raise typer.Exit(1) from None
    ops = HttpOps(endpoint, api_key)

    async def ops_for(_ctx: Any) -> HttpOps:
        return ops

    # stdout carries the protocol: nothing else may print there.
    build_tools(ops_for).run("stdio")


STORE_HELP = (
    "a MemoryStore manifest (the store as `freehold up` keeps it under --data-dir) or the "
    "store's memory args as JSON (what the operator gives its pods in FREEHOLD_MEMORY_ARGS)"
)


def _store_args(path: Path, data_dir: Path | None) -> Any:
    """MemoryArgs from a manifest (resolved like `freehold up`) or an args file."""
    import yaml
    from pydantic import ValidationError

    from freehold.local.up import InvalidManifestError, UpError, load_stack, local_store_args
    from freehold.settings import LocalSettings
    from freehold_serving.memory.args import MemoryArgs

    try:
        body = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        err.print(f"[red]error[/red] {escape(f'{path}: {exc}')}", highlight=False)
        raise typer.Exit(2) from None
    if isinstance(body, dict) and "kind" not in body:
        try:
            return MemoryArgs.model_validate(body)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            err.print(f"[red]error[/red] {path}: {where}: {first['msg']}", highlight=False)
            raise typer.Exit(2) from None
    settings = LocalSettings()
    if data_dir is not None:
        settings = settings.model_copy(update={"data_dir": data_dir})
    try:
        stores = load_stack([path]).stores
    except InvalidManifestError as exc:
        for error in exc.errors:
            err.print(f"[red]error[/red] {escape(f'{exc.source}: {error}')}", highlight=False)
        raise typer.Exit(2) from None
    except UpError as exc:
        err.print(f"[red]error[/red] {escape(str(exc))}", highlight=False)
        raise typer.Exit(2) from None
    if len(stores) != 1:
        err.print(f"[red]error[/red] {path}: expected one MemoryStore, found {len(stores)}")
        raise typer.Exit(2)
    return local_store_args(stores[0], settings)


@memory.command()
def migrate(
    source: Annotated[
        Path, typer.Option("--from", help=f"The store to copy: {STORE_HELP}.", dir_okay=False)
    ],
    target: Annotated[
        Path,
        typer.Option(
            "--to", help=f"The new, empty store (replicas stopped): {STORE_HELP}.", dir_okay=False
        ),
    ],
    report: Annotated[
        Path, typer.Option(help="Where the report, signed by the target's key, is written.")
    ] = Path("memory-migration.json"),
    bundles: Annotated[
        Path | None, typer.Option(help="Keep each subject's signed bundle in this folder.")
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(envvar="FREEHOLD_DATA_DIR", help="`freehold up`'s data directory."),
    ] = None,
) -> None:
    """Move a store to another engine (SQLite to PostgreSQL, or back): every subject as a
    signed bundle, verified, imported and read back. The source is not changed; run it
    again to resume."""
    from freehold_serving.memory.migrate import (
        MigrationError,
        configured_embedding,
        open_side,
        write_report,
    )
    from freehold_serving.memory.migrate import (
        migrate as run,
    )

    for path in (source, target):
        if not path.is_file():
            err.print(f"[red]error[/red] {path}: no such file")
            raise typer.Exit(2)
    from_args, to_args = _store_args(source, data_dir), _store_args(target, data_dir)
    try:
        src = open_side(from_args, must_exist=True)
        dst = open_side(to_args, must_exist=False)
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} subjects"),
            console=err,
            transient=True,
            disable=not os.isatty(2),
        ) as progress:
            task = progress.add_task("Migrating", total=None)
            result = run(
                src,
                dst,
                bundles_dir=bundles,
                progress=lambda done, total: progress.update(task, completed=done, total=total),
            )
    except MigrationError as exc:
        err.print(f"[red]error[/red] {escape(str(exc))}", highlight=False)
        raise typer.Exit(1) from None
    write_report(result, report)
    totals = result["totals"]
    out.print(
        f"migrated {totals['subjects']} subject(s), {totals['versions']} record version(s) "
        f"({totals['added']} new) from {src.engine} to {dst.engine}, each verified; report "
        f"{report} signed by {result['signature']['keyId']}"
    )
    wanted = configured_embedding(to_args)
    if wanted != src.store.embedding_model:
        out.print(
            f"the target embeds with {wanted}: it re-embeds every record when it starts "
            f"(the vectors came from {src.store.embedding_model})"
        )


@memory.command("verify-migration")
def verify_migration(
    report: Annotated[Path, typer.Argument(help="A report of `freehold memory migrate`.")],
    public_key: PublicKeys = None,
) -> None:
    """Check a migration report's signature against the target store's key (exit 0), say
    what is wrong (exit 1), or exit 2 on unreadable input or no --public-key."""
    data, signer = verify_signed(
        report,
        public_key,
        err,
        "the target store's signing key: `vault read transit/keys/NAME` on a cluster, "
        "`freehold audit key FILE` for a local key file",
    )
    totals = data.get("totals") or {}
    out.print(
        f"valid: {report} signed by {signer}: {totals.get('subjects')} subject(s), "
        f"{totals.get('versions')} record version(s)"
    )

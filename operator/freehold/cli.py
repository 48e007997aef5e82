"""The `freehold` command line."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

app = typer.Typer(
    name="freehold",
    help="Own your AI stack: serve open models on your own machines and clusters.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# soft_wrap: one error per line, whatever the terminal width, so output greps.
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

EXIT_INVALID = 2
EXIT_REFUSED = 3  # the model failed verification: never served


@app.command()
def crds(
    output: Annotated[
        list[Path] | None,
        typer.Option(
            "--output",
            "-o",
            help="Directory to write the CRD YAML into "
            "(repeatable). Default: crds/ and the chart's charts/freehold/crds/.",
        ),
    ] = None,
) -> None:
    """Generate the CustomResourceDefinitions from the API models."""
    from freehold.crdgen import write_crds

    targets = output or [Path("crds")] + (
        [Path("charts/freehold/crds")] if Path("charts/freehold").is_dir() else []
    )
    for target in targets:
        for path in write_crds(target):
            out.print(f"wrote {path}")


@app.command()
def rbac(
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Where to write the chart's rules template.")
    ] = Path("charts/freehold/templates/_rules.tpl"),
) -> None:
    """Generate the chart's RBAC rules from the registered kinds."""
    from freehold.rbac import render_rules_template

    output.write_text(render_rules_template(), encoding="utf-8")
    out.print(f"wrote {output}")


@app.command()
def validate(
    files: Annotated[
        list[Path] | None,
        typer.Option("--filename", "-f", help="Manifest file to check; '-' reads stdin."),
    ] = None,
    more: Annotated[
        list[Path] | None, typer.Argument(help="More manifest files.", show_default=False)
    ] = None,
    policy: Annotated[
        list[Path] | None,
        typer.Option(
            "--policy",
            help="SovereigntyPolicy manifest(s): also judge the manifests by their rules, as "
            "the API server's admission policy would (namespace selectors are not applied "
            "offline: every policy judges every manifest).",
        ),
    ] = None,
) -> None:
    """Check manifests offline, as the API server would. Writes nothing.

    Exit 0 when every document is valid, 2 otherwise; each error names the field.
    """
    from freehold.manifests import ManifestError, load_documents
    from freehold.validation import validate as validate_manifest

    paths = [*(files or []), *(more or [])]
    if not paths:
        err.print("error: no manifests given: pass -f FILE [FILE...]")
        raise typer.Exit(EXIT_INVALID)
    judges = _load_policies(policy or [])
    invalid = 0
    checked = 0
    for file in paths:
        try:
            documents = list(load_documents(file))
        except ManifestError as exc:
            err.print(f"[red]error[/red] {escape(str(exc))}", highlight=False)
            invalid += 1
            continue
        if not documents:
            err.print(f"[red]error[/red] {file}: no manifests in file", highlight=False)
            invalid += 1
        for doc in documents:
            checked += 1
            errors: list[Any] = list(validate_manifest(doc.body))
            if not errors:
                errors = _policy_errors(judges, doc.body)
            if errors:
                invalid += 1
                for error in errors:
                    err.print(
                        f"[red]error[/red] {escape(f'{doc.label}: {error}')}", highlight=False
                    )
            else:
                out.print(f"[green]valid[/green] {doc.label}", highlight=False)
    if invalid:
        err.print(f"{invalid} invalid of {checked} manifest(s)", highlight=False)
        raise typer.Exit(EXIT_INVALID)


@app.command()
def up(
    filename: Annotated[
        list[Path] | None,
        typer.Option(
            "--filename",
            "-f",
            help="ModelDeployment and MemoryStore manifests (repeatable); default: the "
            "built-in SmolLM2-135M-Instruct, no memory store.",
        ),
    ] = None,
    host: Annotated[str | None, typer.Option(help="Listen address (FREEHOLD_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Listen port (FREEHOLD_PORT).")] = None,
    api_keys_file: Annotated[
        Path | None, typer.Option(help="Require these API keys (one per line).")
    ] = None,
) -> None:
    """Serve a model (and a memory store) on this machine with local Ray, behind an
    OpenAI-compatible API."""
    from freehold.local.up import InvalidManifestError, UpError, load_stack, serve_locally
    from freehold.settings import LocalSettings

    overrides = {
        k: v
        for k, v in {"host": host, "port": port, "api_keys_file": api_keys_file}.items()
        if v is not None
    }
    # Flags win over FREEHOLD_* environment variables; typer has typed them already.
    settings = LocalSettings().model_copy(update=overrides)
    try:
        stack = load_stack(filename or [])
        serve_locally(
            stack.deployment,
            settings,
            out,
            stores=stack.stores,
            extra=stack.extra,
            router=stack.router,
        )
    except InvalidManifestError as exc:
        for error in exc.errors:
            err.print(f"[red]error[/red] {escape(f'{exc.source}: {error}')}", highlight=False)
        raise typer.Exit(EXIT_INVALID) from None
    except UpError as exc:
        err.print(f"[red]error[/red] {escape(str(exc))}", highlight=False)
        raise typer.Exit(1) from None


@app.command()
def operator() -> None:
    """Run the control plane (kopf). Settings: FREEHOLD_OPERATOR_* environment variables."""
    from freehold.operator_main import run
    from freehold.settings import OperatorSettings

    run(OperatorSettings())


@app.command()
def bom(
    files: Annotated[
        list[Path], typer.Option("--filename", "-f", help="ModelDeployment manifest(s).")
    ],
    serving_image: Annotated[
        str,
        typer.Option(
            envvar="FREEHOLD_OPERATOR_SERVING_IMAGE",
            help="The serving image, by digest (REPO@sha256:...) as the operator runs it.",
        ),
    ] = "ghcr.io/freehold-dev/freehold-serving:0.1.0",
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write here; default stdout.")
    ] = None,
) -> None:
    """Write the CycloneDX 1.6 ML-BOM of each ModelDeployment (model, digest, source,
    licence, signer, engine and version, serving image), as the operator keeps it."""
    from freehold.api.model_deployment import ModelDeploymentSpec
    from freehold.builders.mlbom import build_mlbom, render

    documents = []
    for body in _valid_documents(files, "ModelDeployment", "", others="skip"):
        meta = body["metadata"]
        spec = ModelDeploymentSpec.model_validate(body["spec"])
        documents.append(
            build_mlbom(
                spec, meta["name"], meta.get("namespace") or "default", serving_image=serving_image
            )
        )
    if not documents:
        err.print("[red]error[/red] no ModelDeployment in the files given")
        raise typer.Exit(EXIT_INVALID)
    text = "".join(render(d) for d in documents)
    if output is None:
        out.print(text, end="", highlight=False, markup=False, soft_wrap=True)
    else:
        output.write_text(text, encoding="utf-8")
        out.print(f"wrote {output} ({len(documents)} ML-BOM(s))")


def _valid_documents(
    paths: list[Path], kind: str, flag: str, *, others: str = "refuse"
) -> list[dict[str, Any]]:
    """The defaulted bodies of the `kind` documents in these files, each valid as the API
    server would judge it; anything else (unreadable, invalid, another kind unless
    `others="skip"`) is named and exits 2."""
    from freehold.manifests import ManifestError, load_documents
    from freehold.validation import defaulted
    from freehold.validation import validate as validate_manifest

    said = f"{flag} " if flag else ""
    found = []
    for path in paths:
        try:
            documents = list(load_documents(path))
        except ManifestError as exc:
            err.print(f"[red]error[/red] {said}{escape(str(exc))}", highlight=False)
            raise typer.Exit(EXIT_INVALID) from None
        for doc in documents:
            if doc.body.get("kind") != kind:
                if others == "skip":
                    continue
                err.print(f"[red]error[/red] {said}{doc.label}: not a {kind}")
                raise typer.Exit(EXIT_INVALID)
            problems = validate_manifest(doc.body)
            if problems:
                for problem in problems:
                    err.print(f"[red]error[/red] {said}{escape(f'{doc.label}: {problem}')}")
                raise typer.Exit(EXIT_INVALID)
            found.append(defaulted(doc.body))
    return found


def _load_policies(paths: list[Path]) -> list[tuple[str, Any]]:
    """(name, spec) of each SovereigntyPolicy given; a bad policy file exits 2."""
    from freehold.api.sovereignty_policy import SovereigntyPolicySpec

    return [
        (str(body["metadata"]["name"]), SovereigntyPolicySpec.model_validate(body["spec"]))
        for body in _valid_documents(paths, "SovereigntyPolicy", "--policy")
    ]


def _policy_errors(judges: list[tuple[str, Any]], body: dict[str, Any]) -> list[str]:
    from freehold.policy import violations
    from freehold.validation import defaulted

    return [message for name, spec in judges for message in violations(name, spec, defaulted(body))]


TERMINATION_LOG = "/dev/termination-log"


def _verified_in_pod(args: Any) -> Any:
    """Verify the model (signature, then digest) before Ray starts: a model that fails ends
    the container with the reason as its termination message, which the operator reports
    in ModelVerified; the replica then trusts this check (same file, same pod)."""
    from pathlib import Path

    from freehold.local.up import UpError, verify_model_and_signer

    try:
        verified, signer = verify_model_and_signer(args, lambda _n: None)
    except UpError as exc:
        err.print(f"error: {exc}")
        if Path(TERMINATION_LOG).exists():  # the kubelet makes it; never outside a pod
            with contextlib.suppress(OSError):
                Path(TERMINATION_LOG).write_text(str(exc)[:4000], encoding="utf-8")
        raise typer.Exit(EXIT_REFUSED) from None
    if signer:
        out.print(f"model signature verified: signed by {signer}")
    return verified


@app.command()
def serve(
    application: Annotated[
        str,
        typer.Option(
            "--app",
            help="model (FREEHOLD_SERVING_ARGS), memory (FREEHOLD_MEMORY_ARGS) or router "
            "(FREEHOLD_ROUTER_ARGS).",
        ),
    ] = "model",
) -> None:
    """Serve one application on a single-node Ray, inside a pod.

    The args come from the environment (JSON), as the operator writes them.
    """
    import os

    from freehold.local.up import container_cpus, local_ray, ray_environment, wait_for_signal

    ray_environment()
    variables = {
        "model": "FREEHOLD_SERVING_ARGS",
        "memory": "FREEHOLD_MEMORY_ARGS",
        "router": "FREEHOLD_ROUTER_ARGS",
    }
    if application not in variables:
        err.print("error: --app must be model, memory or router")
        raise typer.Exit(EXIT_INVALID)
    variable = variables[application]
    raw = os.environ.get(variable)
    if not raw:
        err.print(f"error: {variable} is not set")
        raise typer.Exit(EXIT_INVALID)
    from pydantic import BaseModel

    from freehold_serving.args import ServingArgs
    from freehold_serving.memory.args import MemoryArgs
    from freehold_serving.router.args import RouterArgs

    models: dict[str, type[BaseModel]] = {
        "model": ServingArgs,
        "memory": MemoryArgs,
        "router": RouterArgs,
    }
    model = models[application]
    try:
        args = model.model_validate_json(raw)
    except ValueError as exc:
        err.print(f"error: {variable}: {exc}")
        raise typer.Exit(EXIT_INVALID) from None
    if isinstance(args, ServingArgs):
        args = _verified_in_pod(args)
    from ray import serve as ray_serve

    # The container's CPU limit (cgroup), not the node's cores.
    cpus = container_cpus()
    with local_ray(cpus, "0.0.0.0", 8000):
        if isinstance(args, ServingArgs):
            from freehold_serving.app import build_app

            ray_serve.run(build_app(args), name=args.name, route_prefix="/", blocking=False)
            # The engine may still be loading (vLLM loads on a thread of its own): /health
            # answers 503 until it answers, and the kubelet keeps the pod out of its Service.
            out.print(f"serving {args.model.served_name} on :8000 (/health: 200 once loaded)")
        elif isinstance(args, RouterArgs):
            from freehold_serving.router.app import build_router

            ray_serve.run(build_router(args), name=args.name, route_prefix="/", blocking=False)
            out.print(f"routing {args.served_name} on :8000")
        else:
            assert isinstance(args, MemoryArgs)
            from freehold_serving.memory.app import ROUTE_PREFIX, build_memory_app

            ray_serve.run(
                build_memory_app(args), name=args.name, route_prefix=ROUTE_PREFIX, blocking=False
            )
            out.print(f"serving memory store {args.name} on :8000{ROUTE_PREFIX}")
        wait_for_signal()


from freehold.audit_cli import audit  # noqa: E402 - subcommand groups, after `app`
from freehold.eval_cli import evaluation  # noqa: E402
from freehold.keys_cli import keys  # noqa: E402
from freehold.memory_cli import memory  # noqa: E402
from freehold.model_cli import model  # noqa: E402

app.add_typer(memory, name="memory")
app.add_typer(evaluation, name="eval")
app.add_typer(audit, name="audit")
app.add_typer(model, name="model")
app.add_typer(keys, name="keys")


def main() -> None:
    import os

    level = os.environ.get("FREEHOLD_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(
        level=getattr(logging, level, logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    # httpx logs every request at INFO (with its URL): noise in a command's output, and a
    # URL can carry a subject. FREEHOLD_LOG_LEVEL=DEBUG shows them again.
    for chatty in ("httpx", "httpcore"):
        logging.getLogger(chatty).setLevel(
            logging.DEBUG if logging.root.level <= logging.DEBUG else logging.WARNING
        )
    app()

"""`freehold up` with a ModelRouter: every model it routes to at /models/NAME, the router
at / (the same Ray Serve cluster: one process graph, as in a RayService)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from freehold.builders.model_workload import BuildContext
from freehold.builders.router import ResolvedTarget, router_args
from freehold.settings import LocalSettings
from freehold_serving.args import ApiKeysConfig, ServingArgs

if TYPE_CHECKING:
    from freehold.local.up import Deployment, LocalRouter


def start_router(
    router: LocalRouter,
    first: Deployment,
    first_args: ServingArgs,
    extra: list[Deployment],
    settings: LocalSettings,
    cpus: int,
    console: Console,
    target_key_file: Path | None = None,
) -> ServingArgs:
    """Serve the other models and the router; the args to show (the router's name).
    `target_key_file`: the key the models accept (the router's own), when they need one;
    `settings` are the router's (its callers' keys)."""
    from ray import serve

    from freehold.local.up import endpoint_of, local_args, verify_model, wait_for_engine
    from freehold_serving.app import build_app
    from freehold_serving.router.app import build_router

    root = endpoint_of(settings).removesuffix("/v1")
    served = {first.name: first_args}
    for deployment in extra:
        model_settings = settings
        if target_key_file is not None:
            model_settings = settings.model_copy(update={"api_keys_file": target_key_file})
        with console.status(f"Verifying and loading {deployment.name}"):
            args = verify_model(local_args(deployment, model_settings, cpus), lambda _n: None)
            # One embedder is enough: the first model's.
            args = args.model_copy(
                update={"embeddings": args.embeddings.model_copy(update={"enabled": False})}
            )
            serve.run(
                build_app(args),
                name=args.name,
                route_prefix=f"/models/{deployment.name}",
                blocking=False,
            )
            wait_for_engine(args.name, f"{root}/models/{deployment.name}")
        served[deployment.name] = args
        console.print(
            f"[green]✓[/green] {args.model.served_name} at {root}/models/{deployment.name}/v1"
        )
    resolved = {}
    for target in router.spec.targets:
        ref = target.model_deployment_ref
        if ref is None:
            continue
        model = served[ref.name].model
        resolved[target.name] = ResolvedTarget(
            target.name, f"{root}/models/{ref.name}/v1", model.served_name, True
        )
    ctx = BuildContext(
        name=router.name,
        namespace=router.namespace,
        serving_image="-",
        ray_version="-",
        api_server_cidr="-",
    )
    routing = router_args(router.spec, ctx, resolved)
    # Access records beside the models', signed with the same local key.
    routing = routing.model_copy(
        update={
            "audit": first_args.audit,
            "telemetry": routing.telemetry.model_copy(
                update={"otlp_endpoint": settings.otlp_endpoint}
            ),
        }
    )
    # Locally the models are keyed only by the router's own key file, made at start: a
    # target's key in Vault (spec.targets[].apiKey, for a cluster) is not used here.
    own = str(target_key_file) if target_key_file is not None else None
    routing = routing.model_copy(
        update={
            "targets": [
                t.model_copy(update={"api_key_file": own, "api_key_vault": None})
                if t.external is None
                else t
                for t in routing.targets
            ]
        }
    )
    if settings.api_keys_file is not None:
        routing = routing.model_copy(
            update={"api_keys": ApiKeysConfig(file=str(settings.api_keys_file))}
        )
    elif routing.api_keys is not None:
        routing = routing.model_copy(update={"api_keys": None, "budgets": []})
        console.print(
            "[yellow]![/yellow] the router's API keys live in Vault on a cluster; locally give "
            "--api-keys-file (budgets need keys): serving without keys"
        )
    with console.status(f"Starting router {router.name}"):
        serve.run(
            build_router(routing), name=f"router-{router.name}", route_prefix="/", blocking=False
        )
    console.print(
        f"[green]✓[/green] router [bold]{router.name}[/bold] ({router.spec.strategy}) over "
        + ", ".join(t.name for t in router.spec.targets)
    )
    shown = first_args.model.model_copy(update={"served_name": router.spec.served_name})
    return first_args.model_copy(
        update={"model": shown, "api_keys": routing.api_keys or first_args.api_keys}
    )

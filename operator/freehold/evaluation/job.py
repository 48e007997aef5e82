"""The EvalJob's pod: `freehold eval job --config FILE`.

The operator writes the config (a ConfigMap: the spec, the resolved endpoint, the model
digest, the baseline values, how to sign) and reads back, with no API token in the pod:
- progress, from GET /progress on the pod's port while it runs;
- the outcome, from the container's termination message (a compact summary, at most
  4 KiB, the kubelet's limit), once it has ended.
The full result is written, signed, to the results volume (a PVC); it never goes into
the resource's status.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from freehold.api.eval_job import EvalJobSpec
from freehold.evaluation import signing
from freehold.evaluation.client import Endpoint, EndpointError
from freehold.evaluation.datasets import DatasetError
from freehold.evaluation.runner import chosen_items, load_suites, run
from freehold_serving.router.args import KeyInVault
from freehold_serving.signing import FileSigner, Signer, TransitSigner

log = logging.getLogger(__name__)
RESULT_FILE = "result.json"
SUMMARY_LIMIT = 4096  # bytes the kubelet keeps of a termination message
PROGRESS_PORT = 8080
EXIT_DATASET = 2
EXIT_ENDPOINT = 3
EXIT_SIGNING = 4
EXIT_API_KEY = 5


class VaultSigner(BaseModel):
    """Sign with a Vault transit ed25519 key; the pod logs in with its projected token."""

    model_config = ConfigDict(extra="forbid")

    address: str
    role: str
    mount: str = "transit"
    key_name: str
    auth_mount: str = "kubernetes"
    jwt_path: str = "/var/run/secrets/vault/token"
    ca_cert: str | None = None


class JobConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    namespace: str
    spec: dict[str, Any] = Field(description="The EvalJob's spec (camelCase, defaulted).")
    endpoint: str = Field(description="Base URL of the target, ending in /v1.")
    model: str | None = None
    model_digest: str | None = None
    judge_endpoint: str | None = None
    judge_model: str | None = None
    baseline: dict[str, float] | None = None
    # Where the target's (and judge's) API key is: read by this pod from Vault, logging in
    # as for signing; the key itself is never in the config.
    api_key: KeyInVault | None = None
    judge_api_key: KeyInVault | None = None
    vault: VaultSigner | None = None
    signing_key_file: str | None = None
    pvc_root: str = "/data"
    # file:// datasets: refused unless a root is named (the operator never names one: an
    # EvalJob reads pvc:// and package:// datasets; tests and local runs may).
    file_root: str | None = None
    # How long the target (and judge) may take to answer before the evaluation fails.
    ready_timeout: float = 180.0


class Progress:
    """What /progress answers; updated by the runner's callback."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.state = "loading"
        self.completed = 0
        self.total = 0

    def advance(self, n: int) -> None:
        with self._lock:
            self.completed += n

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {"state": self.state, "completed": self.completed, "total": self.total}


def serve_progress(progress: Progress, host: str, port: int) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path not in ("/progress", "/healthz"):
                self.send_error(404)
                return
            body = json.dumps(progress.snapshot()).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("progress: " + format, *args)

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="progress", daemon=True).start()
    return server


def signer_for(config: JobConfig) -> Signer:
    if config.vault is not None:
        from freehold_serving.transit import login

        vault = config.vault
        transit = login(
            vault.address,
            vault.role,
            vault.jwt_path,
            auth_mount=vault.auth_mount,
            ca_cert=vault.ca_cert,
            mount=vault.mount,
        )
        return TransitSigner(transit, vault.key_name)
    if config.signing_key_file:
        return FileSigner(Path(config.signing_key_file))
    raise ValueError("no signing key: the config names neither Vault nor a key file")


class ApiKeyError(Exception):
    """An API key the config names cannot be read; the message never holds a key."""


def read_api_key(config: JobConfig, where: KeyInVault | None, what: str) -> str | None:
    """The key at `where`, read from Vault as this pod's workload (its projected token,
    the evaluation's own role); None when the config names none."""
    if where is None:
        return None
    if config.vault is None:
        raise ApiKeyError(f"the {what}'s API key is in Vault, but the config names no Vault")
    from freehold_serving.args import VaultKeySource
    from freehold_serving.vault_keys import VaultKeysError, read_secret

    vault = config.vault
    source = VaultKeySource(
        mount=where.mount,
        path=where.path,
        address=vault.address,
        role=vault.role,
        auth_mount=vault.auth_mount,
        jwt_path=vault.jwt_path,
        ca_cert=vault.ca_cert,
    )
    try:
        value = read_secret(source, f"the {what}'s API key").get(where.field)
    except VaultKeysError as exc:  # its message names the path and role, never a value
        raise ApiKeyError(str(exc)) from None
    if not value or not isinstance(value, str):
        raise ApiKeyError(
            f"the {what}'s API key: {where.mount}/{where.path} has no field {where.field!r}"
        )
    return value


def summary(result: dict[str, Any]) -> dict[str, Any]:
    """The outcome in at most SUMMARY_LIMIT bytes of JSON: every gate and every suite's
    gated metric when they fit; otherwise intervals, then passing gates, are dropped
    (the full result is on the results volume)."""
    suites = []
    for s in result["suites"]:
        m = s["metrics"][s["metric"]]
        suites.append(
            [s["name"], s["metric"], _r(m["value"]), _r(m["low"]), _r(m["high"]), s["samples"]]
        )
    gates = [
        [g["suite"], g["metric"], g["operator"], _r(g["threshold"]), _r(g["baseline"]),
         _r(g["value"]), g["passed"]]
        for g in result["gates"]
    ]  # fmt: skip
    out: dict[str, Any] = {
        "v": 1,
        "state": "done",
        "digest": result["digest"],
        "signer": result["signature"]["keyId"],
        "gatesPassed": result["gatesPassed"],
        "modelDigest": result["target"].get("digest"),
        "suites": suites,
        "gates": gates,
    }
    if len(_compact(out)) > SUMMARY_LIMIT:
        out["suites"] = [[n, m, v, None, None, k] for n, m, v, _, _, k in suites]
    if len(_compact(out)) > SUMMARY_LIMIT:
        out["gates"] = [g for g in gates if not g[6]]
        out["truncated"] = True
    while len(_compact(out)) > SUMMARY_LIMIT and (out["gates"] or out["suites"]):
        (out["gates"] or out["suites"]).pop()
    return out


def _r(value: float | None) -> float | None:
    return None if value is None else round(float(value), 5)


def _compact(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def failure(reason: str, message: str) -> dict[str, Any]:
    return {"v": 1, "state": "failed", "reason": reason, "message": message[:3000]}


def execute(
    config: JobConfig,
    out_dir: Path,
    progress: Progress,
    signer_factory: Callable[[JobConfig], Signer] = signer_for,
) -> tuple[int, dict[str, Any]]:
    """Run the evaluation; (exit code, termination summary). A failed gate is a
    completed evaluation (exit 0): the gates are in the summary."""
    spec = EvalJobSpec.model_validate(config.spec)
    try:
        spec, loaded = load_suites(
            spec, Path(config.pvc_root), Path(config.file_root) if config.file_root else None
        )
    except DatasetError as exc:
        progress.state = "failed"
        return EXIT_DATASET, failure("DatasetInvalid", str(exc))
    try:
        key = read_api_key(config, config.api_key, "target")
        judge_key = read_api_key(config, config.judge_api_key, "judge")
    except ApiKeyError as exc:
        progress.state = "failed"
        return EXIT_API_KEY, failure("ApiKeyUnavailable", str(exc))
    progress.total = sum(len(chosen_items(s, loaded[s.name])) for s in spec.suites)
    progress.state = "running"
    target = Endpoint(config.endpoint, config.model, key, spec.seed)
    judge = (
        Endpoint(config.judge_endpoint, config.judge_model, judge_key, spec.seed)
        if config.judge_endpoint
        else None
    )
    try:
        target.wait_ready(config.ready_timeout)
        if judge is not None:
            judge.wait_ready(config.ready_timeout)
        result = run(
            spec,
            loaded,
            target,
            config.name,
            progress.advance,
            judge=judge,
            baseline=config.baseline,
            model_digest=config.model_digest,
        )
    except EndpointError as exc:
        progress.state = "failed"
        return EXIT_ENDPOINT, failure("EndpointFailed", str(exc))
    except DatasetError as exc:
        progress.state = "failed"
        return EXIT_DATASET, failure("DatasetInvalid", str(exc))
    finally:
        target.close()
        if judge is not None:
            judge.close()
    try:
        signed = signing.sign(result, signer_factory(config))
    except Exception as exc:  # Vault and key-file errors alike: the message says which
        progress.state = "failed"
        return EXIT_SIGNING, failure("SigningFailed", f"{type(exc).__name__}: {exc}")
    out_dir.mkdir(parents=True, exist_ok=True)
    partial = out_dir / f".{RESULT_FILE}.partial"
    partial.write_text(json.dumps(signed, indent=1, sort_keys=True), encoding="utf-8")
    partial.replace(out_dir / RESULT_FILE)
    progress.state = "done"
    return 0, summary(signed)

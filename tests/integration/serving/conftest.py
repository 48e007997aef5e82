"""One local Ray Serve per test session, serving the real packaged Gemma 3 270M.

Applications sharing it: "open" (no auth, embeddings on), "locked" (API keys that
the replica reads from Vault itself, logging in with a ServiceAccount token file),
"tiny" (a one-request queue, to overload), "smol" and "routed" (SmolLM2 on one replica,
and on two behind a prefix-aware router) and the memory store. Real Ray, real
llama.cpp, real model; Vault is tests/vault_server.py (the one test double: Vault
cannot be installed here).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import yaml

from freehold.api.model_deployment import ModelDeploymentSpec
from freehold.builders.serving_args import serving_args_for
from freehold.local.up import local_ray
from freehold.validation import defaulted
from freehold_serving.args import ServingArgs
from tests.otlp_receiver import Received, otlp_receiver
from tests.paths import EXAMPLES
from tests.ports import free_port

if TYPE_CHECKING:
    from tests.vault_server import VaultServer

API_KEY = "fh-test-key-7d1c0a"  # a test credential, only ever given to this local server
MODEL = "gemma-3-270m"


def example_spec(**changes: object) -> ModelDeploymentSpec:
    manifest = defaulted(yaml.safe_load((EXAMPLES / "modeldeployment.yaml").read_text()))
    manifest["spec"].update(changes)
    manifest["spec"]["scaling"]["maxReplicas"] = 1
    return ModelDeploymentSpec.model_validate(manifest["spec"])


def example_args(**spec_overrides: object) -> ServingArgs:
    manifest = yaml.safe_load((EXAMPLES / "modeldeployment.yaml").read_text())
    spec = copy.deepcopy(defaulted(manifest)["spec"])
    for dotted, value in spec_overrides.items():
        node = spec
        *parents, leaf = dotted.split("__")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return serving_args_for(ModelDeploymentSpec.model_validate(spec), "gemma-270m", "test")


def with_updates(args: ServingArgs, **updates: object) -> ServingArgs:
    return ServingArgs.model_validate({**args.model_dump(), **updates})


MEMORY_KEYS = {"acme": "fh-mem-acme-3b9e", "globex": "fh-mem-globex-81f2"}
SMOL = "smollm2-135m-instruct"


@dataclass(frozen=True)
class Stack:
    root: str  # http://127.0.0.1:PORT
    memory_dir: Path
    audit_dir: Path  # access records of the "locked" app (signed with audit_key)
    audit_key: Path
    otlp: Received  # what the "locked" app exported over OTLP (spans, audit events)
    vault_url: str = ""  # the Vault stand-in the "locked" app reads its keys from
    vault_token: str = ""  # its root token (an admin's, for `freehold keys`)
    locked_keys: dict[str, object] | None = None  # the "locked" app's key source (args)
    vault: VaultServer | None = None  # the same stand-in (tests add identities to it)

    @property
    def memory(self) -> str:
        return f"{self.root}/v1/memory"

    def base(self, app: str = "") -> str:
        return f"{self.root}{'/' + app if app else ''}/v1"


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    from ray import serve

    from freehold.adapters.vault import VaultApi
    from freehold.builders.model_workload import BuildContext
    from freehold.builders.vault import build_role
    from freehold_serving.app import build_app
    from tests.vault_server import VaultServer

    os.environ["HF_HUB_OFFLINE"] = "1"
    vault = VaultServer().__enter__()
    vault.state.kv["secret/data/test/gemma/api-keys"] = {"primary": API_KEY}
    locked_spec = example_spec(auth={"apiKeys": {"path": "test/gemma/api-keys"}})
    role = build_role(
        locked_spec,
        BuildContext(
            name="gemma-270m",
            namespace="test",
            serving_image="-",
            ray_version="-",
            api_server_cidr="10.0.0.1/32",
        ),
    )
    VaultApi.connect(vault.url, vault.state.root_token).ensure(role)
    jwt: Path = tmp_path_factory.mktemp("vault") / "token"
    jwt.write_text("projected-token-gemma")
    vault.state.service_accounts["projected-token-gemma"] = ("gemma-270m-model", "test")
    audit_dir = tmp_path_factory.mktemp("audit")
    audit = {"directory": str(audit_dir), "signing_key_file": str(audit_dir / "audit.pem")}
    receiver = otlp_receiver()  # kept: a dropped context manager closes its server
    otlp_url, otlp = receiver.__enter__()
    port = free_port()
    # 9 logical CPUs on a 2-core machine: four single-replica apps and a two-replica one,
    # oversubscribed on purpose so they fit; throughput is measured in bench/, not here.
    # Ray must start before usearch is loaded in this process: usearch 2.26 (libstdc++ of
    # its own build) makes ray.init abort in std::regex. This directory sorts before the
    # integration tests that use the memory store in-process.
    with local_ray(9, "127.0.0.1", port):
        open_args = example_args(engine__contextLength=1024, scaling__maxReplicas=1)
        memory_url = f"http://127.0.0.1:{port}/v1/memory"
        open_args = with_updates(open_args, memory_stores={"assistant-memory": memory_url})
        serve.run(build_app(open_args), name="open", route_prefix="/", blocking=False)
        locked = with_updates(
            serving_args_for(
                locked_spec, "gemma-270m", "test", vault_address=vault.url, vault_role=role.name
            ),
            embeddings={"enabled": False},
        )
        assert locked.api_keys is not None and locked.api_keys.vault is not None
        # Re-read every second, so revocations and rotations show within the tests' waits.
        source = {**locked.api_keys.vault.model_dump(), "jwt_path": str(jwt), "refresh_seconds": 1}
        locked = with_updates(
            locked,
            api_keys={"vault": source},
            audit=audit,
            telemetry={"otlp_endpoint": otlp_url},
        )
        serve.run(build_app(locked), name="locked", route_prefix="/locked", blocking=False)
        tiny = example_args(
            scaling__maxReplicas=1,
            scaling__maxOngoingRequests=1,
            scaling__targetOngoingRequests=1,
            scaling__maxQueuedRequests=1,
        )
        tiny = with_updates(tiny, embeddings={"enabled": False})
        serve.run(build_app(tiny), name="tiny", route_prefix="/tiny", blocking=False)
        memory_dir = deploy_memory(tmp_path_factory, port, otlp_url)
        yield Stack(
            f"http://127.0.0.1:{port}",
            memory_dir,
            audit_dir,
            audit_dir / "audit.pem",
            otlp,
            vault.url,
            vault.state.root_token,
            source,
            vault,
        )
    vault.stop()
    receiver.__exit__(None, None, None)


def deploy_memory(tmp_path_factory: pytest.TempPathFactory, port: int, otlp: str) -> Path:
    """SmolLM2 (the extraction model) at /smol and the example MemoryStore at /v1/memory,
    with two tenants' keys in a key file and its keys in local key files."""
    from ray import serve

    from freehold.api.memory_store import MemoryStoreSpec
    from freehold.builders.memory_args import memory_args_for
    from freehold.local.up import DEFAULT_MANIFEST
    from freehold_serving.app import build_app
    from freehold_serving.memory.app import build_memory_app

    smol_spec = ModelDeploymentSpec.model_validate(defaulted(DEFAULT_MANIFEST)["spec"])
    smol = serving_args_for(smol_spec, "smollm2-135m", "test")
    engine = smol.engine.model_dump()
    engine["llamacpp"]["threads"] = 1
    smol = with_updates(smol, embeddings={"enabled": False}, engine=engine)
    serve.run(build_app(smol), name="smol", route_prefix="/smol", blocking=False)
    # The same model on two replicas behind a front, routed by prefix (test_prefix_routing).
    two = {"min_replicas": 2, "max_replicas": 2}
    routed = with_updates(smol, autoscaling={**smol.autoscaling.model_dump(), **two})
    serve.run(build_app(routed), name="routed", route_prefix="/routed", blocking=False)
    keys = tmp_path_factory.mktemp("memkeys") / "keys"
    keys.write_text("".join(f"{key} {tenant}\n" for tenant, key in MEMORY_KEYS.items()))
    data = tmp_path_factory.mktemp("memory")
    manifest = defaulted(yaml.safe_load((EXAMPLES / "memorystore.yaml").read_text()))
    args = memory_args_for(
        MemoryStoreSpec.model_validate(manifest["spec"]),
        "assistant-memory",
        "test",
        data_dir=str(data),
        api_keys_file=str(keys),
        model_urls={"smollm2-135m": (f"http://127.0.0.1:{port}/smol/v1", SMOL, smol.model.sha256)},
    )
    # Sweep every second, so the retention test need not wait an hour.
    args = args.model_copy(update={"sweep_seconds": 1.0, "otlp_endpoint": otlp})
    serve.run(build_memory_app(args), name="memory", route_prefix="/v1/memory", blocking=False)
    return data

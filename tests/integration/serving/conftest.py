"""One local Ray Serve per test session, serving the real packaged Gemma 3 270M.

Three applications share it: "open" (no auth, embeddings on), "locked" (API keys that
the replica reads from Vault itself, logging in with a ServiceAccount token file), and
"tiny" (a one-request queue, to overload). Real Ray, real llama.cpp, real model; Vault is
tests/vault_server.py (the one test double: Vault cannot be installed here).
"""

from __future__ import annotations

import copy
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from freehold.api.model_deployment import ModelDeploymentSpec
from freehold.builders.serving_args import serving_args_for
from freehold.local.up import local_ray
from freehold.validation import defaulted
from freehold_serving.args import ServingArgs
from tests.paths import EXAMPLES

API_KEY = "fh-test-key-7d1c0a"  # a test credential, only ever given to this local server
MODEL = "gemma-3-270m"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


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


@dataclass(frozen=True)
class Stack:
    root: str  # http://127.0.0.1:PORT

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
    port = free_port()
    # 6 logical CPUs on a 2-core machine: three single-replica apps, oversubscribed on
    # purpose so they fit; throughput is measured in bench/, not here.
    with local_ray(6, "127.0.0.1", port):
        open_args = example_args(engine__contextLength=1024, scaling__maxReplicas=1)
        serve.run(build_app(open_args), name="open", route_prefix="/", blocking=False)
        locked = with_updates(
            serving_args_for(
                locked_spec, "gemma-270m", "test", vault_address=vault.url, vault_role=role.name
            ),
            embeddings={"enabled": False},
        )
        assert locked.api_keys is not None and locked.api_keys.vault is not None
        locked = with_updates(
            locked, api_keys={"vault": {**locked.api_keys.vault.model_dump(), "jwt_path": str(jwt)}}
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
        yield Stack(f"http://127.0.0.1:{port}")
    vault.stop()

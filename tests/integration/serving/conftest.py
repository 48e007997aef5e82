"""One local Ray Serve per test session, serving the real packaged Gemma 3 270M.

Three applications share it: "open" (no auth, embeddings on), "locked" (API keys from a
file, as a tmpfs file written from Vault would be), and "tiny" (a one-request queue, to
overload). Nothing here is a test double: real Ray, real llama.cpp, real model.
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


def example_args(**spec_overrides: object) -> ServingArgs:
    from freehold.api.model_deployment import ModelDeploymentSpec

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

    from freehold_serving.app import build_app

    os.environ["HF_HUB_OFFLINE"] = "1"
    keys: Path = tmp_path_factory.mktemp("keys") / "api-keys"
    keys.write_text(f"# accepted keys\n{API_KEY}\n")
    port = free_port()
    # 6 logical CPUs on a 2-core machine: three single-replica apps, oversubscribed on
    # purpose so they fit; throughput is measured in bench/, not here.
    with local_ray(6, "127.0.0.1", port):
        open_args = example_args(engine__contextLength=1024, scaling__maxReplicas=1)
        serve.run(build_app(open_args), name="open", route_prefix="/", blocking=False)
        locked = with_updates(
            example_args(scaling__maxReplicas=1),
            api_keys={"file": str(keys)},
            embeddings={"enabled": False},
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

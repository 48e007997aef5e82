"""s3:// models against an S3-compatible server with authentication enforced (moto's server,
tests/s3_server.py: no real store installs here) and our Vault test server (tokens and
policies enforced): the access key is read from Vault by `freehold model fetch --from-env`
exactly as the serving pod's init container runs it (the operator's args, a projected
token), the packaged SmolLM2 is fetched and kept only because its sha256 matches; a wrong
key, a missing object and a different object are refused, and nothing is kept."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from freehold.adapters.vault import VaultApi
from freehold.api.model_deployment import ModelDeploymentSpec
from freehold.builders.model_workload import BuildContext
from freehold.builders.serving_args import serving_args_for
from freehold.builders.vault import build_role
from freehold.local.up import SMOLLM2_SHA256, load_stack, local_args
from freehold.settings import LocalSettings
from freehold.validation import defaulted
from freehold_serving.model_files import resolve
from tests.paths import EXAMPLES
from tests.s3_server import Store, s3_server
from tests.vault_server import VaultServer

pytestmark = pytest.mark.slow


HF_FILES = {"config.json": b"{}", "sub/tokenizer.json": b"{}", "model.safetensors": b"w" * 4096}
LORA_FILES = {"adapter_config.json": b'{"r": 8}', "adapter_model.safetensors": b"l" * 1024}


def digest_of(files: dict[str, bytes]) -> str:
    from freehold_serving.model_files import manifest_digest

    return manifest_digest(
        [(name, hashlib.sha256(data).hexdigest()) for name, data in files.items()]
    )


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    from minio import Minio

    with s3_server(tmp_path_factory.mktemp("s3")) as running:
        client = Minio(
            running.endpoint.removeprefix("http://"),
            access_key=running.access_key,
            secret_key=running.secret_key,
            secure=False,
        )
        client.make_bucket("models")
        stack = load_stack([])
        packaged = resolve(
            local_args(stack.deployment, LocalSettings(data_dir=Path("/tmp")), 2).model
        )
        client.fput_object("models", "smollm2/model.gguf", str(packaged))
        other = b"GGUF not the model you pinned"
        client.put_object("models", "other/model.gguf", io.BytesIO(other), len(other))
        for name, data in HF_FILES.items():
            client.put_object("models", f"hf/smol/{name}", io.BytesIO(data), len(data))
        for name, data in LORA_FILES.items():
            client.put_object("models", f"lora/tax/{name}", io.BytesIO(data), len(data))
        yield running


def pod_model(
    store: Store, vault: VaultServer, tmp: Path, key: str, credentials: bool = True
) -> dict[str, Any]:
    """The FREEHOLD_MODEL the operator gives the init container, with a projected token."""
    return pod_env(store, vault, tmp, key, credentials)[0]


def pod_env(
    store: Store,
    vault: VaultServer,
    tmp: Path,
    key: str,
    credentials: bool = True,
    **spec_changes: Any,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """FREEHOLD_MODEL and FREEHOLD_ADAPTERS as the operator gives them to the init
    container, with a projected token."""
    doc = defaulted(yaml.safe_load((EXAMPLES / "smollm2.yaml").read_text()))
    doc["spec"]["model"]["uri"] = f"s3://models/{key}"
    doc["spec"]["model"]["s3"] = {"endpoint": store.endpoint}
    if credentials:
        doc["spec"]["model"]["s3"]["credentials"] = {"path": "team/s3"}
    doc["spec"] |= spec_changes
    spec = ModelDeploymentSpec.model_validate(doc["spec"])
    ctx = BuildContext(name="smol", namespace="team", serving_image="-", ray_version="-",
                       api_server_cidr="10.0.0.1/32")  # fmt: skip
    role = build_role(spec, ctx)
    VaultApi.connect(vault.url, vault.state.root_token).ensure(role)
    token = tmp / "token"
    token.write_text("projected-token-smol")
    vault.state.service_accounts["projected-token-smol"] = ("smol-model", "team")
    args = serving_args_for(spec, "smol", "team", vault_address=vault.url, vault_role=role.name)
    configs = [json.loads(c.model_dump_json()) for c in [args.model, *args.adapters]]
    for config in configs:
        config["models_root"] = str(tmp / "models")
        if config["s3"] and config["s3"]["credentials"]:
            config["s3"]["credentials"]["jwt_path"] = str(token)
    return configs[0], configs[1:]


def fetch(
    model: dict[str, Any], adapters: list[dict[str, Any]] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FREEHOLD_MODEL": json.dumps(model)}
    if adapters is not None:
        env["FREEHOLD_ADAPTERS"] = json.dumps(adapters)
    return subprocess.run(
        [sys.executable, "-m", "freehold", "model", "fetch", "--from-env"],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def test_the_packaged_model_is_fetched_with_a_key_from_vault(store: Store, tmp_path: Path) -> None:
    with VaultServer() as vault:
        vault.state.kv["secret/data/team/s3"] = {
            "accessKey": store.access_key,
            "secretKey": store.secret_key,
        }
        model = pod_model(store, vault, tmp_path, "smollm2/model.gguf")
        done = fetch(model)
        assert done.returncode == 0, done.stderr
        kept = tmp_path / "models" / "s3" / SMOLLM2_SHA256
        assert kept.is_file()
        assert store.secret_key not in done.stdout + done.stderr

        # The same object under a digest it does not have: refused, nothing kept.
        other = {**model, "uri": "s3://models/other/model.gguf", "sha256": "e" * 64}
        refused = fetch(other)
        assert refused.returncode == 3 and "does not match" in refused.stderr
        assert not (tmp_path / "models" / "s3" / ("e" * 64)).exists()
        missing = fetch({**model, "uri": "s3://models/none.gguf", "sha256": "d" * 64})
        assert missing.returncode == 1 and "NoSuchKey" in missing.stderr

        # A key the store does not know, and no key at all: the store says no.
        vault.state.kv["secret/data/team/s3"] = {"accessKey": "AKIAWRONG", "secretKey": "nope"}
        (tmp_path / "models" / "s3" / SMOLLM2_SHA256).unlink()
        wrong = fetch(model)
        assert wrong.returncode == 1 and "cannot get the object" in wrong.stderr
        assert "nope" not in wrong.stderr and "Traceback" not in wrong.stderr
        vault.state.kv["secret/data/team/s3"] = {"accessKey": store.access_key}
        incomplete = fetch(model)
        assert incomplete.returncode == 1 and "accessKey and secretKey" in incomplete.stderr
        anonymous = fetch(pod_model(store, vault, tmp_path, "smollm2/model.gguf", False))
        assert anonymous.returncode == 1 and "cannot get the object" in anonymous.stderr


def test_the_workload_fetches_s3_with_its_own_vault_role() -> None:
    from freehold.builders.deployment import build_deployment
    from freehold.builders.network import build_allow
    from freehold.builders.vault import readable_paths
    from freehold.validation import validate
    from tests.pss import violations

    doc = yaml.safe_load((EXAMPLES / "smollm2.yaml").read_text())
    doc["spec"]["model"]["uri"] = "s3://models/smollm2/model.gguf"
    assert any("spec.model.s3" in str(e) for e in validate(doc))  # CEL: the store is needed
    doc["spec"]["model"]["s3"] = {
        "endpoint": "https://s3.gov.example:9443",
        "credentials": {"path": "team/s3"},
    }
    assert validate(doc) == []
    spec = ModelDeploymentSpec.model_validate(defaulted(doc)["spec"])
    ctx = BuildContext(
        name="smol",
        namespace="team",
        serving_image="img",
        ray_version="2",
        api_server_cidr="10.0.0.1/32",
        vault_address="https://vault:8200",
    )
    pod = build_deployment(spec, ctx)["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    model = json.loads(next(e["value"] for e in init["env"] if e["name"] == "FREEHOLD_MODEL"))
    assert model["s3"]["credentials"]["path"] == "team/s3"
    assert model["s3"]["credentials"]["role"] == "freehold.team.smol"
    assert "accessKey" not in json.dumps(pod)  # where the key is, never the key
    assert {m["name"] for m in init["volumeMounts"]} >= {"model-fetched", "vault-token"}
    assert violations(pod) == []
    assert "secret/data/team/s3" in readable_paths(spec)
    egress = build_allow(spec, ctx, ray=False)["spec"]["egress"]
    assert {"ports": [{"protocol": "TCP", "port": 9443}]} in egress


def test_a_model_directory_is_every_object_under_its_prefix(store: Store, tmp_path: Path) -> None:
    digest = digest_of(HF_FILES)
    with VaultServer() as vault:
        vault.state.kv["secret/data/team/s3"] = {
            "accessKey": store.access_key,
            "secretKey": store.secret_key,
        }
        model = pod_model(store, vault, tmp_path, "hf/smol")
        done = fetch({**model, "sha256": digest, "format": "safetensors"})
        assert done.returncode == 0, done.stderr
        kept = tmp_path / "models" / "s3" / digest
        assert (kept / "sub" / "tokenizer.json").read_bytes() == b"{}"
        refused = fetch({**model, "sha256": "a" * 64, "format": "safetensors"})
        assert refused.returncode == 3 and not (tmp_path / "models" / "s3" / ("a" * 64)).exists()
        empty = fetch({**model, "uri": "s3://models/none", "format": "safetensors"})
        assert empty.returncode == 1 and "no objects under this prefix" in empty.stderr


def test_s3_adapters_come_from_the_models_store_with_its_key(store: Store, tmp_path: Path) -> None:
    """The operator's args for a vLLM model in a store with an s3:// LoRA adapter beside it:
    the init container fetches both with the model's key, each kept only if its digest
    matches."""
    model_digest, lora_digest = digest_of(HF_FILES), digest_of(LORA_FILES)
    with VaultServer() as vault:
        vault.state.kv["secret/data/team/s3"] = {
            "accessKey": store.access_key,
            "secretKey": store.secret_key,
        }
        lora = {"name": "smol-tax", "uri": "s3://models/lora/tax", "sha256": lora_digest}
        model, adapters = pod_env(
            store, vault, tmp_path, "hf/smol", engine={"name": "vllm"}, adapters=[lora]
        )
        model |= {"sha256": model_digest, "format": "safetensors"}
        assert adapters[0]["s3"] == model["s3"]  # the model's store and key
        done = fetch(model, adapters)
        assert done.returncode == 0, done.stderr
        kept = tmp_path / "models" / "s3" / lora_digest
        assert (kept / "adapter_config.json").read_bytes() == LORA_FILES["adapter_config.json"]
        assert (tmp_path / "models" / "s3" / model_digest / "config.json").is_file()
        # An adapter pinned to other bytes: refused, nothing of it kept.
        wrong = [{**adapters[0], "sha256": "f" * 64}]
        refused = fetch(model, wrong)
        assert refused.returncode == 3 and "does not match" in refused.stderr
        assert not (tmp_path / "models" / "s3" / ("f" * 64)).exists()

        # `freehold up` fetches them too, before the model server starts.
        from freehold.local.up import fetch_adapters
        from freehold_serving.args import ModelConfig, ServingArgs

        local = ModelConfig.model_validate({**adapters[0], "models_root": str(tmp_path / "up")})
        fetch_adapters(ServingArgs(name="t", model=ModelConfig(**model), adapters=[local]))
        assert (tmp_path / "up" / "s3" / lora_digest / "adapter_model.safetensors").is_file()

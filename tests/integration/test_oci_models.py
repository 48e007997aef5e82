"""oci:// models against a real OCI registry (Debian's docker-registry on loopback): the
packaged SmolLM2 pushed with oras, fetched by `freehold model fetch` (what the serving pod's
init container runs) and by freehold up's path, its digest checked before it is kept; a
different artifact under the same tag is refused and nothing is left where a server would
read it; the builders wire the init container, volume and egress."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from freehold.local.up import SMOLLM2_SHA256, load_stack, local_args, verify_model_and_signer
from freehold.settings import LocalSettings
from freehold_serving.model_files import resolve
from tests.registry import push, registry

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with registry(tmp_path_factory.mktemp("registry")) as running:
        yield running


def fetch(uri: str, sha: str, to: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "freehold", "model", "fetch", "--uri", uri, "--sha256", sha,
         "--to", str(to)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def test_the_packaged_model_pushed_fetched_and_verified(host: str, tmp_path: Path) -> None:
    stack = load_stack([])
    packaged = resolve(local_args(stack.deployment, LocalSettings(data_dir=tmp_path), 2).model)
    staged = tmp_path / "push" / packaged.name
    staged.parent.mkdir()
    staged.write_bytes(packaged.read_bytes())
    push(host, "models/smollm2:135m", staged)
    uri = f"oci://{host}/models/smollm2:135m"
    done = fetch(uri, SMOLLM2_SHA256, tmp_path / "models")
    assert done.returncode == 0, done.stderr
    kept = tmp_path / "models" / "oci" / SMOLLM2_SHA256
    assert kept.is_file() and hashlib.sha256(kept.read_bytes()).hexdigest() == SMOLLM2_SHA256

    # freehold up's path: the manifest's oci:// model is fetched under the data dir and
    # verified before anything starts.
    data = tmp_path / "data"
    deployment = stack.deployment
    spec = deployment.spec.model_copy(
        update={"model": deployment.spec.model.model_copy(update={"uri": uri})}
    )
    args = local_args(
        type(deployment)(deployment.name, deployment.namespace, spec),
        LocalSettings(data_dir=data),
        2,
    )
    verified, _ = verify_model_and_signer(args, lambda _n: None)
    assert resolve(verified.model) == data / "models" / "oci" / SMOLLM2_SHA256


def test_a_different_artifact_is_refused_and_nothing_is_kept(host: str, tmp_path: Path) -> None:
    other = tmp_path / "m.gguf"
    other.write_bytes(b"GGUF not the model you pinned")
    push(host, "models/tampered:1", other)
    done = fetch(f"oci://{host}/models/tampered:1", SMOLLM2_SHA256, tmp_path / "models")
    assert done.returncode == 3
    assert "model verification failed" in done.stderr and "does not match" in done.stderr
    assert not (tmp_path / "models" / "oci" / SMOLLM2_SHA256).exists()
    assert list((tmp_path / "models" / "oci").iterdir()) == []  # no partial pull left
    missing = fetch(f"oci://{host}/models/none:1", SMOLLM2_SHA256, tmp_path / "models")
    assert missing.returncode == 1 and "cannot pull" in missing.stderr


def test_the_workload_fetches_with_an_init_container() -> None:
    import yaml

    from freehold.api.model_deployment import ModelDeploymentSpec
    from freehold.builders.deployment import build_deployment
    from freehold.builders.model_workload import BuildContext
    from freehold.builders.network import build_allow
    from freehold.validation import defaulted
    from tests.paths import EXAMPLES
    from tests.pss import violations

    doc = defaulted(yaml.safe_load((EXAMPLES / "smollm2.yaml").read_text()))
    doc["spec"]["model"]["uri"] = "oci://registry.gov.example:5443/models/smollm2:135m"
    spec = ModelDeploymentSpec.model_validate(doc["spec"])
    ctx = BuildContext(name="smol", namespace="team", serving_image="img@sha256:" + "a" * 64,
                       ray_version="2", api_server_cidr="10.0.0.1/32")  # fmt: skip
    pod = build_deployment(spec, ctx)["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    assert init["command"] == ["freehold", "model", "fetch", "--from-env"]
    env = {e["name"]: e["value"] for e in init["env"]}
    assert '"uri":"oci://registry.gov.example:5443/models/smollm2:135m"' in env["FREEHOLD_MODEL"]
    assert {"name": "model-fetched", "mountPath": "/models/oci"} in init["volumeMounts"]
    serving = pod["containers"][0]
    assert {"name": "model-fetched", "mountPath": "/models/oci", "readOnly": True} in serving[
        "volumeMounts"
    ]
    assert violations(pod) == []  # restricted Pod Security, init container included
    egress = build_allow(spec, ctx, ray=False)["spec"]["egress"]
    assert {"ports": [{"protocol": "TCP", "port": 5443}]} in egress


def test_a_signature_kept_in_the_registry_is_fetched_and_verified(
    host: str, tmp_path: Path
) -> None:
    """The model and its signature bundle as two artifacts in the same registry: the init
    container's command fetches both; the serving side verifies before loading; a
    signature by another key is refused."""
    import json

    from freehold_serving.args import ModelConfig, SignatureConfig
    from freehold_serving.model_files import verify_file
    from freehold_serving.signatures import sign_model
    from tests.unit.test_model_signatures import keypair

    model_file = tmp_path / "push" / "model.gguf"
    model_file.parent.mkdir()
    model_file.write_bytes(b"GGUF" + bytes(range(256)) * 64)
    sha = hashlib.sha256(model_file.read_bytes()).hexdigest()
    private, public = keypair(tmp_path / "keys")
    bundle = tmp_path / "sig" / "model.gguf.sig"
    bundle.parent.mkdir()
    sign_model(model_file, bundle, private)
    push(host, "models/tiny:1", model_file)
    push(host, "models/tiny-signature:1", bundle)
    config = ModelConfig(
        uri=f"oci://{host}/models/tiny:1",
        sha256=sha,
        served_name="tiny",
        models_root=str(tmp_path / "models"),
        signature=SignatureConfig(ref=f"oci://{host}/models/tiny-signature:1", public_key=public),
    )
    done = subprocess.run(
        [sys.executable, "-m", "freehold", "model", "fetch", "--from-env"],
        env={**os.environ, "FREEHOLD_MODEL": config.model_dump_json()},
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    _, verified = verify_file(config)
    assert verified is not None and verified.signer.startswith("key sha256:")
    _, other = keypair(tmp_path / "other")
    foreign = config.model_copy(
        update={"signature": config.signature.model_copy(update={"public_key": other})}  # type: ignore[union-attr]
    )
    from freehold_serving.model_files import ModelSignatureError

    with pytest.raises(ModelSignatureError, match="not made with the trusted key"):
        verify_file(foreign)
    assert json.loads(config.model_dump_json())["signature"]["ref"].startswith("oci://")


def test_a_model_directory_is_one_artifact_of_its_files(host: str, tmp_path: Path) -> None:
    """engine vllm's Hugging Face directories: every file of the artifact, kept as a folder
    only when its directory digest is the pinned one."""
    from freehold_serving.args import ModelConfig
    from freehold_serving.fetch import fetch_model
    from freehold_serving.model_files import DigestMismatchError, directory_digest

    folder = tmp_path / "hf"
    folder.mkdir()
    for name, data in {
        "config.json": b"{}",
        "tokenizer.json": b"{}",
        "model.safetensors": b"w" * 4096,
    }.items():
        (folder / name).write_bytes(data)
    push(host, "models/hf-dir:1", *sorted(folder.iterdir()))
    digest = directory_digest(folder)
    model = ModelConfig(
        uri=f"oci://{host}/models/hf-dir:1", sha256=digest, served_name="m",
        format="safetensors", models_root=str(tmp_path / "models"),
    )  # fmt: skip
    kept = fetch_model(model)
    assert kept == tmp_path / "models" / "oci" / digest and kept.is_dir()
    assert directory_digest(kept) == digest
    assert fetch_model(model) == kept  # already there and intact: not pulled again
    wrong = model.model_copy(update={"sha256": "f" * 64})
    with pytest.raises(DigestMismatchError):
        fetch_model(wrong)
    assert not (tmp_path / "models" / "oci" / ("f" * 64)).exists()


def test_oci_lora_adapters_are_fetched_by_the_init_container_program(
    host: str, tmp_path: Path
) -> None:
    """`freehold model fetch --from-env` as the operator writes its environment for an
    engine vllm model on a claim with an oci:// adapter: the adapter directory lands where
    the replica's loader reads it, checked against its digest; a wrong digest exits 3 and
    keeps nothing."""
    import json

    from freehold_serving.args import ModelConfig
    from freehold_serving.model_files import directory_digest, fetched_path

    folder = tmp_path / "lora"
    folder.mkdir()
    (folder / "adapter_config.json").write_text('{"r": 8}')
    (folder / "adapter_model.safetensors").write_bytes(b"l" * 2048)
    push(host, "adapters/legal:1", *sorted(folder.iterdir()))
    models = tmp_path / "models"
    model = ModelConfig(
        uri="pvc://models/llama", sha256="a" * 64, served_name="llama",
        format="safetensors", models_root=str(models),
    )  # fmt: skip
    adapter = ModelConfig(
        uri=f"oci://{host}/adapters/legal:1", sha256=directory_digest(folder),
        served_name="legal", format="safetensors", models_root=str(models),
    )  # fmt: skip

    def run(adapters: list[ModelConfig]) -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            "FREEHOLD_MODEL": model.model_dump_json(),
            "FREEHOLD_ADAPTERS": json.dumps([a.model_dump(mode="json") for a in adapters]),
        }
        return subprocess.run(
            [sys.executable, "-m", "freehold", "model", "fetch", "--from-env"],
            capture_output=True, text=True, timeout=300, check=False, env=env,
        )  # fmt: skip

    done = run([adapter])
    assert done.returncode == 0, done.stderr
    kept = fetched_path(adapter)
    assert kept.is_dir() and directory_digest(kept) == adapter.sha256
    assert resolve(adapter) == kept  # where the replica's adapter loader reads it
    wrong = adapter.model_copy(update={"sha256": "e" * 64})
    refused = run([wrong])
    assert refused.returncode == 3, refused.stderr
    assert not fetched_path(wrong).exists()

    # `freehold up` fetches them too, before the model server starts.
    from freehold.local.up import fetch_adapters
    from freehold_serving.args import ServingArgs

    local = adapter.model_copy(update={"models_root": str(tmp_path / "local")})
    fetch_adapters(ServingArgs(name="t", model=model, adapters=[local]))
    assert directory_digest(fetched_path(local)) == adapter.sha256

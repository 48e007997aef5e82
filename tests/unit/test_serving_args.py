"""The spec -> serving args translation both the operator and `freehold up` use."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from freehold.api.model_deployment import ModelDeploymentSpec
from freehold.builders.serving_args import serving_args_for
from freehold.local.up import replicas_that_fit
from freehold.validation import defaulted
from freehold_serving.app import deployment_options, replica_options
from freehold_serving.args import IMPORT_PATH, ServingArgs
from freehold_serving.engines import remote
from tests.paths import EXAMPLES


def spec_of(name: str, **changes: Any) -> ModelDeploymentSpec:
    manifest = defaulted(yaml.safe_load((EXAMPLES / name).read_text()))
    manifest["spec"].update(changes)
    return ModelDeploymentSpec.model_validate(manifest["spec"])


def test_example_translates_to_args() -> None:
    args = serving_args_for(spec_of("modeldeployment.yaml"), "gemma-270m", "freehold-demo")
    assert args.model.served_name == "gemma-3-270m"
    assert args.model.sha256.startswith("a5fd3b62")
    assert args.engine.llamacpp.threads == 2
    assert args.autoscaling.max_replicas == 2
    assert args.api_keys is None
    assert args.telemetry.capture_content is False
    # the args survive the trip through serveConfigV2 (JSON) unchanged
    assert ServingArgs.model_validate_json(args.model_dump_json()) == args
    assert IMPORT_PATH == "freehold_serving.app:build_app"


def test_vault_api_keys_become_a_reference_never_a_value() -> None:
    args = serving_args_for(spec_of("modeldeployment-vllm-gpu.yaml"), "llama-8b", "ns")
    assert args.api_keys is not None and args.api_keys.vault is not None
    assert args.api_keys.vault.path == "freehold-demo/llama-8b/api-keys"
    assert args.engine.name == "vllm" and args.engine.gpus == 1
    assert args.engine.vllm.dtype == "bfloat16"


def test_threads_default_to_the_cpu_request() -> None:
    spec = spec_of(
        "modeldeployment.yaml",
        engine={"name": "llamacpp"},
        resources={"cpu": "3500m", "memory": "2Gi"},
    )
    assert serving_args_for(spec, "m", "ns").engine.llamacpp.threads == 3
    assert serving_args_for(spec, "m", "ns", api_keys_file="/k").api_keys.file == "/k"  # type: ignore[union-attr]


def test_fixed_replicas_and_autoscaling_options() -> None:
    args = serving_args_for(spec_of("modeldeployment.yaml"), "m", "ns")
    opts = replica_options(args)
    assert opts["autoscaling_config"]["min_replicas"] == 1
    assert opts["autoscaling_config"]["max_replicas"] == 2
    assert opts["max_ongoing_requests"] == 4 + 16 + 16 == opts["max_queued_requests"]
    assert opts["backpressure_config"].retry_after_s == 1
    actor = opts["ray_actor_options"]
    assert actor["num_cpus"] == 2 and actor["num_gpus"] == 0
    assert actor["runtime_env"]["env_vars"]["RAY_worker_niceness"] == "0"
    fixed = serving_args_for(
        spec_of(
            "modeldeployment.yaml",
            scaling={
                "minReplicas": 3,
                "maxReplicas": 3,
                "targetOngoingRequests": 1,
                "maxOngoingRequests": 4,
                "maxQueuedRequests": 16,
            },
        ),
        "m",
        "ns",
    )
    assert replica_options(fixed)["num_replicas"] == 3
    zero = serving_args_for(
        spec_of(
            "modeldeployment.yaml",
            scaling={
                "minReplicas": 0,
                "maxReplicas": 2,
                "targetOngoingRequests": 1,
                "maxOngoingRequests": 4,
                "maxQueuedRequests": 16,
            },
        ),
        "m",
        "ns",
    )
    auto = replica_options(zero)["autoscaling_config"]
    assert auto["min_replicas"] == 0 and auto["initial_replicas"] == 1


def test_replicas_that_fit() -> None:
    assert replicas_that_fit(2, 2) == 1
    assert replicas_that_fit(8, 2) == 4
    assert replicas_that_fit(1, 4) == 1


@pytest.mark.parametrize(
    ("api", "serving"),
    [("LlamaCppArgs", "LlamaCppConfig"), ("VllmArgs", "VllmConfig")],
)
def test_engine_settings_cannot_drift_between_api_and_serving(api: str, serving: str) -> None:
    """One definition: the API's engine args and the serving contract accept the same
    values (bounds, enums) and default to the same values (threads excepted: the API
    defaults it to the CPU request)."""
    import freehold.api.model_deployment as api_models
    import freehold_serving.args as serving_args

    api_model = getattr(api_models, api)
    serving_model = getattr(serving_args, serving)
    api_schema = api_model.model_json_schema()["properties"]
    serving_schema = serving_model.model_json_schema()["properties"]
    assert set(api_model.model_fields) == set(serving_model.model_fields)
    keys = ("minimum", "maximum", "enum", "type", "anyOf")
    for name, field in api_model.model_fields.items():
        ours = {k: v for k, v in api_schema[field.alias or name].items() if k in keys}
        theirs = {k: v for k, v in serving_schema[name].items() if k in keys}
        if name == "threads":
            ours = {k: v for k, v in ours["anyOf"][0].items() if k in keys}
        assert ours == theirs, name
        if name != "threads":
            assert field.default == serving_model.model_fields[name].default, name


def test_prefix_aware_llamacpp_replicas_sit_behind_a_front() -> None:
    """Routing by prompt needs the request parsed before a replica is picked: with more
    than one replica and prefix-aware routing (the default), the API answers HTTP in a
    front of its own; one replica, or power-of-two, keeps API and engine in one process."""
    args = serving_args_for(spec_of("modeldeployment.yaml"), "m", "ns")  # maxReplicas 2
    assert remote.split(args)
    front = deployment_options(args)
    assert front["num_replicas"] == 1 and front["ray_actor_options"]["num_cpus"] == 0
    assert front["max_ongoing_requests"] == (4 + 16) * 2 + 16
    pow2 = serving_args_for(
        spec_of("modeldeployment.yaml", engine={"llamacpp": {"requestRouter": "power-of-two"}}),
        "m",
        "ns",
    )
    assert not remote.split(pow2) and deployment_options(pow2) == replica_options(pow2)
    one = args.model_copy(
        update={"autoscaling": args.autoscaling.model_copy(update={"max_replicas": 1})}
    )
    assert not remote.split(one)


def test_parallel_sequences_reach_the_engine() -> None:
    spec = spec_of(
        "smollm2.yaml",
        engine={"name": "llamacpp", "llamacpp": {"parallel": 4}},
        scaling={"maxOngoingRequests": 4},
    )
    assert serving_args_for(spec, "m", "ns").engine.llamacpp.parallel == 4
    assert serving_args_for(spec_of("smollm2.yaml"), "m", "ns").engine.llamacpp.parallel == 1


def test_vllm_runs_in_the_fronts_process_only_on_one_fixed_replica() -> None:
    """One replica: Ray Serve LLM's server in the API's own process (no handle hop per
    streamed batch); several, or autoscaled: a deployment of its own behind the front,
    whose prefix-aware router picks the replica."""
    from freehold_serving.engines import vllm

    def args_with(**scaling: Any) -> ServingArgs:
        spec = spec_of("smollm2.yaml", engine={"name": "vllm"}, scaling=scaling)
        return serving_args_for(spec, "m", "ns")

    assert vllm.in_process(args_with(minReplicas=1, maxReplicas=1))
    assert not vllm.in_process(args_with(minReplicas=2, maxReplicas=2))
    assert not vllm.in_process(args_with(minReplicas=0, maxReplicas=1))  # scale to zero
    assert not vllm.in_process(args_with(minReplicas=1, maxReplicas=3))

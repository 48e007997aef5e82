"""The vLLM families a model's /metrics appends: its own model's samples only, merged
across Ray nodes into one group per family (as the exposition format requires)."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from freehold_serving.engine_metrics import select

NODE_A = """# HELP ray_tasks Current number of tasks.
# TYPE ray_tasks gauge
ray_tasks{State="RUNNING"} 3.0
# HELP ray_vllm_num_requests_running Number of requests in model execution batches.
# TYPE ray_vllm_num_requests_running gauge
ray_vllm_num_requests_running{ReplicaId="a",engine="0",model_name="smol"} 2.0
ray_vllm_num_requests_running{ReplicaId="b",engine="0",model_name="other"} 5.0
# HELP ray_vllm_time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE ray_vllm_time_to_first_token_seconds histogram
ray_vllm_time_to_first_token_seconds_bucket{ReplicaId="a",le="0.1",model_name="smol"} 1.0
ray_vllm_time_to_first_token_seconds_bucket{ReplicaId="a",le="+Inf",model_name="smol"} 2.0
ray_vllm_time_to_first_token_seconds_count{ReplicaId="a",model_name="smol"} 2.0
ray_vllm_time_to_first_token_seconds_sum{ReplicaId="a",model_name="smol"} 0.3
"""
NODE_B = """# HELP ray_vllm_num_requests_running Number of requests in model execution batches.
# TYPE ray_vllm_num_requests_running gauge
ray_vllm_num_requests_running{ReplicaId="c",engine="0",model_name="smol"} 1.0
# HELP ray_vllm_kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE ray_vllm_kv_cache_usage_perc gauge
ray_vllm_kv_cache_usage_perc{ReplicaId="b",engine="0",model_name="other"} 0.5
"""


def test_only_this_models_vllm_families_merged_across_nodes() -> None:
    text = select([NODE_A, NODE_B], "smol")
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert set(families) == {
        "ray_vllm_num_requests_running",
        "ray_vllm_time_to_first_token_seconds",
    }
    running = families["ray_vllm_num_requests_running"]
    assert running.type == "gauge"
    assert {s.labels["ReplicaId"]: s.value for s in running.samples} == {"a": 2.0, "c": 1.0}
    assert len(families["ray_vllm_time_to_first_token_seconds"].samples) == 4
    assert text.count("# TYPE ray_vllm_num_requests_running gauge") == 1
    assert 'model_name="other"' not in text and "ray_tasks" not in text


def test_nothing_recorded_yet_appends_nothing() -> None:
    assert select([], "smol") == ""
    assert select([NODE_B.replace('"smol"', '"x"')], "smol") == ""

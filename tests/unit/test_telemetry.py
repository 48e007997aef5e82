"""Spans and metrics of one request; content only when capture is on.

Test doubles: OpenTelemetry's own in-memory exporter and reader stand in for the OTLP
collector and Prometheus, which are process boundaries."""

from __future__ import annotations

from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from freehold_serving.args import TelemetryConfig
from freehold_serving.telemetry import Telemetry

PROMPT = "canary-8812 patient record"


def run(capture: bool) -> tuple[InMemorySpanExporter, InMemoryMetricReader]:
    spans, metrics = InMemorySpanExporter(), InMemoryMetricReader()
    telemetry = Telemetry(
        TelemetryConfig(capture_content=capture), "t", metric_readers=[metrics], span_exporter=spans
    )
    with telemetry.request("chat", "gemma", {"gen_ai.request.max_tokens": 8}, PROMPT) as rec:
        rec.token_arrived("canary-out")
        rec.token_arrived(" more")
        rec.input_tokens, rec.output_tokens, rec.finish_reason = 12, 2, "length"
        rec.cached_input_tokens = 8
    telemetry.shutdown()
    return spans, metrics


def test_metrics_and_span_attributes() -> None:
    spans, metrics = run(capture=False)
    (span,) = spans.get_finished_spans()
    assert span.name == "chat gemma"
    assert span.attributes is not None
    assert span.attributes["gen_ai.operation.name"] == "chat"
    assert span.attributes["gen_ai.usage.input_tokens"] == 12
    assert span.attributes["gen_ai.usage.cache_read.input_tokens"] == 8
    assert span.attributes["gen_ai.response.finish_reasons"] == ("length",)
    data = metrics.get_metrics_data()
    assert data is not None
    names = {m.name for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics}
    assert names == {
        "gen_ai.server.request.duration",
        "gen_ai.server.time_to_first_token",
        "gen_ai.server.time_per_output_token",
        "gen_ai.client.token.usage",
        "freehold.serving.cached_input_tokens",
    }


def test_content_is_not_recorded_unless_captured() -> None:
    spans, _ = run(capture=False)
    (span,) = spans.get_finished_spans()
    dumped = span.to_json()
    assert "canary" not in dumped
    spans, _ = run(capture=True)
    (span,) = spans.get_finished_spans()
    assert PROMPT in span.to_json() and "canary-out more" in span.to_json()

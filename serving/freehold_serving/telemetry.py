"""OpenTelemetry for the data plane, following the GenAI semantic conventions.

We follow the GenAI conventions as of semantic-conventions v1.37 (status: development):
metrics gen_ai.server.request.duration, gen_ai.server.time_to_first_token,
gen_ai.server.time_per_output_token and gen_ai.client.token.usage (split by
gen_ai.token.type), with the bucket boundaries the conventions recommend, and one span
per request named "{gen_ai.operation.name} {gen_ai.request.model}".

Prompt and completion text are recorded only when content capture is turned on in
the ModelDeployment spec; nothing else here ever sees them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import TraceIdRatioBased
from opentelemetry.trace import Span, Status, StatusCode

from freehold_serving.args import TelemetryConfig

if TYPE_CHECKING:
    from freehold_serving.access import AccessLog

DURATION_BUCKETS = [
    0.01,
    0.02,
    0.04,
    0.08,
    0.16,
    0.32,
    0.64,
    1.28,
    2.56,
    5.12,
    10.24,
    20.48,
    40.96,
    81.92,
]
TTFT_BUCKETS = [
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
]
TPOT_BUCKETS = [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5]
TOKEN_BUCKETS = [
    1,
    4,
    16,
    64,
    256,
    1024,
    4096,
    16384,
    65536,
    262144,
    1048576,
    4194304,
    16777216,
    67108864,
]

REQUEST_DURATION = "gen_ai.server.request.duration"
TIME_TO_FIRST_TOKEN = "gen_ai.server.time_to_first_token"
TIME_PER_OUTPUT_TOKEN = "gen_ai.server.time_per_output_token"
TOKEN_USAGE = "gen_ai.client.token.usage"
CACHED_INPUT_TOKENS = "freehold.serving.cached_input_tokens"


def _views() -> list[View]:
    return [
        View(instrument_name=name, aggregation=ExplicitBucketHistogramAggregation(buckets))
        for name, buckets in (
            (REQUEST_DURATION, DURATION_BUCKETS),
            (TIME_TO_FIRST_TOKEN, TTFT_BUCKETS),
            (TIME_PER_OUTPUT_TOKEN, TPOT_BUCKETS),
            (TOKEN_USAGE, TOKEN_BUCKETS),
        )
    ]


@dataclass
class RequestRecord:
    """What one request reports, filled in as it runs."""

    operation: str
    model: str
    span: Span
    capture_content: bool
    start: float = field(default_factory=time.perf_counter)
    first_token: float | None = None
    input_tokens: int = 0
    cached_input_tokens: int = 0  # input tokens held from an earlier request, not evaluated
    output_tokens: int = 0
    finish_reason: str | None = None
    error_type: str | None = None
    status: int | None = None  # the HTTP status answered; None: 200, or 500 on an error
    key: str | None = None  # the caller's key id (auth.key_id), for access records
    tenant: str | None = None
    output_text: list[str] = field(default_factory=list)

    def token_arrived(self, text: str) -> None:
        if self.first_token is None:
            self.first_token = time.perf_counter()
        if self.capture_content:
            self.output_text.append(text)


class Telemetry:
    """Meters and tracer of one serving process."""

    def __init__(
        self,
        config: TelemetryConfig,
        service_name: str,
        *,
        metric_readers: Sequence[MetricReader] = (),
        span_exporter: SpanExporter | None = None,
    ) -> None:
        resource = Resource.create({"service.name": service_name})
        self._meters = MeterProvider(
            resource=resource, metric_readers=list(metric_readers), views=_views()
        )
        meter = self._meters.get_meter("freehold.serving")
        self._duration = meter.create_histogram(
            REQUEST_DURATION, unit="s", description="Time to serve a request."
        )
        self._ttft = meter.create_histogram(
            TIME_TO_FIRST_TOKEN, unit="s", description="Time until the first output token."
        )
        self._tpot = meter.create_histogram(
            TIME_PER_OUTPUT_TOKEN, unit="s", description="Time per output token after the first."
        )
        self._tokens = meter.create_histogram(
            TOKEN_USAGE, unit="{token}", description="Input and output tokens used."
        )
        self._cached = meter.create_counter(
            CACHED_INPUT_TOKENS,
            unit="{token}",
            description="Input tokens not evaluated again: held by the replica from an "
            "earlier request of the same conversation (prompt cache).",
        )
        self._traces = TracerProvider(
            resource=resource, sampler=TraceIdRatioBased(config.trace_sample_ratio)
        )
        exporter = span_exporter or _otlp_exporter(config.otlp_endpoint)
        if exporter is not None:
            self._traces.add_span_processor(BatchSpanProcessor(exporter))
        self._tracer = self._traces.get_tracer("freehold.serving")
        self.capture_content = config.capture_content
        self.access: AccessLog | None = None  # set by the replica when audit is on

    def start(
        self, operation: str, model: str, attributes: dict[str, Any], prompt: Any = None
    ) -> RequestRecord:
        """Begin a request; `finish` must follow (a streamed response outlives its handler)."""
        span = self._tracer.start_span(
            f"{operation} {model}",
            attributes={
                "gen_ai.operation.name": operation,
                "gen_ai.request.model": model,
                **{k: v for k, v in attributes.items() if v is not None},
            },
        )
        record = RequestRecord(operation, model, span, self.capture_content)
        if self.capture_content and prompt is not None:
            span.add_event("gen_ai.content.prompt", {"gen_ai.prompt": str(prompt)})
        return record

    @contextmanager
    def request(
        self, operation: str, model: str, attributes: dict[str, Any], prompt: Any = None
    ) -> Iterator[RequestRecord]:
        record = self.start(operation, model, attributes, prompt)
        try:
            yield record
        except BaseException as exc:
            record.error_type = type(exc).__name__
            raise
        finally:
            self.finish(record)

    def finish(self, record: RequestRecord) -> None:
        end = time.perf_counter()
        base = {
            "gen_ai.operation.name": record.operation,
            "gen_ai.request.model": record.model,
            "gen_ai.response.model": record.model,
        }
        if record.error_type is not None:
            base["error.type"] = record.error_type
        self._duration.record(end - record.start, base)
        if record.first_token is not None:
            self._ttft.record(record.first_token - record.start, base)
            if record.output_tokens > 1:
                per_token = (end - record.first_token) / (record.output_tokens - 1)
                self._tpot.record(per_token, base)
        if record.error_type is None:
            self._tokens.record(record.input_tokens, {**base, "gen_ai.token.type": "input"})
            self._cached.add(record.cached_input_tokens, base)
            if record.operation != "embeddings":
                self._tokens.record(record.output_tokens, {**base, "gen_ai.token.type": "output"})
        span = record.span
        span.set_attribute("gen_ai.usage.input_tokens", record.input_tokens)
        span.set_attribute("gen_ai.usage.output_tokens", record.output_tokens)
        if record.cached_input_tokens:
            span.set_attribute("gen_ai.usage.cache_read.input_tokens", record.cached_input_tokens)
        if record.finish_reason:
            span.set_attribute("gen_ai.response.finish_reasons", [record.finish_reason])
        if self.capture_content and record.output_text:
            span.add_event(
                "gen_ai.content.completion", {"gen_ai.completion": "".join(record.output_text)}
            )
        if record.error_type is not None:
            span.set_attribute("error.type", record.error_type)
            span.set_status(Status(StatusCode.ERROR))
        span.end()
        if self.access is not None:
            status = record.status or (200 if record.error_type is None else 500)
            self.access.record(
                operation=record.operation,
                model=record.model,
                key=record.key,
                tenant=record.tenant,
                status=status,
                error=record.error_type,
                latency_s=end - record.start,
                ttft_s=None if record.first_token is None else record.first_token - record.start,
                input_tokens=record.input_tokens,
                output_tokens=record.output_tokens,
            )

    def shutdown(self) -> None:
        self._traces.shutdown()
        self._meters.shutdown()


def _otlp_exporter(endpoint: str | None) -> SpanExporter | None:
    if not endpoint:
        return None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    exporter: SpanExporter = OTLPSpanExporter(endpoint=endpoint.rstrip("/") + "/v1/traces")
    return exporter


def prometheus_reader() -> MetricReader:
    """A reader that publishes into prometheus_client's default registry (for /metrics)."""
    from opentelemetry.exporter.prometheus import PrometheusMetricReader

    reader: MetricReader = PrometheusMetricReader()
    return reader

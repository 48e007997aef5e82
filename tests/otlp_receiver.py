"""A minimal OTLP/HTTP receiver (protobuf, /v1/traces and /v1/logs): it stands in for an
OpenTelemetry Collector, which cannot be installed here. Our exporters are the SDK's real
ones; what they send is decoded with the OTLP protobuf definitions.

In a pod (`python otlp_receiver.py --port 4318`, the real-pods suite) it also answers
`GET /received` with every body it got (base64, by path), for the test to decode."""

from __future__ import annotations

import argparse
import base64
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    bodies: dict[str, list[bytes]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def logs(self) -> list[Any]:
        """Every log record received (opentelemetry.proto LogRecord messages)."""
        from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
            ExportLogsServiceRequest,
        )

        out = []
        with self.lock:
            bodies = list(self.bodies.get("/v1/logs", []))
        for body in bodies:
            request = ExportLogsServiceRequest()
            request.ParseFromString(body)
            for resource in request.resource_logs:
                for scope in resource.scope_logs:
                    out.extend(scope.log_records)
        return out

    def spans(self) -> list[Any]:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
        )

        out = []
        with self.lock:
            bodies = list(self.bodies.get("/v1/traces", []))
        for body in bodies:
            request = ExportTraceServiceRequest()
            request.ParseFromString(body)
            for resource in request.resource_spans:
                for scope in resource.scope_spans:
                    out.extend(scope.spans)
        return out

    def raw(self) -> bytes:
        with self.lock:
            return b"".join(b for bodies in self.bodies.values() for b in bodies)

    @classmethod
    def from_dump(cls, dump: dict[str, list[str]]) -> Received:
        """What `GET /received` of a receiver in a pod answered."""
        return cls(bodies={path: [base64.b64decode(b) for b in v] for path, v in dump.items()})


def _handler(received: Received) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            with received.lock:
                dump = {
                    p: [base64.b64encode(b).decode() for b in v] for p, v in received.bodies.items()
                }
            data = json.dumps(dump).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            with received.lock:
                received.bodies.setdefault(self.path, []).append(body)
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *_args: Any) -> None:
            pass

    return Handler


@contextmanager
def otlp_receiver() -> Iterator[tuple[str, Received]]:
    received = Received()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(received))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()
        server.server_close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="an OTLP/HTTP receiver, for tests")
    parser.add_argument("--port", type=int, default=4318)
    ThreadingHTTPServer(("0.0.0.0", parser.parse_args().port), _handler(Received())).serve_forever()

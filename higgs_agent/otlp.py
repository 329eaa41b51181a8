"""Traces out over OTLP/HTTP (serve --otlp-endpoint; agent/tracing.py makes them): the official SDK's tracer
provider, its batch span processor and its OTLP/HTTP (protobuf) exporter.

The batch processor queues finished spans and exports them from its own thread, so a slow or dead collector
never holds up a call: the event loop only builds spans and puts them in the queue (spans past the queue's
bound are dropped by the SDK). The SDK's standard variables work as documented: OTEL_SERVICE_NAME,
OTEL_RESOURCE_ATTRIBUTES, OTEL_BSP_SCHEDULE_DELAY (ms between exports), OTEL_EXPORTER_OTLP_HEADERS, _TIMEOUT,
OTEL_TRACES_SAMPLER; OTEL_EXPORTER_OTLP_ENDPOINT (or _TRACES_ENDPOINT) turns traces on without the flag.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the SDK loads only when traces are on
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Tracer

log = logging.getLogger(__name__)
DEFAULT_SERVICE_NAME = "higgs-agent"
TRACES_PATH = "/v1/traces"  # OTLP/HTTP's path for traces under a collector's base URL
ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


def traces_url(endpoint: str) -> str:
    """A collector's base URL (http://collector:4318) -> its traces URL; a URL that names the path is kept."""
    endpoint = endpoint.rstrip("/")
    return endpoint if endpoint.endswith(TRACES_PATH) else endpoint + TRACES_PATH


@dataclass
class OtlpTraces:
    provider: TracerProvider

    @property
    def tracer(self) -> Tracer:
        return self.provider.get_tracer("higgs_agent")

    def shutdown(self) -> None:
        """Export what is still queued (bounded by the exporter's timeout), then stop the exporting thread."""
        self.provider.shutdown()


def start_traces(endpoint: str | None) -> OtlpTraces | None:
    """Traces to `endpoint` (a collector's base URL), else to the SDK's standard endpoint variables; None
    when neither is given: no tracer at all."""
    if not (endpoint or any(os.environ.get(name) for name in ENDPOINT_VARIABLES)):
        return None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    # without the flag the SDK reads the variables (a base URL gets /v1/traces)
    exporter = OTLPSpanExporter(endpoint=traces_url(endpoint) if endpoint else None)
    # OTEL_SERVICE_NAME first: Resource.create would let our default win over it
    name = os.environ.get("OTEL_SERVICE_NAME") or DEFAULT_SERVICE_NAME
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: name}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    log.info("traces: each answered turn to %s over OTLP/HTTP, as service %s",
             traces_url(endpoint) if endpoint else "$OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT", name)
    return OtlpTraces(provider)

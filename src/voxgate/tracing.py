"""OpenTelemetry traces (extra ``otel``): one job, one live stream, one request = one trace.

The doors open a span per request / stream (continuing a client's W3C ``traceparent``), the
queue carries the trace context inside the RQ job (:func:`inject` -> ``job.meta``), the worker
continues it (:func:`continued`), and the pipeline's stages (decode, ASR, LLM cleanup, summary)
are child spans. With tracing off (``VOXGATE_TRACING__ENABLED=false``, the default) or the extra
not installed, every function here is a no-op that allocates nothing: :func:`span` returns one
shared null context and :func:`inject` an empty dict, so instrumented code costs nothing.

The tracer lives in this module (the process has one trace pipeline, as OpenTelemetry's own
global provider); :func:`configure_tracing` replaces it, :func:`shutdown_tracing` flushes it.
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Literal

from .config import Settings

__all__ = ["configure_tracing", "continued", "current_trace_id", "enabled", "inject",
           "shutdown_tracing", "span"]

logger = logging.getLogger(__name__)

SpanKind = Literal["internal", "server", "client", "producer", "consumer"]
_NOOP: AbstractContextManager[None] = nullcontext()  # reusable: entering it does nothing


class _Tracing:
    tracer: Any = None
    provider: Any = None


_STATE = _Tracing()


def enabled() -> bool:
    """True while a tracer is configured."""
    return _STATE.tracer is not None


def configure_tracing(settings: Settings, exporter: Any = None) -> bool:
    """Start tracing when ``settings.tracing.enabled`` (or an ``exporter`` is given, e.g. the
    SDK's in-memory exporter in tests). Returns whether tracing is on. A missing extra is one
    warning, not an error: the server runs, untraced."""
    config = settings.tracing
    if not config.enabled and exporter is None:
        return enabled()
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
    except ImportError:
        logger.warning("VOXGATE_TRACING__ENABLED is set but OpenTelemetry is not installed "
                       "(pip install 'voxgate[otel]'): tracing stays off")
        return False
    shutdown_tracing()
    provider = TracerProvider(resource=Resource.create({"service.name": config.service_name}),
                              sampler=ParentBased(TraceIdRatioBased(config.sample_ratio)))
    if exporter is not None:  # tests: spans are there as soon as they end
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    elif config.exporter == "otlp":
        provider.add_span_processor(BatchSpanProcessor(_otlp_exporter(config.endpoint)))
    elif config.exporter == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    _STATE.provider = provider
    _STATE.tracer = provider.get_tracer("voxgate")
    logger.info("tracing on (%s exporter)", "test" if exporter is not None else config.exporter)
    return True


def _otlp_exporter(endpoint: str) -> Any:
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError as exc:
        from .errors import ConfigError

        raise ConfigError("VOXGATE_TRACING__EXPORTER=otlp needs opentelemetry-exporter-otlp-"
                          "proto-http (pip install 'voxgate[otel]'), or choose console/none"
                          ) from exc
    return OTLPSpanExporter(endpoint=endpoint)


def shutdown_tracing() -> None:
    """Flush and stop the current tracer (spans of unfinished work are dropped)."""
    provider, _STATE.provider, _STATE.tracer = _STATE.provider, None, None
    if provider is not None:
        provider.shutdown()


def _kind(kind: SpanKind) -> Any:
    from opentelemetry.trace import SpanKind as Kind

    return getattr(Kind, kind.upper())


def span(name: str, kind: SpanKind = "internal",
         attributes: dict[str, Any] | None = None) -> AbstractContextManager[Any]:
    """A child span of the current one, current while the block runs (yields the span, or None
    when tracing is off). Exceptions are recorded on it and set its status."""
    tracer = _STATE.tracer
    if tracer is None:
        return _NOOP
    return tracer.start_as_current_span(name, kind=_kind(kind), attributes=attributes)


def continued(name: str, carrier: dict[str, str] | None, kind: SpanKind = "consumer",
              attributes: dict[str, Any] | None = None) -> AbstractContextManager[Any]:
    """A span continuing the trace whose context ``carrier`` holds (W3C ``traceparent`` /
    ``tracestate``, from :func:`inject` or a client's headers); a new trace without one."""
    tracer = _STATE.tracer
    if tracer is None:
        return _NOOP
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    parent = TraceContextTextMapPropagator().extract(carrier or {})
    return tracer.start_as_current_span(name, context=parent, kind=_kind(kind),
                                        attributes=attributes)


def inject() -> dict[str, str]:
    """The current trace context as W3C headers, to carry across a queue or process ({} when
    tracing is off or no span is current)."""
    if _STATE.tracer is None:
        return {}
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier)
    return carrier


def current_trace_id() -> str | None:
    """The current trace id (32 hex digits) for log lines; None when there is none."""
    if _STATE.tracer is None:
        return None
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None

"""Every door's entry point, observed: log context, request ids, latency metrics, trace spans.

* HTTP and WebSocket: :class:`ObservabilityMiddleware`, the outermost ASGI layer (outside
  Starlette's error handler, so a 500 carries its request id too). It takes the client's
  ``X-Request-ID`` when plain and short (else a fresh one), returns it on every response (and
  on a WebSocket's accept), binds request id / door / session id for every log line of the
  request, times it by route template and opens a trace span continuing a ``traceparent``.
* gRPC: :func:`grpc_interceptor`, the same per call (metadata ``x-request-id``, returned in
  the trailing metadata, ``traceparent``), timed by method and status code.
* Wyoming: :func:`observed_wyoming`, around each connection.

Label values are bounded: route templates (never raw paths), registered gRPC methods, fixed
HTTP methods.
"""

from __future__ import annotations

import inspect
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

from .. import tracing
from ..log_setup import bound, request_id_or_new
from .metrics import metrics_of
from .state import AppState

__all__ = ["ObservabilityMiddleware", "grpc_interceptor", "install", "observed_wyoming"]

_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
_UNTRACED = frozenset({"/metrics", "/health", "/ready"})  # scrapes and probes: no trace each
_HEADER = b"x-request-id"


def _session_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def _route_of(scope: dict[str, Any]) -> str:
    """The matched route's template (``/v1/status/{task_id}``), ``static`` for the page's
    files, ``unmatched`` otherwise: never the raw path (unbounded label values)."""
    route = scope.get("route")
    path = getattr(route, "path_format", None) or getattr(route, "path", None)
    if path:
        return str(path)
    return "static" if scope.get("endpoint") is not None else "unmatched"


class ObservabilityMiddleware:
    """ASGI middleware for ``http`` and ``websocket`` scopes (see the module doc)."""

    def __init__(self, app: Any, state: AppState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = {name: value for name, value in scope.get("headers") or ()
                   if name in (_HEADER, b"traceparent", b"tracestate")}
        request_id = request_id_or_new(headers.get(_HEADER, b"").decode("latin-1"))
        carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in headers.items()
                   if k != _HEADER}
        raw_id = request_id.encode("latin-1")
        status = {"code": 0}

        async def send_with_id(message: dict[str, Any]) -> None:
            if message["type"] in ("http.response.start", "websocket.accept"):
                message = {**message, "headers": [
                    *[(k, v) for k, v in message.get("headers") or () if k.lower() != _HEADER],
                    (_HEADER, raw_id)]}
                status["code"] = message.get("status", 101)
            await send(message)

        method = scope.get("method", "GET") if kind == "http" else "WS"
        traced = kind == "websocket" or scope.get("path") not in _UNTRACED
        context = tracing.continued("HTTP " + method if kind == "http" else "WebSocket",
                                    carrier, kind="server") if traced else nullcontext()
        session = _session_id("ws") if kind == "websocket" else None
        started = time.perf_counter()
        with bound(request_id=request_id, door=kind, session_id=session, task_id=None), \
                context as span:
            try:
                await self.app(scope, receive, send_with_id)
            except BaseException:
                if not status["code"]:
                    status["code"] = 500
                raise
            finally:
                self._observe(scope, kind, method, status["code"], time.perf_counter() - started,
                              span, request_id)

    def _observe(self, scope: dict[str, Any], kind: str, method: str, code: int,
                 seconds: float, span: Any, request_id: str) -> None:
        route = _route_of(scope)
        metrics = metrics_of(self.state)
        if kind == "http":
            metrics.http_duration.labels(method if method in _METHODS else "other", route,
                                         str(code or 500)).observe(seconds)
        else:
            metrics.websocket_duration.labels(route).observe(seconds)
        if span is not None:
            span.update_name(f"{method} {route}" if kind == "http" else f"WebSocket {route}")
            span.set_attribute("http.route", route)
            span.set_attribute("voxgate.request_id", request_id)
            if kind == "http":
                span.set_attribute("http.request.method", method)
                span.set_attribute("http.response.status_code", code or 500)


def install(app: Any, state: AppState) -> None:
    """Make :class:`ObservabilityMiddleware` the app's outermost layer. (``add_middleware``
    would put it inside Starlette's error handler, whose 500 responses would then lack the
    request id and escape the latency histogram.)"""
    build = app.build_middleware_stack

    def build_observed() -> Any:
        return ObservabilityMiddleware(build(), state)

    app.build_middleware_stack = build_observed


def grpc_interceptor(state: AppState) -> Any:
    """A ``grpc.aio.ServerInterceptor`` observing every call (built lazily: grpc is an extra)."""
    import grpc

    class ObservabilityInterceptor(grpc.aio.ServerInterceptor):
        async def intercept_service(self, continuation: Callable[[Any], Awaitable[Any]],
                                    details: Any) -> Any:
            handler = await continuation(details)
            if handler is None:  # unknown method: gRPC answers UNIMPLEMENTED itself
                return handler
            return _wrap_handler(handler, details, state)

    return ObservabilityInterceptor()


def _wrap_handler(handler: Any, details: Any, state: AppState) -> Any:
    import grpc

    method = details.method
    metadata = {k: v for k, v in (details.invocation_metadata or ())
                if isinstance(v, str) and k in ("x-request-id", "traceparent", "tracestate")}
    streaming = handler.request_streaming or handler.response_streaming

    @contextmanager
    def observed(context: Any) -> Iterator[None]:
        """Log context, span and timing of one call, whatever way it ends."""
        request_id = request_id_or_new(metadata.get("x-request-id"))
        context.set_trailing_metadata((("x-request-id", request_id),))  # as HTTP's header
        started, error = time.perf_counter(), None
        # a stream's servicer binds its session's own id once the session is open (ASR,
        # translation, agent): this one names the call's lines until then
        with bound(request_id=request_id, door="grpc", task_id=None,
                   session_id=_session_id("grpc") if streaming else None), \
                tracing.continued(f"gRPC {method.lstrip('/')}", metadata, kind="server",
                                  attributes={"rpc.system": "grpc", "rpc.method": method}) as span:
            try:
                yield
            except BaseException as exc:
                error = exc
                raise
            finally:
                code = _grpc_code(context, error)
                metrics_of(state).grpc_duration.labels(method, code).observe(
                    time.perf_counter() - started)
                if span is not None:
                    span.set_attribute("rpc.grpc.status_code", code)
                    span.set_attribute("voxgate.request_id", request_id)

    def wrap_unary(behavior: Callable[..., Any]) -> Callable[..., Any]:
        async def call(request: Any, context: Any) -> Any:
            with observed(context):
                return await behavior(request, context)

        return call

    def wrap_stream(behavior: Callable[..., Any]) -> Callable[..., Any]:
        # A coroutine writing through the context, not an async generator: when the client
        # cancels, gRPC cancels the handler's task wherever it waits; a generator paused at its
        # `yield` (gRPC sending the last message) would be left unclosed, its `finally` (close
        # the session, free the slot) only run by the garbage collector, maybe after the loop
        # is gone. Here the servicer's generator is always closed, in this call's context.
        async def call(request: Any, context: Any) -> None:
            with observed(context):
                responses = behavior(request, context)
                try:
                    async for response in responses:
                        await context.write(response)
                finally:
                    await responses.aclose()

        return call

    def wrap(behavior: Callable[..., Any] | None) -> Any:
        if behavior is None:
            return None
        return wrap_stream(behavior) if inspect.isasyncgenfunction(behavior) \
            else wrap_unary(behavior)

    factories = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }
    key = (handler.request_streaming, handler.response_streaming)
    behavior = {(False, False): handler.unary_unary, (False, True): handler.unary_stream,
                (True, False): handler.stream_unary, (True, True): handler.stream_stream}[key]
    return factories[key](wrap(behavior),
                          request_deserializer=handler.request_deserializer,
                          response_serializer=handler.response_serializer)


def _grpc_code(context: Any, error: BaseException | None) -> str:
    """The call's status code name: what the servicer set (``abort``/``set_code``), else OK,
    CANCELLED for a client that went away, UNKNOWN for an unexpected exception."""
    import asyncio

    code = None
    try:
        code = context.code()
    except (AttributeError, RuntimeError):  # older grpc without ServicerContext.code()
        code = None
    if code is not None and hasattr(code, "name"):
        return str(code.name)
    if isinstance(code, int):
        import grpc

        return next((c.name for c in grpc.StatusCode if c.value[0] == code), "UNKNOWN")
    if error is None:
        return "OK"
    if isinstance(error, (asyncio.CancelledError, GeneratorExit)):  # the client went away
        return "CANCELLED"
    return "UNKNOWN"


def observed_wyoming(state: AppState,
                     serve: Callable[[Any, Any], Awaitable[None]]) -> Callable[[Any, Any],
                                                                               Awaitable[None]]:
    """``serve(reader, writer)`` of one Wyoming connection, with log context, a trace span
    and the connection's duration in ``voxgate_wyoming_session_duration_seconds``."""

    async def observed(reader: Any, writer: Any) -> None:
        started = time.perf_counter()
        with bound(request_id=request_id_or_new(None), door="wyoming", task_id=None,
                   session_id=_session_id("wy")), \
                tracing.span("Wyoming session", kind="server"):
            try:
                await serve(reader, writer)
            finally:
                metrics_of(state).wyoming_duration.observe(time.perf_counter() - started)

    return observed

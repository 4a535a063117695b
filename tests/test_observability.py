"""Observability without models: request ids, log context and formats, latency metrics by route
template, engine load/unload events, the gRPC interceptor and tracing's no-op path.

The app runs in-process (``TestClient``) with no components; the gRPC test runs a real
``grpc.aio`` server with the Health service behind voxgate's interceptor and calls it with the
real ``grpcio`` client. Everything with real models, Redis and every door together is in
``test_observability_e2e.py``.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from voxgate import log_setup, tracing
from voxgate.config import LogSettings, Settings
from voxgate.engines.manager import ModelManager
from voxgate.errors import ModelError

pytest.importorskip("fastapi", reason="the 'server' extra is not installed")
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from starlette.websockets import WebSocketDisconnect

from voxgate.server import create_app
from voxgate.server.metrics import metrics_of
from voxgate.server.state import AppState

KEY = "obs-key"
AUTH = {"X-API-Key": KEY}


def _settings(**overrides: Any) -> Settings:
    return Settings(api_keys=[KEY], grpc_port=0, offline=True, _env_file=None, **overrides)


class _FakeEngine:
    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


def _fake_loader(kind: str, model_id: str) -> tuple[Any, None]:
    if model_id == "broken":
        raise ModelError("no such model 'broken'")
    return _FakeEngine(), None


@pytest.fixture
def log_lines() -> Iterator[tuple[io.StringIO, Settings]]:
    """JSON logs of the ``voxgate`` loggers into a buffer; the root logger restored after."""
    root = logging.getLogger()
    saved = (root.level, list(root.handlers), logging.getLogger("voxgate").level)
    settings = _settings(log=LogSettings(format="json"))
    buffer = io.StringIO()
    handler = log_setup.setup_logging(settings, stream=buffer, voxgate_level="INFO")
    try:
        yield buffer, settings
    finally:
        root.removeHandler(handler)
        root.setLevel(saved[0])
        logging.getLogger("voxgate").setLevel(saved[2])


def _records(buffer: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines() if line.strip()]


def _app_with_probe(settings: Settings, manager: ModelManager | None = None):
    """The app plus two routes that log through library-style loggers (one of them fails)."""
    app = create_app(settings, manager=manager or ModelManager(settings, _fake_loader),
                     components=[])
    log = logging.getLogger("voxgate.probe")

    async def hello(name: str) -> dict[str, str]:
        log.info("hello %s", name)
        return {"hello": name}

    async def boom(n: int) -> None:
        log.info("about to fail")
        raise RuntimeError(f"probe failure {n}")

    # before the page's catch-all mount at "/"
    app.router.routes[0:0] = [APIRoute("/probe/hello/{name}", hello),
                              APIRoute("/probe/boom/{n}", boom)]
    return app


def _samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """``name``'s samples in a /metrics body: sorted label pairs -> value."""
    found: dict[tuple[tuple[str, str], ...], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                found[tuple(sorted(sample.labels.items()))] = sample.value
    return found


@pytest.mark.parametrize("candidate, kept", [
    ("abc-123", True), ("0f3c9a1e-2b7d-4c1e-9f00-123456789abc", True),
    ("svc/api:7@host+x=y.z_w", True), ("a" * 128, True), ("a" * 129, False), ("", False),
    ("two words", False), ("line\nbreak", False), ("-leading-dash", False), ("é", False),
    ('x"}, {"level": "ERROR', False)])
def test_request_id_from_a_client_is_kept_only_when_short_and_plain(candidate, kept) -> None:
    result = log_setup.request_id_or_new(candidate)
    assert (result == candidate) is kept
    if not kept:
        assert len(result) == 32 and int(result, 16) >= 0


def test_request_id_is_returned_on_every_response_and_logs_carry_it(log_lines) -> None:
    buffer, settings = log_lines
    with TestClient(_app_with_probe(settings), raise_server_exceptions=False) as client:
        given = client.get("/probe/hello/ann", headers={"X-Request-ID": "client-req-1"})
        fresh = client.get("/probe/hello/bob")
        bad = client.get("/probe/hello/cid", headers={"X-Request-ID": "evil\x7f id" + "x" * 200})
        unauthorised = client.get("/v1/templates", headers={"X-Request-ID": "client-req-2"})
        failed = client.get("/probe/boom/7", headers={"X-Request-ID": "client-req-3"})
        missing = client.get("/no/such/page")
    assert given.status_code == 200 and given.headers["x-request-id"] == "client-req-1"
    assert len(fresh.headers["x-request-id"]) == 32
    assert bad.headers["x-request-id"] != "client-req-1" and len(bad.headers["x-request-id"]) == 32
    assert unauthorised.status_code == 401 and unauthorised.headers["x-request-id"] == "client-req-2"
    # a 500 from Starlette's error handler carries it too: the middleware is the outermost layer
    assert failed.status_code == 500 and failed.headers["x-request-id"] == "client-req-3"
    assert missing.status_code == 404 and len(missing.headers["x-request-id"]) == 32
    records = {r["message"]: r for r in _records(buffer) if r["logger"] == "voxgate.probe"}
    assert records["hello ann"]["request_id"] == "client-req-1"
    assert records["hello ann"]["door"] == "http"
    assert records["hello bob"]["request_id"] == fresh.headers["x-request-id"]
    assert records["hello cid"]["request_id"] == bad.headers["x-request-id"]
    assert records["about to fail"]["request_id"] == "client-req-3"
    assert "task_id" not in records["hello ann"] and "session_id" not in records["hello ann"]


def test_context_is_per_request_under_concurrency(log_lines) -> None:
    """Requests served at the same time never see each other's request id."""
    buffer, settings = log_lines
    with TestClient(_app_with_probe(settings)) as client:
        def call(i: int) -> None:
            client.get(f"/probe/hello/n{i}", headers={"X-Request-ID": f"req-{i}"})

        threads = [threading.Thread(target=call, args=(i,)) for i in range(12)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    seen = {r["message"]: r["request_id"] for r in _records(buffer)
            if r["logger"] == "voxgate.probe"}
    assert seen == {f"hello n{i}": f"req-{i}" for i in range(12)}


def test_work_handed_to_threads_logs_with_the_callers_context(log_lines) -> None:
    """in_context carries the request id into pool and plain threads, several at once; a
    thread started without it logs none (what run_in_executor used to do)."""
    from concurrent.futures import ThreadPoolExecutor

    buffer, _ = log_lines
    probe = logging.getLogger("voxgate.probe")
    barrier = threading.Barrier(4)

    def work(i: int) -> None:
        barrier.wait(10)  # four threads inside copies of one context at the same time
        probe.info("pool %d", i)

    with log_setup.bound(request_id="req-pool", door="grpc"), ThreadPoolExecutor(4) as pool:
        list(pool.map(log_setup.in_context(work), range(4)))
        plain = threading.Thread(target=log_setup.in_context(probe.info), args=("plain",))
        bare = threading.Thread(target=probe.info, args=("bare",))
        for thread in (plain, bare):
            thread.start()
            thread.join(10)
    records = {r["message"]: r for r in _records(buffer) if r["logger"] == "voxgate.probe"}
    assert {records[f"pool {i}"]["request_id"] for i in range(4)} == {"req-pool"}
    assert records["plain"]["request_id"] == "req-pool" and records["plain"]["door"] == "grpc"
    assert "request_id" not in records["bare"]


async def test_slot_threads_and_webhook_threads_log_with_the_request_or_task_id(log_lines
                                                                                ) -> None:
    from voxgate.server.limits import TranscriptionSlots
    from voxgate.webhooks import WebhookSender

    buffer, settings = log_lines
    slots = TranscriptionSlots(1)
    assert slots.try_acquire()
    with log_setup.bound(request_id="req-slot", door="grpc"):
        await slots.run_held(lambda: logging.getLogger("voxgate.probe").info("decoding"))
    with log_setup.bound(task_id="task-7", door="worker"):  # no secret: it logs and stops
        WebhookSender(settings).send("https://example.invalid/hook", {"task_id": "task-7"}
                                     ).join(10)
    slots.executor.shutdown()
    records = _records(buffer)
    decoding = next(r for r in records if r["message"] == "decoding")
    assert decoding["request_id"] == "req-slot" and decoding["door"] == "grpc"
    webhook = next(r for r in records if r["logger"] == "voxgate.webhooks")
    assert "not sent" in webhook["message"] and webhook["task_id"] == "task-7"


def test_text_format_appends_the_context_and_keeps_tracebacks_below() -> None:
    formatter = log_setup.TextFormatter()
    context_filter = log_setup.ContextFilter()
    with log_setup.bound(request_id="r1", task_id="t1", door="worker"):
        try:
            raise ValueError("bad thing")
        except ValueError:
            record = logging.getLogger("voxgate.x").makeRecord(
                "voxgate.x", logging.ERROR, __file__, 1, "job %s failed", ("t1",),
                exc_info=__import__("sys").exc_info())
        context_filter.filter(record)
    lines = formatter.format(record).splitlines()
    assert lines[0] == "ERROR voxgate.x: job t1 failed [request_id=r1 task_id=t1 door=worker]"
    assert lines[1].startswith("Traceback") and lines[-1] == "ValueError: bad thing"
    plain = logging.getLogger("voxgate.x").makeRecord("voxgate.x", logging.INFO, __file__, 1,
                                                      "no context", (), None)
    context_filter.filter(plain)
    assert formatter.format(plain) == "INFO voxgate.x: no context"


def test_json_format_is_one_object_per_line_with_exception() -> None:
    record = logging.getLogger("voxgate.x").makeRecord(
        "voxgate.x", logging.WARNING, __file__, 1, 'quote " and\nnewline %d', (5,), None)
    with log_setup.bound(session_id="ws-1", door="websocket"):
        log_setup.ContextFilter().filter(record)
    line = log_setup.JsonFormatter().format(record)
    assert "\n" not in line
    doc = json.loads(line)
    assert doc["message"] == 'quote " and\nnewline 5' and doc["level"] == "WARNING"
    assert doc["session_id"] == "ws-1" and doc["door"] == "websocket"
    assert "request_id" not in doc and doc["ts"].endswith("+00:00")


def test_setup_logging_installs_one_handler_and_honours_the_level_setting() -> None:
    root = logging.getLogger()
    saved = (root.level, list(root.handlers), logging.getLogger("voxgate").level)
    try:
        first = log_setup.setup_logging(_settings(), stream=io.StringIO())
        second = log_setup.setup_logging(_settings(log=LogSettings(level="debug")),
                                         stream=io.StringIO(), voxgate_level="INFO")
        assert first not in root.handlers and root.handlers.count(second) == 1
        assert logging.getLogger("voxgate").level == logging.DEBUG  # the setting wins
        assert isinstance(second.formatter, log_setup.TextFormatter)  # text by default
        auto = log_setup.setup_logging(_settings(log=LogSettings(format="auto")),
                                       stream=io.StringIO())  # not a terminal: JSON
        assert isinstance(auto.formatter, log_setup.JsonFormatter)
        root.removeHandler(auto)
    finally:
        root.setLevel(saved[0])
        logging.getLogger("voxgate").setLevel(saved[2])
    with pytest.raises(Exception, match="format"):
        Settings(_env_file=None, log={"format": "xml"})


def test_http_latency_by_route_template_and_websocket_sessions() -> None:
    settings = _settings()
    with TestClient(_app_with_probe(settings), raise_server_exceptions=False) as client:
        for name in ("a", "b", "c"):  # three raw paths, one template
            assert client.get(f"/probe/hello/{name}").status_code == 200
        client.get("/probe/boom/1")
        client.post("/v1/audio/transcriptions")  # 401: no key
        client.get("/no/such/page")
        with client.websocket_connect("/v1/asr?api_key=wrong") as ws:  # the door says why...
            assert "API key" in ws.receive_json()["message"]
            with pytest.raises(WebSocketDisconnect) as closed:  # ...and closes with 1008
                ws.receive_text()
        assert closed.value.code == 1008
        body = client.get("/metrics", headers=AUTH).text
    counts = _samples(body, "voxgate_http_request_duration_seconds_count")
    assert counts[(("method", "GET"), ("route", "/probe/hello/{name}"), ("status", "200"))] == 3
    assert counts[(("method", "GET"), ("route", "/probe/boom/{n}"), ("status", "500"))] == 1
    assert counts[(("method", "POST"), ("route", "/v1/audio/transcriptions"),
                   ("status", "401"))] == 1
    assert not any(dict(k)["route"].startswith("/no/") for k in counts)  # never a raw path
    sessions = _samples(body, "voxgate_websocket_session_duration_seconds_count")
    assert sessions[(("route", "/v1/asr"),)] == 1


def test_engine_load_and_unload_events_reach_metrics() -> None:
    settings = _settings()
    manager = ModelManager(settings, _fake_loader)
    with TestClient(create_app(settings, manager=manager, components=[])) as client:
        manager.get("asr", "whisper-base")
        manager.get("asr", "whisper-base")  # shared: loaded once
        with manager.use("tts", "en_US-joe-medium"):
            with pytest.raises(ModelError):
                manager.get("asr", "broken")
            assert manager.sweep(ttl_s=0.0) == ["whisper-base"]  # the held voice stays
            during = client.get("/metrics", headers=AUTH).text
        after = client.get("/metrics", headers=AUTH).text
    events = _samples(during, "voxgate_engine_events_total")
    assert events[(("event", "load"), ("kind", "asr"), ("model", "whisper-base"))] == 1
    assert events[(("event", "load"), ("kind", "tts"), ("model", "en_US-joe-medium"))] == 1
    assert events[(("event", "load_failed"), ("kind", "asr"), ("model", "broken"))] == 1
    assert events[(("event", "unload_idle"), ("kind", "asr"), ("model", "whisper-base"))] == 1
    loaded = _samples(during, "voxgate_engines_loaded")
    assert loaded == {(("kind", "tts"), ("model", "en_US-joe-medium")): 1.0}
    assert _samples(during, "voxgate_engine_refs") == {
        (("kind", "tts"), ("model", "en_US-joe-medium")): 1.0}
    assert _samples(after, "voxgate_engine_refs") == {
        (("kind", "tts"), ("model", "en_US-joe-medium")): 0.0}
    manager.close()
    assert manager.events()[("unload_close", "tts", "en_US-joe-medium")] == 1


def test_tracing_off_is_a_no_op_without_allocation() -> None:
    tracing.shutdown_tracing()
    assert not tracing.enabled()
    first, second = tracing.span("a"), tracing.continued("b", {"traceparent": "00-" + "1" * 32
                                                              + "-" + "2" * 16 + "-01"})
    assert first is second  # one shared null context, nothing built per call
    with first as span:
        assert span is None
    assert tracing.inject() == {} and tracing.current_trace_id() is None
    assert tracing.configure_tracing(_settings()) is False  # disabled by default


def test_tracing_spans_nest_and_travel_in_a_carrier() -> None:
    pytest.importorskip("opentelemetry.sdk", reason="the 'otel' extra is not installed")
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    assert tracing.configure_tracing(_settings(), exporter=exporter)
    try:
        with tracing.span("outer", kind="producer"):
            carrier = tracing.inject()
            outer_trace = tracing.current_trace_id()
        with tracing.continued("far away", carrier), tracing.span("stage"):
            assert tracing.current_trace_id() == outer_trace
    finally:
        tracing.shutdown_tracing()
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert carrier["traceparent"].split("-")[1] == outer_trace
    assert {s.context.trace_id for s in spans.values()} == {int(outer_trace, 16)}
    assert spans["far away"].parent.span_id == spans["outer"].context.span_id
    assert spans["far away"].parent.is_remote
    assert spans["stage"].parent.span_id == spans["far away"].context.span_id


def test_grpc_interceptor_times_calls_by_method_and_code_with_context() -> None:
    grpc = pytest.importorskip("grpc", reason="the 'grpc' extra is not installed")
    pytest.importorskip("opentelemetry.sdk", reason="the 'otel' extra is not installed")
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from voxgate.server.observability import grpc_interceptor

    settings = _settings()
    state = AppState(settings=settings, manager=ModelManager(settings, _fake_loader))
    seen: list[dict[str, str]] = []

    class Probe(health.aio.HealthServicer):
        async def Check(self, request: Any, context: Any) -> Any:
            seen.append(log_setup.current())
            return await super().Check(request, context)

    exporter = InMemorySpanExporter()
    tracing.configure_tracing(settings, exporter=exporter)
    parent = "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"

    async def scenario() -> str:
        server = grpc.aio.server(interceptors=[grpc_interceptor(state)])
        servicer = Probe()
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
        await servicer.set("svc", health_pb2.HealthCheckResponse.SERVING)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                call = stub.Check(health_pb2.HealthCheckRequest(service="svc"),
                                  metadata=(("x-request-id", "grpc-req-1"),
                                            ("traceparent", parent)))
                await call
                assert ("x-request-id", "grpc-req-1") in tuple(await call.trailing_metadata())
                with pytest.raises(grpc.aio.AioRpcError) as failed:
                    await stub.Check(health_pb2.HealthCheckRequest(service="unknown"))
                assert failed.value.code() == grpc.StatusCode.NOT_FOUND
                returned = dict(failed.value.trailing_metadata())["x-request-id"]
                assert len(returned) == 32  # a fresh one, returned with the error too
                watch = stub.Watch(health_pb2.HealthCheckRequest(service="svc"))
                first = await watch.read()  # a streaming call: its session until cancelled
                assert first.status == health_pb2.HealthCheckResponse.SERVING
                watch.cancel()
                return returned
        finally:
            await server.stop(grace=1.0)

    try:
        returned = asyncio.run(asyncio.wait_for(scenario(), 60))
    finally:
        tracing.shutdown_tracing()
    assert seen[0]["request_id"] == "grpc-req-1" and seen[0]["door"] == "grpc"
    assert seen[1]["request_id"] == returned  # none given: a fresh one
    histogram = metrics_of(state).grpc_duration
    body = __import__("prometheus_client").generate_latest(metrics_of(state).registry).decode()
    counts = _samples(body, "voxgate_grpc_request_duration_seconds_count")
    check = "/grpc.health.v1.Health/Check"
    assert counts[(("code", "OK"), ("method", check))] == 1
    assert counts[(("code", "NOT_FOUND"), ("method", check))] == 1
    assert counts[(("code", "CANCELLED"), ("method", "/grpc.health.v1.Health/Watch"))] == 1
    assert histogram is not None
    spans = [s for s in exporter.get_finished_spans() if s.name.endswith("Health/Check")]
    assert int("ab" * 16, 16) in {s.context.trace_id for s in spans}  # continued the caller's

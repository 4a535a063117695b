"""Prometheus metrics: one registry per app (tests build many apps), served at ``/metrics``.

Front doors add their own metrics with ``metrics_of(state)`` (counters/histograms on
``Metrics.registry``); values that live in Redis (queue depth, workers, job outcomes counted by
whichever worker finished the job) are read at scrape time by a collector, so they are right
however many API and worker processes there are.

Every door's latency is measured at its entry point (``server/observability.py``): HTTP
requests by route template, WebSocket sessions by route, gRPC calls by method and status code,
Wyoming connections. Engine load/unload events and the loaded engines come from the
``ModelManager`` at scrape time. ``deploy/grafana/voxgate-dashboard.json`` charts these names.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable, Iterator
from typing import Any

from fastapi import APIRouter, HTTPException, Request, Response, status

from ..config import Settings
from .deps import api_key_from_headers, key_is_valid
from .state import AppState

__all__ = ["DURATION_BUCKETS", "Metrics", "metrics_of", "router"]

logger = logging.getLogger(__name__)

# seconds: a 5 ms health check up to an hour-long live stream, in one set of buckets
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                    120.0, 300.0, 600.0, 1800.0, 3600.0)


class Metrics:
    """The app's registry plus the metrics the HTTP layer records itself."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry()
        self.jobs_submitted = Counter("voxgate_jobs_submitted", "Jobs accepted by POST /v1/process",
                                      ["feature"], registry=self.registry)
        self.jobs_rejected = Counter("voxgate_jobs_rejected", "Job submissions refused",
                                     ["status_code"], registry=self.registry)
        self.upload_bytes = Histogram("voxgate_upload_bytes", "Size of accepted uploads",
                                      buckets=(1e5, 1e6, 1e7, 5e7, 1e8, 5e8, 1e9),
                                      registry=self.registry)
        self.http_duration = Histogram(
            "voxgate_http_request_duration_seconds",
            "HTTP requests, until the response was sent, by method, route template and status",
            ["method", "route", "status"], buckets=DURATION_BUCKETS, registry=self.registry)
        self.websocket_duration = Histogram(
            "voxgate_websocket_session_duration_seconds", "WebSocket sessions, by route",
            ["route"], buckets=DURATION_BUCKETS, registry=self.registry)
        self.grpc_duration = Histogram(
            "voxgate_grpc_request_duration_seconds",
            "gRPC calls (a streaming call: its whole session), by method and status code",
            ["method", "code"], buckets=DURATION_BUCKETS, registry=self.registry)
        self.wyoming_duration = Histogram(
            "voxgate_wyoming_session_duration_seconds", "Wyoming connections",
            buckets=DURATION_BUCKETS, registry=self.registry)
        self._sources: list[Callable[[], Iterator[Any]]] = []
        self.registry.register(_Dynamic(self._sources))

    def add_source(self, source: Callable[[], Iterator[Any]]) -> None:
        """Add a scrape-time source yielding prometheus_client metric families."""
        self._sources.append(source)


class _Dynamic:
    def __init__(self, sources: list[Callable[[], Iterator[Any]]]) -> None:
        self.sources = sources

    def collect(self) -> Iterator[Any]:
        for source in list(self.sources):
            try:
                yield from source()
            except Exception:  # noqa: BLE001 - one broken source must not break /metrics
                logger.warning("metrics source failed", exc_info=True)


def metrics_of(state: AppState) -> Metrics:
    """The app's Metrics, created on first use."""
    metrics = state.components.get("metrics")
    if metrics is None:
        metrics = state.components["metrics"] = Metrics()
        metrics.add_source(lambda: _engine_metrics(state.manager))
    return metrics


def _engine_metrics(manager: Any) -> Iterator[Any]:
    """Engine load/unload events and the engines loaded now, from the ModelManager."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    events = CounterMetricFamily("voxgate_engine_events",
                                 "Engine loads and unloads: event is load, load_failed, "
                                 "unload_idle (TTL sweep) or unload_close (shutdown)",
                                 labels=["event", "kind", "model"])
    for (event, kind, model), count in sorted(manager.events().items()):
        events.add_metric([event, kind, model], count)
    yield events
    loaded = GaugeMetricFamily("voxgate_engines_loaded", "Engines loaded now (1 each)",
                               labels=["kind", "model"])
    load_seconds = GaugeMetricFamily("voxgate_engine_load_seconds",
                                     "How long each loaded engine took to load",
                                     labels=["kind", "model"])
    refs = GaugeMetricFamily("voxgate_engine_refs", "Users holding each loaded engine now",
                             labels=["kind", "model"])
    for entry in manager.loaded():
        labels = [entry["kind"], entry["model"]]
        loaded.add_metric(labels, 1)
        load_seconds.add_metric(labels, entry["load_s"])
        refs.add_metric(labels, entry["refs"])
    yield from (loaded, load_seconds, refs)


router = APIRouter(tags=["ops"])


def _may_scrape(request: Request, settings: Settings) -> bool:
    """A valid API key, or a client address in ``metrics_open_networks`` (a scraper network)."""
    if key_is_valid(settings, api_key_from_headers(request.headers)):
        return True
    host = request.client.host if request.client else ""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(address in ipaddress.ip_network(net, strict=False)
               for net in settings.metrics_open_networks)


@router.get("/metrics", include_in_schema=False)
async def prometheus(request: Request) -> Response:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    state: AppState = request.app.state.voxgate
    if not _may_scrape(request, state.settings):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, headers={"WWW-Authenticate": "Bearer"},
                            detail="invalid or missing API key (or scrape from a network in "
                                   "VOXGATE_METRICS_OPEN_NETWORKS)")
    body = await asyncio.to_thread(generate_latest, metrics_of(state).registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)

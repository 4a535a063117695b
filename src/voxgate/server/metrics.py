"""Prometheus metrics: one registry per app (tests build many apps), served at ``/metrics``.

Front doors add their own metrics with ``metrics_of(state)`` (counters/histograms on
``Metrics.registry``); values that live in Redis (queue depth, workers, job outcomes counted by
whichever worker finished the job) are read at scrape time by a collector, so they are right
however many API and worker processes there are.
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

__all__ = ["Metrics", "metrics_of", "router"]

logger = logging.getLogger(__name__)


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
    return metrics


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

"""The live-streaming service as a server component, shared by every live door.

WebSocket ``/v1/asr``, Riva ``StreamingRecognize``, Wyoming and the translation and agent
sessions all open their streams on the one :class:`StreamingComponent` the lifespan starts;
it lives here, outside any one door, so no door imports another.
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError, EngineError, ModelError
from ..streaming import StreamConfig, StreamConfigError, StreamingService
from .model_cards import client_model_id
from .session_component import SessionComponent
from .state import AppState

__all__ = ["StreamingComponent", "streaming_service"]


class StreamingComponent(SessionComponent, StreamingService):
    """The shared :class:`StreamingService` as a server component: adds /ready and /metrics."""

    def config(self, **overrides: Any) -> StreamConfig:
        """A network client's options: models only from what the server offers to clients."""
        for name in ("final_model", "partial_model"):
            if overrides.get(name) is not None:
                try:
                    overrides[name] = client_model_id(self.settings, overrides[name], "asr")
                except (ModelError, ConfigError) as exc:
                    raise StreamConfigError(name, str(exc)) from None
        return super().config(**overrides)

    async def _ready(self) -> tuple[str, bool, str]:
        ok = self.scheduler.running
        return "streaming", ok, (f"{self.active}/{self.max_streams} streams" if ok
                                 else "decode scheduler not running")

    def _metrics(self):  # -> Iterator[Metric]
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        stats = self.scheduler.stats
        yield GaugeMetricFamily("voxgate_streams_active", "Live ASR streams open now",
                                value=self.active)
        yield CounterMetricFamily("voxgate_streams_opened", "Live ASR streams opened",
                                  value=self.opened_total)
        yield CounterMetricFamily("voxgate_stream_finals", "Final results decoded",
                                  value=stats.finals)
        yield CounterMetricFamily("voxgate_stream_final_batches", "Batched final decode calls",
                                  value=stats.final_batches)
        yield CounterMetricFamily("voxgate_stream_partials", "Partial results decoded",
                                  value=stats.partials)
        yield CounterMetricFamily("voxgate_stream_partials_dropped",
                                  "Partials skipped because compute fell behind",
                                  value=stats.dropped_partials)
        yield GaugeMetricFamily("voxgate_stream_finals_queued", "Finals waiting to be decoded",
                                value=self.scheduler.queued_finals)


def streaming_service(state: AppState) -> StreamingService:
    """The app's shared streaming service (a component started by the lifespan)."""
    service = state.components.get("streaming")
    if service is None:
        raise EngineError("live streaming is not enabled in this server", retryable=False)
    return service

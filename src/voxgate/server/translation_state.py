"""The app's one :class:`~voxgate.translation.TranslationService`, shared by every translation door
(WebSocket ``/ws/translate``, Riva ``RivaTranslation`` streaming): one slot count, one set of
loaded models. A server component (started after ``streaming``) that adds a /ready check and
/metrics; :func:`translation_service` finds it, or creates it for apps built with an explicit
component list (tests) that left it out.
"""

from __future__ import annotations

from ..errors import EngineError
from ..translation import TranslationService
from .session_component import SessionComponent
from .state import AppState

__all__ = ["TranslationComponent", "translation_service"]


class TranslationComponent(SessionComponent, TranslationService):
    """:class:`TranslationService` as a server component: /ready and /metrics."""

    async def _ready(self) -> tuple[str, bool, str]:
        return "translation", True, f"{self.active}/{self.max_sessions} translation streams"

    def _metrics(self):  # -> Iterator[Metric]
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        yield GaugeMetricFamily("voxgate_translation_streams_active",
                                "Live translation streams open now", value=self.active)
        yield CounterMetricFamily("voxgate_translation_streams_opened",
                                  "Live translation streams opened", value=self.opened_total)
        speculative = CounterMetricFamily(
            "voxgate_translation_speculative",
            "MT attempts started on the ASR's early final, by outcome: kept (adopted by the "
            "final), dropped (the final differed), withdrawn (speech resumed)",
            labels=["outcome"])
        for outcome, count in self.speculative_outcomes.items():
            speculative.add_metric([outcome], count)
        yield speculative


async def translation_service(state: AppState) -> TranslationService:
    """The app's translation service; started on first use when the app has none."""
    service = state.components.get("translation")
    if service is None:
        if state.components.get("streaming") is None:
            raise EngineError("live translation needs live streaming, which is not enabled in "
                              "this server", retryable=False)
        service = TranslationService(state.settings, state.manager)
        await service.start(state)
        service = state.components.setdefault("translation", service)
    return service

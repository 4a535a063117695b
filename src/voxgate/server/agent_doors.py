"""What every voice-agent door shares: the one AgentService, its metrics, the client policy.

The WebSocket ``/v1/agent``, gRPC ``VoiceWorkflow`` and OpenAI Realtime doors open sessions
through :func:`agent_service` (a server component started after the streaming service) and
turn a network client's options into an :class:`~voxgate.agent.AgentConfig` with
:func:`client_agent_config`: models are catalogue ids the server offers (never a path or a
download), voices are listed voices, and only :data:`~voxgate.agent.CLIENT_FIELDS` may be set.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ..agent import CLIENT_FIELDS, AgentConfig, AgentService
from ..config import Settings
from ..errors import ConfigError, EngineError, ModelError
from ..stream_config import StreamConfigError
from .model_cards import client_model_id
from .session_component import attach_to_app
from .speech_doors import client_voice, speech_service
from .state import AppState

__all__ = ["LATENCY_STAGES", "AgentComponent", "agent_service", "client_agent_config"]

# TurnLatency fields + the barge-in stop time: one Prometheus histogram each
LATENCY_STAGES = ("end_of_turn_s", "asr_final_s", "llm_ttft_s", "tts_ttfa_s", "voice_to_voice_s",
                  "barge_in_stop")
_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)


class AgentComponent(AgentService):
    """The process's AgentService as a server component: /ready, /metrics (histograms)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.max_sessions = settings.agent.max_sessions
        self.sessions = {}
        self.observers = []
        self.opened_total = 0
        self.histograms: dict[str, Any] = {}

    async def start(self, state: Any = None) -> None:
        if state is None:
            raise RuntimeError("AgentComponent needs the app state")
        streaming = state.components.get("streaming")
        if streaming is None:
            raise RuntimeError("the agent needs the streaming component (start it first)")
        AgentService.__init__(self, state.settings, state.manager, streaming,
                              speech_service(state))
        metrics = attach_to_app(state, self._ready, self._metrics)
        if metrics is None:
            return
        from prometheus_client import Histogram

        for stage in LATENCY_STAGES:
            name = stage.removesuffix("_s")
            self.histograms[stage] = Histogram(
                f"voxgate_agent_{name}_seconds", f"Voice agent: {name.replace('_', ' ')} (s)",
                buckets=_BUCKETS, registry=metrics.registry)
        self.observers.append(self._observe)

    async def stop(self, state: Any = None) -> None:
        if state is not None:
            state.remove_ready_checks(self._ready)
        await AgentService.stop(self, state)

    def _observe(self, stage: str, seconds: float) -> None:
        histogram = self.histograms.get(stage)
        if histogram is not None:
            histogram.observe(seconds)

    async def _ready(self) -> tuple[str, bool, str]:
        return "agent", True, f"{self.active}/{self.max_sessions} agent sessions"

    def _metrics(self):  # -> Iterator[Metric]
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        yield GaugeMetricFamily("voxgate_agent_sessions_active", "Voice agent sessions open now",
                                value=self.active)
        yield CounterMetricFamily("voxgate_agent_sessions_opened", "Voice agent sessions opened",
                                  value=self.opened_total)


def agent_service(state: AppState) -> AgentService:
    """The app's shared AgentService (a component started by the lifespan)."""
    service = state.components.get("agent")
    if service is None:
        raise EngineError("the voice agent is not enabled in this server", retryable=False)
    return service


async def client_agent_config(state: AppState, service: AgentService,
                              options: dict[str, Any]) -> AgentConfig:
    """A network client's options -> a validated AgentConfig (StreamConfigError names the
    field). Model names go through the server's model policy, the voice through the voice
    policy (both may look at installed packs: run in a thread)."""
    unknown = sorted(set(options) - CLIENT_FIELDS)
    if unknown:
        raise StreamConfigError(unknown[0], "not an option a client may set")
    options = {k: v for k, v in options.items() if v is not None}
    for name, kind in (("asr_model", "asr"), ("partial_model", "asr"), ("llm_model", "llm")):
        if name in options:
            try:
                options[name] = await asyncio.to_thread(client_model_id, state.settings,
                                                        options[name], kind)
            except (ModelError, ConfigError) as exc:
                raise StreamConfigError(name, str(exc)) from None
    if "voice" in options:
        try:
            options["voice"] = await asyncio.to_thread(client_voice, state, options["voice"])
        except (ModelError, ConfigError) as exc:
            raise StreamConfigError("voice", str(exc)) from None
    return service.config(**options)

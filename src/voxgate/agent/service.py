"""AgentService: the process-wide part of the voice agent (limit, engines, metrics hooks).

One per process, shared by every door (WebSocket ``/v1/agent``, gRPC ``VoiceWorkflow``, the
OpenAI Realtime door). :meth:`AgentService.open` builds a session from real engines: a live
ASR stream from the :class:`~voxgate.streaming.StreamingService` (so agent sessions count
against ``VOXGATE_MAX_STREAMS`` too), the LLM and the voice from the
:class:`~voxgate.engines.manager.ModelManager` (loaded once, shared).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

from ..config import Settings
from ..engines.base import Llm
from ..errors import ConfigError, EngineError, ModelError
from ..speech import SpeechService
from ..stream_config import StreamConfigError, StreamLimitError
from ..streaming import StreamingService
from ..types import TtsChunk
from .options import AgentConfig
from .session import AgentSession, Observer

__all__ = ["AgentLimitError", "AgentService", "SpeechVoice", "agent_llm_id"]

logger = logging.getLogger(__name__)

# how long a shutting-down server waits for sessions still closing (a reply being cut, the
# LLM stopping at its next token, the stream released): seconds in practice
_STOP_WAIT_S = 15.0


class AgentLimitError(StreamLimitError):
    """Every agent session slot is taken (WebSocket 1013, gRPC RESOURCE_EXHAUSTED)."""

    def __init__(self, limit: int) -> None:
        EngineError.__init__(self, f"server busy: all {limit} agent sessions are in use; retry "
                                   "in a few seconds or raise VOXGATE_AGENT__MAX_SESSIONS",
                             retryable=True)
        self.limit = limit


def agent_llm_id(settings: Settings, requested: str | None = None) -> str:
    """The LLM a session uses: its own choice, else ``VOXGATE_AGENT__LLM_MODEL``, else the
    jobs' LLM (an OpenAI-compatible server when ``VOXGATE_LLM__BASE_URL`` is set)."""
    if requested:
        return requested
    if settings.agent.llm_model:
        return settings.agent.llm_model
    return "openai-compatible" if settings.llm.base_url else settings.llm.model


class SpeechVoice:
    """A resolved voice of the :class:`SpeechService`: one sentence -> its audio chunks."""

    def __init__(self, speech: SpeechService, voice: str | None, speed: float = 1.0) -> None:
        self.speech = speech
        self.ref = speech.resolve_voice(voice)  # ConfigError listing the voices
        self.speed = speed
        rate = next((v.sample_rate for v in speech.voices() if v.id == self.ref.id), 0)
        self.sample_rate = rate or speech.engine(self.ref).sample_rate

    def speak(self, sentence: str) -> AsyncIterator[TtsChunk]:
        request = self.speech.prepare(sentence, self.ref.id, self.speed, max_chars=None)
        return self.speech.astream(request)


class AgentService:
    """Agent sessions of this process: ``config`` -> ``open`` -> :class:`AgentSession`."""

    name = "agent"

    def __init__(self, settings: Settings, manager: Any, streaming: StreamingService,
                 speech: SpeechService) -> None:
        self.settings = settings
        self.manager = manager
        self.streaming = streaming
        self.speech = speech
        self.max_sessions = settings.agent.max_sessions
        self.sessions: dict[str, AgentSession | None] = {}  # None: still opening
        self._lingering: set[asyncio.Task[None]] = set()  # closed sessions' last LLM requests
        self.observers: list[Observer] = []
        self.opened_total = 0

    @property
    def active(self) -> int:
        return len(self.sessions)

    def check_capacity(self) -> None:
        """Raise :class:`AgentLimitError` (or the stream limit) before any work."""
        if self.active >= self.max_sessions:
            raise AgentLimitError(self.max_sessions)
        self.streaming.check_capacity()

    def config(self, **overrides: Any) -> AgentConfig:
        """Server defaults with ``overrides`` (validated; StreamConfigError names the field)."""
        return AgentConfig.from_settings(self.settings, **overrides)

    async def open(self, config: AgentConfig) -> AgentSession:
        """A session with its engines loaded. StreamConfigError (field ``asr_model``,
        ``llm_model``, ``voice``, ``language``) when an engine cannot serve the config;
        AgentLimitError / StreamLimitError when full."""
        self.check_capacity()
        config.validate()
        session_id = uuid.uuid4().hex[:12]
        self.sessions[session_id] = None  # the slot is taken while models load
        stack = contextlib.ExitStack()
        asr = None
        try:
            if len(self._lingering) >= self.max_sessions:
                # closed sessions' LLM requests still stopping (see Prefill.close): a client
                # that opens and closes sessions faster than they stop would pile them up in
                # the LLM; the next session waits (its slot taken) until one has ended
                await asyncio.wait(set(self._lingering), return_when=asyncio.FIRST_COMPLETED)
            voice = await asyncio.to_thread(self._voice, config)
            llm: Llm = await asyncio.to_thread(self._use_llm, stack, config.llm_model)
            s = self.settings.agent
            stream_config = self.streaming.config(
                language=config.language, final_model=config.asr_model or s.asr_model or None,
                partial_model=config.partial_model or s.partial_model or None,
                endpointing_ms=config.asr_endpointing_ms, vad_threshold=config.vad_threshold,
                speech_pad_ms=config.speech_pad_ms, min_speech_ms=config.min_speech_ms,
                # speech onsets pause the agent before min_speech_ms confirms (also with
                # barge_in off: a door may turn it on later, the session ignores them till then)
                onset_ms=config.pause_onset_ms or None)
            asr = await self.streaming.open(stream_config)

            def release() -> None:
                # the session's slot is free now; the engines it used stay held until an
                # LLM request it left running (a prefill reading its prompt) has ended
                self.sessions.pop(session_id, None)
                lingering = session.lingering
                if lingering is None or lingering.done():
                    stack.close()
                    return
                self._lingering.add(lingering)

                def ended(task: asyncio.Task[None]) -> None:
                    self._lingering.discard(task)
                    stack.close()

                lingering.add_done_callback(ended)

            session = AgentSession(config, asr, llm, voice, observers=self.observers,
                                   on_close=release, session_id=session_id)
        except BaseException:
            if asr is not None:
                await asr.close()
            stack.close()
            self.sessions.pop(session_id, None)
            raise
        self.sessions[session_id] = session
        self.opened_total += 1
        return session

    def _voice(self, config: AgentConfig) -> SpeechVoice:
        try:
            return SpeechVoice(self.speech, config.voice or self.settings.agent.voice or None,
                               config.speed)
        except (ConfigError, ModelError) as exc:
            raise StreamConfigError("voice", str(exc)) from None

    def _use_llm(self, stack: contextlib.ExitStack, requested: str | None) -> Llm:
        model_id = agent_llm_id(self.settings, requested)
        try:
            return stack.enter_context(self.manager.use("llm", model_id))
        except (ModelError, ConfigError) as exc:
            raise StreamConfigError("llm_model", str(exc)) from None

    async def start(self, state: Any = None) -> None:
        return None

    async def stop(self, state: Any = None) -> None:
        sessions = [s for s in self.sessions.values() if s is not None]
        for session in sessions:
            await session.close()
        # a session whose door began closing it (client gone) may still be releasing: wait,
        # bounded, so the loop is not stopped under it (its tasks would be destroyed pending)
        closing = [asyncio.ensure_future(s.wait_closed()) for s in sessions]
        closing += [asyncio.ensure_future(asyncio.wait({t})) for t in self._lingering]
        if closing:
            _, pending = await asyncio.wait(closing, timeout=_STOP_WAIT_S)
            for waiter in pending:
                waiter.cancel()
            if pending:
                logger.warning("agent: %d session(s) still closing after %.0f s at shutdown",
                               len(pending), _STOP_WAIT_S)

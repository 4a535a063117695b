"""gRPC ``voxgate.v1.VoiceWorkflow``: the voice agent over one bidirectional stream.

The contract is ``proto/voxgate/v1/voice_workflow.proto`` (generated code in
``voxgate.proto``). The servicer is a thin door over :class:`~voxgate.agent.AgentSession`:

* the first message must be ``config`` (within the streaming idle timeout, else
  DEADLINE_EXCEEDED; audio, text or control first: INVALID_ARGUMENT). Its fields become the
  session's options under the client policy: catalogue ids for models (``client_model_id``),
  listed voices (``client_voice``), turn-taking within the bounds of ``AgentConfig``; a bad
  field is INVALID_ARGUMENT naming it;
* then ``audio`` (PCM16/F32 at the config's rate and channels, converted by ``PcmInput``),
  ``text`` (a typed user turn) and ``control`` (INTERRUPT, FLUSH, END) in any order; END or
  the end of the request stream lets the agent answer and finish speaking, then the call ends
  OK;
* every :mod:`voxgate.agent.events` event becomes one ``ServerMessage`` (audio as PCM16 at
  ``Ready.output_sample_rate_hz``);
* bounds: API key metadata (UNAUTHENTICATED), ``VOXGATE_AGENT__MAX_SESSIONS`` and the live
  stream limit (RESOURCE_EXHAUSTED, before anything is read), ``max_frame_bytes`` per audio
  message, the agent's own idle timeout and output-buffer bound (a fatal ``Error`` message,
  then DEADLINE_EXCEEDED / RESOURCE_EXHAUSTED). A cancelled call closes the session (LLM and
  TTS stop, models and slots are released).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc

from ..agent import (
    AgentAudio,
    AgentError,
    AgentEvent,
    AgentSession,
    AgentText,
    AudioPaused,
    AudioResumed,
    Interruption,
    TurnEnded,
    TurnLatency,
    TurnStarted,
    UserSpeechStarted,
    UserSpeechStopped,
    UserTranscript,
    agent_llm_id,
)
from ..audio import float32_to_pcm16
from ..errors import AudioError, VoxgateError
from ..log_setup import bind as bind_log_context
from ..proto import voice_workflow_pb2 as pb
from ..proto import voice_workflow_pb2_grpc as pb_grpc
from ..stream_config import PcmInput, StreamConfigError
from .agent_doors import agent_service, client_agent_config
from .grpc_auth import authorize_stream
from .grpc_errors import IdleStream, abort_with_status
from .state import AppState

__all__ = ["VOICE_WORKFLOW_SERVICE", "VoiceWorkflowServicer", "add_voice_workflow"]

logger = logging.getLogger(__name__)
VOICE_WORKFLOW_SERVICE = "voxgate.v1.VoiceWorkflow"
_ENCODINGS = {pb.AUDIO_ENCODING_UNSPECIFIED: "pcm16", pb.PCM16: "pcm16", pb.F32: "f32"}
# optional SessionConfig fields passed through to AgentConfig as they are (range-checked there)
_TURN_FIELDS = ("end_of_turn_ms", "speed", "turn_detection", "barge_in", "unfinished_wait_ms",
                "min_words", "barge_in_min_ms", "barge_in_min_words", "resume_after_ms",
                "max_reply_tokens", "temperature", "asr_endpointing_ms", "complete_wait_ms",
                "pause_onset_ms")
# fatal agent error codes -> the status the call ends with
_FATAL_STATUS = {"idle_timeout": grpc.StatusCode.DEADLINE_EXCEEDED,
                 "client_not_reading": grpc.StatusCode.RESOURCE_EXHAUSTED,
                 "asr_error": grpc.StatusCode.UNAVAILABLE}


class _IdleStream(IdleStream):
    """The client opened the stream and sent no config within the idle timeout."""


class _Refused(VoxgateError):
    """A client message the door refuses (wrong order, too big): INVALID_ARGUMENT."""


class VoiceWorkflowServicer(pb_grpc.VoiceWorkflowServicer):
    """Maps ``Converse`` messages onto an :class:`AgentSession` and its events back."""

    def __init__(self, state: AppState) -> None:
        self.state = state
        self.settings = state.settings

    # ---- Converse ------------------------------------------------------------------------
    async def Converse(self, request_iterator: AsyncIterator[pb.ClientMessage],
                       context: grpc.aio.ServicerContext) -> AsyncIterator[pb.ServerMessage]:
        requests = aiter(request_iterator)
        await authorize_stream(self.settings, context, requests)
        session: AgentSession | None = None
        try:
            service = agent_service(self.state)
            service.check_capacity()  # a full server answers before reading anything
            first = await self._first(requests)
            config = first.config
            pcm = self._pcm(config)
            options = await client_agent_config(self.state, service, self._options(config))
            session = await service.open(options)
            bind_log_context(session_id=session.id)  # every log line of this call names it
        except Exception as exc:  # mapped to a status code
            if session is not None:
                await session.close()
            await self._fail(context, exc)
            raise
        interim = config.interim_results if config.HasField("interim_results") else True
        reader = asyncio.create_task(self._read(requests, session, pcm),
                                     name=f"grpc-agent-reader-{session.id}")
        fatal: AgentError | None = None
        try:
            yield pb.ServerMessage(ready=self._ready(session, pcm))
            async for event in session.events():
                if isinstance(event, AgentError) and event.fatal:
                    fatal = event
                    yield pb.ServerMessage(error=_error(event))
                    break
                message = _message(event, interim)
                if message is not None:
                    yield message
            if reader.done() and not reader.cancelled() and reader.exception() is not None:
                raise reader.exception()  # type: ignore[misc]
        except Exception as exc:
            await self._close(session, reader)
            await self._fail(context, exc)
            raise
        finally:  # also on cancellation: the reply stops, models and slots are released
            await self._close(session, reader)
        if fatal is not None:  # the session is closed first: the abort ends this handler
            await context.abort(_FATAL_STATUS.get(fatal.code, grpc.StatusCode.INTERNAL),
                                f"{fatal.code}: {fatal.message}")

    @staticmethod
    async def _close(session: AgentSession, reader: asyncio.Task[None]) -> None:
        """Stop reading and close the session (idempotent). Shielded: a handler cancelled
        while closing must not leave the session's slot and models held."""
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await reader
        await asyncio.shield(session.close())

    async def _first(self, requests: AsyncIterator[pb.ClientMessage]) -> pb.ClientMessage:
        idle_s = self.settings.streaming.idle_timeout_s
        try:
            first = await asyncio.wait_for(anext(requests, None), idle_s)
        except TimeoutError:
            raise _IdleStream(f"no config within {idle_s:g} s: stream closed") from None
        kind = first.WhichOneof("message") if first is not None else None
        if kind != "config":
            got = f"{kind} arrived" if kind else "nothing arrived"
            raise _Refused(f"config: the first message must be config ({got} before it); "
                           "send config, then audio, text or control")
        return first

    async def _read(self, requests: AsyncIterator[pb.ClientMessage], session: AgentSession,
                    pcm: PcmInput) -> None:
        """Client messages -> the session; a refused message closes it (the call then fails
        with this task's exception)."""
        max_bytes = self.settings.streaming.max_frame_bytes
        try:
            async for request in requests:
                kind = request.WhichOneof("message")
                if kind == "audio":
                    data = request.audio.data
                    if len(data) > max_bytes:
                        raise _Refused(f"audio: {len(data)} bytes exceeds the {max_bytes}-byte "
                                       "limit per message; send smaller chunks (e.g. 100 ms)")
                    try:
                        samples = pcm.convert(data)
                    except AudioError as exc:
                        raise _Refused(f"audio: {exc}") from None
                    await session.accept(samples)
                elif kind == "text":
                    await session.send_text(request.text.text)
                elif kind == "control":
                    action = request.control.action
                    if action == pb.Control.INTERRUPT:
                        await session.interrupt()
                    elif action == pb.Control.FLUSH:  # the resampler goes on: more audio follows
                        await session.flush()
                    elif action == pb.Control.END:
                        break
                    else:
                        raise _Refused(f"control.action: {action} is not INTERRUPT, FLUSH "
                                       "or END")
                elif kind == "config":
                    raise _Refused("config: sent twice; only the first message carries it")
                else:
                    raise _Refused("message: empty ClientMessage (set config, audio, text or "
                                   "control)")
            await session.accept(pcm.flush())
            await session.end()  # answer what was said, finish speaking, then events end
        except Exception:
            await session.close()  # events() ends; Converse raises this task's exception
            raise

    # ---- config --------------------------------------------------------------------------
    @staticmethod
    def _pcm(config: pb.SessionConfig) -> PcmInput:
        encoding = _ENCODINGS.get(config.encoding)
        if encoding is None:
            raise StreamConfigError("encoding", f"unknown AudioEncoding {config.encoding}; "
                                                "use PCM16 or F32")
        rate = config.sample_rate_hz or 16_000
        if not 8000 <= rate <= 192_000:
            raise StreamConfigError("sample_rate_hz", f"must be 8000-192000 Hz, got {rate}")
        if config.channels > 8:
            raise StreamConfigError("channels", f"must be 1-8, got {config.channels}")
        return PcmInput(encoding, rate, config.channels or 1)

    @staticmethod
    def _options(config: pb.SessionConfig) -> dict[str, Any]:
        """SessionConfig -> the client options of ``client_agent_config`` (which applies the
        model and voice policy). Unset fields are left to the server's defaults."""
        options: dict[str, Any] = {}
        for field in ("asr_model", "partial_model", "llm_model", "voice", "language"):
            value = getattr(config, field).strip()
            if value:
                options[field] = value
        if config.system_prompt:
            options["system_prompt"] = config.system_prompt
        if config.output_sample_rate_hz:
            options["output_sample_rate"] = int(config.output_sample_rate_hz)
        for field in _TURN_FIELDS:
            if config.HasField(field):
                value = getattr(config, field)
                options[field] = round(value, 4) if isinstance(value, float) else value
        return options

    def _ready(self, session: AgentSession, pcm: PcmInput) -> pb.Ready:
        """What the session runs with. AgentService builds it from a live ASR stream and a
        SpeechVoice; other engines (tests' fakes) may lack the ids, which are then empty."""
        config = session.config
        asr_config = getattr(session.asr, "config", None)
        voice_ref = getattr(session.voice, "ref", None)
        return pb.Ready(session_id=session.id,
                        asr_model=getattr(asr_config, "final_model", ""),
                        llm_model=agent_llm_id(self.settings, config.llm_model),
                        voice=getattr(voice_ref, "id", config.voice or ""),
                        language=config.language or "", input_sample_rate_hz=pcm.sample_rate,
                        output_sample_rate_hz=session.output_sample_rate)

    # ---- errors --------------------------------------------------------------------------
    async def _fail(self, context: grpc.aio.ServicerContext, exc: BaseException) -> None:
        await abort_with_status(context, exc, logger, "VoiceWorkflow call")  # _Refused: 400


# ---- events -> messages ----------------------------------------------------------------------
_SPEAKERS = {"user": pb.Turn.USER, "agent": pb.Turn.AGENT}
_INTERRUPTED = frozenset({"interrupted", "cancelled", "truncated"})


def _error(event: AgentError) -> pb.Error:
    error = pb.Error(code=event.code, message=event.message, fatal=event.fatal,
                     field=str(event.details.get("field", "")))
    if event.turn_id is not None:
        error.turn_id = event.turn_id
    return error


def _latency(event: TurnLatency) -> pb.Latency:
    latency = pb.Latency(turn_id=event.turn_id, speculative=event.speculative)
    for source, target in (("end_of_turn_s", "end_of_turn_s"), ("asr_final_s", "asr_final_s"),
                           ("llm_ttft_s", "llm_first_token_s"),
                           ("tts_ttfa_s", "tts_first_audio_s"),
                           ("voice_to_voice_s", "voice_to_voice_s")):
        value = getattr(event, source)
        if value is not None:
            setattr(latency, target, value)
    return latency


def _message(event: AgentEvent, interim: bool) -> pb.ServerMessage | None:
    """One agent event as a ServerMessage (None: not part of this door's contract)."""
    if isinstance(event, AgentAudio):
        return pb.ServerMessage(audio=pb.AgentAudio(
            turn_id=event.turn_id, data=float32_to_pcm16(event.audio),
            sample_rate_hz=event.sample_rate, playout_s=event.offset_s, text=event.text,
            item_id=event.item_id))
    if isinstance(event, AgentText):
        return pb.ServerMessage(agent_text=pb.AgentText(turn_id=event.turn_id,
                                                        delta=event.delta,
                                                        item_id=event.item_id))
    if isinstance(event, UserTranscript):
        if not event.final and not interim:
            return None
        return pb.ServerMessage(transcript=pb.Transcript(
            turn_id=event.turn_id, text=event.text, is_final=event.final,
            turn_text=event.turn_text, start_s=event.start, end_s=event.end,
            stability=event.stability))
    if isinstance(event, (UserSpeechStarted, UserSpeechStopped)):
        return pb.ServerMessage(speech=pb.UserSpeech(
            turn_id=event.turn_id, started=isinstance(event, UserSpeechStarted), at_s=event.at))
    if isinstance(event, TurnStarted):
        return pb.ServerMessage(turn=pb.Turn(turn_id=event.turn_id,
                                             speaker=_SPEAKERS[event.role],
                                             kind=pb.Turn.START, text=event.text,
                                             item_id=event.item_id))
    if isinstance(event, TurnEnded):
        return pb.ServerMessage(turn=pb.Turn(
            turn_id=event.turn_id, speaker=_SPEAKERS[event.role], kind=pb.Turn.END,
            text=event.text, reason=event.reason, audio_s=event.audio_s, item_id=event.item_id,
            interrupted=event.role == "agent" and event.reason in _INTERRUPTED))
    if isinstance(event, TurnLatency):
        return pb.ServerMessage(latency=_latency(event))
    if isinstance(event, AudioPaused):
        return pb.ServerMessage(interruption=pb.Interruption(
            turn_id=event.turn_id, state=pb.Interruption.PAUSED, playout_s=event.played_s,
            item_id=event.item_id))
    if isinstance(event, AudioResumed):
        return pb.ServerMessage(interruption=pb.Interruption(
            turn_id=event.turn_id, state=pb.Interruption.RESUMED, playout_s=event.offset_s,
            item_id=event.item_id))
    if isinstance(event, Interruption):
        return pb.ServerMessage(interruption=pb.Interruption(
            turn_id=event.turn_id, state=pb.Interruption.CONFIRMED, playout_s=event.played_s,
            played_text=event.played_text, reason=event.reason, item_id=event.item_id))
    if isinstance(event, AgentError):
        return pb.ServerMessage(error=_error(event))
    return None  # ItemAdded: the Realtime door's concern


def add_voice_workflow(server: grpc.aio.Server, state: AppState) -> str:
    """Register the servicer on ``server``; returns its service name (for health)."""
    pb_grpc.add_VoiceWorkflowServicer_to_server(VoiceWorkflowServicer(state), server)
    return VOICE_WORKFLOW_SERVICE

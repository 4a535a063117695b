"""WebSocket ``/v1/realtime``: the OpenAI Realtime API (GA event names) over the voice agent.

OpenAI's realtime clients (``client.realtime.connect(model=...)`` with ``base_url`` pointed
here) talk to an :class:`~voxgate.agent.AgentSession`: ``input_audio_buffer.append`` feeds it
(base64 PCM16 mono 24 kHz, converted by ``PcmInput``), ``session.update`` sets its options,
``conversation.item.*`` and ``response.*`` use its manual controls (``add_item``,
``delete_item``, ``truncate_item``, ``commit_input``, ``create_response``,
``cancel_response``), and its events go out as Realtime server events (``EventTranslator``). The
door is thin: no pipeline logic here. ``realtime_events.py`` holds the wire shapes;
``docs/protocol.md`` ("/v1/realtime") says what is supported and what is not.

The agent session opens on the first event that needs it (audio, an item, a response), so a
``session.update`` sent first still chooses the language and VAD settings of its ASR stream;
its agent slot and live-stream slot are held from the connection on (:class:`HeldSlots`), so a
full server refuses a client at once (1013), never in the middle of its session.
Auth, frame size and idle limits are those of the other live doors (``wire.py`` close codes):
a bad key closes with 1008, a full server with 1013, a frame over the limit with 1009; a bad
client event is answered with an ``error`` event (its ``event_id`` included) and the session
goes on, as OpenAI's server does.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import copy
import json
import logging
import uuid
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from starlette.websockets import WebSocketState

from ..agent import (
    AgentConfig,
    AgentError,
    AgentService,
    AgentSession,
    SpeechVoice,
)
from ..errors import AudioError, ConfigError, EngineError, ModelError, TextError
from ..log_setup import bind as bind_log_context
from ..stream_config import PcmInput, StreamConfigError, StreamLimitError
from .agent_doors import agent_service, client_agent_config
from .deps import websocket_api_key_ok
from .realtime_events import (
    RATE,
    EventTranslator,
    RealtimeError,
    RealtimeOptions,
    message_item,
    new_id,
    parse_item,
    server_event,
)
from .state import AppState
from .wire import CLOSE_INTERNAL, CLOSE_POLICY, CLOSE_TOO_BIG, CLOSE_TRY_AGAIN

__all__ = ["router"]

logger = logging.getLogger(__name__)
router = APIRouter(tags=["realtime"])
MAX_ITEMS = 512  # conversation items a session may hold (items cost memory and prompt)

# AgentConfig field -> the Realtime parameter a client set it with
_PARAMS = {
    "system_prompt": "session.instructions", "voice": "session.audio.output.voice",
    "speed": "session.audio.output.speed", "max_reply_tokens": "session.max_output_tokens",
    "language": "session.audio.input.transcription.language",
    "end_of_turn_ms": "session.audio.input.turn_detection.silence_duration_ms",
    "unfinished_wait_ms": "session.audio.input.turn_detection.eagerness",
    "asr_endpointing_ms": "session.audio.input.turn_detection.silence_duration_ms",
    "vad_threshold": "session.audio.input.turn_detection.threshold",
    "speech_pad_ms": "session.audio.input.turn_detection.prefix_padding_ms",
    "complete_wait_ms": "session.audio.input.turn_detection.complete_wait_ms",
    "pause_onset_ms": "session.audio.input.turn_detection.pause_onset_ms"}
# fixed once the ASR stream is open (the first audio, item or response)
_STREAM_FIELDS = ("language", "vad_threshold", "speech_pad_ms", "asr_endpointing_ms",
                  "pause_onset_ms")
_FATAL_CLOSE = {"idle_timeout": CLOSE_POLICY, "client_not_reading": CLOSE_POLICY}


def error_event(exc: RealtimeError, event_id: str | None = None) -> dict[str, Any]:
    return server_event("error", error={"type": exc.kind, "code": exc.code,
                                        "message": exc.message, "param": exc.param,
                                        "event_id": event_id})


def _as_realtime(exc: Exception) -> RealtimeError:
    """Errors of the session and its options -> the Realtime error a client gets."""
    if isinstance(exc, RealtimeError):
        return exc
    if isinstance(exc, StreamLimitError):
        return RealtimeError(str(exc), code="session_limit", kind="server_error",
                             close_code=CLOSE_TRY_AGAIN)
    if isinstance(exc, StreamConfigError):
        param = _PARAMS.get(exc.field, exc.field)
        return RealtimeError(f"{param}: {str(exc).removeprefix(exc.field).lstrip(': ')}",
                             param=param)
    if isinstance(exc, AudioError):
        return RealtimeError(str(exc), code="invalid_audio", param="audio")
    if isinstance(exc, (ConfigError, TextError, ModelError)):
        return RealtimeError(str(exc))
    raise exc


class HeldSlots:
    """The agent slot and live-stream slot of a connection whose session is not open yet.

    Taken at connect (``AgentLimitError`` / ``StreamLimitError`` when the server is full) and
    held as ``AgentService.open`` holds a slot while models load, so a client once accepted is
    never refused later for want of a slot. :meth:`release` right before ``await
    service.open(...)`` hands them over: ``open`` checks capacity before its first await, in the
    same step of the event loop, so no other connection can take them in between. Released
    again on every exit path (idempotent); :meth:`hold` takes them back after a failed open.
    """

    def __init__(self, service: AgentService) -> None:
        self.service = service
        self.key = f"realtime-{uuid.uuid4().hex[:12]}"
        self.held = False
        self.hold()

    def hold(self) -> None:
        if self.held:
            return
        self.service.check_capacity()
        self.service.sessions[self.key] = None  # "still opening", as AgentService.open marks it
        self.service.streaming.sessions[self.key] = self  # type: ignore[assignment]
        self.held = True

    def release(self) -> None:
        if self.held:
            self.service.sessions.pop(self.key, None)
            self.service.streaming.sessions.pop(self.key, None)
            self.held = False

    async def close(self) -> None:
        """StreamingService.stop closes every session it counts: the hold is let go."""
        self.release()


# ========================================================================== the door
class RealtimeDoor:
    """One ``/v1/realtime`` connection: client events in, server events out."""

    def __init__(self, ws: WebSocket, state: AppState) -> None:
        self.ws, self.state, self.settings = ws, state, state.settings
        self.options = RealtimeOptions(model=ws.query_params.get("model", "")[:256])
        self.service: AgentService | None = None
        self.session: AgentSession | None = None
        self.slots: HeldSlots | None = None  # from connect until the session opens
        self.config: AgentConfig | None = None  # before the session opens
        self.pcm = PcmInput("pcm16", RATE, 1)
        self.writer: asyncio.Task[RealtimeError | None] | None = None
        self.translator = EventTranslator(self)
        self.session_id = new_id("sess")
        bind_log_context(session_id=self.session_id)  # every log line of this session names it
        self._send_lock = asyncio.Lock()
        self._handlers = {
            "session.update": self._session_update,
            "input_audio_buffer.append": self._append,
            "input_audio_buffer.commit": self._commit,
            "input_audio_buffer.clear": self._clear,
            "conversation.item.create": self._item_create,
            "conversation.item.delete": self._item_delete,
            "conversation.item.truncate": self._item_truncate,
            "conversation.item.retrieve": self._item_retrieve,
            "response.create": self._response_create,
            "response.cancel": self._response_cancel,
        }

    # ---- lifecycle ------------------------------------------------------------------------
    async def run(self) -> None:
        if not websocket_api_key_ok(self.ws, self.settings):
            await self._close(RealtimeError("invalid or missing API key (Authorization: Bearer, "
                                            "X-API-Key, or ?api_key=)", code="invalid_api_key",
                                            close_code=CLOSE_POLICY))
            return
        try:
            self.service = agent_service(self.state)
            self.slots = HeldSlots(self.service)  # a full server is told before anything else
            self.config = await self._agent_config()
            await self._send(server_event("session.created", session=self._session_wire()))
            while True:
                await self._dispatch(await self._receive())
        except WebSocketDisconnect:
            logger.info("realtime client went away%s",
                        f" (session {self.session.id})" if self.session else "")
        except RealtimeError as exc:
            await self._close(exc)
        except (StreamLimitError, StreamConfigError) as exc:
            await self._close(_as_realtime(exc) if isinstance(exc, StreamLimitError) else
                              RealtimeError(str(exc), close_code=CLOSE_POLICY))
        except EngineError as exc:  # no agent in this server, models failed to load
            logger.warning("realtime session failed: %s", exc)
            await self._close(RealtimeError(str(exc), code="engine_error", kind="server_error",
                                            close_code=CLOSE_INTERNAL))
        except Exception:  # every failure is answered with an error and a close code
            logger.exception("realtime session failed")
            await self._close(RealtimeError("internal error", code="internal",
                                            kind="server_error", close_code=CLOSE_INTERNAL))
        finally:
            if self.slots is not None:
                self.slots.release()
            if self.writer is not None and not self.writer.done():
                self.writer.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self.writer
            if self.session is not None:
                await self.session.close()

    async def _receive(self) -> dict[str, Any]:
        """The next client message; RealtimeError (closing) when idle before the session
        opens or when the session ended by itself (idle, not reading, ASR failed)."""
        receive = asyncio.ensure_future(self.ws.receive())
        waiting: set[asyncio.Future[Any]] = {receive}
        if self.writer is not None:
            waiting.add(self.writer)
        idle = self.settings.streaming.idle_timeout_s if self.session is None else None
        done, _ = await asyncio.wait(waiting, timeout=idle, return_when=asyncio.FIRST_COMPLETED)
        if receive not in done:
            receive.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await receive
            if not done:
                raise RealtimeError(f"no event for {idle:g} s: idle session closed",
                                    code="idle_timeout", close_code=CLOSE_POLICY)
            assert self.writer is not None
            raise self.writer.result() or RealtimeError(
                "session ended", code="internal", kind="server_error", close_code=CLOSE_INTERNAL)
        message = receive.result()
        if message["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(message.get("code", 1000))
        return message

    async def _dispatch(self, message: dict[str, Any]) -> None:
        event_id = None
        try:
            if message.get("bytes") is not None:
                raise RealtimeError("binary frames are not part of the Realtime API: send audio "
                                    "as base64 in input_audio_buffer.append events",
                                    code="invalid_event")
            text = message.get("text") or ""
            limit = self.settings.streaming.max_frame_bytes
            if len(text.encode()) > limit:
                raise RealtimeError(f"event larger than {limit} bytes; send audio in smaller "
                                    "appends", code="too_big", close_code=CLOSE_TOO_BIG)
            try:
                data = json.loads(text)
            except json.JSONDecodeError as exc:
                raise RealtimeError(f"event is not valid JSON ({exc.msg} at char {exc.pos})",
                                    code="invalid_json") from None
            if not isinstance(data, dict):
                raise RealtimeError("event must be a JSON object", code="invalid_json")
            event_id = data.get("event_id") if isinstance(data.get("event_id"), str) else None
            kind = data.get("type")
            handler = self._handlers.get(kind) if isinstance(kind, str) else None
            if handler is None:
                raise RealtimeError(f"Invalid value: {kind!r}. Supported event types: "
                                    f"{', '.join(self._handlers)}", code="invalid_value",
                                    param="type")
            await handler(data)
        except Exception as exc:  # noqa: BLE001 - mapped; unknown ones are re-raised
            error = _as_realtime(exc)
            if error.close_code is not None:
                raise error from None
            await self._send(error_event(error, event_id))

    async def _send(self, event: dict[str, Any]) -> None:
        async with self._send_lock:
            await self.ws.send_text(json.dumps(event))

    async def _close(self, exc: RealtimeError) -> None:
        if self.ws.client_state != WebSocketState.CONNECTED:
            return
        with contextlib.suppress(Exception):  # the client may already be gone
            await self._send(error_event(exc))
            await self.ws.close(exc.close_code or CLOSE_POLICY, exc.message[:120])

    # ---- the agent session ----------------------------------------------------------------
    async def _agent_config(self) -> AgentConfig:
        assert self.service is not None
        base = self.session.config if self.session else None
        endpointing = (base.asr_endpointing_ms if base else
                       self.settings.agent.asr_endpointing_ms)
        options = self.options.agent_options(self.settings.agent.max_reply_tokens, endpointing)
        if base is not None:  # what the open stream uses stays unless the client names it
            for name in _STREAM_FIELDS:
                if options.get(name) is None:
                    options[name] = getattr(base, name)
        return await client_agent_config(self.state, self.service, options)

    async def _open(self) -> AgentSession:
        if self.session is None:
            assert self.service is not None and self.slots is not None
            self.config = await self._agent_config()
            self.slots.release()  # handed to open(), which checks capacity before any await
            try:
                self.session = await self.service.open(self.config)
            except Exception:
                self.slots.hold()  # a bad option leaves the connection its slot (or: full)
                raise
            self.writer = asyncio.create_task(self._write_events(self.session),
                                              name=f"realtime-writer-{self.session.id}")
        return self.session

    async def _write_events(self, session: AgentSession) -> RealtimeError | None:
        """Session events -> the socket; a fatal session error is returned, not sent."""
        async for event in session.events():
            if isinstance(event, AgentError) and event.fatal:
                return RealtimeError(event.message, code=event.code, kind="server_error",
                                     close_code=_FATAL_CLOSE.get(event.code, CLOSE_INTERNAL))
            for wire in self.translator.translate(event):
                await self._send(wire)
        return None

    def voice_id(self) -> str:
        session = self.session
        ref = getattr(getattr(session, "voice", None), "ref", None)
        if ref is not None:
            return ref.id
        config = self.config
        return (config.voice if config and config.voice else None) or \
            self.settings.agent.voice or self.settings.tts.voice

    def _session_wire(self) -> dict[str, Any]:
        config = self.session.config if self.session else self.config
        asr = config.asr_model if config and config.asr_model else (
            self.settings.agent.asr_model or self.settings.asr.model)
        stream = self.settings.streaming
        return self.options.to_wire(config, voice=self.voice_id(), asr_model=asr,
                                    session_id=self.session_id,
                                    vad=(stream.vad_threshold, stream.speech_pad_ms))

    def _item_sid(self, data: dict[str, Any], name: str = "item_id") -> str:
        wire_id = data.get(name)
        if not isinstance(wire_id, str) or not wire_id:
            raise RealtimeError(f"Missing required parameter: '{name}'", code="missing_required",
                                param=name)
        sid = self.translator.sid(wire_id)
        if self.session is None or not any(i.id == sid for i in self.session.history):
            raise RealtimeError(f"Item with item_id not found: {wire_id}",
                                code="item_not_found", param=name)
        return sid

    # ---- client events --------------------------------------------------------------------
    async def _session_update(self, data: dict[str, Any]) -> None:
        saved = copy.deepcopy(self.options)
        try:
            self.options.update(data.get("session"))
            config = await self._agent_config()
            if self.session is not None:
                await self._apply_live(self.session, config)
            else:
                self.config = config
        except BaseException:
            self.options = saved
            raise
        await self._send(server_event("session.updated", session=self._session_wire()))

    async def _apply_live(self, session: AgentSession, config: AgentConfig) -> None:
        """A running session takes new turn-taking, prompt, voice and length options; what its
        ASR stream was opened with stays (an error names it)."""
        for name in _STREAM_FIELDS:
            if getattr(config, name) != getattr(session.config, name):
                param = _PARAMS[name]
                raise RealtimeError(f"{param} can only be set before the first audio, item or "
                                    "response of the session", code="unsupported_value",
                                    param=param)
        if (config.voice, config.speed) != (session.config.voice, session.config.speed):
            if self.translator.response is not None:
                raise RealtimeError("the voice cannot change while a response is in progress",
                                    code="unsupported_value", param=_PARAMS["voice"])
            assert self.service is not None
            name = config.voice or self.settings.agent.voice or None
            try:
                session.voice = await asyncio.to_thread(SpeechVoice, self.service.speech, name,
                                                        config.speed)
            except (ConfigError, ModelError) as exc:
                raise RealtimeError(str(exc), param=_PARAMS["voice"]) from None
        session.config = config
        session.conversation.system_prompt = config.system_prompt

    async def _append(self, data: dict[str, Any]) -> None:
        audio = data.get("audio")
        if not isinstance(audio, str):
            raise RealtimeError("Missing required parameter: 'audio' (base64 PCM16 24 kHz)",
                                code="missing_required", param="audio")
        try:
            pcm = base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError):
            raise RealtimeError("Invalid 'audio': expected base64-encoded PCM16 mono 24 kHz "
                                "audio", code="invalid_value", param="audio") from None
        samples = self.pcm.convert(pcm)  # AudioError (odd length) before the session opens
        session = await self._open()
        await session.accept(samples)

    async def _commit(self, data: dict[str, Any]) -> None:
        session = await self._open()
        await session.accept(self.pcm.flush())
        self.pcm = PcmInput("pcm16", RATE, 1)  # a flushed resampler does not take more
        if await session.commit_input() is None:
            raise RealtimeError("Error committing input audio buffer: no speech was heard since "
                                "the last commit", code="input_audio_buffer_commit_empty")

    async def _clear(self, data: dict[str, Any]) -> None:
        if self.session is not None:
            self.session.clear_input()
        self.pcm = PcmInput("pcm16", RATE, 1)  # the resampler's tail is dropped too
        await self._send(server_event("input_audio_buffer.cleared"))

    async def _item_create(self, data: dict[str, Any]) -> None:
        role, text, client_id = parse_item(data.get("item"))
        session = await self._open()
        after = None
        previous = data.get("previous_item_id")
        if previous is not None:
            after = self._item_sid(data, "previous_item_id")
        if client_id is not None and (client_id in self.translator.sids or any(
                i.id == client_id for i in session.history)):
            raise RealtimeError(f"an item with id {client_id!r} already exists",
                                param="item.id")
        if len(session.history) >= MAX_ITEMS:
            raise RealtimeError(f"the conversation holds {MAX_ITEMS} items, the most a session "
                                "may; delete some first", code="conversation_full")
        item = session.add_item(role, text, after=after)
        self.translator.typed.add(item.id)
        self.translator.name(item.id, client_id or item.id)

    async def _item_delete(self, data: dict[str, Any]) -> None:
        sid = self._item_sid(data)
        wire_id = self.translator.wire_id(sid)
        assert self.session is not None
        self.session.delete_item(sid)
        self.translator.forget(sid)
        await self._send(server_event("conversation.item.deleted", item_id=wire_id))

    async def _item_truncate(self, data: dict[str, Any]) -> None:
        sid = self._item_sid(data)
        index, end_ms = data.get("content_index", 0), data.get("audio_end_ms")
        if index != 0 or isinstance(index, bool):
            raise RealtimeError("content_index must be 0 (an item has one audio part)",
                                param="content_index")
        if isinstance(end_ms, bool) or not isinstance(end_ms, int) or end_ms < 0:
            raise RealtimeError("audio_end_ms must be a non-negative integer",
                                param="audio_end_ms")
        assert self.session is not None
        item = next(i for i in self.session.history if i.id == sid)
        if item.role != "assistant":
            raise RealtimeError("only assistant audio items can be truncated", param="item_id")
        current = self.translator.response
        if (current is None or current.item_sid != sid) and end_ms > item.audio_s * 1000 + 1:
            raise RealtimeError(f"audio_end_ms {end_ms} is beyond the item's audio "
                                f"({item.audio_s * 1000:.0f} ms)", param="audio_end_ms")
        await self.session.truncate_item(sid, end_ms / 1000)
        await self._send(server_event("conversation.item.truncated",
                                      item_id=self.translator.wire_id(sid), content_index=0,
                                      audio_end_ms=end_ms))

    async def _item_retrieve(self, data: dict[str, Any]) -> None:
        sid = self._item_sid(data)
        assert self.session is not None
        item = next(i for i in self.session.history if i.id == sid)
        audio = item.role != "system" and sid not in self.translator.typed
        await self._send(server_event("conversation.item.retrieved", item=message_item(
            self.translator.wire_id(sid), item.role, item.text, audio=audio,
            status="incomplete" if item.interrupted else "completed")))

    async def _response_create(self, data: dict[str, Any]) -> None:
        spec = data.get("response") or {}
        if not isinstance(spec, dict):
            raise RealtimeError("response must be an object", param="response")
        allowed = {"instructions", "output_modalities", "conversation", "metadata", "audio",
                   "tool_choice", "tools"}
        for name in sorted(set(spec) - allowed):
            raise RealtimeError(f"response.{name} is not supported by this server (set options "
                                "with session.update)", code="unsupported_value",
                                param=f"response.{name}")
        if spec.get("output_modalities") not in (None, ["audio"]):
            raise RealtimeError("response.output_modalities: only ['audio'] is supported",
                                code="unsupported_value", param="response.output_modalities")
        if spec.get("conversation") not in (None, "auto"):
            raise RealtimeError("response.conversation: only 'auto' (the session's conversation)"
                                " is supported", code="unsupported_value",
                                param="response.conversation")
        if spec.get("tools") or spec.get("audio") or spec.get("tool_choice") not in (
                None, "auto", "none"):
            raise RealtimeError("per-response tools and audio options are not supported",
                                code="unsupported_value", param="response")
        instructions = spec.get("instructions")
        if instructions is not None and (not isinstance(instructions, str)
                                         or len(instructions) > 8000):
            raise RealtimeError("response.instructions must be text of at most 8000 characters",
                                param="response.instructions")
        metadata = spec.get("metadata")
        if metadata is not None and (not isinstance(metadata, dict) or len(metadata) > 16 or any(
                not isinstance(k, str) or not isinstance(v, str) or len(k) > 64 or len(v) > 512
                for k, v in metadata.items())):
            raise RealtimeError("response.metadata: at most 16 string keys (64 characters) and "
                                "values (512 characters)", param="response.metadata")
        if self.translator.response is not None:
            raise RealtimeError("Conversation already has an active response in progress: "
                                f"{self.translator.response.id}; cancel it first",
                                code="conversation_already_has_active_response")
        session = await self._open()
        self.translator.metadata = metadata
        await session.create_response(instructions or None)

    async def _response_cancel(self, data: dict[str, Any]) -> None:
        wanted = data.get("response_id")
        current = self.translator.response
        if wanted is not None and (current is None or current.id != wanted):
            raise RealtimeError(f"response {wanted!r} is not in progress",
                                code="response_cancel_not_active", param="response_id")
        if self.session is None or await self.session.cancel_response() is None:
            raise RealtimeError("Cancellation failed: no active response found",
                                code="response_cancel_not_active")


@router.websocket("/v1/realtime")
async def realtime_socket(ws: WebSocket) -> None:
    state: AppState = ws.app.state.voxgate
    await ws.accept()
    await RealtimeDoor(ws, state).run()

"""WebSocket ``/v1/agent``: talk to the voice agent (speech in, speech and text out).

Client -> server: a JSON ``config`` first (audio format in and out, agent options), then
binary audio frames (PCM16 LE, or f32) and JSON controls: ``{"type": "text", "text": ...}``
(a typed turn), ``interrupt`` (stop the agent), ``flush`` (my turn ends now), ``end``.
Server -> client: ``ready``, then JSON events (``transcript``, ``user_speech``, ``turn``,
``agent_text``, ``audio_paused``, ``audio_resumed``, ``interruption``, ``latency``,
``error``) and the agent's audio as binary frames at the ``ready`` message's output rate;
``end`` before a normal close. Auth, limits and close codes as ``/v1/asr`` (``wire.py``);
``docs/protocol.md`` has the details. The door is thin: it parses, converts audio
(``PcmInput``, ``float32_to_pcm16``) and hands everything to an
:class:`~voxgate.agent.AgentSession`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from starlette.websockets import WebSocketState

from ..agent import (
    AgentAudio,
    AgentError,
    AgentEvent,
    AgentSession,
    AgentText,
    AudioPaused,
    AudioResumed,
    Interruption,
    ItemAdded,
    TurnEnded,
    TurnLatency,
    TurnStarted,
    UserSpeechStarted,
    UserSpeechStopped,
    UserTranscript,
)
from ..audio import float32_to_pcm16
from ..errors import TextError
from ..log_setup import bind as bind_log_context
from ..stream_config import PcmInput, StreamConfigError
from .agent_doors import agent_service, client_agent_config
from .deps import websocket_api_key_ok
from .state import AppState
from .wire import (
    CLOSE_INTERNAL,
    CLOSE_NORMAL,
    CLOSE_POLICY,
    CLOSE_TOO_BIG,
    CLOSE_UNSUPPORTED,
    ErrorMessage,
    WireError,
    _loads,
    _typed,
)
from .ws_common import EXPECTED_ERRORS, error_message, live_door

__all__ = ["AgentStart", "event_to_wire", "router"]

logger = logging.getLogger(__name__)
router = APIRouter(tags=["agent"])
OUT_ENCODINGS = ("pcm16", "f32")
_MAX_TEXT = 4096


@dataclass(slots=True)
class AgentStart:
    """The first message: audio formats plus agent options (all optional).

    ``{"type": "config", "sample_rate": 16000, "encoding": "pcm16", "channels": 1,
    "output_sample_rate": 24000, "output_encoding": "pcm16", "voice": "en_US-joe-medium",
    "system_prompt": "...", "language": "en", "models": {"asr": "whisper-base", "llm": "..."},
    "turn_detection": true, "barge_in": true, "end_of_turn_ms": 600}``
    """

    sample_rate: int = 16_000
    encoding: str = "pcm16"
    channels: int = 1
    output_encoding: str = "pcm16"
    options: dict[str, Any] = field(default_factory=dict)  # AgentConfig overrides

    _TYPES: ClassVar[dict[str, Any]] = {
        "system_prompt": str, "language": str, "voice": str, "speed": (int, float),
        "turn_detection": bool, "auto_respond": bool, "barge_in": bool, "end_of_turn_ms": int,
        "unfinished_wait_ms": int, "min_words": int, "barge_in_min_ms": int,
        "barge_in_min_words": int, "resume_after_ms": int, "max_reply_tokens": int,
        "temperature": (int, float), "output_sample_rate": int, "asr_endpointing_ms": int,
        "min_speech_ms": int, "vad_threshold": (int, float), "speech_pad_ms": int,
        "complete_wait_ms": int, "pause_onset_ms": int}
    _MODELS: ClassVar[dict[str, str]] = {"asr": "asr_model", "partial": "partial_model",
                                         "llm": "llm_model"}
    KNOWN: ClassVar[frozenset[str]] = frozenset(
        {"type", "sample_rate", "encoding", "channels", "output_encoding", "models", *_TYPES})

    @classmethod
    def from_wire(cls, text: str) -> AgentStart:
        data = _loads(text)
        kind = data.get("type")
        if kind != "config":
            raise WireError(f"the first message must be the config (type 'config'), got type "
                            f"{kind!r}", field="type", code="config_expected")
        unknown = sorted(set(data) - cls.KNOWN)
        if unknown:
            raise WireError(f"{unknown[0]}: unknown config field; known: "
                            f"{', '.join(sorted(cls.KNOWN - {'type'}))}", field=unknown[0],
                            code="bad_config")
        out_encoding = _typed(data, "output_encoding", str, "pcm16")
        if out_encoding not in OUT_ENCODINGS:
            raise WireError(f"output_encoding: unsupported {out_encoding!r}; use one of "
                            f"{', '.join(OUT_ENCODINGS)}", close_code=CLOSE_UNSUPPORTED,
                            field="output_encoding", code="unsupported_encoding")
        options = {name: _typed(data, name, kind, None) for name, kind in cls._TYPES.items()}
        models = _typed(data, "models", dict, {})
        bad = sorted(set(models) - set(cls._MODELS))
        if bad:
            raise WireError(f"models.{bad[0]}: unknown; use {', '.join(cls._MODELS)}",
                            field=f"models.{bad[0]}", code="bad_config")
        for key, name in cls._MODELS.items():
            options[name] = _typed(models, key, str, None)
        if data.get("language") in ("auto", ""):
            options["language"] = None
        return cls(sample_rate=_typed(data, "sample_rate", int, 16_000),
                   encoding=_typed(data, "encoding", str, "pcm16"),
                   channels=_typed(data, "channels", int, 1), output_encoding=out_encoding,
                   options={k: v for k, v in options.items() if v is not None})


_FIELD_NAMES = {"asr_model": "models.asr", "partial_model": "models.partial",
                "llm_model": "models.llm"}


def _config_error(exc: StreamConfigError) -> WireError:
    name = _FIELD_NAMES.get(exc.field, exc.field)
    message = str(exc)
    if name != exc.field and message.startswith(exc.field):
        message = name + message[len(exc.field):]
    code = CLOSE_UNSUPPORTED if exc.field == "encoding" else CLOSE_POLICY
    return WireError(message, close_code=code, field=name, code="bad_config")


def _as_error(exc: BaseException) -> ErrorMessage:
    """ws_common.error_message, with the agent's config field names and ``bad_text``."""
    if isinstance(exc, StreamConfigError):
        return error_message(_config_error(exc))
    if isinstance(exc, TextError):
        return ErrorMessage(str(exc), CLOSE_POLICY, "bad_text", "text")
    return error_message(exc)


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def event_to_wire(event: AgentEvent, out_encoding: str = "pcm16") -> dict[str, Any] | bytes:
    """One session event as a JSON object, or (agent audio) the bytes of a binary frame."""
    if isinstance(event, AgentAudio):
        audio = np.asarray(event.audio, np.float32)
        return float32_to_pcm16(audio) if out_encoding == "pcm16" else audio.astype("<f4").tobytes()
    if isinstance(event, UserTranscript):
        return {"type": "transcript", "turn_id": event.turn_id, "text": event.text,
                "final": event.final, "turn_text": event.turn_text, "stability": event.stability}
    if isinstance(event, (UserSpeechStarted, UserSpeechStopped)):
        return {"type": "user_speech", "turn_id": event.turn_id, "at": _r(event.at),
                "state": "started" if isinstance(event, UserSpeechStarted) else "stopped"}
    if isinstance(event, TurnStarted):
        return {"type": "turn", "event": "started", "turn_id": event.turn_id,
                "role": event.role, "item_id": event.item_id}
    if isinstance(event, TurnEnded):
        return {"type": "turn", "event": "ended", "turn_id": event.turn_id, "role": event.role,
                "reason": event.reason, "text": event.text, "item_id": event.item_id,
                "audio_s": _r(event.audio_s)}
    if isinstance(event, AgentText):
        return {"type": "agent_text", "turn_id": event.turn_id, "delta": event.delta}
    if isinstance(event, AudioPaused):
        return {"type": "audio_paused", "turn_id": event.turn_id, "played_s": _r(event.played_s)}
    if isinstance(event, AudioResumed):
        return {"type": "audio_resumed", "turn_id": event.turn_id, "offset_s": _r(event.offset_s)}
    if isinstance(event, Interruption):
        return {"type": "interruption", "turn_id": event.turn_id, "reason": event.reason,
                "played_text": event.played_text, "played_s": _r(event.played_s)}
    if isinstance(event, TurnLatency):
        return {"type": "latency", "turn_id": event.turn_id, **event.as_dict()}
    if isinstance(event, ItemAdded):
        return {"type": "item", "item_id": event.item_id, "role": event.role,
                "turn_id": event.turn_id}
    if isinstance(event, AgentError):
        return {"type": "error", "code": event.code, "message": event.message,
                "fatal": event.fatal, "turn_id": event.turn_id}
    raise TypeError(f"unknown agent event {type(event).__name__}")


_FATAL_CLOSE = {"idle_timeout": CLOSE_POLICY, "client_not_reading": CLOSE_POLICY}


async def _send_error(ws: WebSocket, err: ErrorMessage) -> None:
    if ws.client_state != WebSocketState.CONNECTED:
        return
    with contextlib.suppress(Exception):  # the client may already be gone
        await ws.send_json({**err.to_wire(), "fatal": True})
        await ws.close(err.close_code, err.message[:120])


@router.websocket("/v1/agent")
async def agent_socket(ws: WebSocket) -> None:
    state: AppState = ws.app.state.voxgate
    settings = state.settings
    await ws.accept()
    if not websocket_api_key_ok(ws, settings):
        await _send_error(ws, ErrorMessage("invalid or missing API key (X-API-Key, "
                                           "Authorization: Bearer, or ?api_key=)",
                                           CLOSE_POLICY, "unauthorized"))
        return
    limits = settings.streaming
    async with live_door(ws, logger, "agent", "agent session", "session",
                         expected=(*EXPECTED_ERRORS, TextError), to_error=_as_error,
                         send=_send_error) as door:
        service = agent_service(state)
        service.check_capacity()  # answer a full server before reading anything
        start = await _receive_config(ws, limits.idle_timeout_s, limits.max_frame_bytes)
        pcm = PcmInput(start.encoding, start.sample_rate, start.channels)
        config = await client_agent_config(state, service, start.options)
        door.session = session = await service.open(config)
        bind_log_context(session_id=session.id)  # every log line of this session names it
        await ws.send_json({
            "type": "ready", "session_id": session.id,
            "input": {"sample_rate": pcm.sample_rate, "encoding": pcm.encoding,
                      "channels": pcm.channels},
            "output": {"sample_rate": session.output_sample_rate,
                       "encoding": start.output_encoding},
            "voice": getattr(session.voice, "ref", None) and session.voice.ref.id,
            "language": config.language, "turn_detection": config.turn_detection,
            "barge_in": config.barge_in, "end_of_turn_ms": config.end_of_turn_ms,
            "complete_wait_ms": config.complete_wait_ms,
            "pause_onset_ms": config.pause_onset_ms})
        door.writer = writer = asyncio.create_task(
            _write_events(ws, session, start.output_encoding), name=f"agent-writer-{session.id}")
        # after the config, idleness is the session's own rule (no speech, text or reply for
        # VOXGATE_AGENT__IDLE_TIMEOUT_S): a client waiting for a long reply is not idle
        fatal = await _read_input(ws, session, pcm, limits.max_frame_bytes, writer)
        if fatal is not None:
            await _send_error(ws, fatal)
            return
        await ws.send_json({"type": "end", "turns": session.conversation.items[-1].turn_id
                            if session.conversation.items else 0})
        await ws.close(CLOSE_NORMAL)


async def _receive(ws: WebSocket, idle_s: float | None) -> dict[str, Any]:
    try:
        message = await asyncio.wait_for(ws.receive(), idle_s)
    except TimeoutError:
        raise WireError(f"no message for {idle_s:g} s: idle session closed",
                        code="idle_timeout") from None
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000))
    return message


async def _receive_config(ws: WebSocket, idle_s: float, max_bytes: int) -> AgentStart:
    message = await _receive(ws, idle_s)
    if message.get("bytes") is not None:
        raise WireError("audio arrived before the config message; send the JSON config first",
                        field="type", code="config_expected")
    text = message.get("text") or ""
    if len(text.encode()) > max_bytes:
        raise WireError(f"config message larger than {max_bytes} bytes",
                        close_code=CLOSE_TOO_BIG, code="too_big")
    return AgentStart.from_wire(text)


async def _read_input(ws: WebSocket, session: AgentSession, pcm: PcmInput, max_bytes: int,
                      writer: asyncio.Task[ErrorMessage | None]) -> ErrorMessage | None:
    """Client messages -> the session, until ``end`` (then the writer finishes) or a fatal
    session error (returned for the caller to send)."""
    while True:
        receive = asyncio.ensure_future(_receive(ws, None))
        done, _ = await asyncio.wait({receive, writer}, return_when=asyncio.FIRST_COMPLETED)
        if receive not in done:  # the session ended by itself (idle, not reading, ASR died)
            receive.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await receive
            return writer.result() or ErrorMessage("session ended", CLOSE_INTERNAL, "internal")
        message = receive.result()
        data = message.get("bytes")
        if data is not None:
            if len(data) > max_bytes:
                raise WireError(f"audio frame of {len(data)} bytes exceeds the {max_bytes}-byte "
                                "limit; send smaller frames (e.g. 100 ms)",
                                close_code=CLOSE_TOO_BIG, code="too_big")
            await session.accept(pcm.convert(data))
            continue
        text = message.get("text") or ""
        if len(text.encode()) > max_bytes:
            raise WireError(f"message larger than {max_bytes} bytes", close_code=CLOSE_TOO_BIG,
                            code="too_big")
        control = _loads(text)
        kind = control.get("type")
        if kind == "text":
            said = control.get("text")
            if not isinstance(said, str) or not said.strip() or len(said) > _MAX_TEXT:
                raise WireError(f"text: must be non-empty text of at most {_MAX_TEXT} "
                                "characters", field="text", code="bad_text")
            await session.send_text(said)
        elif kind == "interrupt":
            await session.interrupt()
        elif kind == "flush":
            await session.accept(pcm.flush())
            await session.flush()
        elif kind == "end":
            await session.accept(pcm.flush())
            await session.end()
            result = await writer
            return result
        elif kind == "config":
            raise WireError("config was already sent; open a new session to change it",
                            field="type", code="config_repeated")
        else:
            raise WireError(f"expected binary audio or a control message (type text, "
                            f"interrupt, flush or end), got a text message of type {kind!r}",
                            close_code=CLOSE_UNSUPPORTED, field="type", code="audio_expected")


async def _write_events(ws: WebSocket, session: AgentSession, out_encoding: str
                        ) -> ErrorMessage | None:
    """Session events -> the socket; a fatal session error is returned, not sent."""
    async for event in session.events():
        if isinstance(event, AgentError) and event.fatal:
            return ErrorMessage(event.message, _FATAL_CLOSE.get(event.code, CLOSE_INTERNAL),
                                event.code)
        wire = event_to_wire(event, out_encoding)
        if isinstance(wire, bytes):
            await ws.send_bytes(wire)
        else:
            await ws.send_text(json.dumps(wire))
    return None

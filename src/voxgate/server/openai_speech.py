"""OpenAI-compatible speech out: ``POST /v1/audio/speech`` and ``GET /v1/audio/voices``.

Existing OpenAI SDK code works unchanged: ``model`` (``tts-1``, ``tts-1-hd``, ``gpt-4o-mini-tts``
or a catalogue TTS id), ``input`` (at most ``VOXGATE_TTS__MAX_INPUT_CHARS``), ``voice`` (OpenAI's
names map to installed voices; voxgate voice ids are accepted), ``response_format``
(mp3, opus, aac, flac, wav, pcm: 24 kHz 16-bit mono raw, as OpenAI), ``speed`` (0.25-4) and
``stream_format``: ``audio`` (the default: a chunked body whose first bytes leave after the
first sentence, not after the whole text) or ``sse`` (``speech.audio.delta`` events with
base64 audio, then ``speech.audio.done``).

Everything that can be refused is refused before the response starts (400/401/404/413/429 in
OpenAI's error shape): the request is validated and the first sentence synthesized before the
status line is sent. A client that goes away stops synthesis after the sentence in progress
and frees its slot.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..audio import MEDIA_TYPES
from ..speech import SpeechRequest, aencode
from .deps import get_state
from .openai_api import OpenAIError, OpenAIRoute
from .speech_doors import (
    OPENAI_TTS_MODELS,
    OPENAI_VOICES,
    client_voice,
    speech_service,
    speech_slots,
)
from .state import AppState

__all__ = ["SpeechBody", "router"]

logger = logging.getLogger(__name__)

_PCM_RATE = 24_000  # OpenAI's pcm: raw 24 kHz 16-bit little-endian mono
_BODY_SLACK = 16 * 1024  # JSON keys, other fields and escapes around the input text


class SpeechBody(BaseModel):
    """The JSON body of ``POST /v1/audio/speech`` (unknown fields are ignored, as OpenAI's)."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1, max_length=200)
    input: str
    voice: str = Field("", max_length=200)
    instructions: str | None = None  # accepted for compatibility; the voices take no prompt
    response_format: Literal["mp3", "opus", "aac", "flac", "wav", "pcm"] = "mp3"
    speed: float = Field(1.0, ge=0.25, le=4.0)
    stream_format: Literal["audio", "sse"] = "audio"


router = APIRouter(prefix="/v1", tags=["openai"], route_class=OpenAIRoute)


@router.get("/audio/voices")
async def list_voices(request: Request) -> dict[str, Any]:
    """Every installed voice (language, sample rate, engine) and what OpenAI's names map to."""
    state = get_state(request)
    service = speech_service(state)
    voices = await asyncio.to_thread(service.voices)
    mapped = await asyncio.to_thread(
        lambda: {name: client_voice(state, name) for name in OPENAI_VOICES})
    return {"object": "list", "default": state.settings.tts.voice,
            "models": sorted(OPENAI_TTS_MODELS), "openai_voices": mapped,
            "data": [{"id": v.id, "object": "voice", "name": v.name or v.id,
                      "language": v.language, "sample_rate": v.sample_rate, "engine": v.engine,
                      "model": v.model, "gender": v.gender or None} for v in voices]}


@router.post("/audio/speech")
async def create_speech(request: Request) -> Response:
    state = get_state(request)
    body = await _read_body(request, state)
    service = speech_service(state)
    voice = await asyncio.to_thread(client_voice, state, body.voice, body.model)
    speech = await asyncio.to_thread(service.prepare, body.input, voice, body.speed)
    slots = speech_slots(state)
    if not slots.try_acquire():
        raise OpenAIError(429, f"all {slots.limit} speech slots are busy "
                          "(VOXGATE_TTS__MAX_CONCURRENT); retry later",
                          headers={"Retry-After": str(slots.retry_after())})
    try:
        pieces = _encoded(service, speech, body)
        first = await anext(pieces, b"")  # errors before the first audio keep their status
    except BaseException:
        slots.release()
        raise
    if body.stream_format == "sse":
        stream = _released(_sse(first, pieces, body.input), pieces, slots)
        return StreamingResponse(stream, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})
    stream = _released(_chain(first, pieces), pieces, slots)
    return StreamingResponse(stream, media_type=MEDIA_TYPES[body.response_format])


async def _read_body(request: Request, state: AppState) -> SpeechBody:
    """The JSON body, read with a bound (chunked bodies too), validated into OpenAI errors."""
    limit = state.settings.tts.max_input_chars * 4 + _BODY_SLACK  # UTF-8: <= 4 bytes a char
    data = bytearray()
    async for part in request.stream():
        data += part
        if len(data) > limit:
            raise OpenAIError(413, f"request body over {limit} bytes; input is limited to "
                              f"{state.settings.tts.max_input_chars} characters "
                              "(VOXGATE_TTS__MAX_INPUT_CHARS)", param="input")
    try:
        payload = json.loads(data or b"null")
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise OpenAIError(400, "the body must be JSON (Content-Type: application/json)") from None
    if not isinstance(payload, dict):
        raise OpenAIError(400, "the body must be a JSON object with model, input and voice")
    try:
        return SpeechBody.model_validate(payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first.get("loc", ())) or None
        raise OpenAIError(400, f"{param}: {first.get('msg', 'invalid')}", param=param) from None


def _encoded(service: Any, speech: SpeechRequest, body: SpeechBody) -> AsyncIterator[bytes]:
    rate = _PCM_RATE if body.response_format == "pcm" else None
    return aencode(service.astream(speech), body.response_format, rate)


async def _chain(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    if first:
        yield first
    async for piece in rest:
        yield piece


async def _sse(first: bytes, rest: AsyncIterator[bytes], text: str) -> AsyncIterator[bytes]:
    async for piece in _chain(first, rest):
        event = {"type": "speech.audio.delta", "audio": base64.b64encode(piece).decode("ascii")}
        yield f"data: {json.dumps(event)}\n\n".encode()
    words = len(text.split())  # no tokenizer behind these voices: words stand in for tokens
    done = {"type": "speech.audio.done",
            "usage": {"input_tokens": words, "output_tokens": 0, "total_tokens": words}}
    yield f"data: {json.dumps(done)}\n\n".encode()


async def _released(stream: AsyncIterator[bytes], source: AsyncIterator[bytes],
                    slots: Any) -> AsyncIterator[bytes]:
    """``stream``, then close the synthesis and free the slot however the response ends
    (finished, failed, or the client went away and the server cancelled it)."""
    try:
        async for piece in stream:
            yield piece
    except Exception:  # noqa: BLE001 - the status line is gone: log, end the body early
        logger.exception("speech synthesis failed mid-stream; the response ends early")
    finally:
        try:
            await source.aclose()
        finally:
            slots.release()

"""Riva-compatible speech synthesis: ``nvidia.riva.tts.RivaSpeechSynthesis`` over gRPC.

Riva TTS clients (``riva.client.SpeechSynthesisService``, NVIDIA's ``talk.py``) speak with
voxgate's voices unchanged. The stubs come from PyPI ``nvidia-riva-client``; the servicer only
maps protobuf <-> :class:`~voxgate.speech.SpeechService` (shared with every speech-out door):

* ``Synthesize``: the whole text -> one response. ``audio`` is raw PCM16 mono for
  ``LINEAR_PCM`` (headerless: the client writes the WAV header itself) or an Ogg Opus file for
  ``OGGOPUS``, at ``sample_rate_hz`` (0: the voice's own rate; Opus: the nearest Opus rate at or
  above it, e.g. 44100 -> 48000).
* ``SynthesizeOnline``: audio streamed sentence by sentence. Older clients send one request;
  newer ones stream requests whose texts continue one text (LLM tokens or whole sentences) and
  get audio per finished sentence. The first request's voice/encoding/rate apply; a later
  request may repeat them, never change them. No response carries empty audio.
* ``GetRivaSynthesisConfig``: one ``model_config`` per voice with ``language_code``,
  ``voice_name`` and ``subvoices``, so ``talk.py --list-voices`` prints ``<voice_name>.<subvoice>``
  names (``espeak.hi``, ``festival.msu_ru_nsh_clunits``, ``en_US-joe-medium.default``), which
  requests accept beside voxgate's own voice ids. An empty ``voice_name`` picks a voice of
  ``language_code`` (the default voice first, espeak-ng last).

Clients name only voices the server lists or TTS models its policy offers (never a path or a
download). ``custom_configuration["speed"]`` (0.25-4) sets the pace; other custom keys and
``custom_dictionary`` are ignored; SSML is read as its plain text (tags dropped, as
``voxgate.speech`` does for every door); zero-shot voice prompts are refused. Errors:
INVALID_ARGUMENT naming the field, UNAUTHENTICATED, RESOURCE_EXHAUSTED past
``VOXGATE_TTS__MAX_CONCURRENT``; a cancelled call stops synthesis after the sentence in progress.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import riva.client.proto.riva_audio_pb2 as raudio
import riva.client.proto.riva_tts_pb2 as rtts
import riva.client.proto.riva_tts_pb2_grpc as rtts_grpc

from ..audio import output_rate
from ..engines.base import VoiceInfo, check_speed
from ..errors import AudioError, ConfigError, ModelError, TextError
from ..speech import aencode, clean_text
from .grpc_auth import authorize
from .grpc_errors import IdleStream, abort_with_status, take_slot_or_abort
from .speech_doors import (
    client_voice,
    language_tag,
    speech_service,
    speech_slots,
    voice_for_language,
)
from .state import AppState

__all__ = ["RIVA_TTS_SERVICE", "RivaTtsServicer", "add_riva_tts", "riva_voice_name"]

logger = logging.getLogger(__name__)
RIVA_TTS_SERVICE = "nvidia.riva.tts.RivaSpeechSynthesis"
_ENCODINGS = {raudio.AudioEncoding.ENCODING_UNSPECIFIED: "pcm",
              raudio.AudioEncoding.LINEAR_PCM: "pcm", raudio.AudioEncoding.OGGOPUS: "opus"}
_DEFAULT_SUBVOICE = "default"  # a voice that is its model's only voice
_SENTENCE_END = re.compile(r"[.!?\u2026][\"'\u201d\u2019)\]]*$")
_SHOWN_LANGUAGES = 20


class _FieldError(ConfigError):
    """A request field is invalid; the message names the Riva field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")


# the request field an error's message names (grpc_errors.grpc_status)
_FIELDS = {TextError: "text", ModelError: "voice_name"}


class _IdleStream(IdleStream):
    """A SynthesizeOnline client sent no request for the idle timeout."""


def _subvoice(voice: VoiceInfo) -> tuple[str, str]:
    """(Riva ``voice_name``, subvoice) of a voice: its model, and its id within the model."""
    model = voice.model or voice.id
    if voice.id == model:
        return model, _DEFAULT_SUBVOICE
    sub = voice.id.removeprefix(model + ":") if voice.id.startswith(model + ":") else voice.id
    return model, sub


def riva_voice_name(voice: VoiceInfo) -> str:
    """The full Riva name of a voice, as ``talk.py --list-voices`` prints it."""
    return ".".join(_subvoice(voice))


@dataclass(frozen=True, slots=True)
class _Plan:
    """A validated request's settings (the text is validated separately)."""

    voice: str  # a voice id SpeechService accepts
    fmt: str  # pcm | opus
    rate: int | None  # output rate; None: the voice's own
    speed: float
    key: tuple[str, str, int, int]  # voice_name, language_code, encoding, rate as sent


class RivaTtsServicer(rtts_grpc.RivaSpeechSynthesisServicer):
    """Maps Riva TTS requests onto the app's SpeechService."""

    def __init__(self, state: AppState) -> None:
        self.state = state
        self.settings = state.settings

    # ---- validation ----------------------------------------------------------------------
    def _plan(self, request: rtts.SynthesizeSpeechRequest) -> _Plan:
        """Everything but the text, validated (blocking on first use: lists the voices)."""
        fmt = _ENCODINGS.get(request.encoding)
        if fmt is None:
            name = raudio.AudioEncoding.Name(request.encoding) \
                if request.encoding in raudio.AudioEncoding.values() else str(request.encoding)
            raise _FieldError("encoding", f"{name} is not supported; use LINEAR_PCM or OGGOPUS")
        rate: int | None = None
        if request.sample_rate_hz:
            try:
                rate = output_rate(fmt, request.sample_rate_hz, request.sample_rate_hz)
            except AudioError as exc:
                if fmt != "opus" or not 8000 <= request.sample_rate_hz <= 192_000:
                    raise _FieldError("sample_rate_hz", str(exc)) from None
                rate = output_rate(fmt, request.sample_rate_hz)  # Opus: the next rate it has
        if request.HasField("zero_shot_data") and request.zero_shot_data.audio_prompt:
            raise _FieldError("zero_shot_data", "zero-shot voice prompts are not supported; "
                                                "choose a listed voice")
        speed = 1.0
        if "speed" in request.custom_configuration:
            try:
                speed = check_speed(request.custom_configuration["speed"])
            except ConfigError as exc:
                raise _FieldError("custom_configuration.speed", str(exc)) from None
        voice = self._voice(request.voice_name.strip(), request.language_code.strip())
        return _Plan(voice, fmt, rate, speed, (request.voice_name, request.language_code,
                                               request.encoding, request.sample_rate_hz))

    def _voice(self, name: str, language: str) -> str:
        voices = speech_service(self.state).voices()
        if name:
            for voice in voices:
                if name == riva_voice_name(voice):
                    return voice.id
            try:
                return client_voice(self.state, name)
            except ModelError as exc:
                raise _FieldError("voice_name", str(exc)) from None
            except ConfigError as exc:
                raise _FieldError("voice_name", f"{exc} (Riva names: GetRivaSynthesisConfig)"
                                  ) from None
        if not language:
            return client_voice(self.state, None)
        found = voice_for_language(voices, language)
        if found is not None:
            return found.id
        languages = sorted({language_tag(v.language) for v in voices})
        shown = ", ".join(languages[:_SHOWN_LANGUAGES])
        more = f" and {len(languages) - _SHOWN_LANGUAGES} more" \
            if len(languages) > _SHOWN_LANGUAGES else ""
        raise _FieldError("language_code", f"no voice speaks {language[:40]!r}; languages: "
                                           f"{shown}{more}")

    async def _fail(self, context: grpc.aio.ServicerContext, exc: BaseException) -> None:
        await abort_with_status(context, exc, logger, "Riva TTS call", _FIELDS)

    async def _acquire(self, context: grpc.aio.ServicerContext) -> Any:
        slots = speech_slots(self.state)
        await take_slot_or_abort(context, slots, "syntheses", "VOXGATE_TTS__MAX_CONCURRENT")
        return slots

    # ---- Synthesize ----------------------------------------------------------------------
    async def Synthesize(self, request: rtts.SynthesizeSpeechRequest,
                         context: grpc.aio.ServicerContext) -> rtts.SynthesizeSpeechResponse:
        await authorize(self.settings, context)
        service = speech_service(self.state)
        try:
            plan = await asyncio.to_thread(self._plan, request)
            prepared = await asyncio.to_thread(service.prepare, request.text, plan.voice,
                                               plan.speed)
        except Exception as exc:  # mapped to a status code
            await self._fail(context, exc)
            raise
        slots = await self._acquire(context)
        chunks = service.astream(prepared)
        encoded = aencode(chunks, plan.fmt, plan.rate)
        try:
            audio = b"".join([piece async for piece in encoded])
        except Exception as exc:
            await self._fail(context, exc)
            raise
        finally:
            await _close(encoded, chunks)
            slots.release()
        response = rtts.SynthesizeSpeechResponse(audio=audio)
        response.meta.text = request.text
        response.meta.processed_text = prepared.text
        if request.HasField("id"):
            response.id.CopyFrom(request.id)
        return response

    # ---- SynthesizeOnline ----------------------------------------------------------------
    async def SynthesizeOnline(self, request_iterator: AsyncIterator[Any],
                               context: grpc.aio.ServicerContext
                               ) -> AsyncIterator[rtts.SynthesizeSpeechResponse]:
        await authorize(self.settings, context)
        service = speech_service(self.state)
        requests = aiter(request_iterator)
        idle_s = self.settings.streaming.idle_timeout_s
        try:
            try:  # a client that opens the stream and says nothing holds no slot forever
                first = await asyncio.wait_for(anext(requests, None), idle_s)
            except TimeoutError:
                raise _IdleStream(f"no request within {idle_s:g} s: idle stream closed") from None
            if first is None:
                raise TextError("no request: send a SynthesizeSpeechRequest with the text")
            plan = await asyncio.to_thread(self._plan, first)
        except Exception as exc:
            await self._fail(context, exc)
            raise
        slots = await self._acquire(context)
        chunks = service.astream_text(self._texts(first, plan, requests), plan.voice, plan.speed)
        encoded = aencode(chunks, plan.fmt, plan.rate)
        try:
            async for data in encoded:
                response = rtts.SynthesizeSpeechResponse(audio=data)
                if first.HasField("id"):
                    response.id.CopyFrom(first.id)
                yield response
        except Exception as exc:
            await self._fail(context, exc)
            raise
        finally:  # also on cancellation: synthesis stops, the slot is freed
            await _close(encoded, chunks)
            slots.release()

    async def _texts(self, first: rtts.SynthesizeSpeechRequest, plan: _Plan,
                     requests: AsyncIterator[Any]) -> AsyncIterator[str]:
        """The stream's texts as pieces of one text, checked as they arrive."""
        limit = self.settings.tts.max_input_chars
        idle_s = self.settings.streaming.idle_timeout_s
        received: list[str] = []
        total = 0
        request: Any = first
        while request is not None:
            if request is not first:
                self._same_config(request, plan)
            text = request.text
            total += len(text)
            if total > limit:
                raise TextError(f"the stream's text is over the {limit}-character limit "
                                "(VOXGATE_TTS__MAX_INPUT_CHARS)")
            if received and text[:1].isupper() and _SENTENCE_END.search(received[-1]):
                text = " " + text  # whole sentences sent one per request
            received.append(text)
            yield text
            try:
                request = await asyncio.wait_for(anext(requests, None), idle_s)
            except TimeoutError:
                raise _IdleStream(f"no request for {idle_s:g} s: idle stream closed") from None
        clean_text("".join(received), None)  # nothing speakable at all: says why

    @staticmethod
    def _same_config(request: rtts.SynthesizeSpeechRequest, plan: _Plan) -> None:
        sent = (request.voice_name, request.language_code, request.encoding,
                request.sample_rate_hz)
        names = ("voice_name", "language_code", "encoding", "sample_rate_hz")
        for name, value, first in zip(names, sent, plan.key, strict=True):
            if value and value != first:
                raise _FieldError(name, "differs from the stream's first request; one stream "
                                        "has one voice and audio format")

    # ---- GetRivaSynthesisConfig ----------------------------------------------------------
    async def GetRivaSynthesisConfig(self, request: rtts.RivaSynthesisConfigRequest,
                                     context: grpc.aio.ServicerContext
                                     ) -> rtts.RivaSynthesisConfigResponse:
        await authorize(self.settings, context)
        voices = await asyncio.to_thread(speech_service(self.state).voices)
        response = rtts.RivaSynthesisConfigResponse()
        default = self.settings.tts.voice
        for voice in voices:
            model, sub = _subvoice(voice)
            if request.model_name and request.model_name not in (voice.id, model):
                continue
            entry = response.model_config.add(model_name=voice.id)
            entry.parameters.update({
                "language_code": language_tag(voice.language), "voice_name": model,
                "subvoices": f"{sub}:0", "sample_rate": str(voice.sample_rate),
                "engine": voice.engine, "type": "online",
                "default": "true" if default in (voice.id, model) else "false",
            })
            if voice.gender:
                entry.parameters["gender"] = voice.gender
        return response


async def _close(*generators: Any) -> None:
    """Close async generators outermost first (each stops its synthesis and frees its model)."""
    for generator in generators:
        with contextlib.suppress(Exception):
            await generator.aclose()


def add_riva_tts(server: grpc.aio.Server, state: AppState) -> str:
    """Register the servicer on ``server``; returns its service name (for health)."""
    rtts_grpc.add_RivaSpeechSynthesisServicer_to_server(RivaTtsServicer(state), server)
    return RIVA_TTS_SERVICE

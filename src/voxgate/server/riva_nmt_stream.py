"""Riva ``StreamingTranslateSpeechToText`` / ``StreamingTranslateSpeechToSpeech`` on voxgate's
:class:`~voxgate.translation.TranslateSession` (the same endpointing, MT and voices as
``/ws/translate``).

The first request carries ``config`` (``asr_config`` + ``translation_config`` [+ ``tts_config``]),
then ``audio_content`` chunks follow:

* raw PCM16 at ``asr_config.config.sample_rate_hertz`` (0: 16 kHz) and ``audio_channel_count``,
  or a WAV file streamed as it is, RIFF header included (NVIDIA's sample scripts send the file's
  bytes with no encoding set): the header (even split over several chunks) gives the rate,
  channels and sample format (16-bit PCM or 32-bit float);
* empty chunks are skipped (a client may open with one); chunks need not hold whole samples;
* source language: ``translation_config.source_language_code`` (else the ASR config's
  ``language_code``; ``multi``/``auto``: en or ru detected per utterance); target:
  ``target_language_code`` (empty: the other language).

Speech-to-text answers one ``is_final`` result per utterance whose transcript is the
translation (``language_code`` the target); with ``interim_results`` the source-language
partials come first as non-final results (``language_code`` the source). An utterance that
could not be translated (MT down, a language other than en/ru) still arrives: its final
result carries the source transcript with the source ``language_code``.

Speech-to-speech answers ``speech.audio`` chunks, one per translated sentence: raw PCM16 mono
at ``tts_config.sample_rate_hz`` (0: the voice's own rate), ``speech.meta.text`` the sentence.
Voices come from ``VOXGATE_TRANSLATION__VOICES`` (``voice_name`` is not used).

Limits as the other streams: ``VOXGATE_TRANSLATION__MAX_SESSIONS`` (RESOURCE_EXHAUSTED), chunk
size ``VOXGATE_STREAMING__MAX_FRAME_BYTES``, and a client silent for
``VOXGATE_STREAMING__IDLE_TIMEOUT_S`` while owed nothing is closed (DEADLINE_EXCEEDED).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import numpy as np
import riva.client.proto.riva_asr_pb2 as rasr
import riva.client.proto.riva_audio_pb2 as raudio
import riva.client.proto.riva_nmt_pb2 as rnmt

from ..audio import float32_to_pcm16, resample
from ..errors import AudioError
from ..languages import primary_language
from ..log_setup import bind as bind_log_context
from ..stream_config import PcmInput, StreamConfigError
from ..translation import TranslateConfig, TranslateEvent, TranslateSession
from .grpc_errors import IdleStream
from .riva_nmt import FieldError, check_model, fail, parse_dnt_phrases, riva_nmt_language
from .state import AppState
from .translation_state import translation_service

__all__ = ["WireAudio", "speech_to_speech", "speech_to_text"]

logger = logging.getLogger(__name__)
_MAX_WAV_HEADER = 64 * 1024
_WAV_FORMATS = {(1, 16): "pcm16", (3, 32): "f32"}  # (format tag, bits) -> PcmInput encoding
_EXTENSIBLE = 0xFFFE


def _wav_head(head: bytes) -> tuple[str, int, int, int] | None:
    """(encoding, rate, channels, data offset) of a WAV header; None while incomplete."""
    if len(head) < 12:
        return None
    if head[8:12] != b"WAVE":
        raise AudioError("audio_content: starts with RIFF but is not a WAVE file")
    fmt: tuple[str, int, int] | None = None
    pos = 12
    while pos + 8 <= len(head):
        chunk_id, size = head[pos:pos + 4], int.from_bytes(head[pos + 4:pos + 8], "little")
        body = pos + 8
        if chunk_id == b"data":
            if fmt is None:
                raise AudioError("audio_content: WAV 'data' before its 'fmt ' chunk")
            return (*fmt, body)
        if body + size > len(head):
            return None  # this chunk continues in the next request
        if chunk_id == b"fmt ":
            if size < 16:
                raise AudioError("audio_content: WAV 'fmt ' chunk too short")
            tag, channels, rate = struct.unpack_from("<HHI", head, body)
            bits = struct.unpack_from("<H", head, body + 14)[0]
            if tag == _EXTENSIBLE and size >= 26:
                tag = struct.unpack_from("<H", head, body + 24)[0]
            encoding = _WAV_FORMATS.get((tag, bits))
            if encoding is None:
                raise AudioError(f"audio_content: WAV format {tag} with {bits}-bit samples is "
                                 "not supported; send 16-bit PCM or 32-bit float WAV, or raw "
                                 "PCM16")
            fmt = (encoding, rate, channels)
        pos = body + size + (size & 1)
    return None


class WireAudio:
    """A stream's audio chunks -> float32 mono 16 kHz, whether raw PCM16 or a WAV file.

    The format is settled by the first non-empty bytes: ``RIFF``: the WAV header (buffered
    until complete, at most 64 KB) says rate, channels and sample format; otherwise raw PCM16
    at ``rate``/``channels``. Bytes of an incomplete sample frame wait for the next chunk.
    """

    def __init__(self, rate: int, channels: int) -> None:
        self.rate, self.channels = rate, channels
        self._pcm: PcmInput | None = None
        self._frame = 2
        self._head = b""
        self._carry = b""
        self.wav = False

    def convert(self, data: bytes) -> np.ndarray:
        if self._pcm is None:
            self._head += data
            if len(self._head) < 4 and b"RIFF".startswith(self._head):
                return np.zeros(0, np.float32)  # nothing yet, or maybe the start of "RIFF"
            if self._head[:4] == b"RIFF":
                parsed = _wav_head(self._head)
                if parsed is None:
                    if len(self._head) > _MAX_WAV_HEADER:
                        raise AudioError(f"audio_content: WAV header longer than "
                                         f"{_MAX_WAV_HEADER} bytes or without a 'data' chunk")
                    return np.zeros(0, np.float32)
                encoding, rate, channels, offset = parsed
                self._open(encoding, rate, channels)
                self.wav = True
                data = self._head[offset:]
            else:
                self._open("pcm16", self.rate, self.channels)
                data = self._head
            self._head = b""
        buffer = self._carry + data
        whole = len(buffer) - len(buffer) % self._frame
        self._carry = buffer[whole:]
        return self._pcm.convert(buffer[:whole])

    def _open(self, encoding: str, rate: int, channels: int) -> None:
        try:
            self._pcm = PcmInput(encoding, rate, channels)
        except StreamConfigError as exc:
            raise AudioError(f"audio_content: WAV header: {exc}") from None
        self._frame = (2 if encoding == "pcm16" else 4) * channels

    def flush(self) -> np.ndarray:
        if self._pcm is None:
            if self._head:
                raise AudioError("audio_content: the stream ended inside a WAV header")
            return np.zeros(0, np.float32)
        if self._carry:
            logger.debug("dropping %d bytes of an incomplete last sample", len(self._carry))
        return self._pcm.flush()


def _translate_config(asr: rasr.StreamingRecognitionConfig, translation: rnmt.TranslationConfig,
                      state: AppState) -> TranslateConfig:
    """Riva configs -> TranslateConfig (FieldError names the Riva field)."""
    source = translation.source_language_code or asr.config.language_code
    try:
        src = primary_language(source) or "auto"  # "", "multi", "auto": detected per utterance
    except ValueError as exc:
        raise FieldError("translation_config.source_language_code", str(exc)) from None
    tgt = (riva_nmt_language(translation.target_language_code,
                             "translation_config.target_language_code")
           if translation.target_language_code.strip() else None)
    check_model(translation.model_name, state.settings, "translation_config.model_name")
    options = parse_dnt_phrases(translation.dnt_phrases)
    try:
        return TranslateConfig.of(src=src, tgt=tgt, partials=bool(asr.interim_results),
                                  glossary=options.glossary, dnt=options.dnt)
    except StreamConfigError as exc:
        names = {"src": "translation_config.source_language_code",
                 "tgt": "translation_config.target_language_code"}
        message = str(exc).removeprefix(f"{exc.field}:").strip()
        raise FieldError(names.get(exc.field, exc.field), message) from None


def _wire_audio(config: rasr.RecognitionConfig) -> WireAudio:
    if config.encoding not in (raudio.AudioEncoding.ENCODING_UNSPECIFIED,
                               raudio.AudioEncoding.LINEAR_PCM):
        raise FieldError("asr_config.config.encoding",
                         f"{raudio.AudioEncoding.Name(config.encoding)} is not supported; send "
                         "LINEAR_PCM or a WAV file's bytes")
    rate = config.sample_rate_hertz or 16_000
    channels = max(config.audio_channel_count, 1)
    if not 8000 <= rate <= 192_000:
        raise FieldError("asr_config.config.sample_rate_hertz", f"must be 8000..192000, got {rate}")
    if channels > 8:
        raise FieldError("asr_config.config.audio_channel_count", f"must be 1..8, got {channels}")
    return WireAudio(rate, channels)


def _output_rate(tts: rnmt.SynthesizeSpeechConfig) -> int | None:
    if tts.encoding not in (raudio.AudioEncoding.ENCODING_UNSPECIFIED,
                            raudio.AudioEncoding.LINEAR_PCM):
        raise FieldError("tts_config.encoding", f"{raudio.AudioEncoding.Name(tts.encoding)} is "
                                                "not supported; use LINEAR_PCM")
    if tts.sample_rate_hz and not 8000 <= tts.sample_rate_hz <= 48_000:
        raise FieldError("tts_config.sample_rate_hz", f"must be 8000..48000 (or 0: the voice's "
                                                      f"rate), got {tts.sample_rate_hz}")
    return tts.sample_rate_hz or None


class _Stream:
    """One streaming call: the first request, the session, the audio feeder."""

    def __init__(self, state: AppState, context: grpc.aio.ServicerContext,
                 requests: AsyncIterator[Any]) -> None:
        self.state, self.context = state, context
        self.settings = state.settings
        self.requests: AsyncIterator[Any] = requests  # iterated only once admitted (first())
        self.idle_s = self.settings.streaming.idle_timeout_s
        self.session: TranslateSession | None = None

    async def first(self) -> Any:
        (await translation_service(self.state)).check_capacity()
        self.requests = aiter(self.requests)  # not before: a refused call reads nothing
        try:  # a client that opens the stream and says nothing holds nothing for long
            first = await asyncio.wait_for(anext(self.requests, None), self.idle_s)
        except TimeoutError:
            raise IdleStream(f"no config within {self.idle_s:g} s: stream closed") from None
        if first is None or not first.HasField("config"):
            raise FieldError("config", "the first request must carry config (then "
                                       "audio_content)")
        return first

    async def open(self, config: TranslateConfig) -> TranslateSession:
        self.session = await (await translation_service(self.state)).open(config)
        bind_log_context(session_id=self.session.id)  # every log line of this stream names it
        return self.session

    async def _next(self) -> Any:
        while True:
            try:
                return await asyncio.wait_for(anext(self.requests, None), self.idle_s)
            except TimeoutError:
                if self.session is not None and self.session.pending:
                    continue  # the client is waiting for translations: not idle
                raise IdleStream(f"no audio for {self.idle_s:g} s: idle stream "
                                 "closed") from None

    async def feed(self, audio: WireAudio) -> None:
        """Requests -> session audio; then finish (the session's events end after the last
        utterance). Any error closes the session, ending its events, and is raised."""
        session = self.session
        max_bytes = self.settings.streaming.max_frame_bytes
        try:
            while (request := await self._next()) is not None:
                if request.HasField("config"):
                    raise FieldError("config", "sent twice; only the first request carries it")
                data = request.audio_content
                if len(data) > max_bytes:
                    raise AudioError(f"audio_content: {len(data)} bytes exceeds the "
                                     f"{max_bytes}-byte limit per request")
                if data:
                    await session.accept(audio.convert(data))
            await session.accept(audio.flush())
            await session.finish()
        except BaseException:
            await session.close()
            raise

    async def run(self, audio: WireAudio, respond: Any) -> AsyncIterator[Any]:
        """Feed audio while yielding ``respond(event)`` for each event (None: nothing)."""
        session = self.session
        feeder = asyncio.create_task(self.feed(audio), name=f"riva-nmt-feed-{session.id}")
        try:
            async for event in session.events():
                response = respond(event)
                if response is not None:
                    yield response
            await feeder
        finally:
            feeder.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await feeder
            await session.close()


async def _abort(context: grpc.aio.ServicerContext, exc: BaseException, what: str) -> None:
    await fail(context, exc, what)  # IdleStream: DEADLINE_EXCEEDED, full: RESOURCE_EXHAUSTED


def _result(text: str, language: str, final: bool) -> rasr.StreamingRecognitionResult:
    result = rasr.StreamingRecognitionResult(is_final=final, stability=1.0 if final else 0.5)
    alternative = result.alternatives.add(transcript=text, confidence=1.0 if final else 0.0)
    if language:
        alternative.language_code.append(language)
    return result


Respond = Callable[[TranslateEvent], Any]  # an event -> a response message, or None


async def _serve(state: AppState, requests: AsyncIterator[Any],
                 context: grpc.aio.ServicerContext, what: str,
                 responder: Callable[[Any, TranslateConfig], Respond]) -> AsyncIterator[Any]:
    """Both streaming RPCs: config, session, then ``responder(first, config)``'s responses
    (each carrying the first request's ``id``) while the audio is fed."""
    stream = _Stream(state, context, requests)
    try:
        first = await stream.first()
        config = first.config
        audio = _wire_audio(config.asr_config.config)
        translate_config = _translate_config(config.asr_config, config.translation_config,
                                             state)
        respond = responder(config, translate_config)
        await stream.open(translate_config)
    except Exception as exc:  # mapped to a status code
        await _abort(context, exc, what)
        raise
    try:
        async for response in stream.run(audio, respond):
            if first.HasField("id"):
                response.id.CopyFrom(first.id)
            yield response
    except Exception as exc:
        await _abort(context, exc, what)
        raise


def _text_responder(config: Any, translate_config: TranslateConfig) -> Respond:
    interim = translate_config.partials

    def respond(event: TranslateEvent) -> rnmt.StreamingTranslateSpeechToTextResponse | None:
        if event.kind == "partial" and interim:
            result = _result(event.text, event.src if event.src != "auto" else "", False)
        elif event.kind == "done" and event.text:
            result = _result(event.text, event.tgt, True)
        elif event.kind in ("done", "unsupported_language") and event.error:
            result = _result(event.transcript, event.src, True)  # untranslated, never lost
        else:
            return None
        result.audio_processed = float(event.end)
        return rnmt.StreamingTranslateSpeechToTextResponse(results=[result])

    return respond


def _speech_responder(config: Any, translate_config: TranslateConfig) -> Respond:
    rate = _output_rate(config.tts_config)

    def respond(event: TranslateEvent) -> rnmt.StreamingTranslateSpeechToSpeechResponse | None:
        if event.kind != "audio" or event.audio is None or not event.audio.size:
            return None
        samples = event.audio
        if rate and rate != event.sample_rate:
            samples = resample(samples, event.sample_rate, rate)
        response = rnmt.StreamingTranslateSpeechToSpeechResponse()
        response.speech.audio = float32_to_pcm16(samples)
        response.speech.meta.text = event.text
        return response

    return respond


def speech_to_text(state: AppState, requests: AsyncIterator[Any],
                   context: grpc.aio.ServicerContext
                   ) -> AsyncIterator[rnmt.StreamingTranslateSpeechToTextResponse]:
    """``StreamingTranslateSpeechToText`` (see the module doc)."""
    return _serve(state, requests, context, "StreamingTranslateSpeechToText", _text_responder)


def speech_to_speech(state: AppState, requests: AsyncIterator[Any],
                     context: grpc.aio.ServicerContext
                     ) -> AsyncIterator[rnmt.StreamingTranslateSpeechToSpeechResponse]:
    """``StreamingTranslateSpeechToSpeech`` (see the module doc)."""
    return _serve(state, requests, context, "StreamingTranslateSpeechToSpeech",
                  _speech_responder)

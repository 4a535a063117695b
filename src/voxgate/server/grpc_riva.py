"""Riva-compatible gRPC: ``nvidia.riva.asr.RivaSpeechRecognition`` + ``grpc.health.v1``.

Existing Riva clients (``riva.client.ASRService``, NVIDIA's sample scripts) work against voxgate
unchanged. The protobuf/gRPC stubs are the ones shipped in PyPI ``nvidia-riva-client``; nothing is
copied. The servicers only map protobuf <-> voxgate's sessions:

* ``Recognize``: raw PCM16 (``LINEAR_PCM``), G.711 (``MULAW``/``ALAW``) or a whole audio file
  (``FLAC``/``OGGOPUS``, or WAV/MP3/MP4/WebM bytes recognised by their header, as the official
  file examples send) -> the file transcriber (VAD + batched Whisper) -> one result per speech
  segment. The transcription slot is taken before decoding and held until the work has really
  stopped, also when the client cancels or its deadline passes.
* ``StreamingRecognize``: first request ``streaming_config``, then ``audio_content`` chunks
  (``LINEAR_PCM``, ``MULAW`` or ``ALAW``) ->
  an :class:`~voxgate.streaming.AsrSession`; partials are ``is_final=false`` results with
  ``stability``, finals carry confidence and (on request) word offsets in ms.
* ``GetRivaSpeechRecognitionConfig``: the models this server offers.

API keys travel as metadata ``x-api-key`` or ``authorization`` (``Bearer k`` or ``k``). Errors
map to INVALID_ARGUMENT (field named), UNAUTHENTICATED and RESOURCE_EXHAUSTED (with a hint).
"""

from __future__ import annotations

import asyncio
import logging
import string
from collections.abc import AsyncIterator
from typing import Any

import grpc
import numpy as np
import riva.client.proto.riva_asr_pb2 as rasr
import riva.client.proto.riva_asr_pb2_grpc as rasr_grpc
import riva.client.proto.riva_audio_pb2 as raudio

from ..audio import decode_audio, looks_like_audio_file
from ..config import Settings
from ..engines import load_engine_class
from ..errors import (
    AudioError,
    AudioTooLongError,
    ConfigError,
    VoxgateError,
)
from ..languages import primary_language
from ..log_setup import bind as bind_log_context
from ..streaming import (
    PcmInput,
    StreamConfig,
    StreamConfigError,
    check_language,
    stream_events,
)
from ..types import AsrEvent, Word
from .grpc_auth import authorize
from .grpc_errors import IdleStream, abort_with_status, take_slot_or_abort
from .state import AppState

__all__ = ["RIVA_ASR_SERVICE", "RivaAsrServicer", "RivaGrpcServer", "riva_language"]

logger = logging.getLogger(__name__)
RIVA_ASR_SERVICE = "nvidia.riva.asr.RivaSpeechRecognition"
# Riva encodings of raw samples -> PcmInput's names; FLAC/OGGOPUS are whole files (Recognize)
_SAMPLE_ENCODINGS = {raudio.AudioEncoding.ENCODING_UNSPECIFIED: "pcm16",
                     raudio.AudioEncoding.LINEAR_PCM: "pcm16",
                     raudio.AudioEncoding.MULAW: "mulaw", raudio.AudioEncoding.ALAW: "alaw"}
_FILE_ENCODINGS = (raudio.AudioEncoding.FLAC, raudio.AudioEncoding.OGGOPUS)
_PUNCTUATION = str.maketrans("", "", "".join(c for c in string.punctuation if c not in "'-"))


def riva_language(code: str, default: str = "en") -> str | None:
    """Riva ``language_code`` (``en-US``) -> voxgate's (``en``); ``multi`` -> detect (None)."""
    if not (code or "").strip():
        return default
    try:
        return primary_language(code)
    except ValueError as exc:
        raise StreamConfigError("language_code", str(exc)) from None


class RivaAsrServicer(rasr_grpc.RivaSpeechRecognitionServicer):
    """Maps Riva ASR requests onto voxgate's streaming service and file transcriber."""

    def __init__(self, state: AppState) -> None:
        self.state = state
        self.settings: Settings = state.settings

    # ---- helpers -------------------------------------------------------------------------
    async def _authorize(self, context: grpc.aio.ServicerContext) -> None:
        await authorize(self.settings, context)

    def _options(self, config: rasr.RecognitionConfig, streaming: bool = False
                 ) -> dict[str, Any]:
        """RecognitionConfig -> StreamConfig overrides (raises naming the Riva field)."""
        if config.encoding not in _SAMPLE_ENCODINGS and (streaming or config.encoding
                                                         not in _FILE_ENCODINGS):
            name = raudio.AudioEncoding.Name(config.encoding) \
                if config.encoding in raudio.AudioEncoding.values() else str(config.encoding)
            raise StreamConfigError("encoding", f"unsupported encoding {name}; voxgate streams "
                                                "LINEAR_PCM, MULAW or ALAW (Recognize also "
                                                "takes FLAC, OGGOPUS and WAV/MP3/MP4 file "
                                                "bytes)")
        if config.sample_rate_hertz < 0:
            raise StreamConfigError("sample_rate_hertz", "must be positive")
        if config.max_alternatives < 0:
            raise StreamConfigError("max_alternatives", "must be >= 0")
        options: dict[str, Any] = {"language": riva_language(config.language_code),
                                   "word_timestamps": bool(config.enable_word_time_offsets)}
        if config.model:
            options["final_model"] = config.model
        if config.HasField("endpointing_config"):
            ep = config.endpointing_config
            if ep.stop_history > 0:
                options["endpointing_ms"] = int(ep.stop_history)
            if ep.start_history > 0:
                options["min_speech_ms"] = int(ep.start_history)
            if ep.start_threshold > 0:
                options["vad_threshold"] = float(ep.start_threshold)
        return options

    def _config(self, options: dict[str, Any]) -> StreamConfig:
        from .live_streams import streaming_service

        try:
            return streaming_service(self.state).config(**options)
        except StreamConfigError as exc:
            raise _riva_field(exc) from None

    @staticmethod
    def _shape(text: str, config: rasr.RecognitionConfig) -> str:
        """Whisper punctuates and capitalises; without automatic punctuation Riva does not."""
        if config.enable_automatic_punctuation:
            return text
        return " ".join(text.translate(_PUNCTUATION).lower().split())

    def _alternative(self, text: str, confidence: float, words: list[Word],
                     config: rasr.RecognitionConfig) -> rasr.SpeechRecognitionAlternative:
        alt = rasr.SpeechRecognitionAlternative(transcript=self._shape(text, config),
                                                confidence=confidence)
        if config.enable_word_time_offsets:
            for w in words:
                alt.words.append(rasr.WordInfo(
                    word=self._shape(w.word, config) or w.word,
                    start_time=round(w.start * 1000),
                    end_time=int(round(w.end * 1000)), confidence=w.probability))
        if config.language_code:
            alt.language_code.append(config.language_code)
        return alt

    async def _fail(self, context: grpc.aio.ServicerContext, exc: BaseException) -> None:
        await abort_with_status(context, exc, logger, "Riva ASR call")

    # ---- Recognize -----------------------------------------------------------------------
    async def Recognize(self, request: rasr.RecognizeRequest,
                        context: grpc.aio.ServicerContext) -> rasr.RecognizeResponse:
        await self._authorize(context)
        from .limits import transcription_slots

        try:
            config = request.config
            stream_config = self._config(self._options(config))
        except Exception as exc:  # mapped to a status code
            await self._fail(context, exc)
            raise
        slots = transcription_slots(self.state)
        # decoding a file is work too: the slot comes first
        await take_slot_or_abort(context, slots, "transcriptions",
                                 "VOXGATE_MAX_CONCURRENT_TRANSCRIPTIONS")

        def work() -> Any:
            return self._transcribe(self._decode(request.audio, config), stream_config)

        try:  # the slot is given back when the thread ends, not when the client gives up
            transcript = await slots.run_held(work)
        except Exception as exc:
            await self._fail(context, exc)
            raise
        response = rasr.RecognizeResponse()
        for segment in transcript.segments:
            result = response.results.add()
            result.alternatives.append(self._alternative(
                segment.text, segment.confidence, segment.words, config))
            result.audio_processed = float(segment.end)
        if response.results:
            response.results[-1].audio_processed = float(transcript.duration)
        return response

    def _decode(self, data: bytes, config: rasr.RecognitionConfig) -> np.ndarray:
        limit = self.settings.streaming.max_recognize_mb * 1024 * 1024
        if not data:
            raise AudioError("audio: empty (0 bytes)")
        if len(data) > limit:
            raise AudioError(f"audio: {len(data)} bytes exceeds the "
                             f"{self.settings.streaming.max_recognize_mb} MB limit")
        max_s = self.settings.max_audio_s
        too_long = (f"audio: longer than the {max_s:g} s limit of Recognize "
                    "(VOXGATE_MAX_AUDIO_S); stream it with StreamingRecognize")
        if config.encoding in _FILE_ENCODINGS or looks_like_audio_file(data):
            try:  # a whole file: its header says rate and channels
                return decode_audio(data, max_seconds=max_s)
            except AudioTooLongError:
                raise AudioTooLongError(too_long, max_s) from None
        rate = config.sample_rate_hertz or 16_000
        channels = max(config.audio_channel_count, 1)
        encoding = _SAMPLE_ENCODINGS[config.encoding]
        width = 2 if encoding == "pcm16" else 1
        if len(data) / (width * channels * rate) > max_s:
            raise AudioTooLongError(too_long, max_s)
        pcm = PcmInput(encoding, rate, channels)
        audio = np.concatenate([pcm.convert(data), pcm.flush()])
        if audio.size == 0:
            raise AudioError("audio: no samples")
        return audio

    def _transcribe(self, audio: np.ndarray, config: StreamConfig) -> Any:
        from ..transcriber import FileTranscriber, TranscribeRequest

        try:
            check_language(self.state.manager.get("asr", config.final_model), config.language,
                           "model")
        except StreamConfigError as exc:
            raise _riva_field(exc) from None
        request = TranscribeRequest(model=config.final_model, language=config.language,
                                    word_timestamps=True,
                                    beam_size=self.settings.asr.beam_size,
                                    batch_size=self.settings.asr.batch_size)
        return FileTranscriber(self.settings, request, self.state.manager).run_audio(audio)

    # ---- StreamingRecognize --------------------------------------------------------------
    async def StreamingRecognize(self, request_iterator: AsyncIterator[Any],
                                 context: grpc.aio.ServicerContext
                                 ) -> AsyncIterator[rasr.StreamingRecognizeResponse]:
        await self._authorize(context)
        from .live_streams import streaming_service

        session = None
        idle_s = self.settings.streaming.idle_timeout_s
        try:
            service = streaming_service(self.state)
            service.check_capacity()
            try:  # a client that opens the stream and says nothing holds a slot: bounded
                first = await asyncio.wait_for(anext(aiter(request_iterator), None), idle_s)
            except TimeoutError:
                raise _IdleStream(f"no streaming_config within {idle_s:g} s: stream "
                                  "closed") from None
            if first is None or not first.HasField("streaming_config"):
                raise StreamConfigError("streaming_config", "the first request must carry "
                                                            "streaming_config (then audio_content)")
            riva_config = first.streaming_config.config
            options = self._options(riva_config, streaming=True)
            options["interim_results"] = bool(first.streaming_config.interim_results)
            stream_config = self._config(options)
            pcm = PcmInput(_SAMPLE_ENCODINGS[riva_config.encoding],
                           riva_config.sample_rate_hertz or 16_000,
                           max(riva_config.audio_channel_count, 1))
            session = await service.open(stream_config)
            bind_log_context(session_id=session.id)  # every log line of this stream names it
        except Exception as exc:
            if session is not None:
                await session.close()
            await self._fail(context, exc)
            raise
        max_bytes = self.settings.streaming.max_frame_bytes
        requests = aiter(request_iterator)

        async def next_request() -> Any:
            while True:
                try:
                    return await asyncio.wait_for(anext(requests, None), idle_s)
                except TimeoutError:
                    if session.pending_finals:
                        continue  # the client is waiting for finals: not idle
                    raise _IdleStream(f"no audio for {idle_s:g} s: idle stream closed") from None

        async def chunks() -> AsyncIterator[np.ndarray]:
            first_audio = True
            while (request := await next_request()) is not None:
                if request.HasField("streaming_config"):
                    raise StreamConfigError("streaming_config", "sent twice; only the first "
                                                                "request carries it")
                data = request.audio_content
                if len(data) > max_bytes:
                    raise AudioError(f"audio_content: {len(data)} bytes exceeds "
                                     f"the {max_bytes}-byte limit per request")
                if first_audio and data[:4] == b"RIFF":
                    data = _strip_wav_header(data)  # the official file examples send the header
                first_audio = False
                yield pcm.convert(data)
            yield pcm.flush()

        try:
            async for event in stream_events(session, chunks()):
                response = self._stream_response(event, riva_config, session.position)
                if response is not None:
                    yield response
        except Exception as exc:
            await self._fail(context, exc)
            raise
        finally:
            await session.close()

    def _stream_response(self, event: AsrEvent, config: rasr.RecognitionConfig,
                         processed: float) -> rasr.StreamingRecognizeResponse | None:
        if event.kind not in ("partial", "final"):
            return None
        final = event.kind == "final"
        result = rasr.StreamingRecognitionResult(
            is_final=final, stability=1.0 if final else event.stability,
            audio_processed=float(processed))
        result.alternatives.append(self._alternative(
            event.text, event.confidence if final else 0.0, event.words if final else [], config))
        return rasr.StreamingRecognizeResponse(results=[result])

    # ---- GetRivaSpeechRecognitionConfig --------------------------------------------------
    async def GetRivaSpeechRecognitionConfig(
            self, request: rasr.RivaSpeechRecognitionConfigRequest,
            context: grpc.aio.ServicerContext) -> rasr.RivaSpeechRecognitionConfigResponse:
        await self._authorize(context)
        from ..models import list_specs

        response = rasr.RivaSpeechRecognitionConfigResponse()
        asr = self.settings.asr
        for spec in list_specs("asr"):
            if request.model_name and request.model_name not in (spec.id, *spec.aliases):
                continue
            entry = response.model_config.add(model_name=spec.id)
            languages = "multi" if "multilingual" in spec.languages else "en-US"
            role = ("offline,streaming-final" if spec.id == asr.model
                    else "streaming-partial" if spec.id == asr.partial_model else "offline")
            try:  # the engine's own word on streaming (no model is loaded for this)
                native = load_engine_class("asr", spec.engine).capabilities_of(spec).streaming
            except VoxgateError:  # its extra is not installed here
                native = False
            entry.parameters.update({
                "type": "online" if role != "offline" else "offline",
                "language_code": languages, "engine": spec.engine, "voxgate_role": role,
                "sample_rate": "16000", "license": spec.license,
                # every model serves StreamingRecognize; how: the model's own streaming, or
                # voxgate's VAD cutting utterances for a model that decodes whole inputs
                "streaming": "true",
                "streaming_mode": "native" if native else "vad-segmented",
            })
        return response


class _IdleStream(IdleStream):
    """The client sent nothing for the idle timeout while owed no result."""


def _strip_wav_header(data: bytes) -> bytes:
    """The PCM payload of a stream's first chunk that starts with a RIFF/WAVE header."""
    pos = 12
    while pos + 8 <= len(data):
        chunk_id, size = data[pos:pos + 4], int.from_bytes(data[pos + 4:pos + 8], "little")
        if chunk_id == b"data":
            return data[pos + 8:]
        pos += 8 + size + (size & 1)
    raise AudioError("audio_content: starts with a RIFF header but holds no 'data' chunk")


def _riva_field(exc: StreamConfigError) -> StreamConfigError:
    """Rename voxgate option names to the Riva RecognitionConfig field the client set."""
    names = {"language": "language_code", "final_model": "model",
             "endpointing_ms": "endpointing_config.stop_history",
             "min_speech_ms": "endpointing_config.start_history",
             "vad_threshold": "endpointing_config.start_threshold",
             "word_timestamps": "enable_word_time_offsets"}
    field = names.get(exc.field, exc.field)
    message = str(exc)
    if message.startswith(exc.field + ":"):
        message = message[len(exc.field) + 1:].strip()
    return StreamConfigError(field, message)


class RivaGrpcServer:
    """Server component: the asyncio gRPC server on ``--grpc-port`` (loop shared with HTTP)."""

    name = "grpc"

    def __init__(self, settings: Settings, port: int | None = None) -> None:
        self.settings = settings
        self.port = settings.grpc_port if port is None else port
        self.bound_port = 0
        self._server: grpc.aio.Server | None = None

    async def start(self, state: AppState) -> None:
        from grpc_health.v1 import health, health_pb2, health_pb2_grpc

        limit = (self.settings.streaming.max_recognize_mb + 1) * 1024 * 1024
        from .observability import grpc_interceptor  # request ids, latency, spans per call

        server = grpc.aio.server(
            interceptors=[grpc_interceptor(state)],
            maximum_concurrent_rpcs=self.settings.grpc_max_concurrent_rpcs,
            options=[("grpc.max_receive_message_length", limit),
                     ("grpc.max_send_message_length", 64 * 1024 * 1024)])
        rasr_grpc.add_RivaSpeechRecognitionServicer_to_server(RivaAsrServicer(state), server)
        from .grpc_workflow import add_voice_workflow  # voice agent: voxgate.v1.VoiceWorkflow
        from .riva_nmt import add_riva_nmt  # translation: nvidia.riva.nmt.RivaTranslation
        from .riva_tts import add_riva_tts  # speech out: nvidia.riva.tts.RivaSpeechSynthesis

        services = ["", RIVA_ASR_SERVICE, add_riva_tts(server, state),
                    add_riva_nmt(server, state), add_voice_workflow(server, state)]
        self._health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        address = f"{self.settings.host}:{self.port}"
        try:
            if self.settings.grpc_tls_cert and self.settings.grpc_tls_key:
                credentials = grpc.ssl_server_credentials([(
                    self.settings.grpc_tls_key.read_bytes(),
                    self.settings.grpc_tls_cert.read_bytes())])
                self.bound_port = server.add_secure_port(address, credentials)
            else:
                self.bound_port = server.add_insecure_port(address)
        except (RuntimeError, OSError) as exc:
            raise ConfigError(f"gRPC cannot listen on {address} ({exc}); choose another "
                              "--grpc-port, or 0 to turn gRPC off") from exc
        await server.start()
        self._server = server
        for service in services:
            await self._health.set(service, health_pb2.HealthCheckResponse.SERVING)
        state.ready_checks.append(self._ready)
        logger.info("Riva-compatible gRPC on %s:%d%s", self.settings.host, self.bound_port,
                    " (TLS)" if self.settings.grpc_tls_cert else "")

    async def _ready(self) -> tuple[str, bool, str]:
        ok = self._server is not None
        return "grpc", ok, f"port {self.bound_port}" if ok else "not started"

    async def stop(self, state: AppState) -> None:
        state.remove_ready_checks(self._ready)
        if self._server is not None:
            await self._health.enter_graceful_shutdown()
            await self._server.stop(grace=2.0)
            self._server = None

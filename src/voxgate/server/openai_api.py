"""OpenAI-compatible audio API: ``/v1/audio/transcriptions``, ``/v1/audio/translations``, ``/v1/models``.

Existing OpenAI SDK code works unchanged against voxgate: the same multipart fields, response
formats (json, text, srt, vtt, verbose_json with word and segment timestamps), Server-Sent Events
for ``stream=true``, and errors in OpenAI's shape ``{"error": {"message", "type", "param",
"code"}}``. That shape is produced by this router's own route class, so the rest of the server
keeps its ``{"detail"}`` errors.

``temperature`` as OpenAI documents it: 0 (the default) decodes at temperature 0 and lets a
chunk that loops or is unsure fall back to rising temperatures, as Whisper does; a value above
0 samples at that temperature. ``verbose_json`` segments carry the token ids of their text and
the temperature each was decoded at.

Work happens on worker threads (decode, model load, decoding); the event loop only moves bytes.
A server-wide number of transcriptions run at once (``max_concurrent_transcriptions``); a request
beyond it gets 429 with Retry-After rather than an unbounded queue.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import threading
import zlib
from collections.abc import AsyncIterator, Callable
from contextlib import closing
from dataclasses import dataclass
from typing import Annotated, Any, BinaryIO

import numpy as np
from fastapi import APIRouter, File, Form, HTTPException, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from fastapi.routing import APIRoute

from ..audio import decode_audio
from ..errors import (
    AudioError,
    AudioTooLongError,
    ConfigError,
    EngineError,
    ModelError,
    VoxgateError,
)
from ..formats import render
from ..languages import language_name, primary_language
from ..log_setup import in_context
from ..transcriber import FileTranscriber, TranscribeRequest
from ..types import Segment, Transcript
from .deps import UploadRequest, api_key_from_headers, get_state, key_is_valid
from .limits import TranscriptionSlots, transcription_slots
from .model_cards import client_model_id, model_card, model_cards
from .state import AppState

__all__ = ["OpenAIError", "OpenAIRoute", "router"]

logger = logging.getLogger(__name__)

RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
GRANULARITIES = ("word", "segment")
_MULTIPART_SLACK = 64 * 1024  # form fields and boundaries around the file itself
_MEDIA_TYPES = {"text": "text/plain", "srt": "application/x-subrip", "vtt": "text/vtt"}
_ERROR_KINDS = {  # status -> (OpenAI error type, code)
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    404: ("invalid_request_error", "not_found"),
    413: ("invalid_request_error", "file_too_large"),
    415: ("invalid_request_error", "invalid_file_format"),
    422: ("invalid_request_error", None),
    429: ("requests", "rate_limit_exceeded"),
}


class OpenAIError(Exception):
    """An error answered in OpenAI's JSON shape with an HTTP status (and optional headers)."""

    def __init__(self, status: int, message: str, *, param: str | None = None,
                 code: str | None = None, type: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        default_type, default_code = _ERROR_KINDS.get(status, ("server_error", None))
        self.status = status
        self.message = message
        self.param = param
        self.code = code or default_code
        self.type = type or default_type
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def _as_openai_error(exc: BaseException) -> OpenAIError:
    """Any failure inside this router -> the OpenAI error it is answered with."""
    if isinstance(exc, OpenAIError):
        return exc
    if isinstance(exc, HTTPException):
        return OpenAIError(exc.status_code, str(exc.detail), headers=dict(exc.headers or {}),
                           param="file" if exc.status_code == 413 else None)
    if isinstance(exc, RequestValidationError):
        first = (exc.errors() or [{}])[0]
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
        param = loc[0] if loc else None
        message = first.get("msg", "invalid request")
        return OpenAIError(400, f"{param}: {message}" if param else message, param=param)
    if isinstance(exc, AudioTooLongError):
        return OpenAIError(413, _too_long_message(exc.limit_s), param="file")
    if isinstance(exc, AudioError):
        return OpenAIError(415, f"the file is not audio voxgate can decode: {exc}", param="file")
    if isinstance(exc, ModelError):
        return OpenAIError(404, str(exc), param="model", code="model_not_found")
    if isinstance(exc, EngineError):
        if exc.retryable:
            return OpenAIError(503, str(exc), type="server_error", headers={"Retry-After": "5"})
        return OpenAIError(400, str(exc))
    if isinstance(exc, VoxgateError):
        return OpenAIError(400, str(exc))
    logger.error("OpenAI API request failed", exc_info=exc)
    return OpenAIError(500, f"internal error ({type(exc).__name__})", type="server_error")


class OpenAIRoute(APIRoute):
    """Routes of this router: auth and size checks before the body is read; OpenAI error shape."""

    def get_route_handler(self) -> Callable[[Request], Any]:
        handler = super().get_route_handler()

        async def openai_handler(request: Request) -> Response:
            try:
                _check_request_head(request)
                return await handler(_upload_request(request))
            except Exception as exc:  # noqa: BLE001 - every failure gets an OpenAI-shaped answer
                return _as_openai_error(exc).response()

        return openai_handler


def _check_request_head(request: Request) -> None:
    """401 for a wrong key and 413 for an oversized body, before the upload is received."""
    state = get_state(request)
    if not key_is_valid(state.settings, api_key_from_headers(request.headers)):
        raise OpenAIError(401, "invalid or missing API key (send 'Authorization: Bearer <key>')",
                          headers={"WWW-Authenticate": "Bearer"})
    length = request.headers.get("content-length")
    if length is None:
        return
    if not length.isdigit():
        raise OpenAIError(400, "invalid Content-Length header")
    if int(length) > _max_bytes(state) + _MULTIPART_SLACK:
        raise OpenAIError(413, _too_large_message(state), param="file")


def _upload_request(request: Request) -> UploadRequest:
    """The body counted as it streams (413 past the limit, chunked or not); the file written
    once, unnamed, into the data directory (gone when closed), never spooled under /tmp."""
    state = get_state(request)
    return UploadRequest(request.scope, request.receive,
                         max_bytes=_max_bytes(state) + _MULTIPART_SLACK,
                         spool_dir=state.settings.data_dir / "uploads",
                         too_large=HTTPException(413, _too_large_message(state)))


def _max_bytes(state: AppState) -> int:
    return state.settings.max_upload_mb * 1024 * 1024


def _too_large_message(state: AppState) -> str:
    return f"file is larger than the {state.settings.max_upload_mb} MB limit (VOXGATE_MAX_UPLOAD_MB)"


router = APIRouter(prefix="/v1", tags=["openai"], route_class=OpenAIRoute)


# ----------------------------------------------------------------------------------- models


@router.get("/models")
async def list_models(request: Request) -> dict[str, Any]:
    """Every catalogue model (ASR, VAD, TTS, LLM...) in OpenAI's list shape, plus ``whisper-1``."""
    state = get_state(request)
    cards = await asyncio.to_thread(model_cards, state.settings, state.manager)
    return {"object": "list", "data": cards}


@router.get("/models/{model_id:path}")
async def retrieve_model(request: Request, model_id: str) -> dict[str, Any]:
    state = get_state(request)
    try:
        return await asyncio.to_thread(model_card, state.settings, state.manager, model_id)
    except ModelError as exc:
        raise OpenAIError(404, str(exc), param="model", code="model_not_found") from None


# ------------------------------------------------------------------------------- audio in


@dataclass(frozen=True, slots=True)
class AudioJob:
    """One validated transcription/translation request."""

    model: str  # catalogue id
    task: str  # transcribe | translate
    language: str | None
    prompt: str | None
    response_format: str
    temperature: float
    words: bool  # word timestamps asked for (verbose_json)
    segments: bool  # segments included (verbose_json)
    stream: bool = False


def _validate(state: AppState, *, model: str, task: str, language: str | None,
              prompt: str | None, response_format: str, temperature: float,
              granularities: list[str], stream: bool) -> AudioJob:
    if response_format not in RESPONSE_FORMATS:
        raise OpenAIError(400, f"response_format must be one of {', '.join(RESPONSE_FORMATS)}",
                          param="response_format")
    if not 0.0 <= temperature <= 1.0 or math.isnan(temperature):
        raise OpenAIError(400, "temperature must be between 0 and 1", param="temperature")
    unknown = sorted(set(granularities) - set(GRANULARITIES))
    if unknown:
        raise OpenAIError(400, f"timestamp_granularities: unknown value(s) {unknown}; "
                               "use 'word' and/or 'segment'", param="timestamp_granularities")
    if stream and response_format not in ("json", "text"):
        raise OpenAIError(400, "stream=true sends text deltas: use response_format json or text",
                          param="stream")
    try:
        model_id = client_model_id(state.settings, model, "asr")
    except ModelError as exc:
        raise OpenAIError(404, str(exc), param="model", code="model_not_found") from None
    except ConfigError as exc:
        raise OpenAIError(400, str(exc), param="model") from None
    try:  # "en", "en-US", "English" -> "en"; "" / "auto" -> detect
        lang = primary_language(language)
    except ValueError as exc:
        raise OpenAIError(400, f"language: {exc}", param="language") from None
    return AudioJob(
        model=model_id, task=task, language=lang, prompt=prompt or None,
        response_format=response_format, temperature=temperature,
        words="word" in granularities,
        segments="segment" in granularities or not granularities, stream=stream,
    )


@router.post("/audio/transcriptions")
async def create_transcription(
    request: Request,
    file: Annotated[UploadFile, File(description="Any audio/video file FFmpeg reads.")],
    model: Annotated[str, Form(description="Catalogue id, or 'whisper-1' for the default.")],
    language: Annotated[str | None, Form()] = None,
    prompt: Annotated[str | None, Form()] = None,
    response_format: Annotated[str, Form()] = "json",
    temperature: Annotated[float, Form()] = 0.0,
    granularities: Annotated[list[str] | None, Form(alias="timestamp_granularities[]")] = None,
    granularities_plain: Annotated[list[str] | None, Form(alias="timestamp_granularities")] = None,
    stream: Annotated[bool, Form()] = False,
) -> Response:
    """Speech -> text in the spoken language (OpenAI ``audio.transcriptions.create``)."""
    state = get_state(request)
    job = _validate(state, model=model, task="transcribe", language=language, prompt=prompt,
                    response_format=response_format, temperature=temperature,
                    granularities=(granularities or []) + (granularities_plain or []),
                    stream=stream)
    return await _serve(state, file, job)


@router.post("/audio/translations")
async def create_translation(
    request: Request,
    file: Annotated[UploadFile, File()],
    model: Annotated[str, Form()],
    prompt: Annotated[str | None, Form()] = None,
    response_format: Annotated[str, Form()] = "json",
    temperature: Annotated[float, Form()] = 0.0,
) -> Response:
    """Speech in any supported language -> English text (OpenAI ``audio.translations.create``)."""
    state = get_state(request)
    job = _validate(state, model=model, task="translate", language=None, prompt=prompt,
                    response_format=response_format, temperature=temperature,
                    granularities=["segment"], stream=False)
    return await _serve(state, file, job)


# ----------------------------------------------------------------------- worker-thread side


_READY = object()  # the audio is decoded and the model loaded: decoding starts


class _Worker:
    """One transcription on a worker thread, reporting into an asyncio queue.

    The slot it was started with is given back when the thread ends (not when the client
    leaves), so the concurrency bound counts real work. ``cancelled`` stops it between batches.
    """

    def __init__(self, slots: TranscriptionSlots) -> None:
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.cancelled = threading.Event()
        self._slots = slots

    def start(self, work: Callable[[_Worker], None]) -> None:
        # the thread logs with the request's context (request id, door), as to_thread would
        future = self.loop.run_in_executor(self._slots.executor, in_context(self._run), work)
        future.add_done_callback(lambda _: self._slots.release())

    def _run(self, work: Callable[[_Worker], None]) -> None:
        try:
            work(self)
        except Exception as exc:  # noqa: BLE001 - handed to the request, which answers with it
            self.emit(exc)
        finally:
            self.emit(None)

    def emit(self, item: Any) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)

    async def next(self) -> Any:
        """The next item; re-raises an error from the thread; None at the end."""
        item = await self.queue.get()
        if isinstance(item, BaseException):
            raise item
        return item


def _too_long_message(limit_s: float) -> str:
    return f"the audio is longer than the {limit_s:g} s limit (VOXGATE_MAX_AUDIO_S)"


def _decode(source: BinaryIO, filename: str, max_seconds: float) -> np.ndarray:
    """The upload as 16 kHz float32: 415 when it is not audio, 400 when it holds no samples,
    413 as soon as the decoded audio passes ``max_seconds`` (decoding stops there)."""
    source.seek(0)
    try:
        return decode_audio(source, max_seconds=max_seconds)
    except AudioTooLongError as exc:
        raise OpenAIError(413, _too_long_message(exc.limit_s), param="file") from None
    except AudioError as exc:  # its message starts with the spooled file's (useless) name
        reason = str(exc).removeprefix(f"{getattr(source, 'name', '<stream>')}: ")
        if "zero-length audio" in reason:
            raise OpenAIError(400, "the file contains no audio samples", param="file") from None
        raise OpenAIError(415, f"{filename or 'file'}: {reason}", param="file") from None


def _prepare(state: AppState, upload: UploadFile,
             job: AudioJob) -> tuple[FileTranscriber, np.ndarray]:
    settings = state.settings
    audio = _decode(upload.file, upload.filename or "", settings.max_audio_s)
    transcriber = FileTranscriber(settings, TranscribeRequest(
        model=job.model, language=job.language, task=job.task,
        # Whisper's timestamp tokens give sentence-sized segments (subtitles, verbose_json).
        word_timestamps=job.words or job.response_format in ("srt", "vtt", "verbose_json"),
        beam_size=settings.asr.beam_size, batch_size=settings.asr.batch_size,
        initial_prompt=job.prompt, temperature=job.temperature,
        temperature_fallback=job.temperature == 0.0,
    ), state.manager)
    caps = transcriber.asr.capabilities
    if job.language and caps.languages and job.language not in caps.languages:
        raise OpenAIError(400, f"language {job.language!r} is not supported by {job.model}",
                          param="language", code="unsupported_language")
    if job.task == "translate" and not caps.translate:
        raise OpenAIError(400, f"{job.model} cannot translate (English-only model); "
                               "use a multilingual model", param="model")
    return transcriber, audio


def _whole_file(state: AppState, upload: UploadFile, job: AudioJob) -> Callable[[_Worker], None]:
    def work(worker: _Worker) -> None:
        transcriber, audio = _prepare(state, upload, job)
        worker.emit(_READY)
        worker.emit(transcriber.run_audio(audio))

    return work


def _batches(state: AppState, upload: UploadFile, job: AudioJob) -> Callable[[_Worker], None]:
    def work(worker: _Worker) -> None:
        transcriber, audio = _prepare(state, upload, job)
        worker.emit(_READY)
        with closing(transcriber.iter_audio(audio)) as updates:  # frees the engines on cancel
            for update in updates:
                if worker.cancelled.is_set():
                    logger.info("stream cancelled by the client; stopping")
                    return
                worker.emit(update)

    return work


# ------------------------------------------------------------------------- event-loop side


async def _serve(state: AppState, upload: UploadFile, job: AudioJob) -> Response:
    size = upload.size
    if size is not None and size > _max_bytes(state):
        raise OpenAIError(413, _too_large_message(state), param="file")
    if size == 0:
        raise OpenAIError(400, "the uploaded file is empty (0 bytes)", param="file")
    slots = transcription_slots(state)
    if not slots.try_acquire():
        retry = slots.retry_after()
        raise OpenAIError(429, f"server busy: {slots.limit} transcriptions already running; "
                               f"retry in {retry} s", headers={"Retry-After": str(retry)})
    worker = _Worker(slots)
    make = _batches if job.stream else _whole_file
    worker.start(make(state, upload, job))
    streaming = False
    try:
        if await worker.next() is not _READY:
            raise OpenAIError(500, "transcription ended before it started", type="server_error")
        if job.stream:
            streaming = True
            return StreamingResponse(_sse(worker), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache",
                                              "X-Accel-Buffering": "no"})
        transcript: Transcript = await worker.next()
    finally:
        if not streaming:
            worker.cancelled.set()
    return _render(transcript, job)


def _sse_event(payload: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n".encode()


async def _sse(worker: _Worker) -> AsyncIterator[bytes]:
    """``transcript.text.delta`` per decoded segment as batches finish, then ``.done``."""
    parts: list[str] = []
    try:
        while (update := await worker.next()) is not None:
            for segment in update.segments:
                text = segment.text.strip()
                if text:
                    yield _sse_event({"type": "transcript.text.delta",
                                      "delta": text if not parts else " " + text})
                    parts.append(text)
        yield _sse_event({"type": "transcript.text.done", "text": " ".join(parts)})
    except Exception as exc:  # noqa: BLE001 - the status is sent: report in-band, as OpenAI does
        yield _sse_event(_as_openai_error(exc).body())
    finally:
        worker.cancelled.set()


def _compression_ratio(text: str) -> float:
    """Whisper's repetition check: text bytes over their zlib size (above 2.4 looks looped)."""
    data = text.encode("utf-8")
    return round(len(data) / len(zlib.compress(data)), 3) if data else 0.0


def _segment(segment: Segment) -> dict[str, Any]:
    return {
        "id": segment.id,
        "seek": round(segment.start * 100),  # in 10 ms frames, like Whisper
        "start": float(segment.start),
        "end": float(segment.end),
        "text": segment.text,
        "tokens": list(segment.tokens),
        "temperature": float(segment.temperature),
        "avg_logprob": float(segment.avg_logprob),
        "compression_ratio": _compression_ratio(segment.text),
        "no_speech_prob": float(segment.no_speech_prob),
    }


def _render(transcript: Transcript, job: AudioJob) -> Response:
    fmt = job.response_format
    usage = {"type": "duration", "seconds": math.ceil(transcript.duration)}
    if fmt == "json":
        body: dict[str, Any] = {"text": transcript.text}
        if job.task == "transcribe":
            body["usage"] = usage
        return JSONResponse(body)
    if fmt == "verbose_json":
        body = {"task": job.task, "language": language_name(transcript.language),
                "duration": round(transcript.duration, 3), "text": transcript.text}
        if job.segments:
            body["segments"] = [_segment(s) for s in transcript.segments]
        if job.words:
            body["words"] = [{"word": w.word, "start": float(w.start), "end": float(w.end)}
                             for s in transcript.segments for w in s.words]
        if job.task == "transcribe":
            body["usage"] = usage
        return JSONResponse(body)
    return PlainTextResponse(render(transcript, fmt), media_type=_MEDIA_TYPES[fmt])


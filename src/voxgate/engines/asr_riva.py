"""Any NVIDIA Riva server (or another voxgate) as voxgate's ASR engine, over gRPC.

Seed 000's goal: keep voxgate's contracts (files, partial/final streams) and let Riva do the
recognition. Calls go through the official ``nvidia-riva-client`` stubs with a per-call
timeout, retries with exponential backoff on ``UNAVAILABLE`` (the server restarting or not up
yet; other errors are not retried), optional TLS and API-key metadata.

``transcribe``/``transcribe_batch`` use ``Recognize`` (so the engine fits the streaming
session's re-decode scheme and the batch path); :meth:`RivaAsr.stream` uses
``StreamingRecognize`` for Riva-native partials and finals.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from ..errors import ConfigError, EngineError, MissingExtraError
from ..types import AsrEvent, Segment, Word
from .base import AsrCapabilities, AsrOptions, AsrResult

__all__ = ["RivaAsr", "RivaOptions"]

logger = logging.getLogger(__name__)
_SAMPLE_RATE = 16_000
T = TypeVar("T")


@dataclass(slots=True)
class RivaOptions:
    """Where and how to reach the Riva server (``Settings.riva`` fills it)."""

    uri: str = "localhost:50051"
    use_ssl: bool = False
    ssl_root_cert: str = ""
    api_key: str = ""
    metadata: list[tuple[str, str]] = field(default_factory=list)
    model: str = ""
    timeout_s: float = 30.0
    max_retries: int = 3
    backoff_s: float = 0.2
    language_code: str = "en-US"

    @classmethod
    def from_settings(cls, settings: Any) -> RivaOptions:
        riva = settings.riva
        pairs: list[tuple[str, str]] = []
        for item in riva.metadata:
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise ConfigError(f"riva.metadata: expected key=value, got {item!r}")
            pairs.append((key.strip().lower(), value.strip()))
        return cls(uri=riva.uri, use_ssl=riva.use_ssl, ssl_root_cert=riva.ssl_root_cert,
                   api_key=riva.api_key, metadata=pairs, model=riva.model,
                   timeout_s=riva.timeout_s, max_retries=riva.max_retries,
                   backoff_s=riva.backoff_s)


class RivaAsr:
    """A Riva ASR server behind voxgate's :class:`~voxgate.engines.base.Asr` protocol."""

    name = "riva"

    def __init__(self, options: RivaOptions, *,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        try:
            import grpc
            import riva.client
            import riva.client.proto.riva_asr_pb2 as rasr
        except ImportError as exc:
            raise MissingExtraError("the Riva ASR engine", "grpc", exc) from exc
        self.options = options
        self._grpc, self._rasr = grpc, rasr
        metadata = list(options.metadata)
        if options.api_key:
            metadata.append(("authorization", f"Bearer {options.api_key}"))
        # our retry loop owns the backoff: keep gRPC's own reconnect backoff no longer than it
        first_ms = max(int(options.backoff_s * 1000), 10)
        channel_options = [
            ("grpc.initial_reconnect_backoff_ms", first_ms),
            ("grpc.min_reconnect_backoff_ms", first_ms),
            ("grpc.max_reconnect_backoff_ms", max(first_ms * 2 ** options.max_retries, 1000)),
        ]
        self._auth = riva.client.Auth(
            ssl_root_cert=options.ssl_root_cert or None, use_ssl=options.use_ssl,
            uri=options.uri, metadata_args=[list(m) for m in metadata] or None,
            options=channel_options)
        self._service = riva.client.ASRService(self._auth)
        self._sleep = sleep
        self._lock = threading.Lock()
        self.model_id = f"riva:{options.uri}" + (f"/{options.model}" if options.model else "")
        self.capabilities = AsrCapabilities(batch=True, streaming=True, word_timestamps=True,
                                            translate=False, language_detection=False)
        self.calls = 0  # RPC attempts, retries included (observability and tests)

    @classmethod
    def load(cls, resolved: Any, settings: Any) -> RivaAsr:
        return cls(RivaOptions.from_settings(settings))

    def close(self) -> None:
        self._auth.channel.close()

    # ---- retries -------------------------------------------------------------------------
    def _with_retries(self, what: str, call: Callable[[], T]) -> T:
        grpc = self._grpc
        delay = self.options.backoff_s
        for attempt in range(self.options.max_retries + 1):
            self.calls += 1
            try:
                return call()
            except grpc.RpcError as exc:
                code = exc.code() if hasattr(exc, "code") else None
                detail = exc.details() if hasattr(exc, "details") else str(exc)
                if code == grpc.StatusCode.UNAVAILABLE and attempt < self.options.max_retries:
                    logger.warning("Riva %s at %s unavailable (%s); retry %d/%d in %.2fs", what,
                                   self.options.uri, detail, attempt + 1,
                                   self.options.max_retries, delay)
                    self._sleep(delay)
                    delay *= 2
                    continue
                retryable = code in (grpc.StatusCode.UNAVAILABLE,
                                     grpc.StatusCode.RESOURCE_EXHAUSTED,
                                     grpc.StatusCode.DEADLINE_EXCEEDED)
                name = code.name if code is not None else "error"
                raise EngineError(f"Riva {what} at {self.options.uri} failed: {name}: {detail}",
                                  retryable=retryable) from None
        raise EngineError(f"Riva {what}: no attempt made", retryable=True)  # max_retries < 0

    def _config(self, options: AsrOptions, *, words: bool) -> Any:
        language = options.language
        if options.task != "transcribe":
            raise EngineError("the Riva ASR engine only transcribes (task=translate: use Riva NMT)")
        code = self.options.language_code if language in (None, "", "auto") else (
            "en-US" if language == "en" else language)
        return self._rasr.RecognitionConfig(
            encoding=1, sample_rate_hertz=_SAMPLE_RATE, language_code=code, max_alternatives=1,
            enable_automatic_punctuation=True, enable_word_time_offsets=words,
            audio_channel_count=1, model=self.options.model)

    # ---- Asr protocol --------------------------------------------------------------------
    def transcribe(self, audio: np.ndarray, options: AsrOptions) -> AsrResult:
        from ..audio import float32_to_pcm16

        config = self._config(options, words=options.word_timestamps)
        pcm = float32_to_pcm16(audio)
        response = self._with_retries("Recognize", lambda: self._service.stub.Recognize(
            self._rasr.RecognizeRequest(config=config, audio=pcm),
            metadata=self._auth.get_auth_metadata(), timeout=self.options.timeout_s))
        segments: list[Segment] = []
        previous_end = 0.0
        for result in response.results:
            if not result.alternatives:
                continue
            alt = result.alternatives[0]
            text = alt.transcript.strip()
            if not text:
                continue
            words = [Word(w.start_time / 1000, w.end_time / 1000, w.word, float(w.confidence))
                     for w in alt.words]
            start = words[0].start if words else previous_end
            end = words[-1].end if words else float(result.audio_processed or start)
            segments.append(Segment(len(segments), start, end, text, words,
                                    confidence=float(alt.confidence)))
            previous_end = end
        code = self.options.language_code if options.language in (None, "", "auto") \
            else options.language
        return AsrResult(segments, language=str(code).split("-")[0], language_probability=1.0,
                         duration=audio.size / _SAMPLE_RATE)

    def transcribe_batch(self, chunks: Sequence[np.ndarray], options: AsrOptions
                         ) -> list[AsrResult]:
        """One Recognize per chunk, issued concurrently (the server batches them itself)."""
        if len(chunks) <= 1:
            return [self.transcribe(c, options) for c in chunks]
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(min(len(chunks), 8), thread_name_prefix="riva-recognize") as pool:
            return list(pool.map(lambda c: self.transcribe(c, options), chunks))

    def detect_language(self, audio: np.ndarray) -> tuple[str, float]:
        return self.options.language_code.split("-")[0], 1.0

    # ---- native streaming ----------------------------------------------------------------
    def stream(self, chunks: Iterable[np.ndarray], options: AsrOptions, *,
               interim_results: bool = True) -> Iterator[AsrEvent]:
        """Riva ``StreamingRecognize``: float32 16 kHz chunks in, partial/final events out.

        Connecting is retried on UNAVAILABLE; a stream that breaks mid-way raises
        :class:`EngineError` (its audio cannot be replayed without the caller's help).
        """
        from ..audio import float32_to_pcm16

        rasr = self._rasr
        streaming_config = rasr.StreamingRecognitionConfig(
            config=self._config(options, words=options.word_timestamps),
            interim_results=interim_results)
        audio_iter = iter(chunks)
        replay: list[np.ndarray] = []  # audio sent before the first response: resent on retry
        connected = False

        def requests() -> Iterator[Any]:
            yield rasr.StreamingRecognizeRequest(streaming_config=streaming_config)
            for chunk in replay:
                yield rasr.StreamingRecognizeRequest(audio_content=float32_to_pcm16(chunk))
            for chunk in audio_iter:
                if not connected:
                    replay.append(chunk)
                yield rasr.StreamingRecognizeRequest(audio_content=float32_to_pcm16(chunk))

        responses = self._with_retries("StreamingRecognize", lambda: self._open_stream(requests()))
        connected = True
        replay.clear()
        utterance = 0
        last_end = 0.0
        try:
            for response in responses:
                for result in response.results:
                    if not result.alternatives:
                        continue
                    alt = result.alternatives[0]
                    end = float(result.audio_processed)
                    if result.is_final:
                        words = [Word(w.start_time / 1000, w.end_time / 1000, w.word,
                                      float(w.confidence)) for w in alt.words]
                        yield AsrEvent("final", utterance, words[0].start if words else last_end,
                                       words[-1].end if words else end, text=alt.transcript.strip(),
                                       words=words, confidence=float(alt.confidence),
                                       stability=1.0)
                        utterance += 1
                        last_end = end
                    else:
                        yield AsrEvent("partial", utterance, last_end, end,
                                       text=alt.transcript.strip(),
                                       stability=float(result.stability))
        except self._grpc.RpcError as exc:
            raise EngineError(f"Riva stream at {self.options.uri} broke: {exc.code().name}: "
                              f"{exc.details()}", retryable=True) from None

    def _open_stream(self, requests: Iterator[Any]) -> Iterator[Any]:
        """Start the call and wait for the first response, so connection errors surface here."""
        # no deadline: a live stream lasts as long as its audio (timeout_s bounds unary calls)
        call = self._service.stub.StreamingRecognize(
            requests, metadata=self._auth.get_auth_metadata())
        iterator = iter(call)
        try:
            head = next(iterator)
        except StopIteration:
            return iter(())

        def chain() -> Iterator[Any]:
            yield head
            yield from iterator

        return chain()

"""Any NVIDIA Riva server (or another voxgate) as voxgate's ASR engine, over gRPC.

Seed 000's goal: keep voxgate's contracts (files, partial/final streams) and let Riva do the
recognition. Calls go through the official ``nvidia-riva-client`` stubs with a per-call
timeout, retries with exponential backoff on ``UNAVAILABLE`` (the server restarting or not up
yet; other errors are not retried), optional TLS and API-key metadata; the connection and the
retry loop are :mod:`voxgate.engines.riva_channel`'s, shared with the Riva TTS engine.

``transcribe``/``transcribe_batch`` use ``Recognize`` (so the engine fits the streaming
session's re-decode scheme and the batch path); :meth:`RivaAsr.stream` uses
``StreamingRecognize`` for Riva-native partials and finals.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from ..errors import EngineError
from ..log_setup import in_context
from ..types import AsrEvent, Segment, Word
from .base import AsrCapabilities, AsrOptions, AsrResult
from .riva_channel import RivaChannel, RivaOptions

__all__ = ["RivaAsr", "RivaOptions"]

logger = logging.getLogger(__name__)
_SAMPLE_RATE = 16_000


class RivaAsr:
    """A Riva ASR server behind voxgate's :class:`~voxgate.engines.base.Asr` protocol."""

    name = "riva"

    def __init__(self, options: RivaOptions, *,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self._channel = RivaChannel(options, "the Riva ASR engine", sleep=sleep)
        import riva.client
        import riva.client.proto.riva_asr_pb2 as rasr

        self.options = options
        self._grpc, self._rasr = self._channel.grpc, rasr
        self._auth = self._channel.auth
        self._service = riva.client.ASRService(self._auth)
        self._with_retries = self._channel.with_retries
        self.model_id = f"riva:{options.uri}" + (f"/{options.model}" if options.model else "")
        self.capabilities = self.capabilities_of(None)

    @classmethod
    def capabilities_of(cls, spec: Any) -> AsrCapabilities:
        """What recognition through a Riva server offers, known without connecting to one."""
        return AsrCapabilities(batch=True, streaming=True, word_timestamps=True,
                               translate=False, language_detection=False)

    @property
    def calls(self) -> int:
        """RPC attempts, retries included (observability and tests)."""
        return self._channel.calls

    @classmethod
    def load(cls, resolved: Any, settings: Any) -> RivaAsr:
        return cls(RivaOptions.from_settings(settings))

    def close(self) -> None:
        self._channel.close()

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
            # retries log with the caller's request / task id
            return list(pool.map(in_context(lambda c: self.transcribe(c, options)), chunks))

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

"""Live transcription: audio in; start_of_speech / partial / final / end_of_speech out.

One :class:`StreamingService` per process owns the shared pieces: the stream limit and the
:class:`~voxgate.stream_batcher.DecodeScheduler` that decodes finals from every stream in
batches. Each stream is an :class:`AsrSession`:

* a per-stream Silero VAD state feeds an :class:`~voxgate.endpointing.Endpointer` that decides
  where utterances start and end (``endpointing_ms`` of silence, ``min_speech_ms``, padding);
* while an utterance is open, every ``partial_interval_ms`` of new speech the open utterance is
  re-decoded with the fast model (default ``whisper-tiny.en``) -> ``partial`` with a stability
  estimate (how much of it agreed with the previous partial);
* a closed utterance is decoded once with the accurate model (default ``whisper-base``), with
  word timestamps and confidence -> ``final``. ``flush()`` forces a final without closing the
  stream, ``finish()`` finalises at end of stream. Utterances longer than ``max_utterance_s``
  are cut into several finals, so an hour-long stream keeps constant memory.

Transports (WebSocket, Riva gRPC, Wyoming) use it the same way::

    session = await service.open(service.config(language="en"))
    try:
        async for event in stream_events(session, chunks):  # chunks: float32 16 kHz arrays
            send(event)
    finally:
        await session.close()

or feed ``await session.accept(samples)`` from one task and read ``session.events()`` in
another. Times are seconds of the stream's own audio. ``event.lag`` is how much audio had
arrived beyond the point the event describes when it was emitted (compute backlog, seconds).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .audio import SAMPLE_RATE
from .config import Settings
from .endpointing import Boundary, Endpointer
from .engines.base import Asr, AsrOptions, AsrResult
from .engines.priority import Priority
from .errors import EngineError, ModelError
from .stream_batcher import DecodeScheduler
from .stream_config import ENCODINGS, PcmInput, StreamConfig, StreamConfigError, StreamLimitError
from .tracing import span
from .types import AsrEvent, Word

__all__ = [
    "ENCODINGS",
    "AsrSession",
    "PcmInput",
    "StreamConfig",
    "StreamConfigError",
    "StreamLimitError",
    "StreamingService",
    "check_language",
    "stability",
    "stream_events",
]

logger = logging.getLogger(__name__)


def stability(previous: str, current: str) -> float:
    """Share of ``current``'s words that repeat ``previous`` word for word from the start."""
    cur = current.split()
    if not cur:
        return 0.0
    prev = previous.split()
    same = 0
    for a, b in zip(prev, cur):
        if a.strip(".,?!;:").lower() != b.strip(".,?!;:").lower():
            break
        same += 1
    return round(same / len(cur), 3)


@dataclass(slots=True)
class _Utterance:
    id: int
    start: int  # stream sample of the speech onset (announced start)
    buffer_start: int  # stream sample of the first buffered sample belonging to it (padding)
    last_partial_at: int = 0  # stream sample up to which the last partial was requested
    last_partial_text: str = ""
    closed: bool = False
    speculative: _Speculation | None = None  # final decode started during a pause


@dataclass(slots=True)
class _Speculation:
    """A final decode started early, ``speculative_after_ms`` into a pause; valid while the
    pause lasts, delivered as the final when the endpoint confirms that pause."""

    silence_start: int
    end: int  # last sample of the decoded audio (speech end + padding)
    future: asyncio.Future[AsrResult]


@dataclass(slots=True)
class _PendingFinal:
    utterance_id: int
    start: int  # first sample of the decoded audio (padding included): word time offset
    end: int
    speech_start: int
    speech_end: int
    decided_at: int
    future: asyncio.Future[AsrResult]


class StreamingService:
    """Shared state of all live streams: limit, models, the cross-session decode scheduler.

    A server :class:`~voxgate.server.state.Component` (``name = "streaming"``) and a plain
    library object alike: ``await service.start()`` inside the event loop, then ``open``.
    """

    name = "streaming"

    def __init__(self, settings: Settings, manager: Any | None = None) -> None:
        self.settings = settings
        self.manager = manager
        self.max_streams = settings.max_streams
        self.scheduler = DecodeScheduler(max_batch=settings.streaming.batch_max_size,
                                         max_wait_s=settings.streaming.batch_max_wait_ms / 1000)
        self.sessions: dict[str, AsrSession] = {}
        self.opened_total = 0

    async def start(self, state: Any = None) -> None:
        if state is not None:
            self.manager = state.manager
        if self.manager is None:
            raise RuntimeError("StreamingService needs a ModelManager")
        if self._scheduler_failed not in self.scheduler.on_failure:
            self.scheduler.on_failure.append(self._scheduler_failed)
        await self.scheduler.start()

    def _scheduler_failed(self, error: EngineError) -> None:
        """The decode scheduler died: every open stream ends with ``error``, none hangs."""
        for session in list(self.sessions.values()):
            if isinstance(session, AsrSession):
                session.fail(error)

    async def stop(self, state: Any = None) -> None:
        for session in list(self.sessions.values()):
            await session.close()
        await self.scheduler.stop()

    @property
    def active(self) -> int:
        return len(self.sessions)

    def config(self, **overrides: Any) -> StreamConfig:
        """This server's defaults with client ``overrides`` (validated, field named on error)."""
        return StreamConfig.from_settings(self.settings, **overrides)

    def check_capacity(self) -> None:
        """Raise :class:`StreamLimitError` when no stream slot is free (before any work)."""
        if self.active >= self.max_streams:
            raise StreamLimitError(self.max_streams)

    async def open(self, config: StreamConfig) -> AsrSession:
        """A new session holding a stream slot and references to its models.

        Raises :class:`StreamLimitError` when full and :class:`StreamConfigError` (field
        ``final_model`` / ``partial_model`` / ``language``) when a model cannot serve the config.
        """
        self.check_capacity()
        if self.scheduler.failure is not None:
            raise self.scheduler.failure
        if self.manager is None or not self.scheduler.running:
            raise RuntimeError("StreamingService.start() was not called")
        config.validate()
        session_id = uuid.uuid4().hex[:12]
        # reserve the slot before the (possibly slow) first model load
        self.sessions[session_id] = placeholder = _Reserved()  # type: ignore[assignment]
        stack = contextlib.ExitStack()
        try:
            final = await asyncio.to_thread(self._use, stack, "asr", config.final_model,
                                            "final_model")
            partial = None  # no partials asked for: the partial model is not even loaded
            if config.interim_results:
                partial = await asyncio.to_thread(self._use, stack, "asr", config.partial_model,
                                                  "partial_model")
            vad = await asyncio.to_thread(self._use, stack, "vad", "silero-vad", "vad")
            check_language(final, config.language, "final_model")
            if partial is not None:
                check_language(partial, config.language, "partial_model")
        except BaseException:
            self.sessions.pop(session_id, None)
            stack.close()
            raise
        session = AsrSession(self, session_id, config, vad.stream(), partial, final, stack)
        if self.sessions.get(session_id) is placeholder:
            self.sessions[session_id] = session
        self.opened_total += 1
        self.scheduler.active_streams = self.active
        return session

    def _use(self, stack: contextlib.ExitStack, kind: str, model_id: str, field: str) -> Any:
        try:
            return stack.enter_context(self.manager.use(kind, model_id))
        except ModelError as exc:
            raise StreamConfigError(field, str(exc)) from exc

    def _release(self, session_id: str) -> None:
        self.sessions.pop(session_id, None)
        self.scheduler.active_streams = self.active


class _Reserved:
    """Stand-in for a session whose models are still loading (holds its slot)."""

    async def close(self) -> None:
        return None


def check_language(asr: Asr, language: str | None, field: str) -> None:
    """Raise :class:`StreamConfigError` (field ``language``) when ``asr`` cannot do it."""
    caps = asr.capabilities
    if language is None:
        if not caps.language_detection:
            raise StreamConfigError("language", f"{getattr(asr, 'model_id', asr.name)} cannot "
                                                "detect the language; set language (e.g. 'en')")
        return
    if caps.languages and language not in caps.languages:
        raise StreamConfigError(
            "language", f"{language!r} is not supported by {field} "
                        f"{getattr(asr, 'model_id', asr.name)}; choose another model")


class AsrSession:
    """One live stream. Feed float32 16 kHz audio; read events from :meth:`events`.

    ``accept`` returns once the audio is analysed (and waits while this stream already has
    ``max_pending_finals`` finals queued: that is the backpressure a too-fast client feels).
    """

    def __init__(self, service: StreamingService, session_id: str, config: StreamConfig,
                 vad_stream: Any, partial_asr: Asr | None, final_asr: Asr,
                 resources: contextlib.ExitStack) -> None:
        self.service, self.id, self.config = service, session_id, config
        self._scheduler = service.scheduler
        self._vad = vad_stream
        self._partial_asr, self._final_asr = partial_asr, final_asr
        self._resources = resources
        ms = SAMPLE_RATE // 1000
        self._pad = config.speech_pad_ms * ms
        self._endpointer = Endpointer(threshold=config.vad_threshold,
                                      min_silence_samples=config.endpointing_ms * ms,
                                      min_speech_samples=config.min_speech_ms * ms,
                                      frame_samples=vad_stream.frame_samples,
                                      onset_samples=(None if config.onset_ms is None
                                                     else config.onset_ms * ms))
        self._max_utt = int(config.max_utterance_s * SAMPLE_RATE)
        self._partial_every = config.partial_interval_ms * ms
        tuning = service.settings.streaming
        margin = tuning.window_margin_s if tuning.short_window else None
        self._final_opts = AsrOptions(language=config.language, beam_size=config.final_beam_size,
                                      word_timestamps=config.word_timestamps,
                                      window_margin_s=margin, priority=Priority.LIVE_FINAL)
        self._partial_opts = AsrOptions(language=config.language,
                                        beam_size=config.partial_beam_size,
                                        window_margin_s=margin, priority=Priority.LIVE_PARTIAL)
        self._speculate = tuning.speculative_finals
        # early decodes take the audio up to here into the pause (at most the usual padding)
        self._spec_after = min(tuning.speculative_after_ms * ms, self._pad)
        self._buffer = np.zeros(0, np.float32)
        self._buffer_start = 0  # stream sample of self._buffer[0]
        self.received = 0  # samples accepted so far
        self._next_id = 0
        self._utt: _Utterance | None = None
        self._pending: deque[_PendingFinal] = deque()
        self._pending_changed = asyncio.Event()
        self._events: asyncio.Queue[AsrEvent | BaseException | None] = asyncio.Queue()
        self._emitter = asyncio.create_task(self._emit_finals(), name=f"finals-{session_id}")
        self._finishing = False
        self.closed = False
        self.dropped_partials = 0
        self.speculative_finals = 0  # started early ...
        self.speculative_discarded = 0  # ... and thrown away because speech resumed
        self.max_lag = 0.0
        # optional hook (the translation session): called with (utterance id, result) when an
        # early final decode is ready while its pause still lasts (the endpoint not yet
        # confirmed), and with (utterance id, None) when that early result is withdrawn
        # (speech resumed, or the final is decoded anew); the final event follows as usual
        self.on_speculative: Callable[[int, AsrResult | None], None] | None = None

    # ---- input ---------------------------------------------------------------------------
    @property
    def utterances(self) -> int:
        """Utterances started so far (ids run 0..utterances-1)."""
        return self._next_id

    @property
    def pending_finals(self) -> int:
        """Finals decided but not yet delivered (the client may be waiting for them)."""
        return len(self._pending)

    @property
    def position(self) -> float:
        """Seconds of audio received."""
        return self.received / SAMPLE_RATE

    async def accept(self, samples: np.ndarray) -> None:
        """Feed float32 mono 16 kHz samples of any length."""
        self._check_open()
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        if samples.size == 0:
            return
        for i in range(0, samples.size, SAMPLE_RATE):  # bound work per step at 1 s of audio
            await self._accept_block(samples[i:i + SAMPLE_RATE])

    async def _accept_block(self, block: np.ndarray) -> None:
        while len(self._pending) >= self.service.settings.streaming.max_pending_finals:
            self._pending_changed.clear()
            await self._pending_changed.wait()
            self._check_open()
        self._buffer = np.concatenate([self._buffer, block])
        self.received += block.size
        probs = await asyncio.to_thread(self._vad.accept, block)
        self._check_open()
        for prob in probs:
            for boundary in self._endpointer.push(float(prob)):
                self._on_boundary(boundary)
            utt = self._utt
            if utt is not None and self._endpointer.position - utt.buffer_start >= self._max_utt:
                self._split_long_utterance()
            self._maybe_speculate()
        self._maybe_partial()
        self._trim()

    async def flush(self) -> None:
        """Force a final for the open utterance now (the stream stays open)."""
        self._check_open()
        for boundary in self._endpointer.force_end(self.received):
            self._on_boundary(boundary)

    async def finish(self) -> None:
        """End of stream: finalise the open utterance; ``events()`` ends after its final."""
        if self._finishing or self.closed:
            return
        await self.flush()
        self._finishing = True
        self._pending_changed.set()

    async def close(self) -> None:
        """Abandon the stream (client gone, error): cancel queued work, free slot and models."""
        if self.closed:
            return
        self.closed = True
        self._scheduler.cancel_partial(self.id)
        if self._utt is not None and self._utt.speculative is not None:
            self._utt.speculative.future.cancel()
        for pending in self._pending:
            pending.future.cancel()
        self._pending.clear()
        self._pending_changed.set()
        self._emitter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._emitter
        self._events.put_nowait(None)
        self._buffer = np.zeros(0, np.float32)
        self._resources.close()
        self.service._release(self.id)
        logger.debug("stream %s closed after %.1fs of audio", self.id, self.position)

    def fail(self, error: BaseException) -> None:
        """End the stream with ``error``: the reader of :meth:`events` gets it."""
        if not self.closed:
            self._events.put_nowait(error)

    async def events(self) -> AsyncIterator[AsrEvent]:
        """Events in order; ends after ``finish()`` delivered the last final, or on close.

        A failed final decode raises :class:`~voxgate.errors.EngineError` here.
        """
        while True:
            item = await self._events.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def _check_open(self) -> None:
        if self.closed:
            raise EngineError("stream is closed")
        if self._finishing:
            raise EngineError("stream already ended")

    # ---- utterances ----------------------------------------------------------------------
    def _on_boundary(self, boundary: Boundary) -> None:
        if boundary.kind == "start":
            self._utt = _Utterance(self._next_id, boundary.sample,
                                   max(boundary.sample - self._pad, self._buffer_start),
                                   last_partial_at=boundary.sample)
            self._next_id += 1
            self._push(AsrEvent("start_of_speech", self._utt.id, self._sec(boundary.sample),
                                self._sec(boundary.sample)))
        elif boundary.kind == "end" and self._utt is not None:
            self._close_utterance(min(boundary.sample + self._pad, self.received), boundary.sample)
        elif boundary.kind == "onset":  # (utterance id: the one it gets if confirmed)
            at = self._sec(boundary.sample)
            self._push(AsrEvent("speech_onset", self._next_id, at, at))
        elif boundary.kind == "cancel" and self._endpointer.onset_announced:
            self._push(AsrEvent("speech_cancelled", self._next_id, self._sec(boundary.sample),
                                self._sec(self._endpointer.position)))

    def _maybe_speculate(self) -> None:
        """Start (or withdraw) the early final decode of the open utterance's current pause.

        After ``speculative_after_ms`` of silence (capped at ``speech_pad_ms``) the speech of
        the utterance is all there: decoding it now (speech + the silence so far as padding),
        while the endpointer waits out the rest of ``endpointing_ms``, takes the decode off the
        latency. Speech resuming ends the pause: the early decode is cancelled (dropped from
        the queue if it has not started) and counted in ``speculative_discarded``.
        """
        utt = self._utt
        if utt is None:
            return
        silence_start = self._endpointer.silence_start
        spec = utt.speculative
        if spec is not None and spec.silence_start != silence_start:
            spec.future.cancel()
            utt.speculative = None
            self.speculative_discarded += 1
            self._withdraw_speculation(utt.id)
        if (not self._speculate or silence_start is None or utt.speculative is not None
                or self._endpointer.position - silence_start < self._spec_after):
            return
        end = min(silence_start + self._spec_after, self.received)
        future = self._scheduler.submit_final(self._final_asr,
                                              self._slice(utt.buffer_start, end), self._final_opts)
        utt.speculative = spec = _Speculation(silence_start, end, future)
        self.speculative_finals += 1
        if self.on_speculative is not None:
            future.add_done_callback(lambda _, u=utt, s=spec: self._speculated(u, s))

    def _speculated(self, utt: _Utterance, spec: _Speculation) -> None:
        """An early decode is ready: hand it to ``on_speculative`` while its pause lasts."""
        future = spec.future
        if (self.on_speculative is None or self.closed or utt.closed
                or utt.speculative is not spec or future.cancelled()
                or future.exception() is not None):
            return  # withdrawn, failed (the final reports it), or already the final
        self.on_speculative(utt.id, future.result())

    def _withdraw_speculation(self, utterance_id: int) -> None:
        if self.on_speculative is not None:
            self.on_speculative(utterance_id, None)

    def _split_long_utterance(self) -> None:
        """Cut an utterance that reached ``max_utterance_s`` here; speech goes on as the next."""
        utt = self._utt
        if utt is None:
            return
        silence_start = self._endpointer.silence_start
        if silence_start is not None:  # speech already stopped: end it there, start nothing
            for boundary in self._endpointer.force_end(silence_start):
                self._on_boundary(boundary)
            return
        cut = self._endpointer.position
        self._close_utterance(cut, cut)
        self._endpointer.split(cut)
        self._on_boundary(Boundary("start", cut))
        if self._utt is not None:
            self._utt.buffer_start = cut

    def _close_utterance(self, audio_end: int, speech_end: int) -> None:
        utt = self._utt
        if utt is None:
            return
        utt.closed = True
        self._utt = None
        self._scheduler.cancel_partial(self.id)
        self._push(AsrEvent("end_of_speech", utt.id, self._sec(utt.start), self._sec(speech_end)))
        spec, utt.speculative = utt.speculative, None
        if spec is not None and speech_end >= spec.silence_start and not spec.future.cancelled():
            # ended inside the pause the early decode covers (endpoint, flush, end of stream):
            # anything after its audio is silence, so it is this utterance's final
            future, audio_end = spec.future, spec.end
        else:
            if spec is not None:
                spec.future.cancel()
                self.speculative_discarded += 1
                self._withdraw_speculation(utt.id)
            audio = self._slice(utt.buffer_start, audio_end)
            future = self._scheduler.submit_final(self._final_asr, audio, self._final_opts)
        self._pending.append(_PendingFinal(utt.id, utt.buffer_start, audio_end, utt.start,
                                           speech_end, self.received, future))
        self._pending_changed.set()

    def _maybe_partial(self) -> None:
        utt = self._utt
        if utt is None or not self.config.interim_results:
            return
        speech_end = self._endpointer.last_speech_end
        if speech_end - utt.last_partial_at < self._partial_every:
            return  # not enough new speech since the last partial (silence adds no words)
        utt.last_partial_at = speech_end
        end = self.received
        audio = self._slice(utt.buffer_start, end)
        utt_ref = utt

        def done(result: AsrResult | None, error: BaseException | None) -> None:
            if result is None or utt_ref.closed or self.closed or self._finishing:
                return
            text = result.text
            if not text:
                return
            lag = self._sec(self.received - end)
            event = AsrEvent("partial", utt_ref.id, self._sec(utt_ref.start), self._sec(end),
                             text=text, stability=stability(utt_ref.last_partial_text, text),
                             lag=round(lag, 3))
            utt_ref.last_partial_text = text
            self._push(event)

        if self._scheduler.submit_partial(self.id, self._partial_asr, audio, self._partial_opts,
                                          done):
            self.dropped_partials += 1

    async def _emit_finals(self) -> None:
        """Deliver finals strictly in utterance order, then end the event stream."""
        while True:
            while not self._pending:
                if self._finishing:
                    self._events.put_nowait(None)
                    return
                self._pending_changed.clear()
                await self._pending_changed.wait()
            pending = self._pending[0]
            try:  # a span per final, in the stream's trace (a no-op with tracing off)
                with span("voxgate.stream.final"):
                    result = await asyncio.shield(pending.future)
            except asyncio.CancelledError:
                # only a final that was itself cancelled (dropped) is skipped; a cancellation
                # of this task (the owner stops the stream) must end it, closed or not
                task = asyncio.current_task()
                if self.closed or not pending.future.cancelled() or (
                        task is not None and task.cancelling()):
                    raise
                result = None
            except Exception as exc:  # the engine failed this stream's final
                self._events.put_nowait(EngineError(f"final decode failed: {exc}"))
                return
            if self._pending and self._pending[0] is pending:
                self._pending.popleft()
            self._pending_changed.set()
            if result is not None:
                self._push(self._final_event(pending, result))

    def _final_event(self, pending: _PendingFinal, result: AsrResult) -> AsrEvent:
        offset = pending.start / SAMPLE_RATE
        words = [Word(round(w.start + offset, 3), round(w.end + offset, 3), w.word,
                      round(w.probability, 4))
                 for seg in result.segments for w in seg.words]
        spans = [(max(s.end - s.start, 1e-3), s.confidence) for s in result.segments]
        total = sum(d for d, _ in spans)
        confidence = sum(d * c for d, c in spans) / total if total else 0.0
        start = words[0].start if words else self._sec(pending.speech_start)
        end = words[-1].end if words else self._sec(pending.speech_end)
        return AsrEvent("final", pending.utterance_id, start, end, text=result.text, words=words,
                        confidence=round(confidence, 4), stability=1.0,
                        lag=round(self._sec(self.received - pending.decided_at), 3),
                        language=result.language)

    # ---- buffers -------------------------------------------------------------------------
    def _push(self, event: AsrEvent) -> None:
        self.max_lag = max(self.max_lag, event.lag)
        self._events.put_nowait(event)

    def _slice(self, start: int, end: int) -> np.ndarray:
        lo = max(start - self._buffer_start, 0)
        return self._buffer[lo:max(end - self._buffer_start, lo)].copy()

    def _trim(self) -> None:
        """Keep only what an utterance may still need: constant memory on endless streams."""
        if self._utt is not None:
            keep_from = self._utt.buffer_start
        else:
            # a burst not yet confirmed starts at endpointer.start; keep padding before it
            keep_from = (self._endpointer.start if self._endpointer.triggered
                         else self._endpointer.position) - self._pad
        drop = min(max(keep_from - self._buffer_start, 0), self._buffer.size)
        if drop:
            self._buffer = self._buffer[drop:]
            self._buffer_start += drop

    @staticmethod
    def _sec(samples: int) -> float:
        return round(samples / SAMPLE_RATE, 3)


async def stream_events(session: AsrSession, chunks: AsyncIterable[np.ndarray]
                        ) -> AsyncIterator[AsrEvent]:
    """Feed ``chunks`` (float32 16 kHz) into ``session`` and yield its events as they come.

    The stream is finished when ``chunks`` ends. An error while feeding (bad audio, client
    gone) closes the session and is raised here, after the events already produced.
    """
    async def feed() -> None:
        try:
            async for chunk in chunks:
                await session.accept(chunk)
            await session.finish()
        except BaseException:
            await session.close()
            raise

    feeder = asyncio.create_task(feed(), name=f"feed-{session.id}")
    try:
        async for event in session.events():
            yield event
        await feeder  # surfaces a feeding error that closed the session
    finally:
        if not feeder.done():
            feeder.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await feeder

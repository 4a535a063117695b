"""Live speech-to-speech translation (EN <-> RU), independent of any transport.

One :class:`TranslationService` per process (a server component, like
:class:`~voxgate.streaming.StreamingService`) opens :class:`TranslateSession` s. A session:

1. feeds its audio (float32 mono 16 kHz; doors convert with ``stream_config.PcmInput``) into an
   :class:`~voxgate.streaming.AsrSession`, whose VAD endpointer cuts utterances (silence of
   ``VOXGATE_TRANSLATION__ENDPOINTING_MS``, long speech cut at ``max_utterance_s``); an utterance
   also ends when no audio at all arrives for ``no_audio_end_ms`` (900 ms, as the seed's client
   expects when it stops sending) or on :meth:`TranslateSession.flush`;
2. the final transcript's language decides the direction when the mode is ``auto`` (en <-> ru);
   any other language gets an ``unsupported_language`` event and no translation;
3. the transcript is translated by the configured :class:`~voxgate.engines.base.Mt` engine
   (the previous utterance as context);
4. the translation is spoken sentence by sentence through the process's
   :class:`~voxgate.speech.SpeechService` with the target language's voice.

Speculative MT (``VOXGATE_TRANSLATION__SPECULATIVE_MT``): the ASR decodes an utterance's final
early, ~100 ms into a pause, while the endpointer still waits for the rest of its silence
(:attr:`~voxgate.streaming.AsrSession.on_speculative`). When nothing earlier is still being
translated, the session starts MT and TTS on that early text at once and keeps their events to
itself; the committed final then adopts them when its text and language are the same (they
are sent from there on, the time already spent saved), or they are dropped, the work
cancelled, and the final is translated anew. Speech resuming drops them at once. A dropped
attempt sends nothing.

Events (:class:`TranslateEvent`, in order per utterance): ``partial`` (source, while speaking),
``transcript`` (source final), ``translation`` (text, or ``error`` when MT failed), ``audio``
(one per spoken sentence), then ``done`` (the whole utterance: text, transcript, joined audio,
``tts_failed`` / ``error``). Nothing is dropped: a failing MT still delivers the transcript, a
failing TTS still delivers the text. Utterances are processed strictly in order; when
``max_pending_utterances`` wait, :meth:`TranslateSession.accept` waits (backpressure).
:meth:`TranslateSession.close` (client gone) cancels everything: the ASR stream, the LLM
generation, the sentence being synthesized; the slot is free once they have stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from .config import Settings
from .engines.base import AsrResult, Mt, MtOptions
from .errors import ConfigError, EngineError, ModelError, TextError
from .speech import SpeechService, join_chunks
from .stream_config import StreamConfigError, StreamLimitError
from .streaming import AsrSession, StreamingService
from .types import AsrEvent, Word

__all__ = [
    "LANGUAGES",
    "SPECULATIVE_OUTCOMES",
    "TranslateConfig",
    "TranslateEvent",
    "TranslateSession",
    "TranslationService",
    "open_mt",
]

logger = logging.getLogger(__name__)

LANGUAGES = ("en", "ru")
_OTHER = {"en": "ru", "ru": "en"}
MODES = ("auto", "en->ru", "ru->en")

EventKind = Literal["partial", "transcript", "translation", "audio", "done",
                    "unsupported_language"]


@dataclass(frozen=True, slots=True)
class TranslateConfig:
    """What a client asks for. ``mode`` (``auto``, ``en->ru``, ``ru->en``) overrides
    ``src``/``tgt``; ``src="auto"`` detects en/ru per utterance; ``tgt=None`` means the other
    language. Build with :meth:`of` (validates, names the bad field)."""

    src: str = "auto"  # "auto" | "en" | "ru"
    tgt: str | None = None  # fixed target; None: the other language of the pair
    partials: bool = True
    glossary: tuple[tuple[str, str], ...] = ()
    dnt: tuple[str, ...] = ()

    @classmethod
    def of(cls, src: str | None = "auto", tgt: str | None = None, mode: str | None = None,
           **extra: Any) -> TranslateConfig:
        """Validated config; :class:`StreamConfigError` names ``mode``/``src``/``tgt``."""
        if mode is not None and mode not in MODES:
            raise StreamConfigError("mode", f"must be one of {', '.join(MODES)}, got {mode!r}")
        if mode in ("en->ru", "ru->en"):
            src, tgt = mode.split("->")
        elif mode == "auto":
            src, tgt = "auto", None
        src = src or "auto"
        if src not in ("auto", *LANGUAGES):
            raise StreamConfigError("src", f"must be auto, en or ru, got {src!r}")
        if tgt is not None and tgt not in LANGUAGES:
            raise StreamConfigError("tgt", f"must be en, ru or null, got {tgt!r}")
        if tgt is not None and tgt == src:
            raise StreamConfigError("tgt", f"source and target are both {src!r}")
        return cls(src=src, tgt=tgt, **extra)

    def target_for(self, source: str) -> str:
        """The language an utterance in ``source`` is translated into."""
        if self.tgt is not None and self.tgt != source:
            return self.tgt
        return _OTHER[source]


@dataclass(slots=True)
class TranslateEvent:
    """One event of a translation stream (see the module doc for the order).

    ``audio``/``sample_rate``: float32 mono speech (``audio``: one sentence; ``done``: the
    whole utterance, None when nothing was spoken). ``error``: why the utterance has no
    translation (MT failed, unsupported language); ``tts_failed``: the text could not be spoken.
    """

    kind: EventKind
    utterance_id: int
    src: str = ""
    tgt: str = ""
    text: str = ""  # translation (partial/transcript: the source text)
    transcript: str = ""
    start: float = 0.0
    end: float = 0.0
    words: list[Word] = field(default_factory=list)
    language: str = ""  # detected source language
    audio: np.ndarray | None = None
    sample_rate: int = 0
    sentence: int = 0  # audio: index of the spoken sentence
    tts_failed: bool = False
    error: str = ""


_FINAL_FIELDS = ("utterance_id", "transcript", "start", "end", "language", "words")


class _Attempt:
    """One utterance's MT + TTS run and where its events go.

    A live attempt sends its events as they come. A speculative one (started on the ASR's
    early final) keeps them until :meth:`adopt` (the committed final is the same text: they
    are patched with the final's times and words and sent, and later ones go straight out),
    or for ever once :meth:`drop` ped: nothing of a dropped attempt is sent.
    """

    def __init__(self, key: tuple[int, str, str, str], base: dict[str, Any],
                 emit: Callable[[TranslateEvent], None], speculative: bool) -> None:
        self.key = key  # (utterance id, source text, source language, MT context)
        self.base = base  # the events' common fields; updated in place on adoption
        self._emit = emit
        self.held: list[TranslateEvent] | None = [] if speculative else None
        self.dropped = False
        self.task: asyncio.Task[bool] | None = None

    def out(self, event: TranslateEvent) -> None:
        if self.dropped:
            return
        if self.held is None:
            self._emit(event)
        else:
            self.held.append(event)

    def adopt(self, base: dict[str, Any]) -> None:
        """The committed final is this attempt's text: send what it held, then go live."""
        self.base.update(base)
        held, self.held = self.held or [], None
        for event in held:
            for name in _FINAL_FIELDS:
                setattr(event, name, base[name])
            self._emit(event)

    def drop(self) -> None:
        """Never send anything; cancel the work (MT generation, the sentence being spoken)."""
        self.dropped = True
        if self.task is not None:
            self.task.cancel()


def open_mt(settings: Settings, manager: Any) -> contextlib.AbstractContextManager[Mt]:
    """The configured MT engine, held while the block runs (``VOXGATE_TRANSLATION__MT``).

    ``llm``: :class:`~voxgate.engines.mt_llm.LlmMt` over the process's shared LLM (the same
    loaded model as cleanup and summaries); anything else: a catalogue model of kind ``mt``.
    """
    return _held_mt(settings, manager)


@contextlib.contextmanager
def _held_mt(settings: Settings, manager: Any) -> Iterator[Mt]:
    name = settings.translation.mt
    if name == "llm":
        from .engines.mt_llm import LlmMt
        from .postprocess import llm_model_id

        with manager.use("llm", llm_model_id(settings)) as llm:
            yield LlmMt(llm, prompt_cache=settings.translation.mt_prompt_cache)
    else:
        with manager.use("mt", name) as engine:
            yield engine


# kept: adopted by the committed final (its time saved); dropped: the final differed (text,
# language, context) or was no speech; withdrawn: the speaker went on before the endpoint
SPECULATIVE_OUTCOMES = ("kept", "dropped", "withdrawn")


class TranslationService:
    """Process-wide: the translation slots, the shared streaming and speech services.

    A server component (``name = "translation"``, started after ``streaming``) and a plain
    library object alike: ``await service.start()`` inside the event loop, then ``open``.
    """

    name = "translation"

    def __init__(self, settings: Settings, manager: Any | None = None,
                 streaming: StreamingService | None = None,
                 speech: SpeechService | None = None, mt: Mt | None = None) -> None:
        self.settings = settings
        self.manager = manager
        self.streaming = streaming
        self.speech = speech
        self.mt = mt  # an engine to use instead of VOXGATE_TRANSLATION__MT (embedding, tests)
        self.max_sessions = settings.translation.max_sessions
        self.sessions: dict[str, TranslateSession | None] = {}
        self.opened_total = 0
        # what became of the MT attempts started on an early final, over all sessions (the
        # server's /metrics shows them: how often speculative MT saves its time)
        self.speculative_outcomes: dict[str, int] = dict.fromkeys(SPECULATIVE_OUTCOMES, 0)

    def count_speculative(self, outcome: str) -> None:
        """A session's early MT attempt ended as ``outcome`` (one of
        :data:`SPECULATIVE_OUTCOMES`)."""
        self.speculative_outcomes[outcome] += 1

    async def start(self, state: Any = None) -> None:
        if state is not None:
            self.manager = self.manager or state.manager
            self.streaming = self.streaming or state.components.get("streaming")
            if self.speech is None:  # the app's one SpeechService (voices loaded once)
                self.speech = state.components.setdefault(
                    "speech-service", SpeechService(self.settings, state.manager))
        if self.manager is None or self.streaming is None:
            raise RuntimeError("TranslationService needs a ModelManager and a StreamingService")
        if self.speech is None:
            self.speech = SpeechService(self.settings, self.manager)

    async def stop(self, state: Any = None) -> None:
        for session in list(self.sessions.values()):
            if session is not None:
                await session.close()

    @property
    def active(self) -> int:
        return len(self.sessions)

    def check_capacity(self) -> None:
        """:class:`StreamLimitError` when no translation (or ASR stream) slot is free."""
        if self.active >= self.max_sessions:
            raise StreamLimitError(self.max_sessions)
        if self.streaming is not None:
            self.streaming.check_capacity()

    async def open(self, config: TranslateConfig) -> TranslateSession:
        """A session holding a slot, an ASR stream, the MT engine and the voices it needs.

        Raises :class:`StreamLimitError` when full, :class:`StreamConfigError` for a model or
        voice that cannot serve ``config``.
        """
        self.check_capacity()
        if self.streaming is None or self.speech is None:
            raise RuntimeError("TranslationService.start() was not called")
        session_id = uuid.uuid4().hex[:12]
        self.sessions[session_id] = None  # the slot is taken while models load
        stack = contextlib.AsyncExitStack()
        try:
            voices = await asyncio.to_thread(self._voices, config)
            mt = self.mt or await asyncio.to_thread(stack.enter_context,
                                                    open_mt(self.settings, self.manager))
            asr = await self.streaming.open(self._asr_config(config))
            stack.push_async_callback(asr.close)
        except ModelError as exc:
            await stack.aclose()
            self.sessions.pop(session_id, None)
            raise StreamConfigError("mt", str(exc)) from exc
        except BaseException:
            await stack.aclose()
            self.sessions.pop(session_id, None)
            raise
        session = TranslateSession(self, session_id, config, asr, mt, voices, stack)
        self.sessions[session_id] = session
        self.opened_total += 1
        return session

    def _asr_config(self, config: TranslateConfig) -> Any:
        t = self.settings.translation
        partial_model = self.settings.asr.partial_model
        if config.src != "en":  # the fast model is English-only: partials from the final model
            partial_model = self.settings.asr.model
        return self.streaming.config(
            language=None if config.src == "auto" else config.src,  # None: detect
            interim_results=config.partials and t.partials,
            word_timestamps=True, endpointing_ms=t.endpointing_ms, partial_model=partial_model)

    def _voices(self, config: TranslateConfig) -> dict[str, str]:
        """Target language -> voice id, each checked now (not at the first utterance)."""
        targets = [config.target_for(config.src)] if config.src != "auto" else list(LANGUAGES)
        if config.tgt:
            targets = [config.tgt]
        voices: dict[str, str] = {}
        for language in targets:
            wanted = self.settings.translation.voices.get(language, f"espeak:{language}")
            for candidate in (wanted, f"espeak:{language}"):
                try:
                    self.speech.resolve_voice(candidate)
                except ConfigError:
                    logger.warning("translation voice %s unavailable", candidate)
                    continue
                voices[language] = candidate
                break
            else:
                raise StreamConfigError("tgt", f"no voice speaks {language!r} on this server "
                                               "(VOXGATE_TRANSLATION__VOICES)")
        return voices

    def _release(self, session_id: str) -> None:
        self.sessions.pop(session_id, None)


class TranslateSession:
    """One live translation stream: feed audio, read :class:`TranslateEvent` s.

    Typical use (a door)::

        session = await service.open(TranslateConfig.of(mode="ru->en"))
        try:
            reader = asyncio.create_task(send_all(session.events()))
            for chunk in audio: await session.accept(chunk)
            await session.finish(); await reader
        finally:
            await session.close()
    """

    def __init__(self, service: TranslationService, session_id: str, config: TranslateConfig,
                 asr: AsrSession, mt: Mt, voices: dict[str, str],
                 resources: contextlib.AsyncExitStack) -> None:
        self.service, self.id, self.config = service, session_id, config
        self.settings = service.settings
        self._asr, self._mt, self._voices = asr, mt, voices
        self._speech = service.speech
        self._resources = resources
        limits = self.settings.translation
        self._no_audio_s = limits.no_audio_end_ms / 1000
        self._events: asyncio.Queue[TranslateEvent | BaseException | None] = asyncio.Queue()
        self._finals: asyncio.Queue[AsrEvent | None] = asyncio.Queue()
        self._room = asyncio.Semaphore(limits.max_pending_utterances)
        self._audio_arrived = asyncio.Event()
        self._unflushed = False  # audio arrived since the last flush
        self._context = ""
        self._pending = 0
        self.closed = False
        self._finishing = False
        self.utterances_done = 0
        self._speculation: _Attempt | None = None  # MT started on the ASR's early final
        self._dropping: set[asyncio.Task[bool]] = set()  # dropped attempts still stopping
        self.speculative_started = 0
        self.speculative_kept = 0  # adopted by the committed final
        self.speculative_dropped = 0  # withdrawn ones included
        if limits.speculative_mt:
            asr.on_speculative = self._on_speculative
        self._asr_reader = asyncio.create_task(self._read_asr(), name=f"tr-asr-{session_id}")
        self._worker = asyncio.create_task(self._work(), name=f"tr-work-{session_id}")
        self._watchdog = asyncio.create_task(self._no_audio_watch(),
                                             name=f"tr-idle-{session_id}")

    # ---- input ---------------------------------------------------------------------------
    @property
    def position(self) -> float:
        """Seconds of audio received."""
        return self._asr.position

    @property
    def pending(self) -> int:
        """Utterances decided but not yet delivered (``done``)."""
        return self._pending + self._asr.pending_finals

    async def accept(self, samples: np.ndarray) -> None:
        """Feed float32 mono 16 kHz samples; waits while too many utterances are pending."""
        self._check_open()
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        if samples.size == 0:
            return
        self._audio_arrived.set()
        self._unflushed = True
        await self._asr.accept(samples)

    async def flush(self) -> None:
        """End the open utterance now (the stream stays open)."""
        self._check_open()
        self._unflushed = False
        await self._asr.flush()

    async def finish(self) -> None:
        """No more audio: the open utterance is translated, then :meth:`events` ends."""
        if self._finishing or self.closed:
            return
        self._finishing = True
        self._watchdog.cancel()
        await self._asr.finish()

    async def close(self) -> None:
        """Abandon the stream (client gone): stop ASR, MT and TTS work, free the slot."""
        if self.closed:
            return
        self.closed = True
        self._drop_speculation(count=False)
        tasks = (self._watchdog, self._asr_reader, self._worker, *self._dropping)
        for task in tasks:
            task.cancel()
        # a cancellation absorbed below the worker (a stage that waits for its thread to end)
        # must not leave it waiting for the next utterance: the end mark stops it too
        self._finals.put_nowait(None)
        await asyncio.wait(tasks)
        for task in tasks:
            if not task.cancelled() and task.exception() is not None:
                logger.warning("translation %s: %s ended with %r", self.id, task.get_name(),
                               task.exception())
        self._events.put_nowait(None)
        await self._resources.aclose()  # ASR stream closed, MT engine released
        self.service._release(self.id)
        logger.debug("translation %s closed after %.1fs of audio", self.id, self.position)

    async def events(self) -> AsyncIterator[TranslateEvent]:
        """Events in order; ends after :meth:`finish` delivered the last utterance, or on
        close. An ASR failure is raised here (after the events produced before it)."""
        while True:
            item = await self._events.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def _check_open(self) -> None:
        if self.closed:
            raise EngineError("translation stream is closed")
        if self._finishing:
            raise EngineError("translation stream already ended")

    # ---- stages --------------------------------------------------------------------------
    async def _no_audio_watch(self) -> None:
        """The seed's rule: no audio at all for ``no_audio_end_ms`` ends the utterance."""
        while True:
            self._audio_arrived.clear()
            try:
                await asyncio.wait_for(self._audio_arrived.wait(), self._no_audio_s)
            except TimeoutError:
                if self._unflushed and not self.closed and not self._finishing:
                    logger.debug("translation %s: no audio for %.0f ms, utterance ends", self.id,
                                 self._no_audio_s * 1000)
                    self._unflushed = False
                    await self._asr.flush()
                await self._audio_arrived.wait()

    async def _read_asr(self) -> None:
        """ASR events -> partial events now, finals to the worker (in order); at the end of
        the ASR stream, waits for the worker, then ends the event stream (or raises the ASR's
        error there, after every utterance before it was delivered)."""
        error: BaseException | None = None
        try:
            async for event in self._asr.events():
                if event.kind == "partial":
                    self._emit(TranslateEvent(
                        "partial", event.utterance_id, src=self.config.src, text=event.text,
                        transcript=event.text, start=event.start, end=event.end))
                elif event.kind == "final":
                    await self._room.acquire()  # backpressure: accept() waits in the ASR
                    self._pending += 1
                    self._finals.put_nowait(event)
        except EngineError as exc:
            error = exc
        self._finals.put_nowait(None)
        await self._worker
        if not self.closed:
            self._events.put_nowait(error)

    async def _work(self) -> None:
        while not self.closed and (final := await self._finals.get()) is not None:
            try:
                await self._utterance(final)
            finally:
                self._pending -= 1
                self._room.release()
            self.utterances_done += 1

    # ---- speculative MT ------------------------------------------------------------------
    def _on_speculative(self, utterance_id: int, result: AsrResult | None) -> None:
        """The ASR's hook: an early final (start MT + TTS on it, held back) or its withdrawal."""
        spec = self._speculation
        if result is None:
            if spec is not None and spec.key[0] == utterance_id:
                self._drop_speculation(outcome="withdrawn")
            return
        if spec is not None:
            self._drop_speculation()  # a newer early text of the utterance replaces it
        if self.closed or self._finishing or self._pending or self._asr.pending_finals:
            return  # an earlier utterance is still translated: its MT and context come first
        text = " ".join(result.text.split())
        src = self.config.src if self.config.src != "auto" else result.language
        if not text or src not in LANGUAGES:
            return
        base: dict[str, Any] = {"utterance_id": utterance_id, "transcript": text,
                                "start": 0.0, "end": 0.0, "language": result.language,
                                "words": []}
        attempt = _Attempt((utterance_id, text, src, self._context), base, self._emit,
                           speculative=True)
        attempt.task = asyncio.create_task(
            self._attempt(attempt, text, src, self.config.target_for(src)),
            name=f"tr-spec-{self.id}")
        attempt.task.add_done_callback(_retrieve)
        self._speculation = attempt
        self.speculative_started += 1
        logger.debug("translation %s utterance %d: MT started on the early final",
                     self.id, utterance_id)

    def _drop_speculation(self, count: bool = True, outcome: str = "dropped") -> None:
        """Drop the early attempt; ``count``: it ended as ``outcome`` (not on close)."""
        spec, self._speculation = self._speculation, None
        if spec is None:
            return
        spec.drop()
        if count:
            self.speculative_dropped += 1
            self.service.count_speculative(outcome)
        if spec.task is not None and not spec.task.done():
            self._dropping.add(spec.task)
            spec.task.add_done_callback(self._dropping.discard)

    def _take_speculation(self, key: tuple[int, str, str, str]) -> _Attempt | None:
        """The early attempt when it translated exactly this final (same text and language,
        and the same previous utterance as context); else it is dropped."""
        spec = self._speculation
        if spec is not None and spec.key == key:
            self._speculation = None
            return spec
        self._drop_speculation()
        return None

    # ---- one utterance ---------------------------------------------------------------------
    async def _utterance(self, final: AsrEvent) -> None:
        text = " ".join(final.text.split())
        if not text:
            self._drop_speculation()
            return  # the endpointer heard something that was no speech (noise, a cough)
        src = self.config.src if self.config.src != "auto" else final.language
        base: dict[str, Any] = {"utterance_id": final.utterance_id, "transcript": text,
                                "start": final.start, "end": final.end,
                                "language": final.language, "words": final.words}
        if src not in LANGUAGES:
            self._drop_speculation()
            self._emit(TranslateEvent("transcript", src=src, text=text, **base))
            self._emit(TranslateEvent(
                "unsupported_language", src=src,
                error=f"speech in {src or 'an unknown language'!r} is not translated: this "
                      f"stream translates {' and '.join(LANGUAGES)}", **base))
            return
        tgt = self.config.target_for(src)
        self._emit(TranslateEvent("transcript", src=src, tgt=tgt, text=text, **base))
        attempt = self._take_speculation((final.utterance_id, text, src, self._context))
        if attempt is not None and attempt.task is not None:
            self.speculative_kept += 1
            self.service.count_speculative("kept")
            attempt.adopt(base)
            try:
                translated = await attempt.task
            finally:
                if not attempt.task.done():  # the worker was cancelled (client gone)
                    attempt.task.cancel()
                    await asyncio.wait([attempt.task])
        else:
            attempt = _Attempt((final.utterance_id, text, src, self._context), base,
                               self._emit, speculative=False)
            translated = await self._attempt(attempt, text, src, tgt)
        if translated:
            self._context = text[-self.settings.translation.max_context_chars:]

    async def _attempt(self, attempt: _Attempt, text: str, src: str, tgt: str) -> bool:
        """MT then TTS of ``text``, events through ``attempt.out``; True when translated."""
        if self._dropping:  # a dropped attempt still stopping holds the MT engine
            await asyncio.wait(set(self._dropping))
        base, out = attempt.base, attempt.out
        if hasattr(self._mt, "translate_stream"):
            return await self._utterance_streamed(text, src, tgt, base, out)
        try:
            translation = await self._translate(text, src, tgt)
        except (EngineError, ConfigError, TimeoutError) as exc:
            message = str(exc) or f"translation took longer than " \
                                  f"{self.settings.translation.mt_timeout_s:g} s"
            logger.warning("translation %s utterance %d: MT failed: %s", self.id,
                           base["utterance_id"], message)
            out(TranslateEvent("translation", src=src, tgt=tgt, error=message, **base))
            out(TranslateEvent("done", src=src, tgt=tgt, error=message, **base))
            return False
        out(TranslateEvent("translation", src=src, tgt=tgt, text=translation, **base))
        audio, rate, failure = await self._speak(translation, tgt, base, out)
        out(TranslateEvent("done", src=src, tgt=tgt, text=translation, audio=audio,
                           sample_rate=rate, tts_failed=failure is not None, error="", **base))
        return True

    async def _utterance_streamed(self, text: str, src: str, tgt: str, base: dict[str, Any],
                                  out: Callable[[TranslateEvent], None]) -> bool:
        """MT and TTS overlapped: each piece the MT engine hands on (a checked sentence, or
        the head of a long one) is spoken at once; the ``translation`` event follows once the
        whole text is known. A failing TTS never stops the MT (the text still arrives); a
        failing MT keeps what was already spoken and says why in ``error``. True when the
        whole text was translated."""
        sentences: list[str] = []
        units: asyncio.Queue[str | None] = asyncio.Queue()
        options = MtOptions(context=self._context, glossary=self.config.glossary,
                            dnt=self.config.dnt)

        translate_stream = self._mt.translate_stream  # type: ignore[attr-defined]

        async def produce() -> None:
            try:
                async with asyncio.timeout(self.settings.translation.mt_timeout_s):
                    async with contextlib.aclosing(translate_stream(
                            text, src, tgt, options=options)) as pieces:
                        async for piece in pieces:
                            sentences.extend([""] * (piece.sentence + 1 - len(sentences)))
                            before = "" if piece.restart else sentences[piece.sentence]
                            sentences[piece.sentence] = before + piece.text
                            units.put_nowait(piece.text)
            finally:
                units.put_nowait(None)

        async def spoken_units() -> AsyncIterator[str]:
            while (unit := await units.get()) is not None:
                yield unit

        producer = asyncio.create_task(produce(), name=f"tr-mt-{self.id}")
        try:
            audio, rate, failure = await self._speak_units(spoken_units(), tgt, base, out)
            await asyncio.wait([producer])
        finally:
            if not producer.done():  # cancelled: the generation stops before the slot is free
                producer.cancel()
                await asyncio.wait([producer])
        translation = " ".join(" ".join(t.split()) for t in sentences if t.strip())
        error = ""
        exc = producer.exception() if not producer.cancelled() else None
        if isinstance(exc, (EngineError, ConfigError, TimeoutError)):
            error = str(exc) or f"translation took longer than " \
                                f"{self.settings.translation.mt_timeout_s:g} s"
            logger.warning("translation %s utterance %d: MT failed: %s", self.id,
                           base["utterance_id"], error)
            failure = None if audio is None else failure  # said so far: not a TTS failure
        elif exc is not None:
            raise exc
        if failure is not None and not error:
            logger.warning("translation %s utterance %d: TTS failed: %s", self.id,
                           base["utterance_id"], failure)
        out(TranslateEvent("translation", src=src, tgt=tgt, text=translation, error=error,
                           **base))
        out(TranslateEvent("done", src=src, tgt=tgt, text=translation, audio=audio,
                           sample_rate=rate, tts_failed=failure is not None and not error,
                           error=error, **base))
        return not error

    async def _translate(self, text: str, src: str, tgt: str) -> str:
        options = MtOptions(context=self._context, glossary=self.config.glossary,
                            dnt=self.config.dnt)
        return await asyncio.wait_for(self._mt.translate(text, src, tgt, options=options),
                                      self.settings.translation.mt_timeout_s)

    async def _speak(self, text: str, language: str, base: dict[str, Any],
                     out: Callable[[TranslateEvent], None]
                     ) -> tuple[np.ndarray | None, int, str | None]:
        """Speak ``text`` sentence by sentence (an ``audio`` event each); the joined audio,
        or the reason it could not be spoken (the text has already been delivered)."""
        voice = self._voices.get(language, f"espeak:{language}")
        try:
            request = self._speech.prepare(text, voice, max_chars=None)
        except (TextError, ConfigError) as exc:
            logger.warning("translation %s utterance %d: TTS failed: %s", self.id,
                           base["utterance_id"], exc)
            return None, 0, str(exc)
        return await self._speak_stream(self._speech.astream(request), base, out)

    async def _speak_units(self, units: AsyncIterator[str], language: str,
                           base: dict[str, Any], out: Callable[[TranslateEvent], None]
                           ) -> tuple[np.ndarray | None, int, str | None]:
        """:meth:`_speak` for text arriving in speakable units (a streamed translation)."""
        voice = self._voices.get(language, f"espeak:{language}")
        try:
            stream = self._speech.astream_units(units, voice)
        except ConfigError as exc:
            return None, 0, str(exc)
        return await self._speak_stream(stream, base, out, log=False)  # the caller logs

    async def _speak_stream(self, stream: AsyncIterator[Any], base: dict[str, Any],
                            out: Callable[[TranslateEvent], None], log: bool = True
                            ) -> tuple[np.ndarray | None, int, str | None]:
        chunks = []
        try:
            async with contextlib.aclosing(stream) as stream:
                async for chunk in stream:
                    out(TranslateEvent("audio", text=chunk.text, audio=chunk.audio,
                                       sample_rate=chunk.sample_rate, sentence=len(chunks),
                                       **base))
                    chunks.append(chunk)
            audio, rate = join_chunks(chunks)
            return audio, rate, None
        except (TextError, ConfigError, ModelError, EngineError, OSError) as exc:
            if log:
                logger.warning("translation %s utterance %d: TTS failed: %s", self.id,
                               base["utterance_id"], exc)
            return None, 0, str(exc)

    def _emit(self, event: TranslateEvent) -> None:
        if not self.closed:
            self._events.put_nowait(event)


def _retrieve(task: asyncio.Task[Any]) -> None:
    """Done callback of a speculative attempt: its failure is reported where it is awaited
    (adopted) or was not wanted (dropped); never as 'exception was never retrieved'."""
    if not task.cancelled():
        task.exception()

"""Speculative MT in TranslateSession: MT and TTS start on the ASR's early final and their
events are held until the committed final adopts them (same text) or dropped (different text,
speech resumed, client gone). Orchestration with a scripted ASR session, fake MT and fake TTS
(deterministic, no models: the order and cancellation cases), plus one real run: real ASR
and voices on real Russian speech, fed in real time, where the early final is kept."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any, Self

import numpy as np
import pytest
from translation_support import russian_speech, silence, start_services

from voxgate.engines.base import AsrResult, MtOptions
from voxgate.engines.mt_llm import MtPiece
from voxgate.errors import EngineError
from voxgate.speech import SpeechService
from voxgate.translation import TranslateConfig, TranslateEvent, TranslationService
from voxgate.types import AsrEvent, Segment, TtsChunk, Word


class ScriptedAsr:
    """An AsrSession the test drives: early finals (through ``on_speculative``, as the real
    session calls it), their withdrawal, and committed finals."""

    def __init__(self) -> None:
        self.on_speculative: Any = None
        self.position = 0.0
        self.pending_finals = 0
        self.closed = False
        self._events: asyncio.Queue[AsrEvent | None] = asyncio.Queue()

    async def accept(self, samples: np.ndarray) -> None:
        return None

    async def flush(self) -> None:
        return None

    async def finish(self) -> None:
        self._events.put_nowait(None)

    async def close(self) -> None:
        self.closed = True
        self._events.put_nowait(None)

    async def events(self) -> AsyncIterator[AsrEvent]:
        while (event := await self._events.get()) is not None:
            yield event

    def speculate(self, utterance_id: int, text: str, language: str = "ru") -> None:
        self.on_speculative(utterance_id, AsrResult([Segment(0, 0.0, 1.0, text)], language))

    def withdraw(self, utterance_id: int) -> None:
        self.on_speculative(utterance_id, None)

    def final(self, utterance_id: int, text: str, language: str = "ru") -> None:
        self._events.put_nowait(AsrEvent(
            "final", utterance_id, 0.5 + utterance_id, 2.0 + utterance_id, text=text,
            words=[Word(0.5 + utterance_id, 2.0 + utterance_id, text)], language=language))


class ScriptedStreaming:
    """The StreamingService the translation service opens its ASR stream from."""

    def __init__(self) -> None:
        self.asr = ScriptedAsr()

    def check_capacity(self) -> None:
        return None

    def config(self, **overrides: Any) -> dict[str, Any]:
        return overrides

    async def open(self, config: Any) -> ScriptedAsr:
        return self.asr


class GatedMt:
    """Translates ``text`` to "<text> one. <text> two."; waits for ``release`` before it
    answers (so a test can act while a translation is under way). Records calls (text and
    context) and cancellations. The plain ``translate`` API only."""

    name = "gated"

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []  # (text, context)
        self.cancelled: list[str] = []
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.changed = asyncio.Event()  # a call or a cancellation was recorded

    async def _gate(self, text: str) -> None:
        try:
            await asyncio.wait_for(self.release.wait(), 30)
        except asyncio.CancelledError:
            self.cancelled.append(text)
            self.changed.set()
            raise

    def _call(self, text: str, options: MtOptions | None) -> None:
        self.calls.append((text, options.context if options else ""))
        self.started.set()
        self.changed.set()

    async def until(self, condition: Any) -> None:
        """Until ``condition()`` holds (checked at each recorded call or cancellation)."""
        while not condition():
            self.changed.clear()
            await self.changed.wait()

    async def translate(self, text: str, source: str, target: str, *,
                        options: MtOptions | None = None) -> str:
        self._call(text, options)
        await self._gate(text)
        return f"{text} one. {text} two."


class GatedStreamMt(GatedMt):
    """:class:`GatedMt` streamed: "<text> one." at once, "<text> two." after ``release``."""

    async def translate_stream(self, text: str, source: str, target: str, *,
                               options: MtOptions | None = None) -> AsyncIterator[MtPiece]:
        self._call(text, options)
        yield MtPiece(f"{text} one.", 0, complete=True)
        await self._gate(text)
        yield MtPiece(f"{text} two.", 1, complete=True)


class FakeSpeech(SpeechService):
    """Validation of a real SpeechService is not needed here: every voice exists, each unit
    is 'spoken' as 10 ms of silence at once; records what it spoke."""

    def __init__(self) -> None:
        self.spoken: list[str] = []
        self.first_spoken = asyncio.Event()

    def resolve_voice(self, voice: str | None = None) -> Any:
        return voice

    def prepare(self, text: object, voice: str | None = None, speed: float = 1.0, *,
                max_chars: int | None = None) -> Any:
        return [s.strip() + "." for s in str(text).split(".") if s.strip()]

    def astream(self, request: Any) -> AsyncIterator[TtsChunk]:
        async def units() -> AsyncIterator[str]:
            for sentence in request:
                yield sentence

        return self.astream_units(units())

    def astream_units(self, units: AsyncIterable[str], voice: str | None = None,
                      speed: float = 1.0) -> AsyncIterator[TtsChunk]:
        async def speak() -> AsyncIterator[TtsChunk]:
            async for unit in units:
                self.spoken.append(unit)
                self.first_spoken.set()
                yield TtsChunk(np.zeros(160, np.float32), 16_000, unit)

        return speak()


class Harness:
    """A TranslateSession over the scripted ASR; ``events`` collects what it sends."""

    def __init__(self, settings, mt: GatedMt, mode: str = "ru->en") -> None:
        self.settings, self.mt, self.mode = settings, mt, mode
        self.streaming = ScriptedStreaming()
        self.asr = self.streaming.asr
        self.speech = FakeSpeech()
        self.events: list[TranslateEvent] = []
        self._arrived = asyncio.Event()

    async def __aenter__(self) -> Self:
        self.service = TranslationService(self.settings, object(), self.streaming,  # type: ignore[arg-type]
                                          self.speech, mt=self.mt)
        await self.service.start()
        self.session = await self.service.open(TranslateConfig.of(mode=self.mode,
                                                                  partials=False))
        self.reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        async for event in self.session.events():
            self.events.append(event)
            self._arrived.set()

    async def done(self, count: int) -> None:
        """Until ``count`` utterances were delivered."""
        while sum(e.kind == "done" for e in self.events) < count:
            self._arrived.clear()
            await self._arrived.wait()

    async def __aexit__(self, *exc: object) -> None:
        await self.session.close()
        self.reader.cancel()
        await asyncio.gather(self.reader, return_exceptions=True)


def _run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 30))


@pytest.mark.parametrize("stream", [True, False], ids=["streamed-mt", "plain-mt"])
def test_early_final_is_translated_held_back_and_kept(settings, stream: bool) -> None:
    mt = GatedStreamMt() if stream else GatedMt()

    async def scenario() -> Harness:
        async with Harness(settings, mt) as h:
            h.asr.speculate(0, "Привет мир")
            await mt.started.wait()
            if stream:
                await h.speech.first_spoken.wait()  # the first piece is spoken already ...
            await asyncio.sleep(0.05)
            assert h.events == []  # ... and nothing is sent before the endpoint commits
            h.asr.final(0, "Привет  мир")  # the same text (spacing aside)
            mt.release.set()
            await h.done(1)
        return h

    h = _run(scenario())
    assert mt.calls == [("Привет мир", "")]  # translated once: the early attempt was kept
    assert h.session.speculative_kept == 1 and h.session.speculative_dropped == 0
    assert h.service.speculative_outcomes == {"kept": 1, "dropped": 0, "withdrawn": 0}
    kinds = [e.kind for e in h.events]
    if stream:
        assert kinds == ["transcript", "audio", "audio", "translation", "done"], kinds
    else:
        assert kinds == ["transcript", "translation", "audio", "audio", "done"], kinds
    for event in h.events:  # the held events carry the committed final's times and words
        assert (event.utterance_id, event.start, event.end) == (0, 0.5, 2.0)
        assert event.transcript == "Привет мир" and event.words[0].word == "Привет  мир"
    assert [e.text for e in h.events if e.kind == "audio"] == ["Привет мир one.",
                                                               "Привет мир two."]
    assert h.events[-1].text == "Привет мир one. Привет мир two."
    assert h.service.active == 0


def test_a_different_final_drops_the_early_attempt_and_translates_anew(settings) -> None:
    mt = GatedStreamMt()

    async def scenario() -> Harness:
        async with Harness(settings, mt) as h:
            h.asr.speculate(0, "Привет")
            await h.speech.first_spoken.wait()  # the early attempt has spoken its first piece
            h.asr.final(0, "Привет мир")  # the final heard more
            await mt.until(lambda: len(mt.calls) == 2)
            mt.release.set()
            await h.done(1)
        return h

    h = _run(scenario())
    assert [c[0] for c in mt.calls] == ["Привет", "Привет мир"]
    assert mt.cancelled == ["Привет"]  # the early generation was stopped
    assert h.session.speculative_dropped == 1 and h.session.speculative_kept == 0
    assert h.service.speculative_outcomes == {"kept": 0, "dropped": 1, "withdrawn": 0}
    sent = [e.text for e in h.events if e.kind in ("audio", "translation", "done")]
    assert sent == ["Привет мир one.", "Привет мир two.", "Привет мир one. Привет мир two.",
                    "Привет мир one. Привет мир two."]  # nothing of the dropped attempt
    assert h.speech.spoken[0] == "Привет one."  # it was spoken, never sent


def test_speech_resuming_drops_the_early_attempt_at_once(settings) -> None:
    mt = GatedStreamMt()

    async def scenario() -> Harness:
        async with Harness(settings, mt) as h:
            h.asr.speculate(0, "Привет")
            await mt.started.wait()
            h.asr.withdraw(0)  # the speaker goes on: no final yet
            await mt.until(lambda: mt.cancelled)
            h.asr.speculate(0, "Привет мир")  # the next pause's early final
            h.asr.final(0, "Привет мир")
            mt.release.set()
            await h.done(1)
        return h

    h = _run(scenario())
    assert mt.cancelled == ["Привет"] and [c[0] for c in mt.calls] == ["Привет", "Привет мир"]
    assert h.session.speculative_started == 2 and h.session.speculative_kept == 1
    assert h.session.speculative_dropped == 1
    assert h.service.speculative_outcomes == {"kept": 1, "dropped": 0, "withdrawn": 1}
    assert all(e.transcript == "Привет мир" for e in h.events)
    assert "Привет one." not in [e.text for e in h.events]


def test_no_early_attempt_while_an_earlier_utterance_is_translated(settings) -> None:
    """Utterances stay in order and each one's context is the one before: an early final
    arriving while the previous utterance is still translated waits for its committed final."""
    mt = GatedStreamMt()

    async def scenario() -> Harness:
        async with Harness(settings, mt) as h:
            h.asr.final(0, "Один")
            await mt.started.wait()
            h.asr.speculate(1, "Два")  # utterance 0 is still being translated
            assert h.session.speculative_started == 0
            h.asr.final(1, "Два")
            mt.release.set()
            await h.done(2)
        return h

    h = _run(scenario())
    assert mt.calls == [("Один", ""), ("Два", "Один")]
    assert [e.utterance_id for e in h.events if e.kind == "done"] == [0, 1]


def test_an_early_attempt_overtaken_by_an_earlier_final_is_not_kept(settings) -> None:
    """The early attempt of utterance 1 started while the final of 0 was still on its way
    (its context would be wrong): it is dropped, and 1 is translated after 0, on 0's text."""
    mt = GatedStreamMt()
    mt.release.set()

    async def scenario() -> Harness:
        async with Harness(settings, mt) as h:
            h.asr.speculate(1, "Два")  # (as if 0's final were not yet read)
            h.asr.final(0, "Один")
            h.asr.final(1, "Два")
            await h.done(2)
        return h

    h = _run(scenario())
    assert [c for c in mt.calls if c[0] == "Два"][-1] == ("Два", "Один")
    assert h.session.speculative_kept == 0
    assert [e.text for e in h.events if e.kind == "done"] == ["Один one. Один two.",
                                                              "Два one. Два two."]


def test_client_gone_during_an_early_attempt_cancels_it_and_sends_nothing(settings) -> None:
    mt = GatedStreamMt()

    async def scenario() -> Harness:
        async with Harness(settings, mt) as h:
            h.asr.speculate(0, "Привет")
            await mt.started.wait()
            await h.session.close()
        return h

    h = _run(scenario())
    assert mt.cancelled == ["Привет"] and h.events == []
    assert h.service.active == 0 and h.asr.closed
    # the client left: the attempt had no outcome, and none is counted
    assert h.service.speculative_outcomes == {"kept": 0, "dropped": 0, "withdrawn": 0}


def test_speculative_outcomes_are_in_the_servers_metrics(settings) -> None:
    """The server's translation component exports the service's counts on /metrics, one
    series per outcome (zero ones included, so a dashboard sees the series from the start)."""
    from prometheus_client import generate_latest

    from voxgate.server.metrics import metrics_of
    from voxgate.server.state import AppState
    from voxgate.server.translation_state import TranslationComponent

    mt = GatedStreamMt()
    mt.release.set()

    async def scenario() -> tuple[AppState, TranslationComponent]:
        state = AppState(settings=settings, manager=object())  # type: ignore[arg-type]
        component = TranslationComponent(settings, object(), ScriptedStreaming(),  # type: ignore[arg-type]
                                         FakeSpeech(), mt=mt)
        await component.start(state)
        session = await component.open(TranslateConfig.of(mode="ru->en", partials=False))
        asr = component.streaming.asr  # type: ignore[union-attr]
        asr.speculate(0, "Привет")
        asr.withdraw(0)
        asr.speculate(0, "Привет мир")
        asr.final(0, "Привет мир")
        async for event in session.events():
            if event.kind == "done":
                break
        await session.close()
        await component.stop(state)
        return state, component

    state, component = _run(scenario())
    scraped = generate_latest(metrics_of(state).registry).decode()
    assert 'voxgate_translation_speculative_total{outcome="kept"} 1.0' in scraped, scraped
    assert 'voxgate_translation_speculative_total{outcome="withdrawn"} 1.0' in scraped
    assert 'voxgate_translation_speculative_total{outcome="dropped"} 0.0' in scraped


def test_an_early_final_in_another_language_starts_nothing(settings) -> None:
    mt = GatedStreamMt()

    async def scenario() -> Harness:
        async with Harness(settings, mt, mode="auto") as h:
            h.asr.speculate(0, "Hola amigos", language="es")
            await asyncio.sleep(0.05)
        return h

    h = _run(scenario())
    assert mt.calls == [] and h.session.speculative_started == 0


def test_real_speech_early_final_is_kept(manager, settings) -> None:
    """Real ASR (speculative finals on) and real voices on Festival's Russian: after the
    speech, 300 ms of pause, then the pause goes on only in 10 ms drops every 0.5 s (audio
    keeps arriving, so the 900 ms no-audio rule stays quiet, and the 5 s endpoint is far in
    audio time however slow the machine): the early final starts the MT before the endpoint
    commits, nothing is sent while it is held, and the committed final keeps it."""
    slow_end = settings.model_copy(update={"translation": settings.translation.model_copy(
        update={"endpointing_ms": 5000})})
    mt = GatedStreamMt()
    mt.release.set()
    speech = russian_speech()

    async def scenario() -> tuple[list[TranslateEvent], Any, list[TranslateEvent]]:
        streaming, service = await start_services(slow_end, manager, mt)
        session = await service.open(TranslateConfig.of(mode="ru->en", partials=False))
        events: list[TranslateEvent] = []

        async def read() -> None:
            async for event in session.events():
                events.append(event)

        async def trickle() -> None:
            while True:
                await session.accept(silence(0.01))
                await asyncio.sleep(0.5)

        reader = asyncio.create_task(read())
        try:
            for i in range(0, speech.size, 1600):
                await session.accept(speech[i:i + 1600])
            await session.accept(silence(0.3))
            dripping = asyncio.create_task(trickle())
            try:
                await asyncio.wait_for(mt.started.wait(), 120)  # the early final's MT
            finally:
                dripping.cancel()
                await asyncio.gather(dripping, return_exceptions=True)
            held = [e for e in events if e.kind != "partial"]  # before the endpoint
            await session.accept(silence(5.5))  # the endpoint commits
            await session.finish()
            await asyncio.wait_for(reader, 120)
        finally:
            await session.close()
            await streaming.stop()
        return events, session, held

    events, session, held = asyncio.run(asyncio.wait_for(scenario(), 300))
    assert held == []  # MT under way, nothing sent before the committed final
    done = [e for e in events if e.kind == "done"]
    assert len(done) == 1 and "погода" in done[0].transcript, events
    counts = {name: getattr(session, name) for name in (
        "speculative_started", "speculative_kept", "speculative_dropped")}
    assert session.speculative_kept == 1, (counts, mt.calls)
    # translated once (an early final of a mid-sentence pause, dropped, may add a call)
    assert [c[0] for c in mt.calls].count(done[0].transcript) == 1, mt.calls
    assert done[0].text.startswith(done[0].transcript) and done[0].end > 1.0
    assert [e.kind for e in events if e.kind != "partial"] == [
        "transcript", "audio", "audio", "translation", "done"]


def test_speculative_mt_off_waits_for_the_committed_final(settings) -> None:
    off = settings.model_copy(update={"translation": settings.translation.model_copy(
        update={"speculative_mt": False})})
    mt = GatedStreamMt()
    mt.release.set()

    async def scenario() -> Harness:
        async with Harness(off, mt) as h:
            assert h.asr.on_speculative is None
            h.asr.final(0, "Привет")
            await h.done(1)
        return h

    h = _run(scenario())
    assert mt.calls == [("Привет", "")] and h.session.speculative_started == 0


def test_failed_early_mt_is_reported_only_when_kept(settings) -> None:
    """An early attempt whose MT failed and that the final keeps reports the failure as a
    live one would (transcript, then the error); no 'exception never retrieved'."""

    class FailingMt(GatedStreamMt):
        async def translate_stream(self, text: str, source: str, target: str, *,
                                   options: MtOptions | None = None) -> AsyncIterator[MtPiece]:
            self.calls.append((text, ""))
            raise EngineError("MT down (test)")
            yield  # an async generator

    mt = FailingMt()

    async def scenario() -> Harness:
        async with Harness(settings, mt) as h:
            h.asr.speculate(0, "Привет")
            await asyncio.sleep(0.05)
            assert h.events == []
            h.asr.final(0, "Привет")
            await h.done(1)
        return h

    h = _run(scenario())
    assert [e.kind for e in h.events] == ["transcript", "translation", "done"]
    assert "MT down" in h.events[-1].error and len(mt.calls) == 1

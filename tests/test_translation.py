"""TranslateSession (translation.py): real ASR + MT + TTS on Russian and English speech, and the
orchestration edge cases with deterministic fake MT / TTS engines (MT down, TTS down, client
gone, no audio for 900 ms, a language that is neither en nor ru)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import require_pack
from translation_support import (
    english_speech,
    russian_speech,
    silence,
    spanish_speech_16k,
    start_services,
    trim_silence,
)

from voxgate.engines.base import MtOptions
from voxgate.engines.mt_llm import MtPiece
from voxgate.errors import EngineError
from voxgate.speech import SpeechRequest, SpeechService
from voxgate.stream_config import StreamConfigError
from voxgate.streaming import StreamingService
from voxgate.translation import (
    TranslateConfig,
    TranslateEvent,
    TranslateSession,
    TranslationService,
)
from voxgate.types import TtsChunk

FEED = 1600  # 100 ms blocks


class FakeMt:
    """Deterministic translator: a fixed English or Russian sentence; records its calls."""

    name = "fake"

    def __init__(self, fail: bool = False, block: bool = False) -> None:
        self.calls: list[tuple[str, str, str, MtOptions | None]] = []
        self.fail, self.block = fail, block
        self.started = asyncio.Event() if block else None
        self.cancelled = False

    async def translate(self, text: str, source: str, target: str, *,
                        options: MtOptions | None = None) -> str:
        self.calls.append((text, source, target, options))
        if self.fail:
            raise EngineError("MT engine down (test)")
        if self.block:
            self.started.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled = True
                raise
        return "Hello, this is the translation." if target == "en" else "Привет, это перевод."


class FakeStreamMt:
    """A streaming translator whose pieces come one at a time: each waits until the session
    has spoken the one before it (``spoken`` is set by the test's event reader), so a session
    that held the speech back until the whole translation was known would never finish.
    ``fail_after``: raise after that many pieces; ``restart``: the second sentence is
    handed on as a head, then restarted (its rest was rejected)."""

    name = "fake-stream"

    def __init__(self, *, fail_after: int | None = None, restart: bool = False) -> None:
        self.spoken = asyncio.Event()
        self.fail_after, self.restart = fail_after, restart
        self.pieces: list[MtPiece] = [
            MtPiece("Hello, this is the first sentence.", 0, complete=True),
            MtPiece("And here, after a comma, ", 1),
            MtPiece("comes the second one.", 1, complete=True)]
        if restart:
            self.pieces[2] = MtPiece("Here comes the second one.", 1, complete=True,
                                     restart=True)
        self.waited = 0

    async def translate(self, text: str, source: str, target: str, *,
                        options: MtOptions | None = None) -> str:
        raise AssertionError("a streaming engine is asked for a stream")

    async def translate_stream(self, text: str, source: str, target: str, *,
                               options: MtOptions | None = None) -> AsyncIterator[MtPiece]:
        for n, piece in enumerate(self.pieces):
            if n == self.fail_after:
                raise EngineError("MT engine failed mid-way (test)")
            if n:
                await asyncio.wait_for(self.spoken.wait(), 120)
                self.waited += 1
                self.spoken.clear()
            yield piece


class BrokenSpeech(SpeechService):
    """Real voices and validation; synthesis itself fails (a crashed TTS engine)."""

    def astream(self, request: SpeechRequest) -> AsyncIterator[TtsChunk]:
        async def fail() -> AsyncIterator[TtsChunk]:
            raise EngineError("TTS engine down (test)")
            yield  # an async generator

        return fail()


async def _run(manager, settings, config: TranslateConfig, parts: list[np.ndarray], *,
               mt=None, speech: SpeechService | None = None, finish: bool = True,
               after_block: Callable[[TranslateSession], None] | None = None,
               on_event: Callable[[TranslateEvent], None] | None = None,
               ) -> tuple[list[TranslateEvent], TranslationService, StreamingService]:
    streaming, service = await start_services(settings, manager, mt, speech)
    session = await service.open(config)
    events: list[TranslateEvent] = []

    async def read() -> None:
        async for event in session.events():
            events.append(event)
            if on_event is not None:
                on_event(event)

    reader = asyncio.create_task(read())
    try:
        for audio in parts:
            for i in range(0, audio.size, FEED):
                await session.accept(audio[i:i + FEED])
                if after_block is not None:
                    after_block(session)
        if finish:
            await session.finish()
            await asyncio.wait_for(reader, 300)
    finally:
        await session.close()
        await streaming.stop()
    return events, service, streaming


def _kinds(events: list[TranslateEvent], utterance: int) -> list[str]:
    return [e.kind for e in events if e.utterance_id == utterance and e.kind != "partial"]


def test_real_russian_then_english_in_auto_mode(manager, settings) -> None:
    """One stream, two utterances: each direction found by language detection, translated by
    the offline LLM and spoken by that language's voice; the first is the second's context."""
    require_pack(settings.llm.model, settings.cache_dir)
    ru, en = russian_speech(), english_speech()
    # a busy 2-core machine (other test runs) can take minutes per LLM call: no timeout here
    patient = settings.model_copy(update={"translation": settings.translation.model_copy(
        update={"mt_timeout_s": 600.0})})
    events, service, streaming = asyncio.run(_run(
        manager, patient, TranslateConfig.of(mode="auto", partials=False),
        [ru, silence(1.0), en, silence(1.0)]))
    done = [e for e in events if e.kind == "done"]
    assert [(d.src, d.tgt) for d in done] == [("ru", "en"), ("en", "ru")], events
    first, second = done
    assert "погода" in first.transcript and "парк" in first.transcript
    assert {"weather", "park"} <= set(first.text.lower().replace(",", " ").replace(".", " ")
                                      .split()), first.text
    assert "young man" in second.transcript.lower()  # "he was not an ill disposed young man"
    assert any("\u0400" <= ch <= "\u04ff" for ch in second.text), second.text
    for d in done:
        assert not d.tts_failed and not d.error
        assert d.audio is not None and d.audio.size > d.sample_rate  # over a second of speech
        kinds = _kinds(events, d.utterance_id)
        # streamed MT: speech may start before the whole translation is known
        assert kinds[0] == "transcript" and kinds[-2:] == ["translation", "done"], kinds
        assert "audio" in kinds
        spoken = " ".join(e.text for e in events
                          if e.kind == "audio" and e.utterance_id == d.utterance_id)
        # every word of the text was spoken once (the spacing of a clause cut may differ)
        assert "".join(spoken.split()) == "".join(d.text.split()), (spoken, d.text)
    assert done[0].sample_rate == 22050 and done[1].sample_rate == 16000  # Piper joe, Festival ru
    assert service.active == 0 and streaming.active == 0


def test_mt_down_still_delivers_the_transcript(manager, settings) -> None:
    mt = FakeMt(fail=True)
    events, _, _ = asyncio.run(_run(manager, settings,
                                    TranslateConfig.of(mode="ru->en", partials=False),
                                    [russian_speech(), silence(1.0)], mt=mt))
    kinds = _kinds(events, 0)
    assert kinds == ["transcript", "translation", "done"], events
    transcript, translation, done = [e for e in events if e.kind != "partial"]
    assert "погода" in transcript.text
    assert "MT engine down" in translation.error and translation.text == ""
    assert done.transcript == transcript.text and "MT engine down" in done.error
    assert done.audio is None


def test_tts_down_still_delivers_the_text(manager, settings) -> None:
    mt = FakeMt()
    events, _, _ = asyncio.run(_run(manager, settings,
                                    TranslateConfig.of(src="ru", partials=False),
                                    [russian_speech(), silence(1.0)], mt=mt,
                                    speech=BrokenSpeech(settings, manager)))
    done = [e for e in events if e.kind == "done"]
    assert len(done) == 1
    assert done[0].text == "Hello, this is the translation." and done[0].tts_failed
    assert done[0].audio is None and "погода" in done[0].transcript


def test_no_audio_for_900_ms_ends_the_utterance(manager, settings) -> None:
    """The client stops sending mid-speech (no silence, no flush): the seed's idle rule ends
    the utterance ~900 ms after the last audio."""
    mt = FakeMt()
    speech = trim_silence(russian_speech())

    async def scenario() -> tuple[float, list[TranslateEvent]]:
        streaming, service = await start_services(settings, manager, mt)
        session = await service.open(TranslateConfig.of(mode="ru->en", partials=False))
        events: list[TranslateEvent] = []
        try:
            for i in range(0, speech.size, FEED):
                await session.accept(speech[i:i + FEED])
            last_audio = time.monotonic()
            async for event in session.events():
                events.append(event)
                if event.kind == "transcript":
                    return time.monotonic() - last_audio, events
        finally:
            await session.close()
            await streaming.stop()
        raise AssertionError("the stream ended without a transcript")

    waited, events = asyncio.run(asyncio.wait_for(scenario(), 120))
    assert waited >= settings.translation.no_audio_end_ms / 1000 * 0.9
    assert "погода" in events[-1].text


def test_other_language_in_auto_mode_is_refused_clearly(manager, settings,
                                                        tmp_path: Path) -> None:
    mt = FakeMt()
    events, _, _ = asyncio.run(_run(manager, settings,
                                    TranslateConfig.of(mode="auto", partials=False),
                                    [spanish_speech_16k(tmp_path), silence(1.0)], mt=mt))
    refused = [e for e in events if e.kind == "unsupported_language"]
    assert refused and refused[0].src == "es", events
    assert "not translated" in refused[0].error and refused[0].transcript
    assert not mt.calls
    assert not [e for e in events if e.kind in ("translation", "done")]


def test_client_gone_cancels_the_work_and_frees_the_slot(manager, settings) -> None:
    mt = FakeMt(block=True)

    async def scenario() -> tuple[TranslationService, StreamingService]:
        streaming, service = await start_services(settings, manager, mt)
        session = await service.open(TranslateConfig.of(mode="ru->en", partials=False))
        audio = russian_speech()
        for i in range(0, audio.size, FEED):
            await session.accept(audio[i:i + FEED])
        await session.flush()
        await asyncio.wait_for(mt.started.wait(), 60)  # translation under way...
        assert service.active == 1 and streaming.active == 1
        await session.close()  # ... and the client goes
        with pytest.raises(EngineError, match="closed"):
            await session.accept(silence(0.1))
        events = [e async for e in session.events()]
        assert all(e.kind != "done" for e in events)
        await streaming.stop()
        return service, streaming

    service, streaming = asyncio.run(asyncio.wait_for(scenario(), 120))
    assert mt.cancelled
    assert service.active == 0 and streaming.active == 0


def test_previous_utterance_is_the_next_ones_context(manager, settings) -> None:
    mt = FakeMt()
    ru = russian_speech()
    asyncio.run(_run(manager, settings,
                     TranslateConfig.of(mode="ru->en", partials=False, dnt=("Москва",)),
                     [ru, silence(1.0), ru, silence(1.0)], mt=mt))
    assert len(mt.calls) == 2
    (first_text, _, _, first_options), (_, _, _, second_options) = mt.calls
    assert first_options.context == "" and second_options.context == first_text
    assert second_options.dnt == ("Москва",)


@pytest.mark.parametrize("kwargs, field", [
    ({"mode": "fr->en"}, "mode"),
    ({"src": "de"}, "src"),
    ({"src": "en", "tgt": "en"}, "tgt"),
    ({"tgt": "fr"}, "tgt"),
])
def test_bad_config_names_the_field(kwargs, field) -> None:
    with pytest.raises(StreamConfigError) as info:
        TranslateConfig.of(**kwargs)
    assert info.value.field == field


def test_mode_overrides_src_and_tgt() -> None:
    config = TranslateConfig.of(src="en", tgt="ru", mode="ru->en")
    assert (config.src, config.tgt) == ("ru", "en")
    auto = TranslateConfig.of(src="ru", mode="auto")
    assert auto.src == "auto" and auto.target_for("ru") == "en" and auto.target_for("en") == "ru"
    assert TranslateConfig.of(src="en").target_for("en") == "ru"


def test_monologue_without_pauses_is_cut_and_memory_stays_bounded(manager, settings,
                                                                   librivox) -> None:
    """Speech with no pause long enough to end an utterance: the ASR cuts it every
    ``max_utterance_s``, each piece is translated, and the stream holds at most one piece of
    audio at a time."""
    monologue = np.concatenate([trim_silence(c.audio[int(0.3 * 16_000):])
                                for c in librivox])  # ~18 s of read speech, clips joined
    short = settings.model_copy(update={"streaming": settings.streaming.model_copy(
        update={"max_utterance_s": 5.0})})
    mt = FakeMt()
    held: list[int] = []
    events, _, _ = asyncio.run(_run(
        manager, short, TranslateConfig.of(mode="en->ru", partials=False), [monologue], mt=mt,
        speech=BrokenSpeech(short, manager),
        after_block=lambda session: held.append(session._asr._buffer.size)))
    done = [e for e in events if e.kind == "done"]
    assert len(done) >= 3, [e.transcript for e in done]
    assert all(e.end - e.start <= 5.5 for e in done)
    assert max(held) <= 6 * 16_000  # one utterance (5 s) + padding, never the whole monologue
    assert len(mt.calls) == len(done)


def _stream_run(manager, settings, mt: FakeStreamMt) -> list[TranslateEvent]:
    def on_event(event: TranslateEvent) -> None:
        if event.kind == "audio":
            mt.spoken.set()

    events, service, streaming = asyncio.run(asyncio.wait_for(_run(
        manager, settings, TranslateConfig.of(mode="ru->en", partials=False),
        [russian_speech(), silence(1.0)], mt=mt, on_event=on_event), 300))
    assert service.active == 0 and streaming.active == 0
    return events


def test_streamed_mt_is_spoken_piece_by_piece_in_order(manager, settings) -> None:
    mt = FakeStreamMt()
    events = _stream_run(manager, settings, mt)
    assert mt.waited == 2  # each piece was asked for only after the one before was spoken
    kinds = _kinds(events, 0)
    assert kinds[0] == "transcript" and kinds[-2:] == ["translation", "done"], kinds
    audio = [e for e in events if e.kind == "audio"]
    assert [e.text for e in audio] == ["Hello, this is the first sentence.",
                                       "And here, after a comma,", "comes the second one."]
    assert [e.sentence for e in audio] == [0, 1, 2]
    done = events[-1]
    assert done.text == ("Hello, this is the first sentence. And here, after a comma, comes "
                         "the second one.")
    assert not done.error and not done.tts_failed
    assert done.audio.size == sum(e.audio.size for e in audio)


def test_a_restarted_sentence_keeps_only_its_new_text(manager, settings) -> None:
    events = _stream_run(manager, settings, FakeStreamMt(restart=True))
    done = events[-1]
    assert done.text == "Hello, this is the first sentence. Here comes the second one."
    # the head was spoken before its sentence was withdrawn: the audio says both, in order
    assert [e.text for e in events if e.kind == "audio"][-2:] == [
        "And here, after a comma,", "Here comes the second one."]


def test_mt_failing_mid_way_keeps_what_was_spoken_and_says_why(manager, settings) -> None:
    events = _stream_run(manager, settings, FakeStreamMt(fail_after=1))
    translation, done = [e for e in events if e.kind in ("translation", "done")]
    assert "failed mid-way" in translation.error and "failed mid-way" in done.error
    assert done.text == "Hello, this is the first sentence." and not done.tts_failed
    assert done.audio is not None and done.audio.size > 0


def test_the_translation_prompt_cache_setting_reaches_the_llm_translator(settings, manager):
    """VOXGATE_TRANSLATION__MT_PROMPT_CACHE=false: bit-exact translations whatever was asked
    before (no llama.cpp prompt cache); the default keeps the cache for speed."""
    from voxgate.translation import open_mt

    require_pack("qwen2.5-coder-1.5b-instruct-q4km", settings.cache_dir)
    exact = settings.model_copy(update={"translation": settings.translation.model_copy(
        update={"mt_prompt_cache": False})})
    with open_mt(settings, manager) as cached, open_mt(exact, manager) as uncached:
        assert cached._llm_kwargs.get("cache_prompt") is True
        assert "cache_prompt" not in uncached._llm_kwargs

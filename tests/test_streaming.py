"""Streaming core: endpointing, sessions on real speech, batching, dropping, limits, memory.

Real Whisper + Silero on LibriVox speech for the recognition path; deterministic fake engines
(in addition, never instead) for orchestration that must be exact: batch sizes, partial
dropping under load, long-utterance splits and constant memory over an hour of audio.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator

import numpy as np
import pytest
from conftest import wer

from voxgate.config import Settings, StreamingSettings
from voxgate.endpointing import Endpointer
from voxgate.engines.base import AsrCapabilities, AsrOptions, AsrResult
from voxgate.engines.manager import ModelManager
from voxgate.errors import AudioError, EngineError
from voxgate.streaming import (
    PcmInput,
    StreamConfigError,
    StreamingService,
    StreamLimitError,
    stability,
    stream_events,
)
from voxgate.types import Segment

SR = 16_000


# ---- pure parts ---------------------------------------------------------------------------
def _endpointer(**kw) -> Endpointer:
    return Endpointer(threshold=0.5, min_silence_samples=kw.get("silence", 4 * 512),
                      min_speech_samples=kw.get("speech", 3 * 512), frame_samples=512)


def _run(ep: Endpointer, probs: list[float]) -> list[tuple[str, int]]:
    return [(b.kind, b.sample) for p in probs for b in ep.push(p)]


def test_endpointer_start_after_min_speech_and_end_after_silence():
    ep = _endpointer()
    events = _run(ep, [0.1, 0.1, 0.9, 0.9, 0.9, 0.9, 0.1, 0.1, 0.1, 0.1, 0.1])
    assert events == [("start", 2 * 512), ("end", 6 * 512)]
    assert not ep.triggered


def test_endpointer_short_blip_is_cancelled_never_started():
    ep = _endpointer()
    assert _run(ep, [0.9, 0.1, 0.1, 0.1, 0.1, 0.1]) == [("cancel", 0)]


def test_endpointer_hysteresis_keeps_utterance_through_middling_frames():
    ep = _endpointer()
    # 0.4 is below the start threshold but above threshold - 0.15: not silence
    events = _run(ep, [0.9] * 3 + [0.4] * 10 + [0.9] + [0.0] * 4)
    assert events == [("start", 0), ("end", 14 * 512)]


def test_endpointer_force_end_announces_unconfirmed_burst():
    ep = _endpointer()
    _run(ep, [0.9])
    assert [(b.kind, b.sample) for b in ep.force_end(700)] == [("start", 0), ("end", 700)]
    assert ep.force_end(800) == []


def test_stability_counts_agreeing_prefix():
    assert stability("", "hello world") == 0.0
    assert stability("Hello world.", "hello world again") == pytest.approx(2 / 3, abs=1e-3)
    assert stability("he was", "she was") == 0.0
    assert stability("a b", "") == 0.0


def test_pcm_input_rejects_odd_lengths_and_bad_formats():
    pcm = PcmInput("pcm16", 16_000, 1)
    with pytest.raises(AudioError, match="multiples of 2 bytes"):
        pcm.convert(b"\x00\x01\x02")
    with pytest.raises(AudioError, match="multiples of 4 bytes"):
        PcmInput("pcm16", 16_000, 2).convert(b"\x00" * 6)
    with pytest.raises(StreamConfigError) as err:
        PcmInput("opus", 16_000, 1)  # compressed: not a sample encoding
    assert err.value.field == "encoding"
    with pytest.raises(AudioError, match="multiples of 2 bytes"):  # G.711 stereo: 2-byte frames
        PcmInput("mulaw", 8000, 2).convert(b"\x00" * 3)
    with pytest.raises(StreamConfigError) as err:
        PcmInput("pcm16", 100, 1)
    assert err.value.field == "sample_rate"
    with pytest.raises(StreamConfigError) as err:
        PcmInput("f32", 16_000, 0)
    assert err.value.field == "channels"


def test_pcm_input_resamples_48k_stereo_float_with_state():
    pcm = PcmInput("f32", 48_000, 2)
    tone = np.sin(2 * np.pi * 440 * np.arange(48_000) / 48_000).astype(np.float32)
    stereo = np.repeat(tone, 2).astype("<f4").tobytes()
    out = [pcm.convert(stereo[i:i + 9600]) for i in range(0, len(stereo), 9600)]
    out.append(pcm.flush())
    audio = np.concatenate(out)
    assert abs(audio.size - SR) <= 2
    assert 0.9 < np.abs(audio[1000:15000]).max() < 1.01  # amplitude kept, no clicks


def test_stream_config_names_the_bad_field(settings):
    for field, value in [("endpointing_ms", 5), ("vad_threshold", 2.0), ("language", "x"),
                         ("interim_results", "yes"), ("final_model", ""),
                         ("max_utterance_s", 100)]:
        with pytest.raises(StreamConfigError) as err:
            StreamingService(settings).config(**{field: value})
        assert err.value.field == field, (field, str(err.value))
    with pytest.raises(StreamConfigError) as err:
        StreamingService(settings).config(colour="blue")
    assert err.value.field == "colour"


# ---- real models on real speech -----------------------------------------------------------
async def _chunks(audio: np.ndarray, speed: float = 0.0, step: int = 1600
                  ) -> AsyncIterator[np.ndarray]:
    """100 ms chunks; ``speed`` > 0 paces them (1.0 = real time), 0 sends as fast as possible."""
    started = time.monotonic()
    for i in range(0, audio.size, step):
        yield audio[i:i + step]
        if speed:
            delay = started + (i + step) / SR / speed - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)


def _speech(librivox, indexes, gap_s: float = 1.0) -> tuple[np.ndarray, str]:
    parts, texts = [], []
    for i in indexes:
        parts += [librivox[i].audio, np.zeros(int(gap_s * SR), np.float32)]
        texts.append(librivox[i].text)
    return np.concatenate(parts), " ".join(texts)


@pytest.fixture()
async def service(settings, manager):
    svc = StreamingService(settings, manager)
    await svc.start()
    yield svc
    await svc.stop()


async def test_session_on_real_speech_events_in_order(service, librivox, manager):
    audio, reference = _speech(librivox, [0, 4])  # 7.1 s + 3.3 s of speech
    session = await service.open(service.config())
    events = [e async for e in stream_events(session, _chunks(audio, speed=2.0))]
    await session.close()
    finals = [e for e in events if e.kind == "final"]
    assert [f.utterance_id for f in finals] == [0, 1]
    assert wer(reference, " ".join(f.text for f in finals)) < 0.15
    for uid in (0, 1):
        kinds = [e.kind for e in events if e.utterance_id == uid]
        assert kinds[0] == "start_of_speech" and kinds[-2:] == ["end_of_speech", "final"]
        assert set(kinds[1:-2]) <= {"partial"}
    assert any(e.kind == "partial" and e.text for e in events), "no partial at 2x real time"
    # times are in the stream's time base: the second utterance starts after clip 1 + gap
    second = finals[1]
    assert 7.5 < second.start < second.end <= audio.size / SR
    assert second.words and all(second.start <= w.start <= w.end <= second.end + 0.01
                                for w in second.words)
    assert 0.3 < second.confidence <= 1.0
    partials = [e for e in events if e.kind == "partial"]
    assert all(0.0 <= p.stability <= 1.0 and p.lag >= 0 for p in partials)
    assert all(e.end <= audio.size / SR + 0.01 for e in events)
    assert service.active == 0


async def test_flush_forces_a_final_and_stream_continues(service, librivox):
    clip = librivox[0].audio  # 7.1 s, one sentence without long pauses
    session = await service.open(service.config(interim_results=False))
    seen: list = []

    async def read() -> None:
        async for event in session.events():
            seen.append(event)

    reader = asyncio.create_task(read())
    half = clip.size // 2
    await session.accept(clip[:half])
    await session.flush()
    await session.accept(clip[half:])
    await session.finish()
    await asyncio.wait_for(reader, 60)
    await session.close()
    finals = [e for e in seen if e.kind == "final"]
    assert len(finals) == 2, [e.text for e in finals]
    assert finals[0].end <= half / SR + 0.01 <= finals[1].end
    assert wer(librivox[0].text, " ".join(f.text for f in finals)) < 0.3


async def test_ten_times_real_time_loses_no_final(service, librivox):
    audio, reference = _speech(librivox, [1, 2, 4], gap_s=0.8)
    session = await service.open(service.config())
    events = [e async for e in stream_events(session, _chunks(audio, speed=10.0))]
    await session.close()
    finals = [e for e in events if e.kind == "final"]
    assert [f.utterance_id for f in finals] == [0, 1, 2]
    assert wer(reference, " ".join(f.text for f in finals)) < 0.15
    assert max(e.lag for e in events) > 0.3  # the client was told the server fell behind


async def test_finals_of_concurrent_streams_are_batched(service, librivox):
    before = len(service.scheduler.stats.batch_sizes)
    audio = librivox[4].audio

    async def one() -> list[str]:
        session = await service.open(service.config(interim_results=False))
        try:
            return [e.text async for e in stream_events(session, _chunks(audio))
                    if e.kind == "final"]
        finally:
            await session.close()

    results = await asyncio.gather(one(), one(), one())
    for texts in results:
        assert wer(librivox[4].text, " ".join(texts)) < 0.15
    sizes = service.scheduler.stats.batch_sizes[before:]
    assert sum(sizes) == 3 and max(sizes) >= 2, sizes  # three finals, fewer decode calls


async def test_stream_limit_and_release(settings, manager):
    limited = Settings(**{**settings.model_dump(), "max_streams": 1})
    svc = StreamingService(limited, manager)
    await svc.start()
    try:
        first = await svc.open(svc.config())
        with pytest.raises(StreamLimitError, match="all 1 live streams"):
            await svc.open(svc.config())
        refs = {e["model"]: e["refs"] for e in manager.loaded()}
        assert refs["whisper-base"] >= 1 and refs["silero-vad"] >= 1
        await first.close()
        assert svc.active == 0
        refs = {e["model"]: e["refs"] for e in manager.loaded()}
        assert refs["whisper-base"] == 0 and refs["whisper-tiny.en"] == 0
        second = await svc.open(svc.config())  # the slot is free again
        await second.close()
    finally:
        await svc.stop()


async def test_unknown_model_and_unsupported_language_name_the_field(service):
    with pytest.raises(StreamConfigError) as err:
        await service.open(service.config(final_model="whisper-nonexistent"))
    assert err.value.field == "final_model"
    with pytest.raises(StreamConfigError) as err:  # tiny.en cannot do German partials
        await service.open(service.config(language="de"))
    assert err.value.field == "language"
    assert service.active == 0


# ---- orchestration with deterministic fakes -------------------------------------------------
class FakeAsr:
    """Returns one word per 0.5 s of audio; records batch sizes; optional per-call delay."""

    name = "fake"
    capabilities = AsrCapabilities(languages=("en",))

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.batches: list[int] = []
        self.lock = threading.Lock()

    def transcribe_batch(self, chunks, options: AsrOptions) -> list[AsrResult]:
        with self.lock:
            self.batches.append(len(chunks))
        if self.delay_s:
            time.sleep(self.delay_s)
        out = []
        for chunk in chunks:
            n = max(1, int(chunk.size / SR / 0.5))
            text = " ".join(f"w{i}" for i in range(n))
            out.append(AsrResult([Segment(0, 0.0, chunk.size / SR, text, confidence=0.9)],
                                 "en", duration=chunk.size / SR))
        return out

    def transcribe(self, audio, options):
        return self.transcribe_batch([audio], options)[0]

    def detect_language(self, audio):
        return "en", 1.0


class FakeVad:
    """Speech wherever the signal is louder than 0.01 (exact, instant)."""

    name = "fake-vad"

    def stream(self):
        return FakeVadStream()


class FakeVadStream:
    frame_samples = 512

    def __init__(self) -> None:
        self.pending = np.zeros(0, np.float32)

    def accept(self, audio):
        data = np.concatenate([self.pending, audio])
        n = data.size // 512
        self.pending = data[n * 512:]
        frames = data[:n * 512].reshape(n, 512)
        return (np.abs(frames).max(axis=1) > 0.01).astype(np.float32)

    def reset(self):
        self.pending = np.zeros(0, np.float32)


def _fake_service(final: FakeAsr, partial: FakeAsr, **streaming) -> StreamingService:
    settings = Settings(_env_file=None, offline=True, max_streams=8,
                        streaming=StreamingSettings(**streaming))
    engines = {"final": final, "partial": partial, "silero-vad": FakeVad()}
    manager = ModelManager(settings, loader=lambda kind, model_id: (engines[model_id], None))
    return StreamingService(settings, manager)


def _tone(seconds: float) -> np.ndarray:
    return (0.1 * np.sin(np.arange(int(seconds * SR)) * 0.05)).astype(np.float32)


def _silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SR), np.float32)


async def test_scheduler_death_ends_every_stream_with_an_error():
    """A bug that kills the shared decode scheduler: the stream waiting for a final, an idle
    stream and the next client all get an EngineError; nobody hangs."""
    svc = _fake_service(FakeAsr(), FakeAsr())
    await svc.start()
    try:
        config = svc.config(final_model="final", partial_model="partial", interim_results=False)
        talking, idle = await svc.open(config), await svc.open(config)

        def bug() -> list:
            raise RuntimeError("scheduler bug")

        svc.scheduler._take_finals = bug
        audio = np.concatenate([_tone(1.0), _silence(1.0)])

        async def consume(events) -> None:
            async for _ in events:
                pass

        with pytest.raises(EngineError, match="live decoding stopped.*scheduler bug"):
            await asyncio.wait_for(consume(stream_events(talking, _chunks(audio))), 30)
        with pytest.raises(EngineError, match="live decoding stopped"):
            await asyncio.wait_for(consume(idle.events()), 30)
        with pytest.raises(EngineError, match="live decoding stopped"):
            await svc.open(config)
        for session in (talking, idle):
            await session.close()
        assert svc.active == 0
    finally:
        await svc.stop()


async def test_partial_model_is_not_loaded_without_interim_results():
    svc = _fake_service(FakeAsr(), FakeAsr())
    await svc.start()
    try:
        session = await svc.open(svc.config(final_model="final", partial_model="partial",
                                            interim_results=False))
        assert {e["model"] for e in svc.manager.loaded()} == {"final", "silero-vad"}
        await session.close()
        session = await svc.open(svc.config(final_model="final", partial_model="partial"))
        assert "partial" in {e["model"] for e in svc.manager.loaded()}
        await session.close()
    finally:
        await svc.stop()


def test_clients_beam_is_capped_by_the_server(settings):
    service = StreamingService(settings)
    assert service.config(final_beam_size=5).final_beam_size == 5
    for field in ("final_beam_size", "partial_beam_size"):
        with pytest.raises(StreamConfigError, match="VOXGATE_STREAMING__MAX_BEAM_SIZE") as caught:
            service.config(**{field: 6})
        assert caught.value.field == field


async def test_cross_session_batching_with_max_batch_and_wait():
    final, partial = FakeAsr(delay_s=0.05), FakeAsr()
    svc = _fake_service(final, partial, batch_max_size=3, batch_max_wait_ms=200)
    await svc.start()
    try:
        config = svc.config(final_model="final", partial_model="partial", interim_results=False)
        sessions = [await svc.open(config) for _ in range(5)]
        audio = np.concatenate([_tone(1.0), _silence(1.0)])

        async def run(session) -> list[str]:
            return [e.text async for e in stream_events(session, _chunks(audio))
                    if e.kind == "final"]

        results = await asyncio.gather(*(run(s) for s in sessions))
        for s in sessions:
            await s.close()
    finally:
        await svc.stop()
    assert all(r == ["w0 w1"] for r in results), results
    assert max(final.batches) == 3 and sum(final.batches) == 5  # capped at max batch


async def test_partials_are_dropped_before_finals_are_delayed():
    final, partial = FakeAsr(), FakeAsr(delay_s=0.3)
    svc = _fake_service(final, partial, partial_interval_ms=100)
    await svc.start()
    try:
        config = svc.config(final_model="final", partial_model="partial")
        session = await svc.open(config)
        audio = np.concatenate([_tone(3.0), _silence(0.8), _tone(1.0), _silence(0.8)])
        events = [e async for e in stream_events(session, _chunks(audio))]
        dropped = session.dropped_partials
        await session.close()
    finally:
        await svc.stop()
    finals = [e for e in events if e.kind == "final"]
    assert [f.utterance_id for f in finals] == [0, 1]
    assert dropped > 5, "a flood of partial requests must thin out, not queue up"
    assert svc.scheduler.stats.dropped_partials == dropped
    # no partial of an utterance after its end_of_speech
    for uid in (0, 1):
        kinds = [e.kind for e in events if e.utterance_id == uid]
        assert "partial" not in kinds[kinds.index("end_of_speech"):]


async def test_hour_long_speech_keeps_constant_memory_and_splits_utterances():
    final, partial = FakeAsr(), FakeAsr()
    svc = _fake_service(final, partial, max_utterance_s=10.0)
    await svc.start()
    try:
        config = svc.config(final_model="final", partial_model="partial", interim_results=False)
        session = await svc.open(config)
        finals: list = []

        async def read() -> None:
            async for event in session.events():
                if event.kind == "final":
                    finals.append(event)

        reader = asyncio.create_task(read())
        minute = np.concatenate([_tone(49.5), _silence(10.5)])
        peak = 0
        for _ in range(60):  # one hour of audio, mostly "speech"
            for i in range(0, minute.size, SR * 5):
                await session.accept(minute[i:i + SR * 5])
                peak = max(peak, session._buffer.size)
        await session.finish()
        await asyncio.wait_for(reader, 60)
        await session.close()
    finally:
        await svc.stop()
    assert peak <= (10.0 + 6.0) * SR  # one max-length utterance plus one input block
    assert len(finals) == 60 * 5  # 49.5 s of speech (+ padding) -> five <= 10 s finals a minute
    assert all(b.end - b.start <= 10.3 for b in finals)
    ids = [f.utterance_id for f in finals]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert abs(finals[-1].end - (59 * 60 + 49.5)) < 1.0  # times stay in the stream's time base


# ---- speculative finals and the short encoder window ------------------------------------------
async def _fake_run(audio: np.ndarray, **streaming):
    final, partial = FakeAsr(), FakeAsr()
    svc = _fake_service(final, partial, **streaming)
    await svc.start()
    try:
        session = await svc.open(svc.config(final_model="final", partial_model="partial",
                                             interim_results=False))
        events = [e async for e in stream_events(session, _chunks(audio))]
        counts = session.speculative_finals, session.speculative_discarded
        await session.close()
    finally:
        await svc.stop()
    return [e for e in events if e.kind == "final"], counts, final.batches


async def test_speculative_final_started_in_the_pause_is_the_final():
    finals, (started, discarded), batches = await _fake_run(
        np.concatenate([_tone(1.0), _silence(1.0)]))
    assert [f.text for f in finals] == ["w0 w1"]
    assert (started, discarded) == (1, 0)
    assert sum(batches) == 1, "the early decode is delivered; the endpoint adds no second one"


async def test_speculative_final_discarded_when_speech_resumes():
    # a 200 ms pause: long enough to start the early decode (100 ms), too short to end (300 ms)
    audio = np.concatenate([_tone(1.0), _silence(0.2), _tone(1.0), _silence(1.0)])
    finals, (started, discarded), _ = await _fake_run(audio)
    assert [f.utterance_id for f in finals] == [0], "the pause did not split the utterance"
    assert finals[0].text == "w0 w1 w2 w3", "the final holds the speech after the pause"
    assert (started, discarded) == (2, 1)


async def test_without_speculation_the_final_waits_for_the_endpoint():
    finals, (started, discarded), batches = await _fake_run(
        np.concatenate([_tone(1.0), _silence(0.2), _tone(1.0), _silence(1.0)]),
        speculative_finals=False)
    assert [f.text for f in finals] == ["w0 w1 w2 w3"]
    assert (started, discarded) == (0, 0) and sum(batches) == 1


def test_short_window_keeps_whisper_accurate_on_real_speech(manager, librivox):
    """The live path's encoder window (utterance + 2 s) against Whisper's 30 s, per clip."""
    for model_id, limit in (("whisper-base", 0.05), ("whisper-tiny.en", 0.10)):
        asr = manager.get("asr", model_id)
        options = AsrOptions(language="en", beam_size=1, word_timestamps=True,
                             window_margin_s=2.0)
        results = asr.transcribe_batch([c.audio for c in librivox], options)
        hypothesis = " ".join(r.text for r in results)
        assert wer(" ".join(c.text for c in librivox), hypothesis) < limit, (model_id, hypothesis)
        for clip, result in zip(librivox, results):  # times stay inside each clip
            words = [w for s in result.segments for w in s.words]
            assert words and words[-1].end <= clip.audio.size / SR + 0.05


def test_implausible_short_window_results_are_recognised():
    from voxgate.engines.asr_whisper import _implausible

    def result(text: str, seconds: float) -> AsrResult:
        return AsrResult([Segment(0, 0.0, seconds, text)] if text else [], "en",
                         duration=seconds)

    assert _implausible(result("", 1.0))  # the VAD heard speech; Whisper gave up
    assert _implausible(result("DSDSDSDSDSDSDSDSDSDS", 0.6))
    assert _implausible(result("Turn left at the next corner. " * 3, 2.0))
    assert _implausible(result(" ".join(["word"] * 20), 2.0))  # 10 words a second
    assert _implausible(result("What is the capital of France What is the capital of France",
                               2.2))  # the phrase twice: Whisper restarted its window
    assert not _implausible(result("He was not an ill disposed young man.", 2.4))
    assert not _implausible(result("I said no, no, I really did say no.", 2.4))
    assert not _implausible(result("It cost 1,000,000 dollars.", 1.5))

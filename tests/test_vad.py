"""Silero VAD: real model on real speech, streaming == whole-file, span rules on built inputs."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from voxgate.engines.base import VadOptions
from voxgate.engines.vad_silero import FRAME_SAMPLES, spans_from_probs

SR = 16_000


@pytest.fixture(scope="module")
def vad(manager):
    return manager.vad()


@pytest.fixture(scope="module")
def speech_with_gaps(librivox):
    """clip, 2 s quiet noise, clip, 3 s digital silence, clip: (audio, [(start, end)])."""
    rng = np.random.default_rng(5)
    parts = [librivox[0].audio, (rng.standard_normal(2 * SR) * 1e-3).astype(np.float32),
             librivox[1].audio, np.zeros(3 * SR, np.float32), librivox[2].audio]
    bounds, position = [], 0
    for i, part in enumerate(parts):
        if i % 2 == 0:
            bounds.append((position, position + part.size))
        position += part.size
    return np.concatenate(parts), bounds


def test_spans_find_the_three_utterances(vad, speech_with_gaps) -> None:
    audio, bounds = speech_with_gaps
    spans = vad.speech_spans(audio, VadOptions())
    assert len(spans) == 3
    for span, (start, end) in zip(spans, bounds):
        assert abs(span.start - start) < 0.4 * SR and abs(span.end - end) < 0.4 * SR
    assert all(a.end <= b.start for a, b in itertools.pairwise(spans))


def test_streaming_matches_whole_file(vad, speech_with_gaps) -> None:
    """Any chunking of a live stream gives the whole-file probabilities (no skipped frames)."""
    audio, _ = speech_with_gaps
    audio = audio[: 8 * SR]  # first clip + noise: no digital-silence skip involved
    whole = vad.probabilities(audio)
    stream = vad.stream()
    rng = np.random.default_rng(1)
    got, position = [], 0
    while position < audio.size:
        step = int(rng.integers(1, 3000))
        got.append(stream.accept(audio[position:position + step]))
        position += step
    streamed = np.concatenate(got)
    assert streamed.size == audio.size // FRAME_SAMPLES
    np.testing.assert_allclose(streamed, whole[: streamed.size], atol=1e-5)
    assert whole.max() > 0.9 and whole[-15:].max() < 0.2  # speech, then noise
    stream.reset()
    np.testing.assert_allclose(stream.accept(audio[: 10 * FRAME_SAMPLES]), whole[:10], atol=1e-5)


def test_digital_silence_is_skipped_cheaply(vad, speech_with_gaps, monkeypatch) -> None:
    """Two hours of digital silence: zero probabilities, without running the model on them."""
    frames_run: list[int] = []
    real_run = vad.run_frames

    def counting(frames, h, c):
        frames_run.append(frames.shape[0])
        return real_run(frames, h, c)

    monkeypatch.setattr(vad, "run_frames", counting)
    audio = np.zeros(2 * 3600 * SR, np.float32)
    probs = vad.probabilities(audio)
    assert probs.size == -(-audio.size // FRAME_SAMPLES) and probs.max() == 0.0
    assert vad.speech_spans(audio, VadOptions()) == []
    assert sum(frames_run) == 0
    # speech around 3 s of digital silence: the model runs on everything but that silence
    mixed, _ = speech_with_gaps
    frames_run.clear()
    vad.probabilities(mixed)
    skipped = -(-mixed.size // FRAME_SAMPLES) - sum(frames_run)
    assert 3 * SR // FRAME_SAMPLES - 2 <= skipped <= 3 * SR // FRAME_SAMPLES


def _probs(pattern: str) -> np.ndarray:
    """'s' = speech frame (0.9), '.' = silence frame (0.05), one char per 32 ms frame."""
    return np.array([0.9 if c == "s" else 0.05 for c in pattern], np.float32)


def test_span_rules_on_built_probabilities() -> None:
    opts = VadOptions(min_speech_ms=100, min_silence_ms=200, speech_pad_ms=0)
    # 10 speech frames, 3 silent (96 ms < 200 ms: same span), 10 speech, 20 silent, 10 speech
    probs = _probs("s" * 10 + "." * 3 + "s" * 10 + "." * 20 + "s" * 10)
    spans = spans_from_probs(probs, probs.size * FRAME_SAMPLES, opts)
    assert [(s.start // FRAME_SAMPLES, s.end // FRAME_SAMPLES) for s in spans] == [(0, 23), (43, 53)]
    # too short to be speech
    assert spans_from_probs(_probs("..ss.........."), 14 * FRAME_SAMPLES, opts) == []
    # padding never crosses into the neighbour and never leaves the signal
    padded = spans_from_probs(probs, probs.size * FRAME_SAMPLES, VadOptions(
        min_speech_ms=100, min_silence_ms=200, speech_pad_ms=400))
    assert padded[0].start == 0 and padded[-1].end == probs.size * FRAME_SAMPLES
    assert padded[0].end <= padded[1].start


def test_long_speech_is_split_at_the_limit() -> None:
    probs = _probs("s" * 2000)  # 64 s without a pause
    spans = spans_from_probs(probs, probs.size * FRAME_SAMPLES,
                             VadOptions(speech_pad_ms=0, max_speech_s=30))
    assert len(spans) >= 3
    assert all(s.end - s.start <= 30 * SR for s in spans)
    assert spans[0].start == 0 and spans[-1].end == probs.size * FRAME_SAMPLES

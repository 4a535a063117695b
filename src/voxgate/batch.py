"""Long-form transcription of a whole recording.

VAD finds speech; speech spans are packed into chunks of at most ``max_chunk_s`` (cut only in
pauses, so no word is split; one span of continuous speech stays whole up to the engine's
``max_utterance_s`` when it has one, e.g. Parakeet's several minutes); chunks are decoded
``batch_size`` at a time in one model call;
segment and word times are shifted back into the original file's time base. Results stream out
as a generator so callers can print and report progress while the rest decodes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace

import numpy as np

from .audio import SAMPLE_RATE
from .engines.base import Asr, AsrOptions, AsrResult, Vad, VadOptions
from .types import Segment, SpeechSpan, Transcript, Word

__all__ = ["BatchOptions", "BatchUpdate", "plan_chunks", "iter_transcribe", "collect_transcript",
           "transcribe_audio"]

logger = logging.getLogger(__name__)


def _long_form_vad() -> VadOptions:
    # 400 ms padding as faster-whisper's long-form VAD: word onsets are not clipped
    return VadOptions(speech_pad_ms=400)


@dataclass(slots=True)
class BatchOptions:
    asr: AsrOptions = field(default_factory=AsrOptions)
    vad: VadOptions = field(default_factory=_long_form_vad)
    use_vad: bool = True
    batch_size: int = 8
    max_chunk_s: float = 30.0
    # longest continuous speech span decoded whole (AsrCapabilities.max_utterance_s); None:
    # max_chunk_s (Whisper's 30 s window), longer spans are split
    max_utterance_s: float | None = None


@dataclass(slots=True)
class BatchUpdate:
    """Progress of one transcription: new segments plus where we are."""

    segments: list[Segment]
    processed_s: float  # audio seconds covered so far (speech decoded + silence skipped)
    duration_s: float
    language: str
    language_probability: float
    vad_coverage: float


def plan_chunks(spans: list[SpeechSpan], max_chunk_s: float,
                sample_rate: int = SAMPLE_RATE, max_span_s: float | None = None
                ) -> list[SpeechSpan]:
    """Pack consecutive speech spans into chunks no longer than ``max_chunk_s``.

    A chunk runs from its first span's start to its last span's end (short pauses inside are
    kept, so times map back by a plain offset). A span longer than the limit is a chunk of its
    own up to ``max_span_s`` (default: the limit) and hard-split beyond.
    """
    limit = int(max_chunk_s * sample_rate)
    span_limit = max(int((max_span_s or max_chunk_s) * sample_rate), limit)
    chunks: list[SpeechSpan] = []
    for span in spans:
        start, end = span.start, span.end
        while end - start > span_limit:
            chunks.append(SpeechSpan(start, start + span_limit))
            start += span_limit
        if end - start > limit:  # one long utterance, decoded whole
            chunks.append(SpeechSpan(start, end))
            continue
        if chunks and end - chunks[-1].start <= limit and start >= chunks[-1].end:
            chunks[-1] = SpeechSpan(chunks[-1].start, end)
        else:
            chunks.append(SpeechSpan(start, end))
    return chunks


def _shift(segment: Segment, offset: float, index: int, limit: float) -> Segment:
    """Move chunk-relative times into the file's time base (ms precision).

    Times are clamped to the chunk (``offset`` .. ``limit``): Whisper sees each chunk padded to
    30 s and may place a last word past the chunk's end, which would overlap the next chunk.
    """
    def at(t: float) -> float:
        return round(min(max(t + offset, offset), limit), 3)

    words = [Word(at(w.start), at(w.end), w.word, w.probability) for w in segment.words]
    return replace(segment, id=index, start=at(segment.start), end=at(segment.end), words=words)


def iter_transcribe(audio: np.ndarray, asr: Asr, vad: Vad | None,
                    options: BatchOptions) -> Iterator[BatchUpdate]:
    """Yield :class:`BatchUpdate` objects as batches of chunks are decoded."""
    total = audio.size
    duration = total / SAMPLE_RATE
    if options.use_vad and vad is not None:
        longest = max(options.max_utterance_s or 0.0, options.max_chunk_s)
        vad_opts = replace(options.vad, max_speech_s=longest)
        spans = vad.speech_spans(audio, vad_opts)
        chunks = plan_chunks(spans, options.max_chunk_s, max_span_s=longest)
    else:
        chunks = [SpeechSpan(0, total)] if total else []
    speech = sum(c.end - c.start for c in chunks)
    coverage = speech / total if total else 0.0

    asr_options = replace(options.asr)
    if asr_options.language in ("", "auto"):
        asr_options.language = None
    language, probability = asr_options.language, 1.0
    if not chunks:
        yield BatchUpdate([], duration, duration, language or "", 0.0, 0.0)
        return

    if not options.use_vad or vad is None:  # whole input, one utterance (engine detects)
        result = asr.transcribe(audio, asr_options)
        yield BatchUpdate([_shift(s, 0.0, i, duration) for i, s in enumerate(result.segments)],
                          duration, duration, result.language, result.language_probability, 1.0)
        return

    index = 0
    for first in range(0, len(chunks), options.batch_size):
        group = chunks[first:first + options.batch_size]
        pieces = [audio[c.start:c.end] for c in group]
        results = asr.transcribe_batch(pieces, asr_options)
        if language is None:  # the first batch told us the language: fix it for the rest
            language, probability = _vote_language(pieces, results)
            asr_options.language = language
            _redecode_other_languages(asr, pieces, results, asr_options)
        new: list[Segment] = []
        for chunk, result in zip(group, results):
            for segment in result.segments:
                new.append(_shift(segment, chunk.start / SAMPLE_RATE, index,
                                  chunk.end / SAMPLE_RATE))
                index += 1
        done = group[-1].end if first + options.batch_size < len(chunks) else total
        yield BatchUpdate(new, done / SAMPLE_RATE, duration, language, probability, coverage)


def _vote_language(pieces: list[np.ndarray], results: list[AsrResult]) -> tuple[str, float]:
    """The file's language from the first batch: each chunk's detection weighted by its length.

    Returns the language and its share of the evidence (a single chunk: its own probability).
    """
    weight: dict[str, float] = {}
    for piece, result in zip(pieces, results):
        weight[result.language] = weight.get(result.language, 0.0) \
            + piece.size * result.language_probability
    language = max(weight, key=weight.__getitem__)
    return language, weight[language] / max(sum(p.size for p in pieces), 1)


def _redecode_other_languages(asr: Asr, pieces: list[np.ndarray], results: list[AsrResult],
                              options: AsrOptions) -> None:
    """Chunks detected as another language than the file's are decoded again in the file's."""
    redo = [i for i, r in enumerate(results) if r.language != options.language]
    if redo:
        logger.debug("re-decoding %d chunk(s) in %s", len(redo), options.language)
        for i, result in zip(redo, asr.transcribe_batch([pieces[i] for i in redo], options)):
            results[i] = result


def collect_transcript(updates: Iterable[BatchUpdate], duration_s: float, model_id: str,
                       task: str, progress: Callable[[float, float], None] | None = None
                       ) -> Transcript:
    """Gather :class:`BatchUpdate` objects into one :class:`Transcript`, reporting progress."""
    segments: list[Segment] = []
    last: BatchUpdate | None = None
    for update in updates:
        segments.extend(update.segments)
        last = update
        if progress:
            progress(update.processed_s, update.duration_s)
    if last is None:  # iter_transcribe yields at least once; keep the type checker honest
        raise RuntimeError("iter_transcribe yielded nothing")
    return Transcript(segments=segments, language=last.language,
                      language_probability=last.language_probability,
                      duration=duration_s, model=model_id,
                      vad_coverage=last.vad_coverage, task=task)


def transcribe_audio(audio: np.ndarray, asr: Asr, vad: Vad | None, options: BatchOptions,
                     model_id: str = "") -> Transcript:
    """Collect :func:`iter_transcribe` into one :class:`Transcript`."""
    return collect_transcript(iter_transcribe(audio, asr, vad, options),
                              audio.size / SAMPLE_RATE, model_id, options.asr.task)

"""Whisper through faster-whisper / CTranslate2.

int8 on CPU and float16 on CUDA unless configured otherwise. ``transcribe_batch`` runs several
<=30 s chunks through one encoder/decoder call (faster-whisper's batched pipeline fed our own
chunk boundaries), which is where the long-form speed-up over sequential decoding comes from.

Live and file work on one CPU: a CTranslate2 call cannot be paused, so a live final that
arrives while a file batch decodes would wait for it (seconds per 30 s chunk at beam 5 on two
cores). Once the engine has served live work, file work (``Priority.FILE``) therefore runs on
a second copy of the model whose compute threads were created at a low OS priority (``nice``,
``VOXGATE_ASR__FILE_LANE_NICE``): the kernel gives live decoding the cores whenever it wants
them and file work everything left over, so neither waits for the other's call to finish.
Same weights, compute type and thread count: the file lane's output is identical.

Temperature as OpenAI's API and Whisper define it: with ``AsrOptions.temperature_fallback`` a
chunk whose batched temperature-0 text loops (gzip compression ratio above 2.4) or is unsure
(mean log-prob below -1, unless Whisper calls it silence) is decoded again alone by Whisper's
own sequential algorithm at 0, 0.2, ... 1.0 until it passes; a temperature above 0 samples
every chunk at that temperature. The batched pipeline cannot sample (it decodes greedily
whatever the temperature), so sampled decodes run one chunk at a time. CTranslate2 keeps one
random generator per compute thread, seeded once when the thread first samples: the seed is
fixed before each model load, so a fresh process repeats its sampled output for the same
sequence of requests, but two identical requests in one process may differ.
"""

from __future__ import annotations

import logging
import math
import re
import sys
import threading
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import ctranslate2
import numpy as np
from faster_whisper import BatchedInferencePipeline, WhisperModel
from faster_whisper.transcribe import get_compression_ratio

from ..errors import EngineError, ModelError
from ..types import Segment, Word
from .base import AsrCapabilities, AsrOptions, AsrResult
from .priority import Priority, PriorityGate, run_at_nice

__all__ = ["WhisperAsr", "segment_confidence"]

logger = logging.getLogger(__name__)
_SAMPLE_RATE = 16_000
# Whisper's own rule for "this window is silence": high no-speech prob and low log-prob.
_NO_SPEECH_PROB = 0.6
_LOGPROB_FLOOR = -1.0
# short-window decoding: bounds of plausible speech (fast speech is ~4 words, ~6 tokens a second)
_MAX_TOKENS_PER_S = 8
_MAX_WORDS_PER_S = 6
_LOOP = re.compile(r"(.{2,6}?)\1{4,}")
_MAX_REPEATED_PHRASE = 16  # words: longer immediate repeats are not looked for
# a live chunk is VAD speech from (at most 1 s of) padding on: text that starts this late, or
# covers this little of a chunk this long, is Whisper skipping most of the speech
_LATE_START_S, _LATE_START_SHARE = 1.5, 0.4
_SPARSE_MIN_S, _SPARSE_SHARE = 2.5, 0.3
# Batched decoding with timestamp tokens has no seek loop: text after Whisper's last timestamp
# pair is dropped. A chunk whose segments stop this far before its end gets its tail decoded.
_TAIL_REDECODE_S = 1.0
# Whisper's fallback schedule and the checks that trigger it (openai-whisper's defaults)
_FALLBACK_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
_COMPRESSION_RATIO_MAX = 2.4
_SAMPLING_SEED = 0


def segment_confidence(avg_logprob: float, no_speech_prob: float) -> float:
    """A 0..1 confidence: mean token probability, discounted by the no-speech probability."""
    return float(max(0.0, min(1.0, math.exp(avg_logprob) * (1.0 - no_speech_prob))))


class _Lane:
    """One loaded copy of the model, its batched pipeline (which keeps per-call state) and the
    gate that gives it to one call at a time, most urgent first."""

    def __init__(self, model: WhisperModel) -> None:
        self.model = model
        self.batched = _DetectingPipeline(model)
        self.gate = PriorityGate()


class WhisperAsr:
    """A faster-whisper model shared by all sessions (CTranslate2 is thread-safe for inference)."""

    name = "whisper"

    def __init__(self, model_path: str, *, model_id: str = "", device: str = "auto",
                 compute_type: str = "default", cpu_threads: int = 0,
                 num_workers: int = 1, file_unit_chunks: int = 2,
                 file_lane_nice: int = 19) -> None:
        if device == "auto":
            device = "cuda" if _cuda_available() else "cpu"
        if compute_type == "default":
            compute_type = "float16" if device == "cuda" else "int8"
        self._load_args = dict(model_size_or_path=model_path, device=device,
                               compute_type=compute_type, cpu_threads=cpu_threads,
                               num_workers=num_workers)
        self.model = self._load_model()
        self._live = _Lane(self.model)
        self.batched = self._live.batched
        # one model call at a time (the batched pipeline keeps per-call state), live first
        self.gate = self._live.gate
        self.file_unit_chunks = file_unit_chunks
        # a GPU does not share its time by OS priority, and threads have their own nice value
        # only on Linux: elsewhere file work shares the live model through the gate
        self.file_lane_nice = (file_lane_nice if device == "cpu" and sys.platform == "linux"
                               else 0)
        self._file_lane: _Lane | None = None
        self._file_lane_lock = threading.Lock()
        self.model_id = model_id or model_path
        self._eot = int(self.model.hf_tokenizer.token_to_id("<|endoftext|>"))  # text ids below
        self.device = device
        self.compute_type = compute_type
        multilingual = bool(self.model.model.is_multilingual)
        self.capabilities = self.declared_capabilities(
            multilingual, tuple(self.model.supported_languages) if multilingual else ("en",))

    @staticmethod
    def declared_capabilities(multilingual: bool, languages: tuple[str, ...] = ()
                              ) -> AsrCapabilities:
        """What a Whisper model can do, known before loading it (``GET /v1/models`` asks this
        for models not loaded yet): translation and detection only when multilingual; live
        streams are served by VAD-cut utterances, not by the model itself (streaming False)."""
        return AsrCapabilities(batch=True, streaming=False, word_timestamps=True,
                               translate=multilingual, language_detection=multilingual,
                               languages=languages)

    @classmethod
    def capabilities_of(cls, spec: Any) -> AsrCapabilities:
        """Capabilities of a catalogue model of this engine, without loading it."""
        multilingual = "multilingual" in spec.languages
        return cls.declared_capabilities(multilingual, () if multilingual else ("en",))

    @classmethod
    def load(cls, resolved: Any, settings: Any) -> "WhisperAsr":
        asr = settings.asr
        return cls(str(resolved.path), model_id=resolved.spec.id, device=asr.device,
                   compute_type=asr.compute_type, cpu_threads=asr.cpu_threads,
                   file_unit_chunks=asr.file_unit_chunks, file_lane_nice=asr.file_lane_nice)

    def _load_model(self) -> WhisperModel:
        ctranslate2.set_random_seed(_SAMPLING_SEED)  # for the threads this load creates
        try:
            return WhisperModel(**self._load_args)
        except Exception as exc:  # CTranslate2 raises RuntimeError/ValueError with details
            raise ModelError(f"cannot load Whisper model from "
                             f"{self._load_args['model_size_or_path']}: {exc}") from exc

    @property
    def file_lane_loaded(self) -> bool:
        """Whether file work has its own low-priority copy of the model now."""
        return self._file_lane is not None

    def _lane(self, priority: int) -> _Lane:
        """Where a call runs: live work on the live model; file work there too until the engine
        has served live work, then on the low-priority copy (loaded on first need)."""
        if (priority < Priority.FILE or not self.file_lane_nice
                or not self.gate.served_live):
            return self._live
        with self._file_lane_lock:
            if self._file_lane is None:
                self._file_lane = _Lane(self._load_at_nice(self.file_lane_nice))
                logger.info("%s: file work moved to a copy of the model at nice %d, so live "
                            "streams never wait for it", self.model_id, self.file_lane_nice)
            return self._file_lane

    def _load_at_nice(self, nice: int) -> WhisperModel:
        """A copy of the model whose CTranslate2 compute threads (created during the load)
        run at ``nice``, so every decode on it does (see ``priority.run_at_nice``)."""
        return run_at_nice(self._load_model, nice)

    def _check(self, options: AsrOptions) -> str | None:
        language = options.language
        if language in ("", "auto"):
            language = None
        if not self.capabilities.language_detection:
            if language not in (None, "en"):
                raise EngineError(f"{self.model_id} is English-only; language {language!r} "
                                  "needs a multilingual model")
            language = "en"
        elif language is not None and language not in self.capabilities.languages:
            raise EngineError(f"unsupported language {language!r} for {self.model_id}")
        if options.task == "translate" and not self.capabilities.translate:
            raise EngineError(f"{self.model_id} cannot translate (English-only model)")
        return language

    def transcribe(self, audio: np.ndarray, options: AsrOptions) -> AsrResult:
        """One utterance, decoded whole with Whisper's sequential long-form algorithm."""
        language = self._check(options)
        lane = self._lane(options.priority)
        with lane.gate.hold(options.priority):
            return self._sequential(lane, audio, options, language)

    def _sequential(self, lane: _Lane, audio: np.ndarray, options: AsrOptions,
                    language: str | None) -> AsrResult:
        """faster-whisper's sequential decoder on one utterance (the lane's gate held), with
        Whisper's temperature fallback when asked for (see the module docstring on seeds)."""
        temperatures = (_FALLBACK_TEMPERATURES if options.temperature_fallback
                        and not options.temperature else (options.temperature or 0.0,))
        segments, info = lane.model.transcribe(  # segments decode lazily: consumed here
            audio, language=language, task=options.task, beam_size=options.beam_size,
            word_timestamps=options.word_timestamps, initial_prompt=options.initial_prompt,
            hotwords=options.hotwords, temperature=temperatures,
            compression_ratio_threshold=_COMPRESSION_RATIO_MAX, log_prob_threshold=_LOGPROB_FLOOR,
            no_speech_threshold=_NO_SPEECH_PROB,
            condition_on_previous_text=False, vad_filter=False,
        )
        converted = [s for s in (_convert(i, seg, text_ids_below=self._eot)
                                 for i, seg in enumerate(segments)) if s]
        return AsrResult(
            segments=converted,
            language=info.language, language_probability=float(info.language_probability),
            duration=audio.size / _SAMPLE_RATE,
        )

    def detect_language(self, audio: np.ndarray) -> tuple[str, float]:
        """Most likely language of (the first 30 s of) ``audio`` and its probability."""
        if not self.capabilities.language_detection:
            return "en", 1.0
        lane = self._lane(Priority.FILE)
        with lane.gate.hold(Priority.FILE):
            language, probability, _ = lane.model.detect_language(audio[: 30 * _SAMPLE_RATE])
        return language, float(probability)

    def transcribe_batch(self, chunks: Sequence[np.ndarray], options: AsrOptions) -> list[AsrResult]:
        """Several chunks of at most 30 s, decoded in one batched call; results in input order.

        With ``options.language`` None each chunk is decoded in the language detected from its
        own encoder output (no separate detection pass), reported in its result.

        With ``options.window_margin_s`` set (live streams) the encoder sees only the longest
        chunk plus that margin, rounded up to whole seconds, instead of Whisper's fixed 30 s:
        3-5x less compute on short utterances. Whisper never trained on short windows and
        sometimes loops on them, so that mode decodes with timestamp tokens, caps new tokens
        at a plausible speech rate, and re-decodes any implausible result (empty, repeating,
        too many words per second) with the full 30 s window.
        """
        if not chunks:
            return []
        language = self._check(options)
        unit = self.file_unit_chunks
        if (options.priority >= Priority.FILE and len(chunks) > unit
                and self._lane(options.priority) is self._live and self.gate.live_active()):
            # live streams are being served from the same model (no file lane): file work takes
            # it in small units, so a live final waits for at most one, not for a whole batch
            return [result for first in range(0, len(chunks), unit)
                    for result in self.transcribe_batch(chunks[first:first + unit], options)]
        if options.window_margin_s is None:
            if options.temperature > 0:  # sampling: the batched pipeline cannot (see top)
                return [self.transcribe(chunk, options) for chunk in chunks]
            return self._decode(chunks, options, language)
        longest = max(c.size for c in chunks) / _SAMPLE_RATE
        window = min(30, math.ceil(longest + max(options.window_margin_s, 0.0)))
        results = self._decode(chunks, options, language, window_s=window,
                               max_new_tokens=int(longest * _MAX_TOKENS_PER_S) + 16)
        final = options.priority <= Priority.LIVE_FINAL  # partials: best effort, no 2nd decode
        retry = [i for i, r in enumerate(results)
                 if _implausible(r) or (final and _uncased(r))]
        if retry:
            logger.debug("short-window decode implausible for %d of %d chunk(s); re-decoding "
                         "them with the 30 s window", len(retry), len(chunks))
            redone = self._decode([chunks[i] for i in retry], options, language)
            for i, result in zip(retry, redone):
                results[i] = result
        return results

    def _decode(self, chunks: Sequence[np.ndarray], options: AsrOptions, language: str | None,
                *, window_s: int | None = None, max_new_tokens: int | None = None,
                complete_tails: bool = True) -> list[AsrResult]:
        detect = language is None
        offsets: list[float] = []
        position = 0
        for chunk in chunks:
            offsets.append(position / _SAMPLE_RATE)
            position += chunk.size
        joined = np.concatenate([np.asarray(c, np.float32) for c in chunks])
        clips = [{"start": off, "end": off + c.size / _SAMPLE_RATE} for off, c in zip(offsets, chunks)]
        lane = self._lane(options.priority)
        with lane.gate.hold(options.priority):
            lane.batched.detections = None
            lane.batched.window_frames = (int(window_s * lane.model.frames_per_second)
                                          if window_s else None)
            segments, info = lane.batched.transcribe(
                joined, language="en" if detect else language, multilingual=detect,
                task=options.task, beam_size=options.beam_size,
                word_timestamps=options.word_timestamps, initial_prompt=options.initial_prompt,
                hotwords=options.hotwords, temperature=options.temperature or 0.0,
                clip_timestamps=clips, vad_filter=False, batch_size=len(chunks),
                without_timestamps=not (options.word_timestamps or window_s),
                max_new_tokens=max_new_tokens,
            )
            segments = list(segments)
            detections = lane.batched.detections if detect else None
            lane.batched.window_frames = None
        results = [AsrResult([], info.language, float(info.language_probability),
                             c.size / _SAMPLE_RATE) for c in chunks]
        if detections is not None:  # "<|es|>" -> "es", per chunk
            for result, ranked in zip(results, detections):
                token, probability = ranked[0]
                result.language, result.language_probability = token[2:-2], float(probability)
        frames_per_second = self.model.frames_per_second
        index_of = {int(off * frames_per_second): i for i, off in enumerate(offsets)}
        for seg in segments:
            i = index_of.get(int(seg.seek))
            if i is None:  # fall back to the chunk whose span holds the segment start
                i = max(k for k, off in enumerate(offsets) if off <= seg.start + 1e-3)
            converted = _convert(len(results[i].segments), seg, shift=-offsets[i],
                                 text_ids_below=self._eot)
            if converted:
                results[i].segments.append(converted)
        redone = self._fall_back(chunks, results, options, language) \
            if options.temperature_fallback and not window_s else set()
        if complete_tails and options.word_timestamps and not window_s:
            self._decode_dropped_tails(chunks, results, options, language, skip=redone)
        return results

    def _fall_back(self, chunks: Sequence[np.ndarray], results: list[AsrResult],
                   options: AsrOptions, language: str | None) -> set[int]:
        """Chunks whose batched decode fails Whisper's checks, decoded again alone by
        :meth:`_sequential` with the fallback schedule; returns their indices."""
        redo = [i for i, r in enumerate(results) if _needs_fallback(r)]
        if not redo:
            return set()
        logger.info("%s: %d of %d chunk(s) looped or were unsure at temperature 0; decoding "
                    "them again with temperature fallback", self.model_id, len(redo),
                    len(chunks))
        lane = self._lane(options.priority)
        for i in redo:
            with lane.gate.hold(options.priority):
                result = self._sequential(lane, np.asarray(chunks[i], np.float32), options,
                                          language or results[i].language)
            results[i].segments = result.segments
        return set(redo)

    def _decode_dropped_tails(self, chunks: Sequence[np.ndarray], results: list[AsrResult],
                              options: AsrOptions, language: str | None,
                              skip: set[int] | frozenset[int] = frozenset()) -> None:
        """Do the one seek step batched decoding lacks: decode what follows the last segment.

        Whisper ends a window's output at its last complete timestamp pair; the sequential
        decoder then seeks there and decodes the rest, the batched one silently drops it.
        """
        tails = [(i, r.segments[-1].end) for i, r in enumerate(results) if i not in skip
                 and r.segments and r.duration - r.segments[-1].end >= _TAIL_REDECODE_S]
        if not tails:
            return
        logger.debug("decoding the dropped tail of %d chunk(s)", len(tails))
        for i, start in tails:
            # conditioned on the chunk's text so far, as the sequential decoder's next window is
            tail_options = replace(options, initial_prompt=results[i].text[-800:],
                                   temperature_fallback=False)
            extra = self._decode([chunks[i][int(start * _SAMPLE_RATE):]], tail_options,
                                 language or results[i].language, complete_tails=False)[0]
            for segment in extra.segments:
                results[i].segments.append(_shifted(segment, start, len(results[i].segments)))


def _needs_fallback(result: AsrResult) -> bool:
    """Whisper's test of a temperature-0 decode: its text compresses too well (a loop), or its
    mean log-prob is below -1 while it is not silence. A batched chunk's segments share one
    decode, so its text is judged whole and its first segment carries the scores."""
    if not result.segments:
        return False
    first = result.segments[0]
    unsure = first.avg_logprob < _LOGPROB_FLOOR
    if unsure and first.no_speech_prob > _NO_SPEECH_PROB:
        return False  # silence: Whisper keeps it (and drops it as such)
    looped = get_compression_ratio(" ".join(s.text for s in result.segments)) \
        > _COMPRESSION_RATIO_MAX
    return looped or unsure


def _uncased(result: AsrResult) -> bool:
    """Three or more words without a capital letter or any punctuation: how a short window
    decodes a final it has half lost ("explain how bicycle works step by step" for "Explain how
    a bicycle works, step by step."); with the 30 s window Whisper writes sentences. Scripts
    without case never match."""
    text = result.text.strip()
    return (len(text.split()) >= 3 and text[:1].islower() and not any(c.isupper() for c in text)
            and not any(c in _PUNCTUATION for c in text))


_PUNCTUATION = frozenset(".,?!;:")


def _implausible(result: AsrResult) -> bool:
    """A short-window result that looks like Whisper looping or giving up, not like speech.

    Empty text (the audio held speech: the VAD said so), more words per second than anyone
    speaks, a short pattern repeated five times in a row, or a run of three words that occurs
    three times or more; text that starts late in the chunk or covers little of it (a 6 s window
    over "Explain how a bicycle works, step by step." gave one segment, "explain", at 2.58-3.05
    s of its 3.05 s).
    """
    text = result.text.lower()
    words = text.split()
    if not words:
        return True
    timed = [seg for seg in result.segments if seg.text.strip()]
    if timed and result.duration > 0:
        first, covered = timed[0].start, sum(max(seg.end - seg.start, 0.0) for seg in timed)
        if first > max(_LATE_START_S, _LATE_START_SHARE * result.duration):
            return True
        if result.duration >= _SPARSE_MIN_S and covered < _SPARSE_SHARE * result.duration:
            return True
    if len(words) > _MAX_WORDS_PER_S * max(result.duration, 1.0):
        return True
    if _LOOP.search(text.replace(" ", "")):  # "dsdsdsdsds", "ha-ha-ha-ha-ha"
        return True
    plain = [w.strip(".,?!;:-").lower() for w in words]
    seen: dict[tuple[str, ...], int] = {}
    for i in range(len(plain) - 2):
        key = tuple(plain[i:i + 3])
        seen[key] = seen.get(key, 0) + 1
        if seen[key] >= 3:
            return True
    # the whole phrase said twice in a row ("What is the capital of France What is the capital
    # of France"): Whisper restarting its window, not a speaker (4+ words, back to back)
    for size in range(4, min(len(plain) // 2, _MAX_REPEATED_PHRASE) + 1):
        for i in range(len(plain) - 2 * size + 1):
            if plain[i:i + size] == plain[i + size:i + 2 * size]:
                return True
    return False


class _DetectingPipeline(BatchedInferencePipeline):  # type: ignore[misc]
    """faster-whisper's batched pipeline that keeps the per-chunk language it detected.

    With ``multilingual=True`` faster-whisper already picks each chunk's language token from
    the batch's encoder output; this also keeps the ranked (token, probability) lists, so the
    caller learns the language without encoding the audio a second time.
    """

    def __init__(self, model: Any) -> None:
        super().__init__(model)
        self.detections: list[list[tuple[str, float]]] | None = None
        self.window_frames: int | None = None  # None: Whisper's 30 s (3000 frames)

    def generate_segment_batched(self, features: Any, tokenizer: Any, options: Any) -> Any:
        if self.window_frames is not None and features.shape[-1] > self.window_frames:
            # the features beyond the window are padding: the encoder cost shrinks with them
            features = np.ascontiguousarray(features[..., : self.window_frames])
        encoder_output, output = super().generate_segment_batched(features, tokenizer, options)
        if options.multilingual:  # one decoder step on the encoder output already computed
            self.detections = self.model.model.detect_language(encoder_output)
        return encoder_output, output


def _shifted(segment: Segment, offset: float, index: int) -> Segment:
    words = [replace(w, start=w.start + offset, end=w.end + offset) for w in segment.words]
    return replace(segment, id=index, start=segment.start + offset, end=segment.end + offset,
                   words=words)


def _convert(index: int, seg: Any, shift: float = 0.0, text_ids_below: int = 0
             ) -> Segment | None:
    """faster-whisper segment -> voxgate Segment; drops Whisper's "silence" windows. Token ids
    below ``text_ids_below`` (end-of-text: timestamps and specials are above) are its text's."""
    text = seg.text.strip()
    if not any(ch.isalnum() for ch in text):  # "", "...", "♪": Whisper's filler, not speech
        return None
    if seg.no_speech_prob > _NO_SPEECH_PROB and seg.avg_logprob < _LOGPROB_FLOOR:
        return None
    words = [Word(max(0.0, w.start + shift), max(0.0, w.end + shift), w.word.strip(),
                  float(w.probability)) for w in (seg.words or [])]
    return Segment(
        id=index, start=max(0.0, seg.start + shift), end=max(0.0, seg.end + shift), text=text,
        words=words, avg_logprob=float(seg.avg_logprob), no_speech_prob=float(seg.no_speech_prob),
        confidence=segment_confidence(seg.avg_logprob, seg.no_speech_prob),
        tokens=[int(t) for t in (seg.tokens or ()) if t < text_ids_below],
        temperature=float(seg.temperature or 0.0),
    )


def _cuda_available() -> bool:
    try:
        import ctranslate2

        return ctranslate2.get_cuda_device_count() > 0
    except Exception:  # no CUDA runtime at all
        return False

"""Plain data types passed between stages. Times are seconds in the input's time base."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

__all__ = ["Word", "Segment", "Transcript", "AsrEvent", "AsrEventKind", "TtsChunk", "SpeechSpan"]


@dataclass(slots=True)
class Word:
    start: float
    end: float
    word: str
    probability: float = 1.0


@dataclass(slots=True)
class Segment:
    id: int
    start: float
    end: float
    text: str
    words: list[Word] = field(default_factory=list)
    avg_logprob: float = 0.0
    no_speech_prob: float = 0.0
    confidence: float = 1.0
    tokens: list[int] = field(default_factory=list)  # the model's token ids of ``text``
    temperature: float = 0.0  # Whisper: the temperature ``text`` was decoded at (fallback)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class SpeechSpan:
    """A region of speech found by VAD, in samples of the 16 kHz signal."""

    start: int
    end: int


@dataclass(slots=True)
class Transcript:
    """A whole-file result. ``text`` joins the segments with single spaces."""

    segments: list[Segment]
    language: str
    language_probability: float
    duration: float
    model: str = ""
    vad_coverage: float = 1.0
    task: str = "transcribe"

    @property
    def text(self) -> str:
        return " ".join(s.text.strip() for s in self.segments if s.text.strip())

    @property
    def confidence(self) -> float:
        """Duration-weighted mean of the segment confidences (0 when there is no speech)."""
        total = sum(max(s.end - s.start, 1e-3) for s in self.segments)
        if not total:
            return 0.0
        return sum(s.confidence * max(s.end - s.start, 1e-3) for s in self.segments) / total

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "language": self.language,
            "language_probability": self.language_probability,
            "duration": self.duration,
            "model": self.model,
            "task": self.task,
            "vad_coverage": self.vad_coverage,
            "confidence": self.confidence,
            "segments": [s.to_dict() for s in self.segments],
        }


# ``speech_onset`` / ``speech_cancelled`` only for a stream configured with ``onset_ms`` (the
# voice agent): a burst of speech began (before ``start_of_speech`` confirms it) / was a blip
AsrEventKind = Literal["start_of_speech", "partial", "final", "end_of_speech", "speech_onset",
                       "speech_cancelled"]


@dataclass(slots=True)
class AsrEvent:
    """One streaming recognition event; ``utterance_id`` increases monotonically per stream."""

    kind: AsrEventKind
    utterance_id: int
    start: float
    end: float
    text: str = ""
    words: list[Word] = field(default_factory=list)
    confidence: float = 0.0
    stability: float = 0.0
    lag: float = 0.0
    language: str = ""  # finals: the language the model decoded (detected when not set)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class TtsChunk:
    """A piece of synthesized audio: float32 mono at ``sample_rate``."""

    audio: Any  # numpy.ndarray, kept Any so this module needs no numpy import
    sample_rate: int
    text: str = ""

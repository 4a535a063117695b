"""Options of one live stream and the wire audio it accepts, validated field by field.

Every error names the offending field (``StreamConfigError.field``) so each front door can
report it in its own terms (a WebSocket ``field``, a Riva ``INVALID_ARGUMENT`` message).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from .audio import (
    SAMPLE_RATE,
    StreamResampler,
    f32le_to_float32,
    g711_to_float32,
    pcm16_to_float32,
)
from .config import Settings
from .errors import AudioError, ConfigError, EngineError

__all__ = ["ENCODINGS", "PcmInput", "StreamConfig", "StreamConfigError", "StreamLimitError"]

ENCODINGS = ("pcm16", "f32", "mulaw", "alaw")  # mulaw/alaw: G.711 telephony, 1 byte a sample


class StreamConfigError(ConfigError):
    """A stream option is invalid; ``field`` names it so transports can report it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class StreamLimitError(EngineError):
    """Every stream slot is taken; retry later (WebSocket 1013, gRPC RESOURCE_EXHAUSTED)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"server busy: all {limit} live streams are in use; retry in a few "
                         "seconds or raise VOXGATE_MAX_STREAMS", retryable=True)
        self.limit = limit


_RANGES: dict[str, tuple[float, float]] = {
    "endpointing_ms": (100, 5000),
    "min_speech_ms": (0, 5000),
    "speech_pad_ms": (0, 1000),
    "vad_threshold": (0.01, 0.99),
    "partial_interval_ms": (100, 10_000),
    "max_utterance_s": (2.0, 30.0),
    "final_beam_size": (1, 20),
    "partial_beam_size": (1, 20),
    "onset_ms": (0, 5000),
}
_OPTIONAL = frozenset({"onset_ms"})  # None: off


_BEAMS = ("final_beam_size", "partial_beam_size")  # a client's choice, capped by the server


@dataclass(slots=True)
class StreamConfig:
    """Per-stream options; build with :meth:`StreamingService.config` (server defaults)."""

    final_model: str
    partial_model: str
    language: str | None = "en"  # None: detect per utterance (multilingual models)
    interim_results: bool = True
    word_timestamps: bool = True
    endpointing_ms: int = 300
    min_speech_ms: int = 250
    speech_pad_ms: int = 200
    vad_threshold: float = 0.5
    partial_interval_ms: int = 500
    max_utterance_s: float = 20.0
    final_beam_size: int = 1
    partial_beam_size: int = 1
    # announce a burst of speech this long as ``speech_onset`` (and its undoing as
    # ``speech_cancelled``) before ``min_speech_ms`` confirms it; None: no such events (the
    # voice agent sets it to pause its audio at once; transcription doors never do)
    onset_ms: int | None = None

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> StreamConfig:
        """Server defaults with ``overrides`` applied and validated.

        A None override means "not given" (the server default stays), except ``language``,
        where None is a choice: detect the language of each utterance (``auto``, Riva ``multi``).
        """
        s = settings.streaming
        base = cls(final_model=settings.asr.model, partial_model=settings.asr.partial_model,
                   endpointing_ms=s.endpointing_ms, min_speech_ms=s.min_speech_ms,
                   speech_pad_ms=s.speech_pad_ms, vad_threshold=s.vad_threshold,
                   partial_interval_ms=s.partial_interval_ms, max_utterance_s=s.max_utterance_s,
                   final_beam_size=s.final_beam_size, partial_beam_size=s.partial_beam_size)
        names = {f.name for f in dataclasses.fields(cls)}
        for key, value in overrides.items():
            if key not in names:
                raise StreamConfigError(key, "unknown option")
            if value is None and key != "language":
                continue
            if key in _BEAMS and isinstance(value, int) and value > s.max_beam_size:
                raise StreamConfigError(key, f"must be at most {s.max_beam_size} on this server "
                                             "(VOXGATE_STREAMING__MAX_BEAM_SIZE)")
            setattr(base, key, value)
        base.validate()
        return base

    def validate(self) -> None:
        """Raise :class:`StreamConfigError` naming the first bad field."""
        for name in ("final_model", "partial_model"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise StreamConfigError(name, "must be a model id")
        if self.language is not None and (not isinstance(self.language, str)
                                          or not 2 <= len(self.language) <= 8):
            raise StreamConfigError("language", f"must be a language code like 'en', "
                                                f"got {self.language!r}")
        for name in ("interim_results", "word_timestamps"):
            if not isinstance(getattr(self, name), bool):
                raise StreamConfigError(name, "must be true or false")
        for name, (low, high) in _RANGES.items():
            value = getattr(self, name)
            if value is None and name in _OPTIONAL:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise StreamConfigError(name, f"must be a number, got {value!r}")
            if not low <= value <= high:
                raise StreamConfigError(name, f"must be between {low:g} and {high:g}, got {value}")


class PcmInput:
    """Wire audio -> float32 mono 16 kHz, keeping resampler state across frames.

    ``encoding`` is ``pcm16`` (little-endian signed 16-bit), ``f32`` (little-endian float) or
    G.711 ``mulaw`` / ``alaw`` (one byte a sample, as telephone systems send); every frame must
    hold whole sample frames (all channels), so an odd-length PCM16 frame is an
    :class:`~voxgate.errors.AudioError`, never a silently shifted stream.
    """

    def __init__(self, encoding: str = "pcm16", sample_rate: int = SAMPLE_RATE,
                 channels: int = 1) -> None:
        if encoding not in ENCODINGS:
            raise StreamConfigError("encoding", f"unsupported encoding {encoding!r}; "
                                                f"use one of {', '.join(ENCODINGS)}")
        if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) \
                or not 8000 <= sample_rate <= 192_000:
            raise StreamConfigError("sample_rate", f"must be an integer 8000..192000 Hz, "
                                                   f"got {sample_rate!r}")
        if isinstance(channels, bool) or not isinstance(channels, int) or not 1 <= channels <= 8:
            raise StreamConfigError("channels", f"must be 1..8, got {channels!r}")
        self.encoding, self.sample_rate, self.channels = encoding, sample_rate, channels
        self._width = {"pcm16": 2, "f32": 4}.get(encoding, 1)
        self._resampler = StreamResampler(sample_rate, SAMPLE_RATE, channels)

    def convert(self, data: bytes | bytearray | memoryview) -> np.ndarray:
        frame = self._width * self.channels
        if len(data) % frame:
            raise AudioError(f"{self.encoding} audio with {self.channels} channel(s) must come in "
                             f"multiples of {frame} bytes, got a frame of {len(data)} bytes")
        if self.encoding == "pcm16":
            samples = pcm16_to_float32(data)
        elif self.encoding == "f32":
            samples = f32le_to_float32(data)
        else:
            samples = g711_to_float32(data, self.encoding)
        return self._resampler.process(samples)

    def flush(self) -> np.ndarray:
        return self._resampler.flush()

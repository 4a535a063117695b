"""Streaming endpointing: per-frame speech probabilities -> utterance start / end decisions.

The rule is Silero's own hysteresis (the one ``spans_from_probs`` applies to whole files), run
one frame at a time so a live stream can act on it: speech starts at ``threshold``, ends after
``min_silence`` samples below ``threshold - 0.15``; a burst shorter than ``min_speech`` samples
is a blip, not an utterance, and is cancelled without ever being announced.

With ``onset_samples`` set, a burst is also announced early, as an ``onset``, once it has lasted
that long (typically one or two frames, long before ``min_speech``): a listener that wants to
react at once (the voice agent pausing its audio when the user talks over it) does so on the
onset and undoes it on the ``cancel`` of a burst that turned out to be a blip.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["Boundary", "Endpointer"]


@dataclass(frozen=True, slots=True)
class Boundary:
    """``start``: speech confirmed, began at ``sample``; ``end``: speech ended at ``sample``;
    ``cancel``: the burst that began at ``sample`` was too short to be speech; ``onset``
    (only with ``onset_samples``): a burst began at ``sample`` and may become speech (always
    before its ``start`` or ``cancel``)."""

    kind: Literal["start", "end", "cancel", "onset"]
    sample: int


class Endpointer:
    """Feed one probability per frame with :meth:`push`; get boundaries back as they happen.

    Pure Python and model-free, so the decisions are unit-tested on hand-built probabilities.
    """

    def __init__(self, *, threshold: float, min_silence_samples: int, min_speech_samples: int,
                 frame_samples: int = 512, onset_samples: int | None = None) -> None:
        self.threshold = threshold
        self.neg_threshold = max(threshold - 0.15, 0.01)
        self.min_silence = min_silence_samples
        self.min_speech = min_speech_samples
        self.onset = onset_samples  # None: no onsets announced
        self.onset_announced = False  # the current burst's onset was announced
        self.frame = frame_samples
        self.frames = 0  # frames seen so far
        self.triggered = False  # inside a burst of speech (confirmed or not)
        self.confirmed = False  # the burst was announced with a "start"
        self.start = 0
        self.silence_start: int | None = None
        self.last_speech_end = 0  # end sample of the latest frame at or above threshold

    @property
    def position(self) -> int:
        """Stream sample up to which probabilities have been seen."""
        return self.frames * self.frame

    @property
    def in_silence(self) -> bool:
        """Inside an utterance, but the latest frames are below the silence threshold."""
        return self.silence_start is not None

    def push(self, prob: float) -> list[Boundary]:
        pos = self.frames * self.frame
        self.frames += 1
        end = pos + self.frame
        out: list[Boundary] = []
        if prob >= self.threshold:
            self.last_speech_end = end
        if not self.triggered:
            if prob >= self.threshold:
                self.triggered, self.confirmed = True, False
                self.start, self.silence_start = pos, None
                self.onset_announced = False
                out.extend(self._confirm(end))
            return out
        if prob >= self.threshold:
            self.silence_start = None
        elif prob < self.neg_threshold and self.silence_start is None:
            self.silence_start = pos
        out.extend(self._confirm(end))
        if self.silence_start is not None and end - self.silence_start >= self.min_silence:
            out.append(Boundary("end" if self.confirmed else "cancel",
                                self.silence_start if self.confirmed else self.start))
            self.triggered = self.confirmed = False
            self.silence_start = None
        return out

    def _confirm(self, end: int) -> list[Boundary]:
        out: list[Boundary] = []
        if self.confirmed or self.silence_start is not None:
            return out
        if self.onset is not None and not self.onset_announced \
                and end - self.start >= self.onset:
            self.onset_announced = True
            out.append(Boundary("onset", self.start))
        if end - self.start >= self.min_speech:
            self.confirmed = True
            out.append(Boundary("start", self.start))
        return out

    def force_end(self, at: int) -> list[Boundary]:
        """End the open utterance now (flush, end of stream): announces it if never announced."""
        if not self.triggered:
            return []
        out = [] if self.confirmed else [Boundary("start", self.start)]
        if not self.confirmed and self.onset is not None and not self.onset_announced:
            out.insert(0, Boundary("onset", self.start))
        out.append(Boundary("end", at))
        self.triggered = self.confirmed = False
        self.silence_start = None
        return out

    def split(self, at: int) -> None:
        """Continue the same burst of speech as a new utterance starting at ``at``."""
        self.start = at

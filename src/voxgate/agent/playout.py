"""Reply audio out, paced in real time, with the played position known at every moment.

The TTS appends audio (one sentence at a time, with its text) as fast as it can; :meth:`run`
releases it in ``frame_s`` pieces no more than ``lead_s`` ahead of what the client has played,
so a barge-in finds at most ``lead_s`` of audio in the client's buffer and nothing queued in
the network. The client's player is modelled as "plays what it got, in real time, from the first
frame on" (an underrun stalls it): :attr:`played_s` is that position, and :meth:`played_text`
the part of the reply's text it covers (whole sentences, then the heard share of the current
one cut back to a whole word). :meth:`pause` freezes the position and takes back everything
released beyond it (the client is told to drop it); :meth:`resume` plays on from there.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np

from ..audio import resample
from .history import cut_words

__all__ = ["Playout", "wait_event"]

Emit = Callable[[np.ndarray, float, str], Awaitable[None]]  # (audio, offset_s, sentence text)


async def wait_event(event: asyncio.Event, timeout: float | None) -> bool:
    """Wait until ``event`` is set or ``timeout`` passes (None: no limit); True when set.

    Unlike ``asyncio.wait_for`` on Python 3.11, a cancellation that arrives just as the event
    is set is never swallowed: a cancelled reply really stops.
    """
    if event.is_set():
        return True
    if timeout is None:
        await event.wait()
        return True
    waiter = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait({waiter}, timeout=timeout)
    finally:
        waiter.cancel()
    return event.is_set()


@dataclass(slots=True)
class _Segment:
    text: str
    start: int  # samples into the reply
    end: int


class Playout:
    """One reply's audio. ``sample_rate``: the rate every chunk is converted to."""

    def __init__(self, sample_rate: int, *, lead_s: float = 0.2, frame_s: float = 0.1,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = sample_rate
        self.lead = int(lead_s * sample_rate)
        self.frame = max(int(frame_s * sample_rate), 1)
        self._clock = clock
        self._audio = np.zeros(0, np.float32)
        self.segments: list[_Segment] = []
        self.released = 0  # samples handed to the client (taken back on pause)
        self._played = 0.0  # samples the client has played (model)
        self._last: float | None = None  # clock at the last position update (None: not started)
        self.paused = False
        self.input_done = False
        self.first_release_at: float | None = None
        self._changed = asyncio.Event()

    # ---- input ---------------------------------------------------------------------------
    @property
    def total(self) -> int:
        return self._audio.size

    def append(self, audio: np.ndarray, sample_rate: int, text: str = "") -> None:
        """Add synthesized audio (any rate) speaking ``text``."""
        audio = resample(np.asarray(audio, np.float32).reshape(-1), sample_rate, self.rate)
        if not audio.size:
            return
        start = self.total
        self._audio = np.concatenate([self._audio, audio])
        self.segments.append(_Segment(text, start, self.total))
        self._changed.set()

    def finish_input(self) -> None:
        """No more audio will come: :meth:`run` ends once the client has played it all."""
        self.input_done = True
        self._changed.set()

    # ---- position ------------------------------------------------------------------------
    def _advance(self) -> None:
        now = self._clock()
        if self._last is not None and not self.paused:
            self._played = min(float(self.released), self._played + (now - self._last) * self.rate)
        self._last = now if self._last is not None or self.released else None

    @property
    def played_s(self) -> float:
        """Seconds of the reply the client has played by now."""
        self._advance()
        return self._played / self.rate

    @property
    def audio_s(self) -> float:
        return self.total / self.rate

    @property
    def finished(self) -> bool:
        """All audio there will be has been played."""
        self._advance()
        return self.input_done and self._played >= self.total

    def played_text(self, played_s: float | None = None) -> str:
        """The reply text heard up to ``played_s`` (default: now)."""
        position = (self.played_s if played_s is None else played_s) * self.rate
        out: list[str] = []
        for seg in self.segments:
            if seg.end <= position:
                out.append(seg.text)
            else:
                if position > seg.start:
                    out.append(cut_words(seg.text, (position - seg.start) / (seg.end - seg.start)))
                break
        return " ".join(t.strip() for t in out if t.strip())

    def text(self) -> str:
        return " ".join(s.text.strip() for s in self.segments if s.text.strip())

    async def wait_for_room(self, ahead_s: float) -> None:
        """Return once less than ``ahead_s`` of appended audio is still unplayed: the TTS
        stays that far ahead of the listener, so a cut reply wastes little synthesis."""
        while True:
            self._advance()
            ahead = (self.total - self._played) / self.rate
            if ahead < ahead_s:
                return
            self._changed.clear()
            timeout = None if self.paused or self._last is None else ahead - ahead_s + 1e-3
            await wait_event(self._changed, timeout)  # set, or played on meanwhile: look again

    # ---- control -------------------------------------------------------------------------
    def pause(self) -> float:
        """Freeze at the played position; audio released beyond it is taken back. Returns the
        played position in seconds."""
        self._advance()
        self.paused = True
        self.released = int(self._played)
        self._played = float(self.released)
        self._changed.set()
        return self.released / self.rate

    def resume(self) -> float:
        """Play on from where :meth:`pause` stopped; returns that offset in seconds."""
        self._advance()
        self.paused = False
        self._last = self._clock() if self.released else None
        self._changed.set()
        return self.released / self.rate

    # ---- pacing --------------------------------------------------------------------------
    async def run(self, emit: Emit) -> None:
        """Release audio through ``emit`` at real-time pace until all of it has been played.

        Cancel to stop at once. ``emit`` may block (a slow client): the clock keeps running,
        so a client that reads late gets its audio in bigger bursts, never more than it can
        have played plus the lead.
        """
        while True:
            self._advance()
            wait: float | None = None
            if not self.paused and self.released < self.total:
                ahead = self.released - self._played
                if ahead < self.lead or self._last is None:
                    await self._release(emit)
                    continue
                wait = (ahead - self.lead) / self.rate + 1e-3
            elif not self.paused and self.input_done:
                if self._played >= self.total:
                    return
                wait = (self.total - self._played) / self.rate + 1e-3
            self._changed.clear()
            await wait_event(self._changed, wait)  # a change, or the next frame's pacing time

    async def _release(self, emit: Emit) -> None:
        start = self.released
        end = min(start + self.frame, self.total)
        seg = next((s for s in self.segments if s.start <= start < s.end), None)
        if seg is not None:
            end = min(end, seg.end)  # one frame never spans two sentences
        self.released = end
        if self._last is None:
            self._last = self._clock()
            if self.first_release_at is None:
                self.first_release_at = self._last
        await emit(self._audio[start:end].copy(), start / self.rate, seg.text if seg else "")

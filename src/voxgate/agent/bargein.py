"""Barge-in: the user talks over the agent. Part of :class:`~voxgate.agent.AgentSession`.

User speech while a reply plays pauses its audio at once (:meth:`BargeInHandling._start_barge_in`,
the playout takes back what the client has not played): on the ASR's ``speech_onset`` (the first
``pause_onset_ms`` of VAD speech; a ``speech_cancelled`` blip resumes at once) or, without
onsets, on ``start_of_speech`` (``min_speech_ms``). Enough words or speech confirm the
interruption (:meth:`_confirm_barge_in`: the reply is cut, the history keeps only what was
heard, the speech becomes the next user turn); otherwise playback resumes where it stopped
(:meth:`_resume_playback`: a cough, "mm-hm"). :meth:`_cut_reply` is also how ``response.cancel``,
``interrupt`` and a typed turn stop a reply.

A mixin of ``AgentSession``: it works on the session's state (declared below for readers) and
calls its turn and reply methods; it holds no state of its own.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..types import AsrEvent
from .events import AudioPaused, AudioResumed, Interruption, TurnEnded
from .reply import Reply as _Reply

if TYPE_CHECKING:
    from .options import AgentConfig
    from .playout import Playout

__all__ = ["BargeIn", "BargeInHandling"]


@dataclass(slots=True)
class BargeIn:
    """User speech over the agent, not yet confirmed as a turn (the reply is paused)."""

    reply: _Reply
    started_at: float  # input seconds of the speech onset
    utterance_id: int  # the speech that paused the reply (an onset: the id it will get)
    played_s: float
    timer: asyncio.TimerHandle | None = None
    text: list[str] = field(default_factory=list)
    utterances: set[int] = field(default_factory=set)  # confirmed speech (start_of_speech)
    speech_end_at: float | None = None
    speech_end_wall: float | None = None



class BargeInHandling:
    """The barge-in part of ``AgentSession`` (see the module docstring)."""

    # the session's state this part reads and writes (set in AgentSession.__init__)
    config: AgentConfig
    _reply: _Reply | None
    _barge: BargeIn | None
    _deaf: set[int]
    _activity: asyncio.Event
    _alignments: dict[str, Playout]
    interruptions: int
    false_interruptions: int

    def _on_speech_onset(self, event: AsrEvent) -> None:
        """A burst of speech began (``pause_onset_ms`` of it, before ``min_speech_ms`` confirms
        it as speech): a reply playing is paused now; its ``start_of_speech`` or
        ``speech_cancelled`` follows."""
        reply = self._reply
        if (event.utterance_id in self._deaf or not self.config.barge_in or reply is None
                or not reply.committed or reply.done or self._barge is not None):
            return
        self._start_barge_in(reply, event)

    def _on_speech_cancelled(self, event: AsrEvent) -> None:
        """The burst whose onset paused the reply was a blip (a click, a breath): play on at
        once. A barge-in that speech has confirmed meanwhile keeps its own rules."""
        barge = self._barge
        if barge is not None and not barge.utterances and barge.utterance_id == \
                event.utterance_id:
            self._resume_playback()

    def _start_barge_in(self, reply: _Reply, event: AsrEvent) -> None:
        played = reply.playout.pause()
        self._observe("barge_in_stop", time.monotonic() - self._wall_of(event.start))
        self._barge = BargeIn(reply, event.start, event.utterance_id, played)
        self._barge.timer = asyncio.get_running_loop().call_later(
            self.config.resume_after_ms / 1000, self._resume_playback)
        self._emit(AudioPaused(reply.turn_id, played, reply.item.id if reply.item else ""))

    def _take_barge_in(self) -> BargeIn | None:
        """The pending barge-in, now ended (its resume timer stopped), if any."""
        barge, self._barge = self._barge, None
        if barge is not None and barge.timer is not None:
            barge.timer.cancel()
        return barge

    def _resume_playback(self) -> None:
        barge = self._take_barge_in()
        if barge is None:
            return
        self.false_interruptions += 1
        self._deaf.update(barge.utterances)  # finals still to come are not a turn
        if self._reply is barge.reply and not barge.reply.done:
            offset = barge.reply.playout.resume()
            self._emit(AudioResumed(barge.reply.turn_id, offset,
                                    barge.reply.item.id if barge.reply.item else ""))
        self._activity.set()

    async def _confirm_barge_in(self) -> None:
        barge = self._take_barge_in()
        if barge is None:
            return
        self.interruptions += 1
        if self._reply is barge.reply:
            await self._cut_reply("barge_in", played_s=barge.played_s)
        turn = self._open_turn(barge.started_at)
        turn.texts.extend(barge.text)
        turn.speech_end_at, turn.speech_end_wall = barge.speech_end_at, barge.speech_end_wall
        if barge.text:
            turn.final_wall = time.monotonic()
        await self._maybe_end_turn()

    async def _cut_reply(self, reason: str, played_s: float | None = None
                         ) -> Interruption | None:
        """Stop the current reply, keep in the history only what was heard."""
        reply = self._reply
        if reply is None:
            return None
        if not reply.committed:
            self._drop_speculative()
            return None
        if self._barge is not None and self._barge.reply is reply:
            barge = self._take_barge_in()
            if barge is not None and played_s is None:
                played_s = barge.played_s
        playout = reply.playout
        heard = playout.played_s if played_s is None else min(max(played_s, 0.0), playout.audio_s)
        self._reply = None
        await self._cancel_reply(reply)
        played_text = playout.played_text(heard)
        if reply.tts_failed:
            played_text = reply.text  # no audio: the text was the reply
        item = reply.item
        if item is not None:
            item.text, item.audio_s, item.interrupted = played_text, heard, True
            self._alignments[item.id] = playout
        event = Interruption(reply.turn_id, played_text, round(heard, 3), reason,
                             item.id if item else "")
        self._emit(event)
        self._emit(TurnEnded(reply.turn_id, "agent", "interrupted" if reason == "barge_in"
                             else "cancelled", played_text, item.id if item else "", heard))
        return event

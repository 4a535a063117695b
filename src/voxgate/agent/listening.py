"""Listening: ASR events and the input clock -> the user's turns. Part of
:class:`~voxgate.agent.AgentSession`.

The ASR reader task hands each event to :meth:`TurnTaking._on_asr_event`: speech start/end,
partials (shown, and prefilling the LLM's prompt cache), finals (a speculative reply starts on
the final of a turn that may be over). The door's ``accept`` calls :meth:`_on_audio_clock`,
which applies the rules measured in input seconds: the end of the turn after silence (longer
for an unfinished sentence, shorter for a question), the longest turn, barge-in by duration.
Committing a turn keeps the speculative reply when it answered exactly that text.

A mixin of ``AgentSession``: it works on the session's state (declared below for readers) and
calls its reply and barge-in methods; it holds no state of its own.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from ..engines.base import ChatMessage
from ..errors import EngineError
from ..types import AsrEvent
from .events import (
    ItemAdded,
    TurnEnded,
    TurnStarted,
    UserSpeechStarted,
    UserSpeechStopped,
    UserTranscript,
)
from .history import Conversation, Item
from .reply import Reply as _Reply
from .turns import UserTurn as _UserTurn
from .turns import count_words, looks_complete, looks_unfinished

if TYPE_CHECKING:
    from .bargein import BargeIn
    from .options import AgentConfig
    from .prefill import Prefill
    from .session import AsrStream

__all__ = ["TurnTaking"]

logger = logging.getLogger(__name__)


class TurnTaking:
    """The listening part of ``AgentSession`` (see the module docstring)."""

    # the session's state this part reads and writes (set in AgentSession.__init__)
    id: str
    config: AgentConfig
    asr: AsrStream
    conversation: Conversation
    closed: bool
    speculative_dropped: int
    _prefill: Prefill
    _activity: asyncio.Event
    _turn_counter: int
    _turn: _UserTurn | None
    _reply: _Reply | None
    _barge: BargeIn | None
    _speaking: bool
    _utterance: int | None
    _awaiting: set[int]
    _finals_settled: asyncio.Event
    _deaf: set[int]

    # ============================================================= internals: turns
    def _open_turn(self, at: float) -> _UserTurn:
        self._turn_counter += 1
        self._turn = _UserTurn(self._turn_counter, at)
        self._emit(TurnStarted(self._turn_counter, "user"))
        return self._turn

    async def _on_audio_clock(self) -> None:
        """Rules that depend on how much audio has arrived since an event."""
        now = self.asr.position
        barge = self._barge
        if barge is not None and self._speaking \
                and now - barge.started_at >= self.config.barge_in_min_ms / 1000:
            await self._confirm_barge_in()
        turn = self._turn
        if turn is None:
            return
        if not turn.cut and now - turn.started_at >= self.config.max_turn_s:
            turn.cut = True
            if self._speaking and self._utterance is not None:
                self._deaf.add(self._utterance + 1)  # the speech going on after the cut
            await self.asr.flush()
            return
        await self._maybe_end_turn()

    async def _maybe_end_turn(self) -> None:
        turn = self._turn
        cfg = self.config
        if turn is None or self._speaking or self._awaiting or self._barge is not None:
            return
        if turn.cut:
            await self._commit_turn(respond=cfg.auto_respond, reason="cut")
            return
        if not cfg.turn_detection or turn.speech_end_at is None:
            return
        text = turn.text
        silence = self.asr.position - turn.speech_end_at
        wait = cfg.end_of_turn_ms / 1000
        if looks_unfinished(text, cfg.language):
            wait = max(wait, cfg.unfinished_wait_ms / 1000)
        elif looks_complete(text):
            wait = min(wait, cfg.complete_wait_ms / 1000)
        if silence < wait:
            return
        if not text or count_words(text) < cfg.min_words:
            self._drop_speculative()
            self._emit(TurnEnded(turn.turn_id, "user", "dropped", text))
            self._turn = None
            return
        await self._commit_turn(respond=cfg.auto_respond)

    async def _commit_turn(self, *, respond: bool, reason: str = "completed") -> Item | None:
        turn = self._turn
        if turn is None:
            return None
        self._turn = None
        text = turn.text
        if not text:
            self._emit(TurnEnded(turn.turn_id, "user", "dropped", ""))
            return None
        now = time.monotonic()
        item = self.conversation.add("user", text, turn.turn_id)
        self._emit(ItemAdded(item.id, "user", text, turn.turn_id))
        self._emit(TurnEnded(turn.turn_id, "user", reason, text, item.id))
        if not respond:
            self._drop_speculative()
            return item
        reply = self._reply
        if reply is not None and not reply.committed and reply.user_text == text \
                and reply.turn_id == turn.turn_id:
            reply.speculative = True  # the early reply answered exactly this: keep it
        else:
            self._drop_speculative()
            if self._reply is not None:  # barge-in off: the previous reply finishes first
                previous = self._reply.main_task
                if previous is not None:
                    await asyncio.wait({previous})
            reply = self._start_reply(turn.turn_id, self.conversation.messages(), text)
        reply.end_of_turn = None if turn.speech_end_wall is None else now - turn.speech_end_wall
        reply.asr_final = (None if turn.speech_end_wall is None or turn.final_wall is None
                           else turn.final_wall - turn.speech_end_wall)
        reply.speech_end_wall = turn.speech_end_wall if turn.speech_end_wall is not None else now
        await self._commit_reply(reply)
        return item

    def _drop_speculative(self) -> None:
        reply = self._reply
        if reply is not None and not reply.committed:
            self._reply = None
            self.speculative_dropped += 1
            reply.done = True  # silent from now on, though its stages stop a moment later
            self._background(self._cancel_reply(reply))

    async def _settle_finals(self) -> None:
        """After ``asr.flush()``: wait until the final of every ended utterance is handled."""
        for _ in range(3):  # let the reader take the events the flush has just queued
            await asyncio.sleep(0)
        if self._speaking and self._utterance is not None:
            self._awaiting.add(self._utterance)  # its end and final are on the way
        while self._awaiting and not self.closed:
            self._finals_settled.clear()
            await self._finals_settled.wait()

    # ============================================================== internals: ASR
    async def _read_asr(self) -> None:
        try:
            async for event in self.asr.events():
                await self._on_asr_event(event)
        except asyncio.CancelledError:
            raise
        except EngineError as exc:
            self._fatal("asr_error", f"speech recognition failed: {exc}")
        except Exception:
            logger.exception("agent session %s: ASR event handling failed", self.id)
            self._fatal("internal", "internal error in the agent session")

    async def _on_asr_event(self, event: AsrEvent) -> None:
        if event.kind == "start_of_speech":
            await self._on_speech_start(event)
        elif event.kind == "end_of_speech":
            self._on_speech_end(event)
        elif event.kind == "partial":
            await self._on_partial(event)
        elif event.kind == "final":
            await self._on_final(event)
        elif event.kind == "speech_onset":
            self._on_speech_onset(event)
        elif event.kind == "speech_cancelled":
            self._on_speech_cancelled(event)

    async def _on_speech_start(self, event: AsrEvent) -> None:
        self._speaking, self._utterance = True, event.utterance_id
        if event.utterance_id in self._deaf:
            return
        self._activity.set()
        reply = self._reply
        if reply is not None and reply.committed and not reply.done:
            if not self.config.barge_in:
                turn = self._turn or self._open_turn(event.start)
                self._emit(UserSpeechStarted(event.start, turn.turn_id))
                return
            if self._barge is None:
                self._start_barge_in(reply, event)
            self._barge.utterances.add(event.utterance_id)
            self._emit(UserSpeechStarted(event.start, self._turn_counter + 1))
            return
        self._drop_speculative()  # the user goes on: the early reply is not wanted
        turn = self._turn or self._open_turn(event.start)
        self._emit(UserSpeechStarted(event.start, turn.turn_id))

    def _on_speech_end(self, event: AsrEvent) -> None:
        self._speaking = False
        self._awaiting.add(event.utterance_id)
        if event.utterance_id in self._deaf:
            return
        turn, barge = self._turn, self._barge
        if barge is not None:
            barge.speech_end_at, barge.speech_end_wall = event.end, self._wall_of(event.end)
        elif turn is not None:
            turn.speech_end_at = event.end
            turn.speech_end_wall = self._wall_of(event.end)
        self._emit(UserSpeechStopped(event.end, turn.turn_id if turn else self._turn_counter + 1))

    async def _on_partial(self, event: AsrEvent) -> None:
        if event.utterance_id in self._deaf:
            return
        barge = self._barge
        if barge is not None:
            self._emit(UserTranscript(self._turn_counter + 1, event.text, False,
                                      stability=event.stability, start=event.start,
                                      end=event.end))
            if count_words(" ".join([*barge.text, event.text])) >= self.config.barge_in_min_words:
                await self._confirm_barge_in()
            return
        turn = self._turn
        if turn is not None:
            so_far = " ".join([turn.text, event.text]).strip()
            self._emit(UserTranscript(turn.turn_id, event.text, False, so_far,
                                      event.stability, event.start, event.end))
            cfg = self.config
            if cfg.turn_detection and cfg.auto_respond and self._reply is None and so_far:
                # the LLM reads the conversation and the words so far while the user speaks
                self._prefill.warm([*self.conversation.messages(), ChatMessage("user", so_far)])

    async def _on_final(self, event: AsrEvent) -> None:
        self._awaiting.discard(event.utterance_id)
        if not self._awaiting:
            self._finals_settled.set()
        if event.utterance_id in self._deaf:
            self._deaf.discard(event.utterance_id)
            return
        text = event.text.strip()
        barge = self._barge
        if barge is not None:
            if text:
                barge.text.append(text)
                self._emit(UserTranscript(self._turn_counter + 1, text, True, " ".join(barge.text),
                                          1.0, event.start, event.end))
            if count_words(" ".join(barge.text)) >= self.config.barge_in_min_words:
                await self._confirm_barge_in()
            elif not self._speaking and not self._awaiting:
                self._resume_playback()  # a cough, "mm-hm": not a turn
            return
        turn = self._turn
        if turn is None:
            return
        turn.final_wall = time.monotonic()
        if text:
            turn.texts.append(text)
            self._emit(UserTranscript(turn.turn_id, text, True, turn.text, 1.0, event.start,
                                      event.end))
        cfg = self.config
        if (cfg.turn_detection and cfg.auto_respond and not self._speaking and not self._awaiting
                and not turn.cut and turn.text and count_words(turn.text) >= cfg.min_words
                and not looks_unfinished(turn.text, cfg.language) and self._reply is None):
            # speculative: answer now, speak once the silence confirms the end of the turn
            self._start_reply(turn.turn_id, [*self.conversation.messages(),
                                             ChatMessage("user", turn.text)], turn.text)
        await self._maybe_end_turn()

"""AgentSession: one conversation. User audio in; transcripts, reply text and reply audio out.

See the package docstring (``voxgate.agent``) for the API every door uses. Inside, three
things run concurrently:

* the door's ``accept`` calls feed the :class:`~voxgate.streaming.AsrSession` and check the
  silence-based rules (end of turn, barge-in duration, max turn) on the input's own clock;
* a reader task turns ASR events into turn decisions (speculative reply, commit, barge-in):
  :mod:`~voxgate.agent.listening` and :mod:`~voxgate.agent.bargein`;
* at most one :class:`_Reply` at a time: an LLM task (text deltas -> sentences), a TTS task
  (sentences -> audio into a :class:`~voxgate.agent.playout.Playout`) and, once the reply is
  committed, the playout task that releases audio in real time. Cancelling a reply cancels
  all three; the LLM stops at its next token, the TTS after the sentence in its thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Protocol

import numpy as np

from ..engines.base import ChatMessage, Llm
from ..errors import EngineError, TextError
from ..types import AsrEvent
from .bargein import BargeIn
from .bargein import BargeInHandling
from .events import (
    AgentAudio,
    AgentError,
    AgentEvent,
    AgentText,
    Interruption,
    ItemAdded,
    TurnEnded,
    TurnStarted,
)
from .history import Conversation, Item
from .listening import TurnTaking
from .options import AgentConfig
from .playout import Playout, wait_event
from .prefill import Prefill, session_llm_kwargs
from .reply import Reply as _Reply
from .reply import Voice, run_llm, run_tts
from .turns import UserTurn as _UserTurn

__all__ = ["AgentSession", "AsrStream", "Observer", "Voice"]

logger = logging.getLogger(__name__)


class AsrStream(Protocol):
    """What the session needs of :class:`~voxgate.streaming.AsrSession`."""

    id: str

    @property
    def position(self) -> float: ...

    async def accept(self, samples: np.ndarray) -> None: ...

    async def flush(self) -> None: ...

    async def finish(self) -> None: ...

    async def close(self) -> None: ...

    def events(self) -> AsyncIterator[AsrEvent]: ...


Observer = Callable[[str, float], None]  # (measure name, seconds): Prometheus histograms


class AgentSession(TurnTaking, BargeInHandling):
    """One voice conversation; see ``voxgate.agent`` for the API. Build with
    :meth:`AgentService.open` (real engines) or directly (any engines, e.g. fakes in tests).
    Listening (ASR events -> turns) lives in :mod:`~voxgate.agent.listening`, barge-in in
    :mod:`~voxgate.agent.bargein`; this module holds the API, the output and the replies."""

    def __init__(self, config: AgentConfig, asr: AsrStream, llm: Llm, voice: Voice, *,
                 observers: Sequence[Observer] = (), on_close: Callable[[], None] | None = None,
                 session_id: str | None = None) -> None:
        self.id = session_id or uuid.uuid4().hex[:12]
        self.config = config
        self.asr, self.llm, self.voice = asr, llm, voice
        self.output_sample_rate = config.output_sample_rate or voice.sample_rate
        self.conversation = Conversation(config.system_prompt, config.history_tokens)
        self._observers = list(observers)
        self._on_close = on_close
        # every request: the prompt cache, the session's own cache slot, live priority
        self._llm_kwargs = session_llm_kwargs(llm, cache_prompt=config.cache_prompt,
                                              session_id=self.id)
        self._prefill = Prefill(llm, self._llm_kwargs, enabled=config.prefill,
                                timeout_s=config.llm_timeout_s, log_id=self.id)
        self._out: asyncio.Queue[AgentEvent | None] = asyncio.Queue()
        self._queued_audio = 0  # samples in _out not yet taken by the door
        self._drained = asyncio.Event()
        self._close_done = asyncio.Event()  # set when close() has released everything
        # an LLM request that outlives close() (a prefill reading its prompt), if any
        self.lingering: asyncio.Task[None] | None = None
        self._activity = asyncio.Event()
        self._turn_counter = 0
        self._turn: _UserTurn | None = None
        self._reply: _Reply | None = None
        self._barge: BargeIn | None = None
        self._speaking = False
        self._utterance: int | None = None  # open ASR utterance
        self._awaiting: set[int] = set()  # utterances ended, final not yet delivered
        self._finals_settled = asyncio.Event()
        self._finals_settled.set()
        self._deaf: set[int] = set()  # utterances ignored (speech going on after a cut)
        self._arrivals: deque[tuple[float, float]] = deque(maxlen=512)  # (input s, wall)
        self._alignments: dict[str, Playout] = {}  # item id -> its reply's playout (truncate)
        self._ending = False
        self._tasks: set[asyncio.Future[Any]] = set()  # background cancellations
        self.closed = False
        self.interruptions = 0
        self.false_interruptions = 0
        self.speculative_dropped = 0
        self._reader = asyncio.create_task(self._read_asr(), name=f"agent-asr-{self.id}")
        self._watchdog = asyncio.create_task(self._idle_watch(), name=f"agent-idle-{self.id}")
        self._prefill.open(self.conversation.messages())  # system prompt cached before turn 1

    # =========================================================================== input
    @property
    def position(self) -> float:
        """Seconds of user audio received."""
        return self.asr.position

    async def accept(self, samples: np.ndarray) -> None:
        """Feed user audio: float32 mono 16 kHz (doors convert with ``PcmInput``)."""
        self._check_open()
        await self.asr.accept(samples)
        self._arrivals.append((self.asr.position, time.monotonic()))
        await self._on_audio_clock()

    async def send_text(self, text: str, *, respond: bool | None = None) -> Item:
        """A user turn typed instead of spoken: cuts a reply in progress (as a confirmed
        barge-in does), is committed at once and answered (``respond``: default
        ``auto_respond``). TextError for empty text."""
        self._check_open()
        if not isinstance(text, str) or not text.strip():
            raise TextError("text input is empty")
        self._activity.set()
        await self._cut_reply("cancelled")
        turn = self._turn or self._open_turn(self.position)
        turn.texts.append(text.strip())
        turn.speech_end_wall = time.monotonic()
        item = await self._commit_turn(respond=self.config.auto_respond if respond is None
                                       else respond)
        assert item is not None  # the turn has text
        return item

    async def flush(self) -> None:
        """The user's turn ends now (push-to-talk release): the open utterance is finalised
        and the turn committed without waiting for silence."""
        self._check_open()
        await self.asr.flush()
        await self._settle_finals()
        if self._turn is not None:
            await self._commit_turn(respond=self.config.auto_respond)

    async def commit_input(self) -> Item | None:
        """Manual turn control (Realtime ``input_audio_buffer.commit``): finalise what the user
        said so far into a user item, without starting a reply. None when nothing was said."""
        self._check_open()
        await self.asr.flush()
        await self._settle_finals()
        if self._turn is None:
            return None
        return await self._commit_turn(respond=False)

    def clear_input(self) -> None:
        """Forget what the user said since the last committed turn
        (``input_audio_buffer.clear``)."""
        self._check_open()
        if self._turn is not None:
            self._emit(TurnEnded(self._turn.turn_id, "user", "cleared", self._turn.text))
            self._turn = None
        self._drop_speculative()

    # ======================================================================= replies
    async def create_response(self, instructions: str | None = None) -> int:
        """Start a reply to the conversation as it stands (``response.create``); a reply in
        progress is cut first. Returns the reply's turn id."""
        self._check_open()
        await self._cut_reply("cancelled")
        if self._turn is not None and self._turn.text:
            await self._commit_turn(respond=False)
        turn_id = self._turn_counter
        reply = self._start_reply(turn_id, self.conversation.messages(instructions), "")
        await self._commit_reply(reply)
        return turn_id

    async def cancel_response(self) -> Interruption | None:
        """Stop the reply in progress (``response.cancel``); the history keeps what was played."""
        self._check_open()
        return await self._cut_reply("cancelled")

    async def interrupt(self) -> Interruption | None:
        """The door's ``interrupt`` control: as :meth:`cancel_response`."""
        return await self.cancel_response()

    # ================================================================== conversation
    def add_item(self, role: str, text: str, *, after: str | None = None) -> Item:
        """Add a message to the history (``conversation.item.create``); no reply starts."""
        self._check_open()
        item = self.conversation.add(role, text, self._turn_counter, after=after)
        self._emit(ItemAdded(item.id, item.role, item.text, item.turn_id))
        return item

    def delete_item(self, item_id: str) -> Item:
        """Remove an item (``conversation.item.delete``); ConfigError when unknown."""
        self._check_open()
        self._alignments.pop(item_id, None)
        return self.conversation.delete(item_id)

    async def truncate_item(self, item_id: str, audio_end_s: float) -> Item:
        """Keep only the text an assistant item had spoken by ``audio_end_s`` of its audio
        (``conversation.item.truncate``); a reply still running for it is stopped there."""
        self._check_open()
        item = self.conversation.get(item_id)
        reply = self._reply
        if reply is not None and reply.item is item:
            await self._cut_reply("truncated", played_s=audio_end_s)
            return item
        playout = self._alignments.get(item_id)
        if item.role != "assistant" or playout is None:
            from ..errors import ConfigError

            raise ConfigError(f"item {item_id!r} has no audio to truncate")
        item.audio_s = min(max(float(audio_end_s), 0.0), playout.audio_s)
        item.text = playout.played_text(item.audio_s)
        item.interrupted = True
        return item

    @property
    def history(self) -> list[Item]:
        return list(self.conversation.items)

    def playback(self) -> tuple[int, str, float] | None:
        """The reply being played now: (turn id, item id, seconds of it heard so far), or None.
        The position is the playout model's (real time since the first frame, frozen while
        paused), so a door can report or truncate at it."""
        reply = self._reply
        if reply is None or not reply.committed:
            return None
        return reply.turn_id, reply.item.id if reply.item else "", reply.playout.played_s

    # ============================================================== end and output
    async def end(self) -> None:
        """No more input: the last utterance is finalised, answered, and once the reply has
        played :meth:`events` ends."""
        if self._ending or self.closed:
            return
        self._ending = True
        with contextlib.suppress(EngineError):
            await self.asr.flush()
        await self._settle_finals()
        if self._turn is not None and self._turn.text:
            await self._commit_turn(respond=self.config.auto_respond)
        reply = self._reply
        if reply is not None and reply.main_task is not None:
            await asyncio.wait({reply.main_task})  # the reply plays out (or is cut)
        self._out.put_nowait(None)

    async def close(self) -> None:
        """Abandon the session (client gone, error): every task stops, models are released."""
        if self.closed:
            return
        self.closed = True
        try:
            self._take_barge_in()  # its resume timer must not fire on a closed session
            await self._cancel_reply(self._reply)
            # a prefill still reading its prompt is not waited for (see Prefill.close): the
            # service holds the engine until it has ended
            self.lingering = await self._prefill.close()
            for task in (self._reader, self._watchdog):
                task.cancel()
            current = asyncio.current_task()
            await asyncio.wait({t for t in (self._reader, self._watchdog, *self._tasks)
                                if t is not current})
        finally:  # a close cancelled half-way still frees the stream and the session's slot
            try:
                await asyncio.shield(self.asr.close())
            finally:
                self._out.put_nowait(None)
                self._drained.set()
                self._close_done.set()
                if self._on_close is not None:
                    self._on_close()

    async def wait_closed(self) -> None:
        """Until a close begun elsewhere (e.g. the door's handler, cancelled by a client that
        left) has released the stream, the LLM slot and the models: a server that shuts down
        must not stop its event loop half-way through it (close() itself returns at once when
        a close is already under way)."""
        await self._close_done.wait()

    async def events(self) -> AsyncIterator[AgentEvent]:
        """Events in order until :meth:`end` has finished, :meth:`close`, or a fatal error."""
        while True:
            event = await self._out.get()
            if event is None:
                return
            if isinstance(event, AgentAudio):
                self._queued_audio -= event.audio.size
                self._drained.set()
            yield event
            if isinstance(event, AgentError) and event.fatal:
                return

    # ============================================================ internals: output
    def _emit(self, event: AgentEvent) -> None:
        self._out.put_nowait(event)

    def _emitter(self, reply: _Reply) -> Callable[[AgentEvent], None]:
        """How a reply's stages emit: held back until the reply is committed (speculative),
        dropped once it is cancelled (a last token may come before the cancel lands)."""
        def emit(event: AgentEvent) -> None:
            if reply.done:
                return  # cut or dropped: what its stages still say is never seen
            if not reply.committed:
                reply.held.append(event)
                return
            self._out.put_nowait(event)

        return emit

    def _background(self, coro: Any) -> None:
        """Run ``coro`` on its own, keeping a reference until it is done."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _fatal(self, code: str, message: str) -> None:
        if self.closed:
            return
        logger.info("agent session %s ends: %s", self.id, message)
        self._out.put_nowait(AgentError(code, message, fatal=True))

    def _observe(self, name: str, seconds: float | None) -> None:
        if seconds is None:
            return
        for observer in self._observers:
            observer(name, seconds)

    def _wall_of(self, at: float) -> float:
        """Wall clock when input second ``at`` reached the server (a real-time client spoke
        it then)."""
        previous = None
        for position, wall in self._arrivals:
            if position >= at:
                estimate = wall - (position - at)
                return max(estimate, previous) if previous is not None else estimate
            previous = wall
        return time.monotonic()

    def _check_open(self) -> None:
        if self.closed:
            raise EngineError("agent session is closed")

    # ============================================================= internals: reply
    def _start_reply(self, turn_id: int, messages: list[ChatMessage], user_text: str) -> _Reply:
        cfg = self.config
        playout = Playout(self.output_sample_rate, lead_s=cfg.playout_lead_ms / 1000)
        reply = _Reply(turn_id, messages, playout, user_text=user_text)
        sentences: asyncio.Queue[str | None] = asyncio.Queue()
        emit = self._emitter(reply)
        reply.llm_task = asyncio.create_task(
            run_llm(reply, self.llm, self._llm_kwargs, cfg, sentences, emit, self.id),
            name=f"agent-llm-{self.id}-{turn_id}")
        reply.tts_task = asyncio.create_task(run_tts(reply, self.voice, sentences, emit,
                                                     self.id),
                                             name=f"agent-tts-{self.id}-{turn_id}")
        self._reply = reply
        self._activity.set()
        return reply

    async def _commit_reply(self, reply: _Reply) -> None:
        reply.committed = True
        item = self.conversation.add("assistant", reply.text, reply.turn_id)
        reply.item = item
        self._emit(ItemAdded(item.id, "assistant", "", reply.turn_id))
        self._emit(TurnStarted(reply.turn_id, "agent", item.id, reply.user_text))
        for event in reply.held:
            if isinstance(event, (AgentText, AgentAudio)):
                event.item_id = item.id
            self._out.put_nowait(event)
        reply.held.clear()
        reply.play_task = asyncio.create_task(reply.playout.run(
            lambda audio, offset, text: self._send_audio(reply, audio, offset, text)),
            name=f"agent-play-{self.id}-{reply.turn_id}")
        reply.main_task = asyncio.create_task(self._finish_reply(reply),
                                              name=f"agent-reply-{self.id}-{reply.turn_id}")

    async def _send_audio(self, reply: _Reply, audio: np.ndarray, offset: float,
                          text: str) -> None:
        """Playout -> the door, bounded: a door that stops taking audio ends the session."""
        limit = int(self.config.max_out_buffer_s * self.output_sample_rate)
        while self._queued_audio + audio.size > limit and not self.closed:
            self._drained.clear()
            if not await wait_event(self._drained, self.config.out_stall_timeout_s):
                self._fatal("client_not_reading",
                            f"the client took no audio for {self.config.out_stall_timeout_s:g} s "
                            f"with {self.config.max_out_buffer_s:g} s queued")
                self._background(self.close())
                raise asyncio.CancelledError from None  # this playout stops here
        self._queued_audio += audio.size
        self._out.put_nowait(AgentAudio(reply.turn_id, audio, self.output_sample_rate, offset,
                                        reply.item.id if reply.item else "", text))

    async def _finish_reply(self, reply: _Reply) -> None:
        """Wait for the reply's stages; then close the turn and report its latency."""
        try:
            await asyncio.gather(*reply.tasks)
        except asyncio.CancelledError:
            return
        except Exception:
            logger.exception("agent session %s: reply failed", self.id)
            self._emit(AgentError("internal", "the reply failed", turn_id=reply.turn_id))
        reply.done = True
        if self._reply is not reply:
            return
        self._reply = None
        if self._barge is not None and self._barge.reply is reply:
            self._resume_playback()
        item = reply.item
        played = reply.playout.played_s
        if item is not None:
            item.text, item.audio_s = reply.text, played
            self._alignments[item.id] = reply.playout
            while len(self._alignments) > 16:
                self._alignments.pop(next(iter(self._alignments)))
        self._emit(TurnEnded(reply.turn_id, "agent", "error" if reply.llm_failed else "completed",
                             reply.text, item.id if item else "", played))
        self._report_latency(reply)
        self._activity.set()

    def _report_latency(self, reply: _Reply) -> None:
        latency = reply.latency()
        for name, value in latency.as_dict().items():
            if name != "speculative":
                self._observe(name, value)
        self._emit(latency)

    @staticmethod
    async def _cancel_reply(reply: _Reply | None) -> None:
        if reply is not None:
            await reply.cancel()

    # ================================================================ internals: idle
    async def _idle_watch(self) -> None:
        limit = self.config.idle_timeout_s
        while not self.closed:
            self._activity.clear()
            if not await wait_event(self._activity, limit):
                if self._reply is not None or self._speaking or self._turn is not None:
                    continue  # a reply plays, the user speaks: not idle
                self._fatal("idle_timeout", f"no speech or text for {limit:g} s: idle session "
                                            "closed")
                return

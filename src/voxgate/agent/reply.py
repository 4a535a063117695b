"""One agent reply: LLM deltas -> sentences -> TTS audio -> a :class:`Playout`.

:func:`run_llm` and :func:`run_tts` are the reply's two producer stages (the session adds the
playout task once the reply is committed); :meth:`Reply.cancel` stops all of them. Both stages
handle their engine failing: the session survives, the user hears an apology or reads text.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..engines.base import ChatMessage, Llm
from ..errors import EngineError, TextError
from ..speech import SentenceSplitter, is_speakable
from ..types import TtsChunk
from .events import AgentError, AgentEvent, AgentText, TurnLatency
from .history import Item
from .options import AgentConfig
from .playout import Playout

__all__ = ["FIRST_CHUNK_WORDS", "FIRST_CLAUSE_WORDS", "MARKUP", "TTS_AHEAD_S", "Reply", "Voice",
           "first_chunk", "first_clause", "run_llm", "run_tts"]

logger = logging.getLogger(__name__)
MARKUP = re.compile(r"[*_#`~|<>\[\]]+")  # markdown an LLM may write; never read aloud
TTS_AHEAD_S = 3.0  # synthesize the next sentence once less than this is left to play
# the reply's first words go to the TTS at the first clause boundary (",", ";", ":", a dash)
# after at least this many words, not at the end of the first sentence: on a slow LLM the
# first sentence takes seconds to finish, the first clause a fraction of that
FIRST_CLAUSE_WORDS = 4
# ... or, with no clause boundary yet, before the first word that opens a phrase (a preposition,
# a conjunction: "The sky is blue | on a clear day.") once this many words came before it: at
# ~20 words/s of the 1.5B model on 2 cores each word saved is ~50 ms of first audio. Later
# chunks are whole sentences, so only the first one trades a little prosody for latency.
FIRST_CHUNK_WORDS = 4
_CLAUSE_END = re.compile(r"[,;:\u2014\u2013](?=\s)|\s[-\u2013\u2014](?=\s)")
# English words a phrase starts with and a finished phrase rarely ends with ("of", "to",
# "that" bind too tightly to the words before them: "one of", "want to", "so that")
_PHRASE_OPENERS = frozenset("""
and but or because since while when where which who whose although though unless until if as
in on at for with by from into about after before during through across over under near like
""".split())
_NEXT_WORD = re.compile(r"\s+([A-Za-z']+)(?=\s)")
Emit = Callable[[AgentEvent], None]


class Voice(Protocol):
    """Sentence -> audio (see :class:`~voxgate.agent.service.SpeechVoice`)."""

    sample_rate: int

    def speak(self, sentence: str) -> AsyncIterator[TtsChunk]: ...


@dataclass(eq=False)
class Reply:
    """One agent reply in flight: its stages (tasks), text, audio (playout) and timings."""

    turn_id: int
    messages: list[ChatMessage]
    playout: Playout
    committed: bool = False
    item: Item | None = None
    held: list[AgentEvent] = field(default_factory=list)  # events before commit
    text: str = ""
    llm_task: asyncio.Task[None] | None = None
    tts_task: asyncio.Task[None] | None = None
    play_task: asyncio.Task[None] | None = None
    main_task: asyncio.Task[None] | None = None
    user_text: str = ""
    llm_started: float = 0.0
    first_token_at: float | None = None
    first_sentence_at: float | None = None
    first_audio_at: float | None = None
    llm_failed: bool = False
    tts_failed: bool = False
    done: bool = False
    speculative: bool = False  # started before the user's turn was committed
    end_of_turn: float | None = None  # latency parts (seconds)
    asr_final: float | None = None
    tts_first: float | None = None
    speech_end_wall: float | None = None

    @property
    def tasks(self) -> list[asyncio.Task[None]]:
        return [t for t in (self.llm_task, self.tts_task, self.play_task) if t is not None]

    def latency(self) -> TurnLatency:
        """Where this reply's time went (see :class:`TurnLatency`)."""
        end_wall = self.speech_end_wall
        first_release = self.playout.first_release_at
        return TurnLatency(
            self.turn_id, end_of_turn_s=self.end_of_turn, asr_final_s=self.asr_final,
            llm_ttft_s=(None if self.first_token_at is None
                        else self.first_token_at - self.llm_started),
            tts_ttfa_s=self.tts_first,
            voice_to_voice_s=(None if first_release is None or end_wall is None
                              else max(first_release - end_wall, 0.0)),
            speculative=self.speculative)

    async def cancel(self) -> None:
        """Stop every stage and wait until each has really stopped (the LLM at its next token,
        the TTS after the sentence in its thread); never swallows the caller's own cancel."""
        self.done = True
        tasks = [t for t in (*self.tasks, self.main_task) if t is not None and not t.done()]
        for task in tasks:
            task.cancel()
        current = asyncio.current_task()
        tasks = [t for t in tasks if t is not current]
        if tasks:
            await asyncio.wait(tasks)


def first_clause(text: str) -> str | None:
    """The opening clause of ``text`` when it is complete and has ``FIRST_CLAUSE_WORDS`` words
    (``"Sure, the capital of France, as you"`` -> ``"Sure, the capital of France,"``), else
    None."""
    for match in _CLAUSE_END.finditer(text):
        head = text[:match.end()]
        if len(head.split()) >= FIRST_CLAUSE_WORDS:
            return head
    return None


def first_chunk(text: str) -> str | None:
    """What of the reply's opening ``text`` to speak now, before its first sentence ends: the
    first clause (:func:`first_clause`), else the words before a phrase opener preceded by
    ``FIRST_CHUNK_WORDS`` words (``"The sky is blue on a clear"`` -> ``"The sky is blue"``);
    None while neither is there. A word counts only once the whitespace after it has come, so a
    half-streamed word ("in" of "into") never decides."""
    head = first_clause(text)
    if head is not None:
        return head
    for match in _NEXT_WORD.finditer(text):
        if match.group(1).lower() in _PHRASE_OPENERS \
                and len(text[:match.start()].split()) >= FIRST_CHUNK_WORDS:
            return text[:match.start()]
    return None


async def run_llm(reply: Reply, llm: Llm, llm_kwargs: dict[str, Any], cfg: AgentConfig,
                  sentences: asyncio.Queue[str | None], emit: Emit, log_id: str) -> None:
    """LLM deltas -> ``emit(AgentText)`` and complete, speakable sentences -> ``sentences``
    (None at the end). A failure or a silence past ``llm_timeout_s`` -> a non-fatal
    ``llm_error`` and, if nothing was said yet, the apology instead."""
    splitter = SentenceSplitter(300)

    def sentence_out(pieces: list[str]) -> None:
        for sentence in pieces:
            spoken = " ".join(MARKUP.sub(" ", sentence).split())
            if is_speakable(spoken):
                if reply.first_sentence_at is None:
                    reply.first_sentence_at = time.monotonic()
                sentences.put_nowait(spoken)

    reply.llm_started = time.monotonic()
    stream = llm.stream(reply.messages, max_tokens=cfg.max_reply_tokens,
                        temperature=cfg.temperature, **llm_kwargs)
    try:
        while True:
            try:
                async with asyncio.timeout(cfg.llm_timeout_s):
                    delta = await anext(stream)
            except StopAsyncIteration:
                break
            if reply.first_token_at is None:
                reply.first_token_at = time.monotonic()
            reply.text += delta
            if reply.item is not None:
                reply.item.text = reply.text
            emit(AgentText(reply.turn_id, delta, reply.item.id if reply.item else ""))
            done = splitter.push(delta)
            if reply.first_sentence_at is None and not done:
                head = first_chunk(reply.text)
                if head is not None:  # speak the opening words now; split the rest anew
                    done = [head]
                    splitter = SentenceSplitter(300)
                    splitter.push(reply.text[len(head):])
            sentence_out(done)
        sentence_out(splitter.flush())
    except (EngineError, TimeoutError, OSError, ValueError) as exc:
        reason = ("did not answer within "
                  f"{cfg.llm_timeout_s:g} s" if isinstance(exc, TimeoutError) else str(exc))
        logger.warning("agent session %s: LLM failed: %s", log_id, reason)
        reply.llm_failed = True
        emit(AgentError("llm_error", f"the language model failed: {reason}",
                        turn_id=reply.turn_id))
        sentence_out(splitter.flush())
        if not reply.text.strip():
            reply.text = cfg.apology
            emit(AgentText(reply.turn_id, cfg.apology, reply.item.id if reply.item else ""))
            sentence_out([cfg.apology])
    finally:
        # closing stops generation (llama.cpp at its next token, an HTTP stream at once); a
        # stream that already ended or failed has nothing left to close
        with contextlib.suppress(EngineError, OSError, RuntimeError, StopAsyncIteration):
            await stream.aclose()  # type: ignore[attr-defined]
        sentences.put_nowait(None)


async def run_tts(reply: Reply, voice: Voice, sentences: asyncio.Queue[str | None], emit: Emit,
                  log_id: str) -> None:
    """Sentences -> audio into ``reply.playout``, staying ``TTS_AHEAD_S`` ahead of the
    listener. A sentence the voice cannot say is skipped; a failing TTS -> a non-fatal
    ``tts_error`` and the rest of the reply is text only."""
    try:
        while (sentence := await sentences.get()) is not None:
            if reply.tts_failed:
                continue  # the text still arrives; there is no voice to say it
            await reply.playout.wait_for_room(TTS_AHEAD_S)
            started = time.monotonic()
            try:
                async with contextlib.aclosing(voice.speak(sentence)) as chunks:
                    async for chunk in chunks:
                        if reply.first_audio_at is None:
                            reply.first_audio_at = time.monotonic()
                            reply.tts_first = reply.first_audio_at - started
                        reply.playout.append(chunk.audio, chunk.sample_rate, sentence)
            except TextError as exc:  # nothing this voice can say in it: skip the sentence
                logger.info("agent session %s: sentence not spoken: %s", log_id, exc)
            except (EngineError, OSError, RuntimeError) as exc:
                reply.tts_failed = True
                logger.warning("agent session %s: TTS failed: %s", log_id, exc)
                emit(AgentError("tts_error", f"speech synthesis failed: {exc}; the reply "
                                "continues as text", turn_id=reply.turn_id))
    finally:
        reply.playout.finish_input()

"""What an :class:`~voxgate.agent.AgentSession` tells its door: small dataclasses, no transport.

Every event carries ``type`` (a stable string a door can switch on). Times named ``*_s`` are
seconds; ``at`` is a time on the session's own input audio clock (seconds of user audio
received), so a door can relate it to the audio it sent. ``turn_id`` numbers exchanges (user
turn n, answered by agent turn n); ``item_id`` names a conversation item (see
:class:`~voxgate.agent.history.Conversation`), which the OpenAI Realtime door exposes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

__all__ = [
    "AgentAudio",
    "AgentError",
    "AgentEvent",
    "AgentText",
    "AudioPaused",
    "AudioResumed",
    "Interruption",
    "ItemAdded",
    "TurnEnded",
    "TurnLatency",
    "TurnStarted",
    "UserSpeechStarted",
    "UserSpeechStopped",
    "UserTranscript",
]


@dataclass(slots=True)
class UserSpeechStarted:
    """VAD heard the user start speaking at ``at`` (input seconds)."""

    at: float
    turn_id: int
    type: str = "user_speech_started"


@dataclass(slots=True)
class UserSpeechStopped:
    """The user's speech stopped at ``at`` (a pause; the turn may still go on)."""

    at: float
    turn_id: int
    type: str = "user_speech_stopped"


@dataclass(slots=True)
class UserTranscript:
    """Recognised user speech. ``final=False``: a partial of the utterance in progress
    (``text`` replaces the previous partial); ``final=True``: one utterance's final text.
    ``turn_text`` is everything the user said in this turn so far."""

    turn_id: int
    text: str
    final: bool
    turn_text: str = ""
    stability: float = 0.0
    start: float = 0.0
    end: float = 0.0
    type: str = "user_transcript"


@dataclass(slots=True)
class ItemAdded:
    """A conversation item was added (user turn committed, assistant reply started, or an item
    created through :meth:`AgentSession.add_item`)."""

    item_id: str
    role: str
    text: str
    turn_id: int
    type: str = "item_added"


@dataclass(slots=True)
class TurnStarted:
    """``role="user"``: the user's turn began (first speech or text); ``role="agent"``: the
    agent took the floor (the user's turn ended and the reply is on its way)."""

    turn_id: int
    role: Literal["user", "agent"]
    item_id: str = ""
    text: str = ""  # agent: the user text being answered
    type: str = "turn_started"


@dataclass(slots=True)
class TurnEnded:
    """A turn is over. ``reason``: ``completed``, ``interrupted`` (barge-in), ``cancelled``
    (interrupt control / response cancel), ``cut`` (user turn reached ``max_turn_s``),
    ``error`` (LLM failed: an apology was given instead), ``dropped`` (empty user turn).
    ``text``: the user's whole text, or the agent's text as it stands in the history (for an
    interrupted reply: only what was played)."""

    turn_id: int
    role: Literal["user", "agent"]
    reason: str
    text: str = ""
    item_id: str = ""
    audio_s: float = 0.0  # agent: seconds of reply audio played
    type: str = "turn_ended"


@dataclass(slots=True)
class AgentText:
    """A piece of the agent's reply text, as the LLM produced it."""

    turn_id: int
    delta: str
    item_id: str = ""
    type: str = "agent_text"


@dataclass(slots=True, eq=False)  # compared by identity: it holds an array
class AgentAudio:
    """Reply audio, released in real time (a little ahead: ``playout_lead_ms``).

    ``audio``: float32 mono at ``sample_rate``; ``offset_s``: where it starts in the reply's
    audio. After :class:`AudioPaused` the client drops what it has not played yet; after
    :class:`AudioResumed` audio continues from the played position (offsets say where)."""

    turn_id: int
    audio: np.ndarray
    sample_rate: int
    offset_s: float
    item_id: str = ""
    text: str = ""  # the sentence this audio speaks
    type: str = "agent_audio"

    @property
    def duration_s(self) -> float:
        return self.audio.size / self.sample_rate


@dataclass(slots=True)
class AudioPaused:
    """The user started speaking over the agent: stop playback now, discard buffered audio.
    ``played_s`` is the reply position the server believes was heard."""

    turn_id: int
    played_s: float
    item_id: str = ""
    type: str = "audio_paused"


@dataclass(slots=True)
class AudioResumed:
    """A false interruption (cough, "mm-hm"): playback continues from ``offset_s``."""

    turn_id: int
    offset_s: float
    item_id: str = ""
    type: str = "audio_resumed"


@dataclass(slots=True)
class Interruption:
    """The agent's reply was cut (confirmed barge-in, ``interrupt()``, ``cancel_response()``);
    the history keeps ``played_text`` only (the part of the reply that was heard)."""

    turn_id: int
    played_text: str
    played_s: float
    reason: str = "barge_in"
    item_id: str = ""
    type: str = "interruption"


@dataclass(slots=True)
class TurnLatency:
    """Where the time went for one reply (seconds; None when that stage did not happen).

    ``end_of_turn_s``: user stopped speaking -> turn committed; ``asr_final_s``: user stopped
    -> final transcript; ``llm_ttft_s``: LLM request -> first token; ``tts_ttfa_s``: first
    sentence ready -> its first audio; ``voice_to_voice_s``: user stopped speaking -> first
    agent audio sent. ``speculative``: the reply had started before the turn was committed."""

    turn_id: int
    end_of_turn_s: float | None = None
    asr_final_s: float | None = None
    llm_ttft_s: float | None = None
    tts_ttfa_s: float | None = None
    voice_to_voice_s: float | None = None
    speculative: bool = False
    type: str = "latency"

    def as_dict(self) -> dict[str, Any]:
        return {k: (round(v, 4) if isinstance(v, float) else v)
                for k, v in (("end_of_turn_s", self.end_of_turn_s),
                             ("asr_final_s", self.asr_final_s),
                             ("llm_ttft_s", self.llm_ttft_s), ("tts_ttfa_s", self.tts_ttfa_s),
                             ("voice_to_voice_s", self.voice_to_voice_s),
                             ("speculative", self.speculative))}


@dataclass(slots=True)
class AgentError:
    """Something failed. ``fatal=False``: the session goes on (LLM down -> apology, TTS down
    -> text only); ``fatal=True``: the session is over (idle, client not reading, ASR died)."""

    code: str
    message: str
    fatal: bool = False
    turn_id: int | None = None
    details: dict[str, Any] = field(default_factory=dict)
    type: str = "error"


AgentEvent = (UserSpeechStarted | UserSpeechStopped | UserTranscript | ItemAdded | TurnStarted
              | TurnEnded | AgentText | AgentAudio | AudioPaused | AudioResumed | Interruption
              | TurnLatency | AgentError)

"""Options of one agent session: the server's ``AgentSettings`` plus a client's overrides.

Every error names the offending field (:class:`~voxgate.stream_config.StreamConfigError`), as
live streams do, so each door reports it in its own terms. Limits that protect the server
(max turn, idle timeout, buffers) are the server's alone; a client may choose its engines
(catalogue ids, checked by the door), voice, prompt and turn-taking within bounds.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..config import Settings
from ..stream_config import StreamConfigError

__all__ = ["AgentConfig", "CLIENT_FIELDS"]

_RANGES: dict[str, tuple[float, float]] = {
    "speed": (0.25, 4.0),
    "asr_endpointing_ms": (100, 5000),
    "end_of_turn_ms": (100, 10_000),
    "unfinished_wait_ms": (0, 10_000),
    "complete_wait_ms": (100, 10_000),
    "min_words": (0, 50),
    "barge_in_min_ms": (0, 10_000),
    "pause_onset_ms": (0, 5000),
    "barge_in_min_words": (1, 50),
    "resume_after_ms": (100, 30_000),
    "max_reply_tokens": (1, 8192),
    "temperature": (0.0, 2.0),
    "history_tokens": (64, 1_000_000),
    "max_turn_s": (1.0, 3600.0),
    "idle_timeout_s": (0.1, 86_400.0),
    "llm_timeout_s": (0.1, 3600.0),
    "playout_lead_ms": (0, 5000),
    "max_out_buffer_s": (0.5, 600.0),
    "out_stall_timeout_s": (0.1, 600.0),
    "output_sample_rate": (8000, 48_000),
    "vad_threshold": (0.01, 0.99),
    "speech_pad_ms": (0, 1000),
    "min_speech_ms": (0, 5000),
}
# None: the server's default
_OPTIONAL = frozenset({"output_sample_rate", "vad_threshold", "speech_pad_ms", "min_speech_ms"})

# what a network client may set in its config message (the rest is the server's)
CLIENT_FIELDS = frozenset({
    "system_prompt", "language", "voice", "speed", "asr_model", "partial_model", "llm_model",
    "turn_detection", "auto_respond", "barge_in", "end_of_turn_ms", "unfinished_wait_ms",
    "complete_wait_ms", "pause_onset_ms",
    "min_words", "barge_in_min_ms", "barge_in_min_words", "resume_after_ms", "max_reply_tokens",
    "temperature", "output_sample_rate", "asr_endpointing_ms", "vad_threshold", "speech_pad_ms",
    "min_speech_ms"})


@dataclass(slots=True)
class AgentConfig:
    """One session's options; build with :meth:`from_settings` (server defaults + overrides).

    Turn-taking: with ``turn_detection`` the user's turn ends after ``end_of_turn_ms`` of
    silence (``unfinished_wait_ms`` when the text is clearly unfinished, ``complete_wait_ms``
    when it is a question asked) and at least ``min_words`` words; the ASR closes an
    utterance after ``asr_endpointing_ms`` and its final starts the reply speculatively
    (dropped if the user goes on); with ``prefill`` each partial transcript has the LLM read
    the conversation so far into its prompt cache (llama.cpp), so the reply starts sooner.
    ``auto_respond``: a committed turn starts a reply (else the door calls
    ``create_response``). ``barge_in``:
    user speech over the agent pauses it (after ``pause_onset_ms`` of VAD speech, at once, or
    with 0 once ``min_speech_ms`` confirmed it; a blip the VAD drops resumes it at once);
    ``barge_in_min_ms`` of speech or
    ``barge_in_min_words`` words confirm it, else playback resumes after ``resume_after_ms``.
    """

    system_prompt: str = ""
    language: str | None = "en"
    voice: str | None = None  # None: VOXGATE_TTS__VOICE
    speed: float = 1.0
    asr_model: str | None = None  # None: VOXGATE_ASR__MODEL
    partial_model: str | None = None  # None: VOXGATE_ASR__PARTIAL_MODEL
    llm_model: str | None = None  # None: the server's LLM (VOXGATE_LLM__*)
    turn_detection: bool = True
    auto_respond: bool = True
    barge_in: bool = True
    asr_endpointing_ms: int = 250
    end_of_turn_ms: int = 600
    unfinished_wait_ms: int = 1500
    complete_wait_ms: int = 400
    min_words: int = 1
    barge_in_min_ms: int = 600
    pause_onset_ms: int = 32  # 0: pause on the confirmed speech start (min_speech_ms)
    barge_in_min_words: int = 2
    resume_after_ms: int = 2000
    max_reply_tokens: int = 200
    temperature: float = 0.0
    history_tokens: int = 2048
    max_turn_s: float = 30.0
    idle_timeout_s: float = 120.0
    llm_timeout_s: float = 20.0
    cache_prompt: bool = True
    prefill: bool = True
    playout_lead_ms: int = 200
    max_out_buffer_s: float = 10.0
    out_stall_timeout_s: float = 10.0
    output_sample_rate: int | None = None  # None: the voice's own rate
    vad_threshold: float | None = None  # the ASR stream's VAD (None: VOXGATE_STREAMING__*)
    speech_pad_ms: int | None = None  # audio kept before detected speech (None: the server's)
    # speech this long starts a turn / pauses the agent (barge-in detection time; None: the
    # server's live-stream default)
    min_speech_ms: int | None = None
    apology: str = "Sorry, I can't answer that right now."
    max_prompt_chars: int = 8000

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> AgentConfig:
        """Server defaults (``VOXGATE_AGENT__*``) with ``overrides`` (None values ignored)."""
        a = settings.agent
        base = cls(**{f.name: getattr(a, f.name) for f in dataclasses.fields(cls)
                      if hasattr(a, f.name)})
        for name in ("voice", "asr_model", "partial_model", "llm_model"):
            if not getattr(base, name):
                setattr(base, name, None)  # an empty setting: the server's default engine
        names = {f.name for f in dataclasses.fields(cls)}
        for key, value in overrides.items():
            if key not in names:
                raise StreamConfigError(key, "unknown option")
            if value is not None:
                setattr(base, key, value)
        if base.max_reply_tokens > a.max_reply_tokens:
            raise StreamConfigError("max_reply_tokens", f"must be at most {a.max_reply_tokens} "
                                                        "on this server")
        base.validate()
        return base

    def validate(self) -> None:
        """Raise :class:`StreamConfigError` naming the first bad field."""
        if not isinstance(self.system_prompt, str) or len(self.system_prompt) > \
                self.max_prompt_chars:
            raise StreamConfigError("system_prompt", f"must be text of at most "
                                                     f"{self.max_prompt_chars} characters")
        if self.language is not None and (not isinstance(self.language, str)
                                          or not 2 <= len(self.language) <= 8):
            raise StreamConfigError("language", f"must be a language code like 'en', "
                                                f"got {self.language!r}")
        for name in ("voice", "asr_model", "partial_model", "llm_model"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise StreamConfigError(name, "must be a non-empty id")
        for name in ("turn_detection", "auto_respond", "barge_in", "cache_prompt", "prefill"):
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
        if self.end_of_turn_ms < self.asr_endpointing_ms:
            raise StreamConfigError("end_of_turn_ms", "must be at least asr_endpointing_ms "
                                                      f"({self.asr_endpointing_ms})")

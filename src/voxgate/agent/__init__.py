"""Voice agent: user speech in -> ASR -> LLM -> TTS -> agent speech out, with barge-in.

Transport-free; the doors (WebSocket ``/v1/agent``, gRPC ``voxgate.v1.VoiceWorkflow``, OpenAI
Realtime ``/v1/realtime``) are thin adapters over this API (add, never rename)::

    service = AgentService(settings, manager, streaming, speech)   # one per process
    session = await service.open(service.config(voice="en_US-joe-medium", system_prompt=...))
    await session.accept(samples)          # float32 mono 16 kHz (doors convert: PcmInput)
    async for event in session.events():   # AgentEvent dataclasses (agent/events.py)
        ...
    await session.end()  # or: await session.close()  (always close in a finally)

Input (any task): ``accept(samples)``; ``send_text(text)`` (a typed user turn, answered);
``flush()`` (the user's turn ends now); ``interrupt()`` (stop the agent, keep what was heard);
``end()`` (no more input: answer, play, then events end); ``close()`` (abandon, free all).

Manual turn control (Realtime; set ``turn_detection=False`` and/or ``auto_respond=False``):
``commit_input() -> Item | None``, ``clear_input()``, ``create_response(instructions) ->
turn_id``, ``cancel_response() -> Interruption | None``, ``add_item(role, text, after=)``,
``delete_item(item_id)``, ``truncate_item(item_id, audio_end_s)``, ``history`` (items),
``output_sample_rate`` (reply audio rate: ``config.output_sample_rate`` or the voice's own),
``playback() -> (turn_id, item_id, played_s) | None`` (the reply heard so far, at any moment).

Events out (``type``): ``user_speech_started`` / ``user_speech_stopped`` (VAD, input clock),
``user_transcript`` (partial or final), ``turn_started`` / ``turn_ended`` (role user|agent,
reason), ``item_added``, ``agent_text`` (LLM deltas), ``agent_audio`` (float32 at
``output_sample_rate``, paced in real time ``playout_lead_ms`` ahead, ``offset_s`` in the reply),
``audio_paused`` (barge-in: client drops unplayed audio) / ``audio_resumed`` (false
interruption: from ``offset_s``), ``interruption`` (reply cut; ``played_text`` stays in the
history), ``latency`` (end of turn, ASR final, LLM TTFT, TTS TTFA, voice-to-voice), ``error``
(``fatal=False``: LLM down -> apology, TTS down -> text only; ``fatal=True``: idle, client not
reading, ASR failed -> the door closes).

Turn-taking: the ASR closes an utterance after ``asr_endpointing_ms`` of silence; its final
starts the LLM (and TTS) speculatively, held back until ``end_of_turn_ms`` of silence commits
the turn (``unfinished_wait_ms`` when the text ends mid-sentence, e.g. in "and" or a comma),
dropped if the user goes on. A turn longer than ``max_turn_s`` is cut and answered (the
speech still going on then is not heard). Barge-in: user speech over the reply pauses it at
once; ``barge_in_min_ms`` of speech or ``barge_in_min_words`` words confirm it (reply
cancelled, history truncated to what was played, the speech becomes the next user turn); else
playback resumes after ``resume_after_ms`` (or as soon as a too-short final arrives).
"""

from .events import (
    AgentAudio,
    AgentError,
    AgentEvent,
    AgentText,
    AudioPaused,
    AudioResumed,
    Interruption,
    ItemAdded,
    TurnEnded,
    TurnLatency,
    TurnStarted,
    UserSpeechStarted,
    UserSpeechStopped,
    UserTranscript,
)
from .history import Conversation, Item
from .options import CLIENT_FIELDS, AgentConfig
from .service import AgentLimitError, AgentService, SpeechVoice, agent_llm_id
from .session import AgentSession, AsrStream, Voice

__all__ = [
    "CLIENT_FIELDS",
    "AgentAudio",
    "AgentConfig",
    "AgentError",
    "AgentEvent",
    "AgentLimitError",
    "AgentService",
    "AgentSession",
    "AgentText",
    "AsrStream",
    "AudioPaused",
    "AudioResumed",
    "Conversation",
    "Interruption",
    "Item",
    "ItemAdded",
    "SpeechVoice",
    "TurnEnded",
    "TurnLatency",
    "TurnStarted",
    "UserSpeechStarted",
    "UserSpeechStopped",
    "UserTranscript",
    "Voice",
    "agent_llm_id",
]

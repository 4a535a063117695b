from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AudioEncoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AUDIO_ENCODING_UNSPECIFIED: _ClassVar[AudioEncoding]
    PCM16: _ClassVar[AudioEncoding]
    F32: _ClassVar[AudioEncoding]
AUDIO_ENCODING_UNSPECIFIED: AudioEncoding
PCM16: AudioEncoding
F32: AudioEncoding

class ClientMessage(_message.Message):
    __slots__ = ("config", "audio", "text", "control")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    CONTROL_FIELD_NUMBER: _ClassVar[int]
    config: SessionConfig
    audio: UserAudio
    text: UserText
    control: Control
    def __init__(self, config: _Optional[_Union[SessionConfig, _Mapping]] = ..., audio: _Optional[_Union[UserAudio, _Mapping]] = ..., text: _Optional[_Union[UserText, _Mapping]] = ..., control: _Optional[_Union[Control, _Mapping]] = ...) -> None: ...

class SessionConfig(_message.Message):
    __slots__ = ("asr_model", "llm_model", "voice", "language", "system_prompt", "sample_rate_hz", "encoding", "output_sample_rate_hz", "interim_results", "end_of_turn_ms", "partial_model", "speed", "turn_detection", "barge_in", "unfinished_wait_ms", "min_words", "barge_in_min_ms", "barge_in_min_words", "resume_after_ms", "max_reply_tokens", "temperature", "asr_endpointing_ms", "channels", "complete_wait_ms", "pause_onset_ms")
    ASR_MODEL_FIELD_NUMBER: _ClassVar[int]
    LLM_MODEL_FIELD_NUMBER: _ClassVar[int]
    VOICE_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_PROMPT_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_HZ_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_SAMPLE_RATE_HZ_FIELD_NUMBER: _ClassVar[int]
    INTERIM_RESULTS_FIELD_NUMBER: _ClassVar[int]
    END_OF_TURN_MS_FIELD_NUMBER: _ClassVar[int]
    PARTIAL_MODEL_FIELD_NUMBER: _ClassVar[int]
    SPEED_FIELD_NUMBER: _ClassVar[int]
    TURN_DETECTION_FIELD_NUMBER: _ClassVar[int]
    BARGE_IN_FIELD_NUMBER: _ClassVar[int]
    UNFINISHED_WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    MIN_WORDS_FIELD_NUMBER: _ClassVar[int]
    BARGE_IN_MIN_MS_FIELD_NUMBER: _ClassVar[int]
    BARGE_IN_MIN_WORDS_FIELD_NUMBER: _ClassVar[int]
    RESUME_AFTER_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_REPLY_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    ASR_ENDPOINTING_MS_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    COMPLETE_WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    PAUSE_ONSET_MS_FIELD_NUMBER: _ClassVar[int]
    asr_model: str
    llm_model: str
    voice: str
    language: str
    system_prompt: str
    sample_rate_hz: int
    encoding: AudioEncoding
    output_sample_rate_hz: int
    interim_results: bool
    end_of_turn_ms: int
    partial_model: str
    speed: float
    turn_detection: bool
    barge_in: bool
    unfinished_wait_ms: int
    min_words: int
    barge_in_min_ms: int
    barge_in_min_words: int
    resume_after_ms: int
    max_reply_tokens: int
    temperature: float
    asr_endpointing_ms: int
    channels: int
    complete_wait_ms: int
    pause_onset_ms: int
    def __init__(self, asr_model: _Optional[str] = ..., llm_model: _Optional[str] = ..., voice: _Optional[str] = ..., language: _Optional[str] = ..., system_prompt: _Optional[str] = ..., sample_rate_hz: _Optional[int] = ..., encoding: _Optional[_Union[AudioEncoding, str]] = ..., output_sample_rate_hz: _Optional[int] = ..., interim_results: _Optional[bool] = ..., end_of_turn_ms: _Optional[int] = ..., partial_model: _Optional[str] = ..., speed: _Optional[float] = ..., turn_detection: _Optional[bool] = ..., barge_in: _Optional[bool] = ..., unfinished_wait_ms: _Optional[int] = ..., min_words: _Optional[int] = ..., barge_in_min_ms: _Optional[int] = ..., barge_in_min_words: _Optional[int] = ..., resume_after_ms: _Optional[int] = ..., max_reply_tokens: _Optional[int] = ..., temperature: _Optional[float] = ..., asr_endpointing_ms: _Optional[int] = ..., channels: _Optional[int] = ..., complete_wait_ms: _Optional[int] = ..., pause_onset_ms: _Optional[int] = ...) -> None: ...

class UserAudio(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class UserText(_message.Message):
    __slots__ = ("text",)
    TEXT_FIELD_NUMBER: _ClassVar[int]
    text: str
    def __init__(self, text: _Optional[str] = ...) -> None: ...

class Control(_message.Message):
    __slots__ = ("action",)
    class Action(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        ACTION_UNSPECIFIED: _ClassVar[Control.Action]
        INTERRUPT: _ClassVar[Control.Action]
        FLUSH: _ClassVar[Control.Action]
        END: _ClassVar[Control.Action]
    ACTION_UNSPECIFIED: Control.Action
    INTERRUPT: Control.Action
    FLUSH: Control.Action
    END: Control.Action
    ACTION_FIELD_NUMBER: _ClassVar[int]
    action: Control.Action
    def __init__(self, action: _Optional[_Union[Control.Action, str]] = ...) -> None: ...

class ServerMessage(_message.Message):
    __slots__ = ("ready", "transcript", "agent_text", "audio", "turn", "latency", "interruption", "error", "speech")
    READY_FIELD_NUMBER: _ClassVar[int]
    TRANSCRIPT_FIELD_NUMBER: _ClassVar[int]
    AGENT_TEXT_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    TURN_FIELD_NUMBER: _ClassVar[int]
    LATENCY_FIELD_NUMBER: _ClassVar[int]
    INTERRUPTION_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    SPEECH_FIELD_NUMBER: _ClassVar[int]
    ready: Ready
    transcript: Transcript
    agent_text: AgentText
    audio: AgentAudio
    turn: Turn
    latency: Latency
    interruption: Interruption
    error: Error
    speech: UserSpeech
    def __init__(self, ready: _Optional[_Union[Ready, _Mapping]] = ..., transcript: _Optional[_Union[Transcript, _Mapping]] = ..., agent_text: _Optional[_Union[AgentText, _Mapping]] = ..., audio: _Optional[_Union[AgentAudio, _Mapping]] = ..., turn: _Optional[_Union[Turn, _Mapping]] = ..., latency: _Optional[_Union[Latency, _Mapping]] = ..., interruption: _Optional[_Union[Interruption, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ..., speech: _Optional[_Union[UserSpeech, _Mapping]] = ...) -> None: ...

class Ready(_message.Message):
    __slots__ = ("session_id", "asr_model", "llm_model", "voice", "language", "input_sample_rate_hz", "output_sample_rate_hz")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    ASR_MODEL_FIELD_NUMBER: _ClassVar[int]
    LLM_MODEL_FIELD_NUMBER: _ClassVar[int]
    VOICE_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    INPUT_SAMPLE_RATE_HZ_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_SAMPLE_RATE_HZ_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    asr_model: str
    llm_model: str
    voice: str
    language: str
    input_sample_rate_hz: int
    output_sample_rate_hz: int
    def __init__(self, session_id: _Optional[str] = ..., asr_model: _Optional[str] = ..., llm_model: _Optional[str] = ..., voice: _Optional[str] = ..., language: _Optional[str] = ..., input_sample_rate_hz: _Optional[int] = ..., output_sample_rate_hz: _Optional[int] = ...) -> None: ...

class UserSpeech(_message.Message):
    __slots__ = ("turn_id", "started", "at_s")
    TURN_ID_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    AT_S_FIELD_NUMBER: _ClassVar[int]
    turn_id: int
    started: bool
    at_s: float
    def __init__(self, turn_id: _Optional[int] = ..., started: _Optional[bool] = ..., at_s: _Optional[float] = ...) -> None: ...

class Transcript(_message.Message):
    __slots__ = ("turn_id", "text", "is_final", "turn_text", "start_s", "end_s", "stability")
    TURN_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    IS_FINAL_FIELD_NUMBER: _ClassVar[int]
    TURN_TEXT_FIELD_NUMBER: _ClassVar[int]
    START_S_FIELD_NUMBER: _ClassVar[int]
    END_S_FIELD_NUMBER: _ClassVar[int]
    STABILITY_FIELD_NUMBER: _ClassVar[int]
    turn_id: int
    text: str
    is_final: bool
    turn_text: str
    start_s: float
    end_s: float
    stability: float
    def __init__(self, turn_id: _Optional[int] = ..., text: _Optional[str] = ..., is_final: _Optional[bool] = ..., turn_text: _Optional[str] = ..., start_s: _Optional[float] = ..., end_s: _Optional[float] = ..., stability: _Optional[float] = ...) -> None: ...

class AgentText(_message.Message):
    __slots__ = ("turn_id", "delta", "item_id")
    TURN_ID_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    turn_id: int
    delta: str
    item_id: str
    def __init__(self, turn_id: _Optional[int] = ..., delta: _Optional[str] = ..., item_id: _Optional[str] = ...) -> None: ...

class AgentAudio(_message.Message):
    __slots__ = ("turn_id", "data", "sample_rate_hz", "playout_s", "text", "item_id")
    TURN_ID_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_HZ_FIELD_NUMBER: _ClassVar[int]
    PLAYOUT_S_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    turn_id: int
    data: bytes
    sample_rate_hz: int
    playout_s: float
    text: str
    item_id: str
    def __init__(self, turn_id: _Optional[int] = ..., data: _Optional[bytes] = ..., sample_rate_hz: _Optional[int] = ..., playout_s: _Optional[float] = ..., text: _Optional[str] = ..., item_id: _Optional[str] = ...) -> None: ...

class Turn(_message.Message):
    __slots__ = ("turn_id", "speaker", "kind", "text", "reason", "interrupted", "audio_s", "item_id")
    class Speaker(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        SPEAKER_UNSPECIFIED: _ClassVar[Turn.Speaker]
        USER: _ClassVar[Turn.Speaker]
        AGENT: _ClassVar[Turn.Speaker]
    SPEAKER_UNSPECIFIED: Turn.Speaker
    USER: Turn.Speaker
    AGENT: Turn.Speaker
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        KIND_UNSPECIFIED: _ClassVar[Turn.Kind]
        START: _ClassVar[Turn.Kind]
        END: _ClassVar[Turn.Kind]
    KIND_UNSPECIFIED: Turn.Kind
    START: Turn.Kind
    END: Turn.Kind
    TURN_ID_FIELD_NUMBER: _ClassVar[int]
    SPEAKER_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    INTERRUPTED_FIELD_NUMBER: _ClassVar[int]
    AUDIO_S_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    turn_id: int
    speaker: Turn.Speaker
    kind: Turn.Kind
    text: str
    reason: str
    interrupted: bool
    audio_s: float
    item_id: str
    def __init__(self, turn_id: _Optional[int] = ..., speaker: _Optional[_Union[Turn.Speaker, str]] = ..., kind: _Optional[_Union[Turn.Kind, str]] = ..., text: _Optional[str] = ..., reason: _Optional[str] = ..., interrupted: _Optional[bool] = ..., audio_s: _Optional[float] = ..., item_id: _Optional[str] = ...) -> None: ...

class Latency(_message.Message):
    __slots__ = ("turn_id", "end_of_turn_s", "asr_final_s", "llm_first_token_s", "tts_first_audio_s", "voice_to_voice_s", "speculative")
    TURN_ID_FIELD_NUMBER: _ClassVar[int]
    END_OF_TURN_S_FIELD_NUMBER: _ClassVar[int]
    ASR_FINAL_S_FIELD_NUMBER: _ClassVar[int]
    LLM_FIRST_TOKEN_S_FIELD_NUMBER: _ClassVar[int]
    TTS_FIRST_AUDIO_S_FIELD_NUMBER: _ClassVar[int]
    VOICE_TO_VOICE_S_FIELD_NUMBER: _ClassVar[int]
    SPECULATIVE_FIELD_NUMBER: _ClassVar[int]
    turn_id: int
    end_of_turn_s: float
    asr_final_s: float
    llm_first_token_s: float
    tts_first_audio_s: float
    voice_to_voice_s: float
    speculative: bool
    def __init__(self, turn_id: _Optional[int] = ..., end_of_turn_s: _Optional[float] = ..., asr_final_s: _Optional[float] = ..., llm_first_token_s: _Optional[float] = ..., tts_first_audio_s: _Optional[float] = ..., voice_to_voice_s: _Optional[float] = ..., speculative: _Optional[bool] = ...) -> None: ...

class Interruption(_message.Message):
    __slots__ = ("turn_id", "state", "playout_s", "played_text", "reason", "item_id")
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATE_UNSPECIFIED: _ClassVar[Interruption.State]
        PAUSED: _ClassVar[Interruption.State]
        CONFIRMED: _ClassVar[Interruption.State]
        RESUMED: _ClassVar[Interruption.State]
    STATE_UNSPECIFIED: Interruption.State
    PAUSED: Interruption.State
    CONFIRMED: Interruption.State
    RESUMED: Interruption.State
    TURN_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PLAYOUT_S_FIELD_NUMBER: _ClassVar[int]
    PLAYED_TEXT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    turn_id: int
    state: Interruption.State
    playout_s: float
    played_text: str
    reason: str
    item_id: str
    def __init__(self, turn_id: _Optional[int] = ..., state: _Optional[_Union[Interruption.State, str]] = ..., playout_s: _Optional[float] = ..., played_text: _Optional[str] = ..., reason: _Optional[str] = ..., item_id: _Optional[str] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("code", "message", "field", "fatal", "turn_id")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    FIELD_FIELD_NUMBER: _ClassVar[int]
    FATAL_FIELD_NUMBER: _ClassVar[int]
    TURN_ID_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    field: str
    fatal: bool
    turn_id: int
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ..., field: _Optional[str] = ..., fatal: _Optional[bool] = ..., turn_id: _Optional[int] = ...) -> None: ...

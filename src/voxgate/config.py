"""Settings: built once at start-up and passed down explicitly (never a module global).

Every value comes from the environment (prefix ``VOXGATE_``, nested groups joined with ``__``,
e.g. ``VOXGATE_LLM__BASE_URL``) or a ``.env`` file. Nothing else in voxgate reads ``os.environ``.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

__all__ = ["Settings", "AsrSettings", "StreamingSettings", "RivaSettings", "LlmSettings",
           "OnnxSettings", "TtsSettings", "TranslationSettings", "AgentSettings", "LogSettings",
           "TracingSettings",
           "default_cache_dir", "load_settings"]


def default_cache_dir() -> Path:
    """The user's cache dir (XDG), where joined model packs live."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "voxgate"


class AsrSettings(BaseModel):
    """Speech recognition defaults; requests may override model, language and beam size."""

    model: str = "whisper-base"
    partial_model: str = "whisper-tiny.en"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    compute_type: str = "default"  # int8 on CPU, float16 on CUDA when "default"
    cpu_threads: int = 0  # 0: CTranslate2 picks
    beam_size: int = Field(5, ge=1, le=20)
    batch_size: int = Field(8, ge=1, le=64)
    # while live streams are served, file work takes a shared model this many chunks at a time
    # (a live final waits for at most one such unit instead of a whole batch)
    file_unit_chunks: int = Field(2, ge=1, le=64)
    # once live streams were served, file work runs on a copy of the model at this OS nice
    # value (CPU, Linux), so live decoding gets the cores first; 0: one shared model (units)
    file_lane_nice: int = Field(19, ge=0, le=19)
    # longest chunk the VAD packs for a file (Whisper's window is 30 s)
    max_chunk_s: float = Field(30.0, gt=1.0, le=30.0)
    # Parakeet encodes an utterance up to this long whole (full attention: memory grows with
    # the square of the length); longer ones in windows overlapping by the context below
    parakeet_max_whole_s: float = Field(300.0, ge=30.0, le=3600.0)
    parakeet_window_context_s: float = Field(10.0, ge=0.0, le=600.0)
    vad_threshold: float = Field(0.5, gt=0.0, lt=1.0)
    min_silence_ms: int = Field(500, ge=0)
    # 400 ms as faster-whisper: less clips word onsets (200 ms cost Whisper words on real speech)
    speech_pad_ms: int = Field(400, ge=0)

    @model_validator(mode="after")
    def _parakeet_windows_keep_audio(self) -> AsrSettings:
        if 3 * self.parakeet_window_context_s > self.parakeet_max_whole_s:
            raise ValueError("parakeet_window_context_s must be at most a third of "
                             "parakeet_max_whole_s (each window keeps what lies between its "
                             "two contexts)")
        return self


class LlmSettings(BaseModel):
    """LLM for cleanup / summaries / translation. Empty ``base_url``: the offline GGUF in-process."""

    base_url: str = ""
    api_key: str = ""
    model: str = "qwen2.5-coder-1.5b-instruct-q4km"
    timeout_s: float = 120.0
    max_retries: int = 3
    context_tokens: int = 8192
    threads: int = 0
    seed: int = 42  # fixed sampling seed: identical input -> identical output
    # the OpenAI-compatible server (base_url) takes llama.cpp's GBNF ``grammar`` field (a
    # llama.cpp server): Russian translations are then constrained to Cyrillic as in-process
    # (engines/mt_grammar.py); off: JSON schema + guard only (OpenAI rejects the field)
    grammar: bool = False
    summary_retries: int = Field(2, ge=0, le=10)  # re-asks after a schema validation error
    summary_max_tokens: int = Field(768, ge=32)
    cleanup_max_edit_rate: float = Field(0.35, ge=0.0, le=1.0)  # above: keep the raw chunk
    # once live work (agent, translation) was served, file work (jobs) runs on a second
    # llama.cpp server at this OS nice value (CPU, Linux); 0: one shared server
    file_lane_nice: int = Field(19, ge=0, le=19)
    # Cleanup (issue 14, bench/cleanup.py): "rewrite" asks for the chunk again (its words then
    # put back), "edits" for a JSON list of {old, new} edits checked in code: fewer tokens when
    # few fixes are needed, but ~2.4x the rewrite's on an unpunctuated chunk (measured)
    cleanup_method: Literal["edits", "rewrite"] = "rewrite"
    cleanup_model: str = ""  # empty: `model`; e.g. qwen2.5-coder-0.5b-instruct-q4km
    cleanup_keep_words: bool = True  # only punctuation/casing may change: WER stays the raw's
    cleanup_skip_punctuated: bool = True  # chunks the ASR punctuated and cased skip the LLM
    cleanup_skip_min_confidence: float = Field(0.6, ge=0.0, le=1.0)  # ...when ASR is this sure
    cleanup_chunk_words: int = Field(200, ge=20, le=2000)
    # Summaries (issue 14, bench/jobs_summary.py): with a grammar the prompt names the template's
    # keys and the JSON Schema is enforced by the grammar alone (True: the whole schema in the
    # prompt, as before); lists of at most summary_max_items items of at most
    # summary_max_item_chars characters (0: the template's own bounds)
    summary_schema_in_prompt: bool = False
    summary_max_items: int = Field(5, ge=0, le=100)
    summary_max_item_chars: int = Field(200, ge=0, le=10_000)
    # In-process llama.cpp (issue 12, bench/README.md "Voice agent: a llama.cpp slot per
    # session"): slots kept for live conversations, each holding its own conversation's prompt
    # cache (requests without a conversation share slot 0); -1: VOXGATE_AGENT__MAX_SESSIONS (at
    # most 16); 0: one slot for everything, as before. The KV pool is shared: context_tokens +
    # session_slot_tokens per session slot (28 KB a token for the 1.5B Qwen: 56 MB a slot);
    # when it is full llama.cpp frees idle slots (a conversation then re-reads its prompt).
    session_slots: int = Field(-1, ge=-1, le=64)
    session_slot_tokens: int = Field(2048, ge=0, le=131_072)


class TtsSettings(BaseModel):
    """Speech out (``voxgate say``, /v1/audio/speech, Riva TTS, Wyoming TTS, the agent)."""

    voice: str = "en_US-joe-medium"  # default voice id (see `voxgate models list`)
    max_input_chars: int = Field(4096, ge=1, le=1_000_000)  # one request's text
    max_sentence_chars: int = Field(300, ge=20, le=5000)  # longer sentences split at clauses
    espeak_voice: str = "en-us"  # espeak engine's default language voice
    festival_voice: str = ""  # Festival's default voice; empty: the first installed
    max_concurrent: int = Field(4, ge=1, le=256)  # syntheses at once, all doors together
    # OpenAI voice name -> voxgate voice id (e.g. {"nova": "festival:cmu_us_slt_arctic_hts"});
    # a name not mapped here (or mapped to a voice not installed) speaks with `voice`
    openai_voices: dict[str, str] = {}


class OnnxSettings(BaseModel):
    """ONNX Runtime execution providers and threads (Parakeet, VAD, Piper)."""

    providers: list[str] = ["CPUExecutionProvider"]
    intra_op_threads: int = 0
    inter_op_threads: int = 0
    trt_fp16: bool = True
    trt_engine_cache_dir: str = ""


class StreamingSettings(BaseModel):
    """Live transcription (WebSocket /v1/asr, Riva gRPC): endpointing, scheduling and limits.

    A client's config message may override the per-stream values (endpointing, models...);
    the limits (frame size, idle timeout, pending finals) are the server's alone.
    """

    endpointing_ms: int = Field(300, ge=100, le=5000)  # silence that ends an utterance
    min_speech_ms: int = Field(250, ge=0, le=5000)  # shorter blips are not utterances
    speech_pad_ms: int = Field(200, ge=0, le=1000)  # audio kept around speech for the decoder
    vad_threshold: float = Field(0.5, gt=0.0, lt=1.0)
    partial_interval_ms: int = Field(500, ge=100, le=10_000)  # stream time between partials
    max_utterance_s: float = Field(20.0, ge=2.0, le=30.0)  # force a final past this length
    final_beam_size: int = Field(1, ge=1, le=20)
    partial_beam_size: int = Field(1, ge=1, le=20)
    max_beam_size: int = Field(5, ge=1, le=20)  # the largest beam a client may ask for
    # Whisper encoder window for live decodes: utterance + window_margin_s (whole seconds), not
    # 30 s; short_window=false: the full 30 s window (slower, the file path's behaviour)
    short_window: bool = True
    window_margin_s: float = Field(2.0, ge=0.0, le=30.0)
    # start decoding the final after speculative_after_ms of silence (the audio up to there);
    # deliver it when the endpoint is confirmed, discard it if speech resumes first
    speculative_finals: bool = True
    speculative_after_ms: int = Field(100, ge=0, le=5000)
    batch_max_size: int = Field(8, ge=1, le=64)  # finals from many streams decoded together
    batch_max_wait_ms: int = Field(15, ge=0, le=1000)  # how long a final waits for company
    max_pending_finals: int = Field(4, ge=1, le=64)  # per stream; beyond this, reading pauses
    idle_timeout_s: float = Field(30.0, gt=0.0)  # no message for this long closes the stream
    max_frame_bytes: int = Field(1 << 20, ge=1024)  # one WebSocket frame / gRPC audio chunk
    max_recognize_mb: int = Field(64, ge=1)  # Riva Recognize (whole file in one message)


class RivaSettings(BaseModel):
    """A remote NVIDIA Riva server used as an ASR / TTS / MT engine (``engines/asr_riva.py``,
    ``engines/tts_riva.py``, ``engines/mt_riva.py``)."""

    uri: str = "localhost:50051"
    use_ssl: bool = False
    ssl_root_cert: str = ""  # PEM file; empty with use_ssl: the system roots
    api_key: str = ""  # sent as metadata ``authorization: Bearer <key>``
    metadata: Annotated[list[str], NoDecode] = []  # extra "key=value" pairs
    model: str = ""  # Riva model name; empty: the server's default
    timeout_s: float = Field(30.0, gt=0.0)  # per call
    max_retries: int = Field(3, ge=0, le=10)  # on UNAVAILABLE, exponential backoff
    backoff_s: float = Field(0.2, ge=0.0)  # first retry delay; doubles each time
    # the Riva TTS engine (voice "riva-tts"): the server's voice name (empty: its default for
    # the language) and the rate audio is asked for
    tts_voice: str = ""
    tts_sample_rate: int = Field(22050, ge=8000, le=48000)
    # the Riva NMT engine (mt "riva"): the server's NMT model name (empty: its default)
    nmt_model: str = ""

    @field_validator("metadata", mode="before")
    @classmethod
    def _split_metadata(cls, value: object) -> object:
        if isinstance(value, str):
            return [k.strip() for k in value.split(",") if k.strip()]
        return value


class AgentSettings(BaseModel):
    """The voice agent (WebSocket /v1/agent, gRPC VoiceWorkflow, /v1/realtime): defaults of
    every session (a client's config may change the turn-taking ones, see agent/options.py)
    and the server's limits."""

    max_sessions: int = Field(4, ge=1, le=1000)  # agent sessions at once (each holds a stream)
    system_prompt: str = ("You are a helpful voice assistant. Answer in one to three short "
                          "spoken sentences of plain text: no lists, no markdown, no emoji.")
    llm_model: str = ""  # empty: the jobs' LLM (VOXGATE_LLM__BASE_URL or VOXGATE_LLM__MODEL)
    voice: str = ""  # empty: VOXGATE_TTS__VOICE
    language: str = "en"
    asr_model: str = ""  # empty: VOXGATE_ASR__MODEL (finals)
    partial_model: str = ""  # empty: VOXGATE_ASR__PARTIAL_MODEL
    asr_endpointing_ms: int = Field(250, ge=100, le=5000)  # ASR final: the reply starts early
    # speech this long starts a turn or pauses the agent (the barge-in detection time; blips
    # shorter than this are ignored; a false start is undone by the resume rule)
    min_speech_ms: int = Field(160, ge=0, le=5000)
    # speech over the agent this long pauses its audio at once (one 32 ms VAD frame above the
    # threshold), before min_speech_ms confirms it as speech; a blip resumes playback as soon
    # as the VAD drops it; 0: pause only on the confirmed start (min_speech_ms), as before
    pause_onset_ms: int = Field(32, ge=0, le=5000)
    end_of_turn_ms: int = Field(600, ge=100, le=10_000)  # silence that ends the user's turn
    unfinished_wait_ms: int = Field(1500, ge=0, le=10_000)  # ... when the text is unfinished
    complete_wait_ms: int = Field(400, ge=100, le=10_000)  # ... when it is a question asked
    min_words: int = Field(1, ge=0, le=50)
    barge_in_min_ms: int = Field(600, ge=0, le=10_000)  # speech over the agent that confirms
    barge_in_min_words: int = Field(2, ge=1, le=50)  # ... or this many words
    resume_after_ms: int = Field(2000, ge=100, le=30_000)  # unconfirmed: playback resumes
    max_reply_tokens: int = Field(200, ge=1, le=8192)
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    history_tokens: int = Field(2048, ge=64)  # conversation kept in the prompt
    max_turn_s: float = Field(30.0, ge=1.0, le=3600.0)  # a user turn is cut here
    idle_timeout_s: float = Field(120.0, gt=0.0)  # no speech, text or reply for this long
    llm_timeout_s: float = Field(20.0, gt=0.0)  # first token (and each next) within this
    cache_prompt: bool = True  # llama.cpp: reuse the KV cache of the unchanged prefix
    prefill: bool = True  # llama.cpp: partial transcripts warm that cache while the user speaks
    playout_lead_ms: int = Field(200, ge=0, le=5000)  # audio sent ahead of real time
    max_out_buffer_s: float = Field(10.0, ge=0.5)  # audio queued for a client not reading
    out_stall_timeout_s: float = Field(10.0, gt=0.0)  # ... this long full: session ends
    apology: str = "Sorry, I can't answer that right now."


class TranslationSettings(BaseModel):
    """Live speech-to-speech translation (``/ws/translate``, Riva ``RivaTranslation``)."""

    # "llm": the LLM of VOXGATE_LLM__* (offline Qwen or an OpenAI-compatible server), through
    # engines/mt_llm.py; any other value: a catalogue id of kind "mt" (e.g. a Riva NMT server)
    mt: str = "llm"
    # voice per target language (a voice id of GET /v1/audio/voices); espeak-ng is the fallback
    voices: dict[str, str] = {"en": "en_US-joe-medium", "ru": "festival:msu_ru_nsh_clunits"}
    no_audio_end_ms: int = Field(900, ge=100, le=10_000)  # no audio this long: utterance ends
    endpointing_ms: int = Field(500, ge=100, le=5000)  # silence that ends an utterance
    partials: bool = True  # source-language partial transcripts while speaking
    mt_timeout_s: float = Field(60.0, gt=0.0)  # one utterance's translation
    max_sessions: int = Field(4, ge=1, le=256)  # translation streams at once (+ 1 ASR stream each)
    max_pending_utterances: int = Field(8, ge=1, le=256)  # per stream; beyond, reading pauses
    max_context_chars: int = Field(500, ge=0, le=10_000)  # previous utterance shown to the MT
    # start MT (and TTS) on the ASR's early final, before the endpoint commits; sent only once
    # the committed final has the same text (else dropped and started again)
    speculative_mt: bool = True
    # llama.cpp's prompt cache for the LLM's translations (only text after the cached fixed
    # instructions is read: ~40% less time on 2 cores); false: bit-exact answers whatever was
    # asked before, at that cost (bench/README.md, "Cyrillic by construction")
    mt_prompt_cache: bool = True


class LogSettings(BaseModel):
    """Logging of ``voxgate serve`` / ``worker`` / the CLI (``log_setup.py``)."""

    # text: human lines; json: one JSON object per line (request/task/session id, door);
    # auto: json unless stderr is a terminal
    format: Literal["text", "json", "auto"] = "text"
    level: Literal["", "DEBUG", "INFO", "WARNING", "ERROR"] = ""  # voxgate's loggers; "": the command's

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.strip().upper() if isinstance(value, str) else value


class TracingSettings(BaseModel):
    """OpenTelemetry traces (extra ``otel``; ``tracing.py``). Off: no cost at all."""

    enabled: bool = False
    exporter: Literal["otlp", "console", "none"] = "otlp"  # none: spans made, not sent (tests)
    endpoint: str = "http://127.0.0.1:4318/v1/traces"  # OTLP over HTTP (protobuf)
    service_name: str = "voxgate"
    sample_ratio: float = Field(1.0, ge=0.0, le=1.0)  # traces kept (parent-based)


class StorageSettings(BaseModel):
    """Where job audio lives (``storage.py``): the data dir (default) or an S3-compatible bucket
    (AWS, MinIO, Ceph, GCS interop) shared by every API and worker machine.

    ``url``: empty: ``<data_dir>/audio``; ``file:///path``: that directory; ``s3://bucket/prefix``:
    objects ``<prefix>/<task id>/raw.<ext>``. Empty credentials: boto3's own chain (AWS_* env,
    web identity / IRSA, instance profile).
    """

    url: str = ""
    endpoint_url: str = ""  # MinIO/Ceph/GCS (https://storage.googleapis.com); empty: AWS
    region: str = ""
    access_key_id: SecretStr = SecretStr("")
    secret_access_key: SecretStr = SecretStr("")
    session_token: SecretStr = SecretStr("")
    addressing_style: Literal["auto", "path", "virtual"] = "auto"
    verify_tls: bool = True
    ca_bundle: str = ""  # PEM file for a private CA; empty: the system roots
    server_side_encryption: str = ""  # e.g. AES256 or aws:kms; empty: the bucket's default
    multipart_threshold_mb: int = Field(16, ge=5, le=5120)  # larger uploads go in parts
    multipart_chunk_mb: int = Field(16, ge=5, le=5120)  # one part (S3's minimum is 5 MB)
    max_concurrency: int = Field(4, ge=1, le=64)  # parts in flight per transfer
    timeout_s: float = Field(30.0, gt=0.0)  # connect / read timeout of one request
    max_attempts: int = Field(3, ge=1, le=20)  # per request, on throttling and network errors

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        value = value.strip()
        if value and not value.startswith(("file://", "s3://")):
            raise ValueError("must be empty, file:///path or s3://bucket[/prefix]")
        if value.startswith("s3://"):
            bucket = value[5:].split("/", 1)[0]
            if not (3 <= len(bucket) <= 222 and bucket[0].isalnum()
                    and all(c.isalnum() or c in "._-" for c in bucket)):
                raise ValueError(f"{bucket!r} is not a bucket name")
        return value


class Settings(BaseSettings):
    """All of voxgate's configuration. See README "Configuration" for every variable."""

    model_config = SettingsConfigDict(
        env_prefix="VOXGATE_",
        env_nested_delimiter="__",
        env_file=".env",
        extra="ignore",
    )

    data_dir: Path = Path("data")
    cache_dir: Path = Field(default_factory=default_cache_dir)
    api_keys: Annotated[list[str], NoDecode] = []
    # catalogue ids/aliases network clients may pick beyond the configured and installed models
    # ("*": any catalogue model, hub downloads included); clients never name paths
    allowed_models: Annotated[list[str], NoDecode] = []
    # client networks (CIDR) that may read /metrics without a key, e.g. the Prometheus subnet
    metrics_open_networks: Annotated[list[str], NoDecode] = []
    redis_url: str = ""
    redis_timeout_s: float = Field(30.0, gt=0.0)  # any Redis command; a silent Redis is an error
    host: str = "127.0.0.1"
    port: int = 8000
    grpc_port: int = 50051
    grpc_max_concurrent_rpcs: int = Field(64, ge=1)  # beyond: RESOURCE_EXHAUSTED at once
    grpc_tls_cert: Path | None = None  # PEM certificate chain: serve gRPC over TLS
    grpc_tls_key: Path | None = None  # PEM private key for grpc_tls_cert
    # Riva NMT door TranslateText: texts per request, characters per request (all texts), and
    # requests translating at once (server-wide; beyond: RESOURCE_EXHAUSTED)
    riva_nmt_max_texts: int = Field(64, ge=1, le=4096)
    riva_nmt_max_chars: int = Field(8000, ge=1, le=1_000_000)
    riva_nmt_max_concurrent: int = Field(2, ge=1, le=256)
    wyoming_uri: str = ""
    wyoming_max_connections: int = Field(4, ge=1)  # Wyoming's own cap (it has no auth)
    wyoming_idle_timeout_s: float = Field(30.0, gt=0.0)  # silent connections are closed
    wyoming_allow_remote: bool = False  # listen beyond loopback (Wyoming has no auth)
    max_upload_mb: int = Field(500, ge=1)
    # decoded audio per request: synchronous doors (OpenAI API, Riva Recognize, Wyoming) and
    # queued jobs; decoding stops at the limit (413 / INVALID_ARGUMENT / error event)
    max_audio_s: float = Field(3600.0, gt=0.0)
    max_job_audio_s: float = Field(4 * 3600.0, gt=0.0)
    max_queue_depth: int = Field(100, ge=1)
    max_streams: int = Field(16, ge=1)
    max_concurrent_transcriptions: int = Field(2, ge=1)
    job_timeout_s: int = Field(3 * 3600, ge=10)
    result_ttl_s: int = Field(7 * 24 * 3600, ge=60)
    keep_job_audio_h: float = Field(0.0, ge=0.0)  # a finished job's audio; 0: deleted at once
    model_idle_ttl_s: float = Field(0.0, ge=0.0)  # 0: keep loaded models forever
    job_retries: int = Field(2, ge=0, le=10)  # re-runs after a worker died or a transient error
    worker_heartbeat_s: int = Field(10, ge=1)  # a job whose worker is silent 3x this is retried
    inprocess_worker: Literal["auto", "on", "off"] = "auto"  # auto: on when redis_url is empty
    templates_dir: Path | None = None  # summary templates; None: the bundled ones
    webhook_secret: str = ""  # HMAC-SHA256 key for webhook signatures; empty: no webhooks
    # hosts, addresses or networks (CIDR) webhooks may reach although not public (loopback...)
    webhook_allowed_hosts: Annotated[list[str], NoDecode] = []
    webhook_max_attempts: int = Field(5, ge=1, le=20)
    webhook_timeout_s: float = Field(10.0, gt=0.0)
    offline: bool = False  # True: never try a model hub
    asr: AsrSettings = AsrSettings()
    streaming: StreamingSettings = StreamingSettings()
    riva: RivaSettings = RivaSettings()
    llm: LlmSettings = LlmSettings()
    onnx: OnnxSettings = OnnxSettings()
    tts: TtsSettings = TtsSettings()
    translation: TranslationSettings = TranslationSettings()
    agent: AgentSettings = AgentSettings()
    storage: StorageSettings = StorageSettings()
    log: LogSettings = LogSettings()
    tracing: TracingSettings = TracingSettings()

    @field_validator("api_keys", "allowed_models", "webhook_allowed_hosts",
                     "metrics_open_networks", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [k.strip() for k in value.split(",") if k.strip()]
        return value

    @field_validator("metrics_open_networks")
    @classmethod
    def _check_networks(cls, value: list[str]) -> list[str]:
        for entry in value:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(f"{entry!r} is not an address or CIDR network") from None
        return value

    @property
    def auth_enabled(self) -> bool:
        return bool(self.api_keys)


_SECRET_WORDS = ("key", "secret", "token", "password")


def _setting_problem(error: Any) -> str:
    """One pydantic error as ``VOXGATE_ASR__MAX_CHUNK_S: <reason> (got '60')``."""
    path = [str(p) for p in error.get("loc", ()) if not str(p).isdigit()]
    name = "VOXGATE_" + "__".join(p.upper() for p in path) if path else "settings"
    reason = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
    value = error.get("input")
    if isinstance(value, (str, int, float)) and not any(w in name.lower() for w in _SECRET_WORDS):
        reason += f" (got {str(value)[:60]!r})"
    return f"{name}: {reason}"


def load_settings(**overrides: Any) -> Settings:
    """:class:`Settings` from the environment and ``.env`` (plus ``overrides``).

    A bad value is a :class:`~voxgate.errors.ConfigError` naming the environment variable and
    the reason on one line (a secret's value is never repeated), not a pydantic traceback.
    """
    from .errors import ConfigError

    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError("; ".join(_setting_problem(e) for e in exc.errors())) from None

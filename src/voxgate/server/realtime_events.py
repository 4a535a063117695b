"""OpenAI Realtime (GA) wire format of ``/v1/realtime``: session options, items, server events.

No transport and no pipeline here: :class:`RealtimeOptions` reads ``session.update`` (the GA
shape: ``session.audio.input.turn_detection`` ...) into the agent options it stands for and
writes the ``session`` object of ``session.created/updated``; the ``*_item`` helpers write
conversation items; :func:`server_event` stamps an ``event_id``. Field names follow the
``openai`` package's types (``openai/types/realtime/``). Unsupported choices raise
:class:`RealtimeError` naming the parameter, never silently ignored. :class:`EventTranslator`
turns :class:`~voxgate.agent.AgentSession` events into Realtime server events.
"""

from __future__ import annotations

import base64
import dataclasses
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..agent import (
    AgentAudio,
    AgentError,
    AgentEvent,
    AgentSession,
    AgentText,
    ItemAdded,
    TurnEnded,
    UserSpeechStarted,
    UserSpeechStopped,
    UserTranscript,
)
from ..audio import float32_to_pcm16

__all__ = [
    "AUDIO_FORMAT",
    "DoorView",
    "EventTranslator",
    "RealtimeError",
    "RealtimeOptions",
    "Response",
    "TurnDetection",
    "message_item",
    "new_id",
    "parse_item",
    "server_event",
]

logger = logging.getLogger(__name__)
RATE = 24_000
AUDIO_FORMAT = {"type": "audio/pcm", "rate": RATE}  # the only format, in and out
_MAX_TEXT = 8192


class RealtimeError(Exception):
    """A client event the server refuses: sent back as an ``error`` event (the session goes
    on) unless ``close_code`` is set (then the socket closes with it)."""

    def __init__(self, message: str, *, code: str = "invalid_value", param: str | None = None,
                 kind: str = "invalid_request_error", close_code: int | None = None) -> None:
        super().__init__(message)
        self.message, self.code, self.param, self.kind = message, code, param, kind
        self.close_code = close_code


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:20]}"


def server_event(kind: str, **fields: Any) -> dict[str, Any]:
    """A server event: ``{"type": kind, "event_id": ..., **fields}``."""
    return {"type": kind, "event_id": new_id("event"), **fields}


def _check(value: Any, kind: type | tuple[type, ...], param: str, *, allow_none: bool = False
           ) -> Any:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise RealtimeError(f"Invalid type for '{param}': expected a number, got a boolean",
                            code="invalid_type", param=param)
    if not isinstance(value, kind):
        want = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise RealtimeError(f"Invalid type for '{param}': expected {want}, got "
                            f"{type(value).__name__}", code="invalid_type", param=param)
    return value


def _unknown(data: dict[str, Any], known: set[str], prefix: str) -> None:
    extra = sorted(set(data) - known)
    if extra:
        hint = ""
        if extra[0] in ("input_audio_format", "output_audio_format", "voice", "modalities",
                        "turn_detection", "input_audio_transcription"):
            hint = " (this server speaks the GA Realtime API: see session.audio.input/output)"
        raise RealtimeError(f"Unknown parameter: '{prefix}{extra[0]}'{hint}",
                            code="unknown_parameter", param=f"{prefix}{extra[0]}")


def _format(value: Any, param: str) -> None:
    if value is None:
        return
    _check(value, dict, param)
    _unknown(value, {"type", "rate"}, f"{param}.")
    kind, rate = value.get("type", "audio/pcm"), value.get("rate", RATE)
    if kind != "audio/pcm" or rate != RATE:
        raise RealtimeError(f"Unsupported audio format {value!r} for '{param}': this server "
                            "takes and sends audio/pcm at 24000 Hz only",
                            code="unsupported_value", param=param)


# semantic_vad eagerness -> (end_of_turn_ms, unfinished_wait_ms); None: the server's own
_EAGERNESS: dict[str, tuple[int | None, int | None]] = {
    "high": (400, 1000), "medium": (None, None), "auto": (None, None), "low": (1000, 3000)}
_VAD_ONLY = ("silence_duration_ms", "threshold", "prefix_padding_ms", "idle_timeout_ms")
# voxgate's own turn-taking knobs, for either type (echoed once the client has set them)
_EXTENSIONS = ("complete_wait_ms", "pause_onset_ms")


@dataclass(slots=True)
class TurnDetection:
    """``server_vad`` / ``semantic_vad`` settings (``None`` in :class:`RealtimeOptions`: manual
    turns). Both end the turn on the agent's rules (silence, and a longer wait when the text
    stops mid-sentence); ``semantic_vad``'s ``eagerness`` sets those waits. ``server_vad``'s
    ``silence_duration_ms`` is the agent's ``end_of_turn_ms`` (and caps its ASR endpoint); a
    question asked still ends the turn after ``complete_wait_ms`` when that is shorter (voxgate
    extension, default the server's: set it to ``silence_duration_ms`` to wait that long for
    questions too). ``pause_onset_ms`` (extension): speech over the agent this long pauses its
    audio (``interrupt_response``)."""

    create_response: bool = True
    interrupt_response: bool = True
    silence_duration_ms: int | None = None  # None: the server's end_of_turn_ms
    threshold: float | None = None  # None: the server's VAD threshold
    prefix_padding_ms: int | None = None  # None: the server's speech padding
    semantic: bool = False
    eagerness: str = "auto"
    complete_wait_ms: int | None = None  # None: the server's
    pause_onset_ms: int | None = None  # None: the server's

    @classmethod
    def from_wire(cls, data: Any, current: TurnDetection | None) -> TurnDetection | None:
        param = "session.audio.input.turn_detection"
        if data is None:
            return None
        _check(data, dict, param)
        _unknown(data, {"type", "create_response", "interrupt_response", "eagerness",
                        *_VAD_ONLY, *_EXTENSIONS}, f"{param}.")
        kind = data.get("type", "server_vad")
        if kind not in ("server_vad", "semantic_vad"):
            raise RealtimeError(f"Unsupported turn detection {kind!r}: use 'server_vad', "
                                "'semantic_vad' or null (manual turns)",
                                code="unsupported_value", param=f"{param}.type")
        semantic = kind == "semantic_vad"
        for name in (_VAD_ONLY if semantic else ("eagerness",)):
            if data.get(name) is not None:
                raise RealtimeError(f"{name} is not a {kind} setting", code="unknown_parameter",
                                    param=f"{param}.{name}")
        if data.get("idle_timeout_ms") is not None:
            raise RealtimeError("idle_timeout_ms is not supported by this server",
                                code="unsupported_value", param=f"{param}.idle_timeout_ms")
        out = TurnDetection(semantic=semantic) if current is None or \
            current.semantic != semantic else TurnDetection(**{
                f: getattr(current, f) for f in cls.__slots__})  # type: ignore[attr-defined]
        for name, kind_ in (("create_response", bool), ("interrupt_response", bool),
                            ("silence_duration_ms", int), ("threshold", (int, float)),
                            ("prefix_padding_ms", int), ("eagerness", str),
                            ("complete_wait_ms", int), ("pause_onset_ms", int)):
            if name in data:
                setattr(out, name, _check(data[name], kind_, f"{param}.{name}", allow_none=True))
        if out.eagerness is None:
            out.eagerness = "auto"
        if out.eagerness not in _EAGERNESS:
            raise RealtimeError(f"eagerness must be one of {', '.join(_EAGERNESS)}",
                                param=f"{param}.eagerness")
        if out.create_response is None:
            out.create_response = True
        if out.interrupt_response is None:
            out.interrupt_response = True
        return out

    def waits(self) -> tuple[int | None, int | None]:
        """(end_of_turn_ms, unfinished_wait_ms) it asks for (None: the server's)."""
        if self.semantic:
            return _EAGERNESS[self.eagerness]
        return self.silence_duration_ms, None

    def to_wire(self, config: Any, vad: tuple[float, int]) -> dict[str, Any]:
        if self.semantic:
            out = {"type": "semantic_vad", "create_response": config.auto_respond,
                   "interrupt_response": config.barge_in, "eagerness": self.eagerness}
        else:
            out = {"type": "server_vad", "create_response": config.auto_respond,
                   "interrupt_response": config.barge_in,
                   "silence_duration_ms": config.end_of_turn_ms,
                   "threshold": vad[0] if config.vad_threshold is None else config.vad_threshold,
                   "prefix_padding_ms": (vad[1] if config.speech_pad_ms is None
                                         else config.speech_pad_ms),
                   "idle_timeout_ms": None}
        for name in _EXTENSIONS:  # the values in force, once the client has named them
            if getattr(self, name) is not None:
                out[name] = getattr(config, name)
        return out


@dataclass(slots=True)
class RealtimeOptions:
    """What the client chose through ``session.update`` (None: the server's default)."""

    model: str = ""
    instructions: str | None = None
    voice: str | None = None
    speed: float | None = None
    turn_detection: TurnDetection | None = field(default_factory=TurnDetection)
    max_output_tokens: int | None = None  # None: "inf" (the server's limit)
    language: str | None = None  # audio.input.transcription.language

    def update(self, session: Any) -> None:
        """Apply a ``session.update``'s ``session`` object (fields left out keep their value).
        RealtimeError (param named) for a bad or unsupported value; nothing is changed then."""
        _check(session, dict, "session")
        _unknown(session, {"type", "model", "instructions", "audio", "output_modalities",
                           "max_output_tokens", "tools", "tool_choice", "tracing", "truncation",
                           "include", "prompt", "object", "id", "expires_at"}, "session.")
        if session.get("type", "realtime") != "realtime":
            raise RealtimeError("Only 'realtime' sessions are served here (type "
                                f"{session.get('type')!r})", code="unsupported_value",
                                param="session.type")
        new = dataclasses.replace(self)
        if "model" in session:
            new.model = _check(session["model"], str, "session.model")
            if len(new.model) > 256:
                raise RealtimeError("session.model: at most 256 characters",
                                    param="session.model")
        if "instructions" in session:
            text = _check(session["instructions"], str, "session.instructions", allow_none=True)
            new.instructions = text
        modalities = session.get("output_modalities")
        if modalities is not None and (not isinstance(modalities, list)
                                       or modalities != ["audio"]):
            raise RealtimeError("output_modalities: only ['audio'] (audio plus its transcript) "
                                "is supported", code="unsupported_value",
                                param="session.output_modalities")
        if "max_output_tokens" in session:
            limit = session["max_output_tokens"]
            if limit in (None, "inf"):
                new.max_output_tokens = None
            else:
                new.max_output_tokens = _check(limit, int, "session.max_output_tokens")
                if limit < 1:
                    raise RealtimeError("max_output_tokens must be at least 1",
                                        param="session.max_output_tokens")
        if session.get("tools"):
            raise RealtimeError("tools (function calling, MCP) are not supported by this server",
                                code="unsupported_value", param="session.tools")
        if session.get("tool_choice") not in (None, "auto", "none"):
            raise RealtimeError("tool_choice: no tools on this server", code="unsupported_value",
                                param="session.tool_choice")
        if session.get("prompt") is not None:
            raise RealtimeError("stored prompts are not supported; send instructions",
                                code="unsupported_value", param="session.prompt")
        if session.get("tracing") not in (None, "auto"):
            _check(session["tracing"], dict, "session.tracing")
        audio = _check(session.get("audio") or {}, dict, "session.audio")
        _unknown(audio, {"input", "output"}, "session.audio.")
        new._audio_input(_check(audio.get("input") or {}, dict, "session.audio.input"))
        new._audio_output(_check(audio.get("output") or {}, dict, "session.audio.output"))
        for name in RealtimeOptions.__slots__:  # type: ignore[attr-defined]
            setattr(self, name, getattr(new, name))

    def _audio_input(self, data: dict[str, Any]) -> None:
        prefix = "session.audio.input"
        _unknown(data, {"format", "noise_reduction", "transcription", "turn_detection"},
                 f"{prefix}.")
        _format(data.get("format"), f"{prefix}.format")
        if data.get("noise_reduction") is not None:
            raise RealtimeError("noise_reduction is not supported (set it to null)",
                                code="unsupported_value", param=f"{prefix}.noise_reduction")
        if "transcription" in data:
            spec = data["transcription"]
            if spec is None:
                raise RealtimeError("input transcription cannot be turned off: the server "
                                    "hears the user through it", code="unsupported_value",
                                    param=f"{prefix}.transcription")
            _check(spec, dict, f"{prefix}.transcription")
            _unknown(spec, {"model", "language", "prompt"}, f"{prefix}.transcription.")
            if spec.get("language") is not None:
                self.language = _check(spec["language"], str,
                                       f"{prefix}.transcription.language")
        if "turn_detection" in data:
            self.turn_detection = TurnDetection.from_wire(data["turn_detection"],
                                                          self.turn_detection)

    def _audio_output(self, data: dict[str, Any]) -> None:
        prefix = "session.audio.output"
        _unknown(data, {"format", "voice", "speed"}, f"{prefix}.")
        _format(data.get("format"), f"{prefix}.format")
        if "voice" in data:
            voice = data["voice"]
            if isinstance(voice, dict):
                voice = voice.get("id")
            self.voice = _check(voice, str, f"{prefix}.voice", allow_none=True)
        if "speed" in data:
            self.speed = _check(data["speed"], (int, float), f"{prefix}.speed", allow_none=True)

    def agent_options(self, max_reply_tokens: int, asr_endpointing_ms: int) -> dict[str, Any]:
        """The :class:`~voxgate.agent.AgentConfig` overrides these options stand for (output
        always 24 kHz). ``asr_endpointing_ms``: the ASR's utterance end, lowered to a shorter
        ``silence_duration_ms`` (the turn cannot end before the utterance does)."""
        td = self.turn_detection
        options: dict[str, Any] = {
            "system_prompt": self.instructions, "voice": self.voice, "speed": self.speed,
            "language": self.language, "output_sample_rate": RATE,
            "turn_detection": td is not None,
            "auto_respond": bool(td and td.create_response),
            "barge_in": bool(td and td.interrupt_response),
            "max_reply_tokens": (max_reply_tokens if self.max_output_tokens is None
                                 else min(self.max_output_tokens, max_reply_tokens))}
        if td is not None:
            options["vad_threshold"] = td.threshold
            options["speech_pad_ms"] = td.prefix_padding_ms
            end_of_turn, unfinished = td.waits()
            options["unfinished_wait_ms"] = unfinished
            options["complete_wait_ms"] = td.complete_wait_ms
            options["pause_onset_ms"] = td.pause_onset_ms
            if end_of_turn is not None:
                options["end_of_turn_ms"] = end_of_turn
                options["asr_endpointing_ms"] = max(min(asr_endpointing_ms, end_of_turn), 100)
        return options

    def to_wire(self, config: Any, *, voice: str, asr_model: str, session_id: str,
                vad: tuple[float, int]) -> dict[str, Any]:
        """The ``session`` object of ``session.created/updated``: the effective values
        (``config``: the :class:`~voxgate.agent.AgentConfig` in force; ``vad``: the server's
        VAD threshold and speech padding, for what the config leaves to the server)."""
        td = None if self.turn_detection is None else self.turn_detection.to_wire(config, vad)
        return {
            "type": "realtime", "object": "realtime.session", "id": session_id,
            "model": self.model, "instructions": config.system_prompt,
            "output_modalities": ["audio"], "max_output_tokens": config.max_reply_tokens,
            "tools": [], "tool_choice": "auto", "tracing": None, "truncation": "auto",
            "prompt": None, "include": None, "expires_at": 0,
            "audio": {
                "input": {"format": dict(AUDIO_FORMAT), "noise_reduction": None,
                          "transcription": {"model": asr_model, "language": config.language},
                          "turn_detection": td},
                "output": {"format": dict(AUDIO_FORMAT), "voice": voice,
                           "speed": config.speed}}}


def message_item(item_id: str, role: str, text: str | None, *, audio: bool,
                 status: str = "completed") -> dict[str, Any]:
    """A ``message`` conversation item: a user's speech (``input_audio`` with its transcript)
    or typed text (``input_text``), the assistant's speech (``output_audio`` + transcript) or
    text (``output_text``), a system message (``input_text``)."""
    if role == "assistant":
        part = ({"type": "output_audio", "transcript": text} if audio
                else {"type": "output_text", "text": text})
    elif audio:
        part = {"type": "input_audio", "transcript": text}
    else:
        part = {"type": "input_text", "text": text}
    return {"id": item_id, "object": "realtime.item", "type": "message", "role": role,
            "status": status, "content": [] if text is None else [part]}


def parse_item(item: Any) -> tuple[str, str, str | None]:
    """``conversation.item.create``'s item -> (role, text, the client's id or None).

    Text messages only (``input_text`` / ``output_text`` / ``text`` parts, joined); audio
    content, images and function calls are refused with the reason."""
    _check(item, dict, "item")
    kind = item.get("type", "message")
    if kind != "message":
        raise RealtimeError(f"item.type {kind!r} is not supported: only text messages "
                            "(function calls need tools, which this server has none of)",
                            code="unsupported_value", param="item.type")
    role = item.get("role")
    if role not in ("user", "assistant", "system"):
        raise RealtimeError(f"item.role must be user, assistant or system, got {role!r}",
                            param="item.role")
    content = _check(item.get("content"), list, "item.content")
    texts = []
    for i, part in enumerate(content):
        _check(part, dict, f"item.content[{i}]")
        ptype = part.get("type")
        if ptype in ("input_audio", "output_audio", "audio"):
            raise RealtimeError("audio content in conversation.item.create is not supported: "
                                "send audio with input_audio_buffer.append",
                                code="unsupported_value", param=f"item.content[{i}].type")
        if ptype not in ("input_text", "output_text", "text"):
            raise RealtimeError(f"item.content[{i}].type {ptype!r} is not supported (text only)",
                                code="unsupported_value", param=f"item.content[{i}].type")
        texts.append(_check(part.get("text"), str, f"item.content[{i}].text"))
    text = " ".join(t.strip() for t in texts if t.strip())
    if not text:
        raise RealtimeError("item has no text", param="item.content")
    if len(text) > _MAX_TEXT:
        raise RealtimeError(f"item text longer than {_MAX_TEXT} characters",
                            param="item.content")
    client_id = item.get("id")
    if client_id is not None:
        _check(client_id, str, "item.id")
        if not 1 <= len(client_id) <= 64:
            raise RealtimeError("item.id must be 1..64 characters", param="item.id")
    return role, text, client_id


class DoorView(Protocol):
    """What :class:`EventTranslator` reads of its door."""

    session: AgentSession | None
    options: RealtimeOptions

    def voice_id(self) -> str: ...


# ================================================================ session events -> wire
@dataclass(slots=True)
class Response:
    id: str
    item_sid: str  # the session's id of the assistant item
    item_id: str  # its wire id
    metadata: Any = None
    transcript: list[str] = field(default_factory=list)

    def ref(self) -> dict[str, Any]:
        return {"response_id": self.id, "item_id": self.item_id, "output_index": 0,
                "content_index": 0}


class EventTranslator:
    """AgentSession events -> Realtime server events; owns the item id mapping (a client may
    name its items; user speech items are announced at speech start, before they exist)."""

    def __init__(self, door: DoorView) -> None:
        self.door = door
        self.wire: dict[str, str] = {}  # session item id -> wire id (when they differ)
        self.sids: dict[str, str] = {}  # wire id -> session item id
        self.typed: set[str] = set()  # session ids of items from conversation.item.create
        self.pending: dict[int, str] = {}  # user turn -> the wire id announced for its item
        self.speech: dict[int, list[float]] = {}  # user turn -> [start s, end s]
        self.response: Response | None = None
        self.metadata: Any = None  # of the next response (response.create)
        self.conversation_id = new_id("conv")

    # ---- ids ------------------------------------------------------------------------------
    def name(self, sid: str, wire_id: str) -> None:
        if wire_id != sid:
            self.wire[sid], self.sids[wire_id] = wire_id, sid

    def wire_id(self, sid: str) -> str:
        return self.wire.get(sid, sid)

    def sid(self, wire_id: str) -> str:
        return self.sids.get(wire_id, wire_id)

    def forget(self, sid: str) -> None:
        self.sids.pop(self.wire.pop(sid, sid), None)
        self.typed.discard(sid)

    def _previous(self, sid: str) -> str | None:
        history = self.door.session.history if self.door.session else []
        ids = [i.id for i in history]
        if sid not in ids:
            return None
        at = ids.index(sid)
        return self.wire_id(ids[at - 1]) if at else None

    def _announced(self, turn_id: int) -> str:
        return self.pending.setdefault(turn_id, new_id("item"))

    # ---- events ---------------------------------------------------------------------------
    def translate(self, event: AgentEvent) -> list[dict[str, Any]]:
        vad = self.door.options.turn_detection is not None
        if isinstance(event, UserSpeechStarted):
            self.speech[event.turn_id] = [event.at, event.at]
            if not vad:
                return []
            return [server_event("input_audio_buffer.speech_started",
                                 audio_start_ms=int(event.at * 1000),
                                 item_id=self._announced(event.turn_id))]
        if isinstance(event, UserSpeechStopped):
            self.speech.setdefault(event.turn_id, [event.at, event.at])[1] = event.at
            if not vad:
                return []
            return [server_event("input_audio_buffer.speech_stopped",
                                 audio_end_ms=int(event.at * 1000),
                                 item_id=self._announced(event.turn_id))]
        if isinstance(event, UserTranscript):
            if not event.final or not event.text.strip():
                return []  # partials replace each other: not Realtime deltas
            return [server_event("conversation.item.input_audio_transcription.delta",
                                 item_id=self._announced(event.turn_id), content_index=0,
                                 delta=event.text.strip() + " ")]
        if isinstance(event, ItemAdded):
            return self._item_added(event)
        response = self.response
        if isinstance(event, AgentText):
            if response is None or event.item_id != response.item_sid:
                return []
            response.transcript.append(event.delta)
            return [server_event("response.output_audio_transcript.delta", **response.ref(),
                                 delta=event.delta)]
        if isinstance(event, AgentAudio):
            if response is None or event.item_id != response.item_sid:
                return []
            pcm = float32_to_pcm16(event.audio)
            return [server_event("response.output_audio.delta", **response.ref(),
                                 delta=base64.b64encode(pcm).decode("ascii"))]
        if isinstance(event, TurnEnded):
            if event.role == "user" and event.reason in ("cleared", "dropped"):
                self.pending.pop(event.turn_id, None)
                self.speech.pop(event.turn_id, None)
                return []
            if event.role == "agent" and response is not None \
                    and event.item_id == response.item_sid:
                return self._response_done(response, event)
            return []
        if isinstance(event, AgentError) and not event.fatal:
            return [server_event("error", error={"type": "server_error", "code": event.code,
                                                 "message": event.message, "param": None,
                                                 "event_id": None})]
        return []  # turn starts, pauses/resumes, interruptions, latency: no Realtime event

    def _item_added(self, event: ItemAdded) -> list[dict[str, Any]]:
        sid = event.item_id
        if event.role == "assistant" and sid not in self.typed:
            return self._response_started(event)
        previous = self._previous(sid)
        if sid in self.typed:
            item = message_item(self.wire_id(sid), event.role, event.text, audio=False)
            return [server_event("conversation.item.added", previous_item_id=previous, item=item),
                    server_event("conversation.item.done", previous_item_id=previous, item=item)]
        wire_id = self.pending.pop(event.turn_id, sid)  # a spoken user turn, now committed
        for old in [t for t in self.pending if t < event.turn_id]:  # never committed (a cough)
            self.pending.pop(old, None)
            self.speech.pop(old, None)
        self.name(sid, wire_id)
        start, end = self.speech.pop(event.turn_id, [0.0, 0.0])
        heard = message_item(wire_id, "user", event.text, audio=True)
        return [
            server_event("input_audio_buffer.committed", previous_item_id=previous,
                         item_id=wire_id),
            server_event("conversation.item.added", previous_item_id=previous,
                         item=message_item(wire_id, "user", None, audio=True)),
            server_event("conversation.item.done", previous_item_id=previous, item=heard),
            server_event("conversation.item.input_audio_transcription.completed",
                         item_id=wire_id, content_index=0, transcript=event.text,
                         usage={"type": "duration", "seconds": round(max(end - start, 0), 3)})]

    def _response_started(self, event: ItemAdded) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if self.response is not None:  # never expected: the session runs one reply at a time
            logger.warning("realtime: response %s had no end", self.response.id)
        response = Response(new_id("resp"), event.item_id, event.item_id, self.metadata)
        self.response, self.metadata = response, None
        item = message_item(response.item_id, "assistant", None, audio=True,
                            status="in_progress")
        out.append(server_event("response.created",
                                response=self._response_object(response, "in_progress")))
        out.append(server_event("response.output_item.added", response_id=response.id,
                                output_index=0, item=item))
        out.append(server_event("conversation.item.added",
                                previous_item_id=self._previous(event.item_id), item=item))
        out.append(server_event("response.content_part.added", **response.ref(),
                                part={"type": "audio", "transcript": ""}))
        return out

    def _response_done(self, response: Response, event: TurnEnded) -> list[dict[str, Any]]:
        self.response = None
        cancelled = event.reason in ("interrupted", "cancelled")
        transcript = event.text  # as the history keeps it: what was heard, when cut
        item = message_item(response.item_id, "assistant", transcript, audio=True,
                            status="incomplete" if cancelled else "completed")
        details = None
        if cancelled:
            details = {"type": "cancelled", "reason": "turn_detected"
                       if event.reason == "interrupted" else "client_cancelled"}
        done = self._response_object(response, "cancelled" if cancelled else "completed",
                                     details, [item])
        return [server_event("response.output_audio.done", **response.ref()),
                server_event("response.output_audio_transcript.done", **response.ref(),
                             transcript=transcript),
                server_event("response.content_part.done", **response.ref(),
                             part={"type": "audio", "transcript": transcript}),
                server_event("response.output_item.done", response_id=response.id,
                             output_index=0, item=item),
                server_event("conversation.item.done",
                             previous_item_id=self._previous(response.item_sid), item=item),
                server_event("response.done", response=done)]

    def _response_object(self, response: Response, status: str, details: Any = None,
                         output: list[Any] | None = None) -> dict[str, Any]:
        session = self.door.session
        config = session.config if session else None
        return {"id": response.id, "object": "realtime.response", "status": status,
                "status_details": details, "output": output or [],
                "conversation_id": self.conversation_id, "output_modalities": ["audio"],
                "max_output_tokens": config.max_reply_tokens if config else None,
                "audio": {"output": {"format": dict(AUDIO_FORMAT),
                                     "voice": self.door.voice_id()}},
                "usage": None, "metadata": response.metadata}

"""JSON messages of the live ASR WebSocket (``/v1/asr``), as small dataclasses.

Each message knows how to read itself from the wire (``from_wire``) and write itself
(``to_wire``), in the wyoming style: handlers deal in objects, never in raw dicts. The protocol
with examples is in ``docs/protocol.md``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..errors import ProtocolError
from ..streaming import ENCODINGS, StreamConfigError
from ..types import AsrEvent

__all__ = [
    "CLOSE_INTERNAL",
    "CLOSE_NORMAL",
    "CLOSE_POLICY",
    "CLOSE_TOO_BIG",
    "CLOSE_TRY_AGAIN",
    "CLOSE_UNSUPPORTED",
    "Control",
    "Ended",
    "ErrorMessage",
    "EventMessage",
    "Ready",
    "StreamStart",
    "WireError",
    "config_error",
    "parse_client_text",
]

CLOSE_NORMAL = 1000
CLOSE_UNSUPPORTED = 1003  # data the server cannot take: bad JSON, unsupported encoding, bad audio
CLOSE_POLICY = 1008  # protocol order or value broken: audio before config, bad field, auth, idle
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL = 1011
CLOSE_TRY_AGAIN = 1013  # all stream slots busy


class WireError(ProtocolError):
    """A client message the server rejects: the close code and the offending field go along."""

    def __init__(self, message: str, *, close_code: int = CLOSE_POLICY, field: str = "",
                 code: str = "bad_request") -> None:
        super().__init__(message)
        self.close_code, self.field, self.code = close_code, field, code


def _loads(text: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise WireError(f"message is not valid JSON ({exc.msg} at char {exc.pos})",
                        close_code=CLOSE_UNSUPPORTED, code="bad_json") from None
    if not isinstance(data, dict):
        raise WireError("message must be a JSON object", close_code=CLOSE_UNSUPPORTED,
                        code="bad_json")
    return data


def _typed(data: dict[str, Any], name: str, kind: type | tuple[type, ...], default: Any) -> Any:
    value = data.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) and kind in (int, float, (int, float)):
        raise WireError(f"{name}: must be a number, got {value!r}", field=name, code="bad_config")
    if not isinstance(value, kind):
        want = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise WireError(f"{name}: must be {want}, got {value!r}", field=name, code="bad_config")
    return value


@dataclass(slots=True)
class StreamStart:
    """The first message: audio format plus recognition options (all optional).

    ``{"type": "config", "sample_rate": 16000, "encoding": "pcm16", "channels": 1,
    "language": "en", "interim_results": true, "endpointing_ms": 500, "word_timestamps": true,
    "models": {"final": "whisper-base", "partial": "whisper-tiny.en"}}``
    """

    sample_rate: int = 16_000
    encoding: str = "pcm16"
    channels: int = 1
    options: dict[str, Any] = field(default_factory=dict)  # StreamConfig overrides

    KNOWN: ClassVar[frozenset[str]] = frozenset({
        "type", "sample_rate", "encoding", "channels", "language", "interim_results",
        "endpointing_ms", "models", "word_timestamps", "partial_interval_ms", "min_speech_ms",
        "speech_pad_ms", "vad_threshold", "max_utterance_s", "beam_size"})

    @classmethod
    def from_wire(cls, text: str) -> StreamStart:
        data = _loads(text)
        kind = data.get("type", "config")
        if kind != "config":
            raise WireError(f"the first message must be the config (type 'config'), got type "
                            f"{kind!r}", field="type", code="config_expected")
        unknown = sorted(set(data) - cls.KNOWN)
        if unknown:
            raise WireError(f"{unknown[0]}: unknown config field; known: "
                            f"{', '.join(sorted(cls.KNOWN - {'type'}))}", field=unknown[0],
                            code="bad_config")
        encoding = _typed(data, "encoding", str, "pcm16")
        if encoding not in ENCODINGS:
            raise WireError(f"encoding: unsupported encoding {encoding!r}; use one of "
                            f"{', '.join(ENCODINGS)}", close_code=CLOSE_UNSUPPORTED,
                            field="encoding", code="unsupported_encoding")
        models = _typed(data, "models", dict, {})
        bad_model_keys = sorted(set(models) - {"final", "partial"})
        if bad_model_keys:
            raise WireError(f"models.{bad_model_keys[0]}: unknown; use 'final' and 'partial'",
                            field=f"models.{bad_model_keys[0]}", code="bad_config")
        language = data.get("language", "en")
        options: dict[str, Any] = {
            "language": None if language in (None, "auto", "") else _typed(
                data, "language", str, "en"),
            "interim_results": _typed(data, "interim_results", bool, None),
            "word_timestamps": _typed(data, "word_timestamps", bool, None),
            "endpointing_ms": _typed(data, "endpointing_ms", int, None),
            "partial_interval_ms": _typed(data, "partial_interval_ms", int, None),
            "min_speech_ms": _typed(data, "min_speech_ms", int, None),
            "speech_pad_ms": _typed(data, "speech_pad_ms", int, None),
            "vad_threshold": _typed(data, "vad_threshold", (int, float), None),
            "max_utterance_s": _typed(data, "max_utterance_s", (int, float), None),
            "final_beam_size": _typed(data, "beam_size", int, None),
            "final_model": _typed(models, "final", str, None),
            "partial_model": _typed(models, "partial", str, None),
        }
        return cls(sample_rate=_typed(data, "sample_rate", int, 16_000), encoding=encoding,
                   channels=_typed(data, "channels", int, 1), options=options)


@dataclass(frozen=True, slots=True)
class Control:
    """``{"type": "flush"}`` (force a final now) or ``{"type": "end"}`` (no more audio)."""

    type: str


def parse_client_text(text: str) -> Control:
    """A text message after the config: only ``flush`` and ``end`` are allowed."""
    data = _loads(text)
    kind = data.get("type")
    if kind in ("flush", "end"):
        return Control(kind)
    if kind == "config":
        raise WireError("config was already sent; open a new stream to change it",
                        field="type", code="config_repeated")
    raise WireError(f"expected binary audio or a control message ({{'type': 'flush'|'end'}}), "
                    f"got a text message of type {kind!r}", close_code=CLOSE_UNSUPPORTED,
                    field="type", code="audio_expected")


def config_error(exc: StreamConfigError) -> WireError:
    """A validation error from the streaming core, named by its wire field."""
    field_name = {"final_model": "models.final", "partial_model": "models.partial",
                  "final_beam_size": "beam_size"}.get(exc.field, exc.field)
    message = str(exc)
    if field_name != exc.field and message.startswith(exc.field):
        message = field_name + message[len(exc.field):]
    code = CLOSE_UNSUPPORTED if exc.field == "encoding" else CLOSE_POLICY
    return WireError(message, close_code=code, field=field_name, code="bad_config")


@dataclass(slots=True)
class Ready:
    """Sent once the config is accepted and models are loaded: audio may flow."""

    session_id: str
    sample_rate: int
    encoding: str
    channels: int
    final_model: str
    partial_model: str
    language: str | None
    interim_results: bool
    endpointing_ms: int
    type: str = "ready"

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.type, "session_id": self.session_id, "sample_rate": self.sample_rate,
                "encoding": self.encoding, "channels": self.channels,
                "models": {"final": self.final_model, "partial": self.partial_model},
                "language": self.language, "interim_results": self.interim_results,
                "endpointing_ms": self.endpointing_ms}


@dataclass(slots=True)
class EventMessage:
    """``start_of_speech`` / ``partial`` / ``final`` / ``end_of_speech`` for the client."""

    event: AsrEvent

    def to_wire(self) -> dict[str, Any]:
        e = self.event
        out: dict[str, Any] = {"type": e.kind, "utterance_id": e.utterance_id,
                               "start": e.start, "end": e.end}
        if e.kind == "partial":
            out.update(text=e.text, stability=e.stability, lag=e.lag)
        elif e.kind == "final":
            out.update(text=e.text, confidence=e.confidence, lag=e.lag,
                       words=[{"word": w.word, "start": w.start, "end": w.end,
                               "confidence": w.probability} for w in e.words])
        return out

    @staticmethod
    def from_wire(data: dict[str, Any]) -> AsrEvent:
        """Client side helper (tests, bench): a server message back into an AsrEvent."""
        from ..types import Word

        return AsrEvent(data["type"], data["utterance_id"], data["start"], data["end"],
                        text=data.get("text", ""), confidence=data.get("confidence", 0.0),
                        stability=data.get("stability", 0.0), lag=data.get("lag", 0.0),
                        words=[Word(w["start"], w["end"], w["word"], w.get("confidence", 1.0))
                               for w in data.get("words", [])])


@dataclass(slots=True)
class ErrorMessage:
    """Sent right before the server closes the socket with ``close_code``."""

    message: str
    close_code: int
    code: str = "error"
    field: str = ""
    type: str = "error"

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type, "code": self.code, "message": self.message,
                               "close_code": self.close_code}
        if self.field:
            out["field"] = self.field
        return out


@dataclass(slots=True)
class Ended:
    """The last message of a stream ended by the client: every final has been sent."""

    audio_seconds: float
    utterances: int
    dropped_partials: int
    type: str = "end"

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.type, "audio_seconds": round(self.audio_seconds, 3),
                "utterances": self.utterances, "dropped_partials": self.dropped_partials}

"""WebSocket ``/ws/translate``: live EN <-> RU speech-to-speech translation (seed 002's contract).

First message: JSON ``WsControl`` ``{src, tgt, mode, sample_rate, channels}`` (unknown fields
ignored); then binary Int16 PCM frames (48 kHz interleaved by default), ``__flush__`` or
``{"type": "flush"}`` to end the utterance now, ``{"type": "end"}`` to end the stream. Per
utterance the server sends JSON ``WsAstResult`` ``{src, tgt, text, transcript, timestamps,
tts_failed?}`` followed by one binary WAV (PCM_16) of the translated speech (``"audio": true``
says a WAV follows). Bonus messages carry a ``type`` (``ready``, ``partial``, ``transcript``,
``error``). The protocol with examples is in ``docs/protocol.md``.

The door is thin: it parses wire messages, converts audio (``PcmInput``), feeds a
:class:`~voxgate.translation.TranslateSession` and writes its events.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, WebSocket

from ..audio import encode_audio
from ..errors import AudioError
from ..log_setup import bind as bind_log_context
from ..stream_config import PcmInput, StreamConfigError
from ..translation import TranslateConfig, TranslateEvent, TranslateSession
from .state import AppState
from .translation_state import translation_service
from .wire import (
    CLOSE_NORMAL,
    CLOSE_TOO_BIG,
    CLOSE_UNSUPPORTED,
    WireError,
)
from .ws_common import (
    accept_authorized,
    audio_frame,
    live_door,
    receive_message,
)

__all__ = ["WsAstResult", "WsControl", "router"]

logger = logging.getLogger(__name__)
router = APIRouter(tags=["live"])

FLUSH_TEXT = "__flush__"
_MAX_GLOSSARY = 100


def _field(data: dict[str, Any], name: str, kind: type | tuple[type, ...], default: Any) -> Any:
    value = data.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) and kind is int or not isinstance(value, kind):
        raise WireError(f"{name}: wrong type {type(value).__name__}", field=name,
                        code="bad_config")
    return value


@dataclass(frozen=True, slots=True)
class WsControl:
    """The first message. ``mode`` overrides ``src``/``tgt``; unknown fields are ignored.

    Extras beyond the seed: ``partials`` (bool), ``glossary`` ({source term: target term}),
    ``dnt`` (list of phrases kept as they are), ``stream_audio`` (bool: each translated
    sentence or clause is sent as its own WAV as soon as it is spoken, see ``_write_events``).
    """

    config: TranslateConfig
    mode: str
    sample_rate: int = 48_000
    channels: int = 1
    stream_audio: bool = False

    @classmethod
    def from_wire(cls, text: str) -> WsControl:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise WireError(f"the control message is not valid JSON ({exc.msg} at char "
                            f"{exc.pos}); send e.g. {{\"mode\": \"ru->en\"}} first",
                            close_code=CLOSE_UNSUPPORTED, code="bad_json") from None
        if not isinstance(data, dict):
            raise WireError("the control message must be a JSON object", field="type",
                            close_code=CLOSE_UNSUPPORTED, code="bad_json")
        glossary = _field(data, "glossary", dict, {})
        dnt = _field(data, "dnt", list, [])
        if len(glossary) > _MAX_GLOSSARY or len(dnt) > _MAX_GLOSSARY:
            raise WireError(f"glossary and dnt take at most {_MAX_GLOSSARY} entries each",
                            field="glossary", code="bad_config")
        if not all(isinstance(k, str) and isinstance(v, str) and k.strip() and v.strip()
                   for k, v in glossary.items()):
            raise WireError("glossary: must map source terms to target terms (strings)",
                            field="glossary", code="bad_config")
        if not all(isinstance(p, str) and p.strip() for p in dnt):
            raise WireError("dnt: must be a list of phrases (strings)", field="dnt",
                            code="bad_config")
        try:
            config = TranslateConfig.of(
                _field(data, "src", str, "auto"), _field(data, "tgt", str, None),
                _field(data, "mode", str, None), partials=_field(data, "partials", bool, True),
                glossary=tuple(glossary.items()), dnt=tuple(dnt))
        except StreamConfigError as exc:
            raise WireError(str(exc), field=exc.field, code="bad_config") from None
        mode = "auto" if config.src == "auto" else f"{config.src}->{config.target_for(config.src)}"
        return cls(config, mode, _field(data, "sample_rate", int, 48_000),
                   _field(data, "channels", int, 1), _field(data, "stream_audio", bool, False))


@dataclass(slots=True)
class WsAstResult:
    """One utterance's result; a binary WAV follows when ``audio`` is true."""

    event: TranslateEvent
    has_audio: bool

    def to_wire(self) -> dict[str, Any]:
        e = self.event
        out: dict[str, Any] = {"type": "result", "utterance_id": e.utterance_id, "src": e.src,
                               "tgt": e.tgt, "text": e.text, "transcript": e.transcript,
                               "timestamps": [{"start": w.start, "end": w.end,
                                               "text": w.word.strip()} for w in e.words],
                               "start": round(e.start, 3), "end": round(e.end, 3),
                               "audio": self.has_audio}
        if e.tts_failed:
            out["tts_failed"] = True
        if e.error:
            out["error"] = e.error
        return out


@router.websocket("/ws/translate")
async def live_translate(ws: WebSocket) -> None:
    state: AppState = ws.app.state.voxgate
    settings = state.settings
    if not await accept_authorized(ws, settings):
        return
    limits = settings.streaming
    async with live_door(ws, logger, "translation", "live translation stream",
                         finish_on=(WireError,), finish_wait_s=60.0) as door:
        service = await translation_service(state)
        service.check_capacity()  # answer a full server before reading anything
        control = await _receive_control(ws, limits.idle_timeout_s, limits.max_frame_bytes)
        pcm = PcmInput("pcm16", control.sample_rate, control.channels)
        door.session = session = await service.open(control.config)
        bind_log_context(session_id=session.id)  # every log line of this stream names it
        await ws.send_json({"type": "ready", "session_id": session.id, "mode": control.mode,
                            "src": control.config.src, "tgt": control.config.tgt,
                            "sample_rate": pcm.sample_rate, "channels": pcm.channels,
                            "stream_audio": control.stream_audio})
        door.writer = writer = asyncio.create_task(_write_events(ws, session,
                                                                 control.stream_audio),
                                                   name=f"wst-writer-{session.id}")
        await _read_audio(ws, session, pcm, limits.idle_timeout_s, limits.max_frame_bytes,
                          writer)
        await writer  # every utterance of the ended stream is sent
        await ws.send_json({"type": "end", "audio_seconds": round(session.position, 3),
                            "utterances": session.utterances_done})
        await ws.close(CLOSE_NORMAL)


async def _receive_control(ws: WebSocket, idle_s: float, max_bytes: int) -> WsControl:
    message = await receive_message(ws, idle_s)
    if message.get("bytes") is not None:
        raise WireError("audio arrived before the control message; send the JSON control "
                        '(e.g. {"mode": "ru->en", "sample_rate": 48000}) first', field="type",
                        code="config_expected")
    text = message.get("text") or ""
    if len(text.encode()) > max_bytes:
        raise WireError(f"control message larger than {max_bytes} bytes",
                        close_code=CLOSE_TOO_BIG, code="too_big")
    if text.strip() == FLUSH_TEXT:
        raise WireError("__flush__ arrived before the control message; send the JSON "
                        "control first", field="type", code="config_expected")
    return WsControl.from_wire(text)


async def _read_audio(ws: WebSocket, session: TranslateSession, pcm: PcmInput, idle_s: float,
                      max_bytes: int, writer: asyncio.Task[None]) -> None:
    while True:
        data, message = await audio_frame(ws, idle_s, lambda: session.pending > 0, writer,
                                          max_bytes)
        if data is not None:
            try:
                samples = pcm.convert(data)
            except AudioError as exc:  # the seed's rule: drop the frame, say so, go on
                logger.warning("translation %s: frame dropped: %s", session.id, exc)
                await ws.send_json({"type": "error", "code": "bad_frame", "message":
                                    f"{exc}; this frame was dropped, the stream goes on"})
                continue
            await session.accept(samples)
            continue
        text = (message.get("text") or "").strip()
        kind = _control_kind(text)
        if kind == "flush":  # the resampler keeps its few ms: the stream goes on
            await session.flush()
        elif kind == "end":
            await session.accept(pcm.flush())
            await session.finish()
            return
        else:
            await ws.send_json({"type": "error", "code": "bad_message", "message":
                                f"expected binary audio, {FLUSH_TEXT!r}, {{\"type\": \"flush\"}} "
                                f"or {{\"type\": \"end\"}}; got {text[:60]!r} (ignored)"})


def _control_kind(text: str) -> str:
    if text == FLUSH_TEXT:
        return "flush"
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return ""
    kind = data.get("type") if isinstance(data, dict) else None
    return kind if kind in ("flush", "end") else ""


async def _write_events(ws: WebSocket, session: TranslateSession, stream_audio: bool) -> None:
    """Events -> wire. The seed's contract (default): per utterance the result JSON, then one
    WAV of the whole translation. ``stream_audio``: per spoken piece an ``audio`` JSON header
    then its WAV, as soon as it is synthesized; the result JSON (``"audio": false``,
    ``"audio_parts": n``) closes the utterance."""
    parts = 0
    async for event in session.events():
        if event.kind == "audio" and stream_audio and event.audio is not None:
            await ws.send_json({"type": "audio", "utterance_id": event.utterance_id,
                                "part": event.sentence, "text": event.text,
                                "sample_rate": event.sample_rate, "start": round(event.start, 3),
                                "end": round(event.end, 3)})
            await ws.send_bytes(encode_audio(event.audio, event.sample_rate, "wav"))
            parts += 1
        elif event.kind == "done" and stream_audio:
            await ws.send_json({**WsAstResult(event, False).to_wire(), "audio_parts": parts})
            parts = 0
        elif event.kind == "partial":
            await ws.send_json({"type": "partial", "utterance_id": event.utterance_id,
                                "text": event.text})
        elif event.kind == "transcript":
            await ws.send_json({"type": "transcript", "utterance_id": event.utterance_id,
                                "src": event.src, "text": event.text})
        elif event.kind == "unsupported_language":
            await ws.send_json({"type": "error", "code": "unsupported_language",
                                "utterance_id": event.utterance_id, "language": event.src,
                                "transcript": event.transcript, "message": event.error})
        elif event.kind == "done":
            wav = (encode_audio(event.audio, event.sample_rate, "wav")
                   if event.audio is not None and event.audio.size else None)
            await ws.send_json(WsAstResult(event, wav is not None).to_wire())
            if wav is not None:
                await ws.send_bytes(wav)


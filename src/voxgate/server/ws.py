"""WebSocket ``/v1/asr``: live transcription with partial and final results.

First message: JSON config; then binary audio frames, ``{"type": "flush"}`` and
``{"type": "end"}``. The server answers ``ready``, then events, and an ``error`` message before
any close that is not normal. The protocol, with examples, is in ``docs/protocol.md``.

The router is thin: it parses wire messages (``wire.py``), converts audio (``PcmInput``) and
hands both to an :class:`~voxgate.streaming.AsrSession`; a writer task sends the session's
events. A bad frame still gets the open utterance finalised and sent before the error, so the
client loses nothing it had already said.
"""

from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter, WebSocket

from ..errors import AudioError
from ..log_setup import bind as bind_log_context
from ..streaming import (
    AsrSession,
    PcmInput,
)
from .live_streams import StreamingComponent, streaming_service
from .state import AppState
from .wire import (
    CLOSE_NORMAL,
    CLOSE_TOO_BIG,
    Ended,
    EventMessage,
    Ready,
    StreamStart,
    WireError,
    parse_client_text,
)
from .ws_common import (
    accept_authorized,
    audio_frame,
    live_door,
    receive_message,
)

# StreamingComponent and streaming_service live in live_streams; re-exported for old imports
__all__ = ["StreamingComponent", "router", "streaming_service"]

logger = logging.getLogger(__name__)
router = APIRouter(tags=["live"])


@router.websocket("/v1/asr")
async def live_asr(ws: WebSocket) -> None:
    state: AppState = ws.app.state.voxgate
    settings = state.settings
    if not await accept_authorized(ws, settings):
        return
    limits = settings.streaming
    # a bad frame still gets what was said before it finalised and sent
    async with live_door(ws, logger, "live ASR", "live ASR stream",
                         finish_on=(WireError, AudioError)) as door:
        service = streaming_service(state)
        service.check_capacity()  # answer a full server before reading anything
        start = await _receive_config(ws, limits.idle_timeout_s, limits.max_frame_bytes)
        pcm = PcmInput(start.encoding, start.sample_rate, start.channels)
        config = service.config(**start.options)
        door.session = session = await service.open(config)
        bind_log_context(session_id=session.id)  # every log line of this stream names it
        await ws.send_json(Ready(session.id, pcm.sample_rate, pcm.encoding, pcm.channels,
                                 config.final_model, config.partial_model, config.language,
                                 config.interim_results, config.endpointing_ms).to_wire())
        door.writer = writer = asyncio.create_task(_write_events(ws, session),
                                                   name=f"ws-writer-{session.id}")
        await _read_audio(ws, session, pcm, limits.idle_timeout_s, limits.max_frame_bytes,
                          writer)
        await writer  # every final of the ended stream is sent
        await ws.send_json(Ended(session.position, session.utterances,
                                 session.dropped_partials).to_wire())
        await ws.close(CLOSE_NORMAL)


async def _receive_config(ws: WebSocket, idle_s: float, max_bytes: int) -> StreamStart:
    message = await receive_message(ws, idle_s)
    if message.get("bytes") is not None:
        raise WireError("audio arrived before the config message; send the JSON config first",
                        field="type", code="config_expected")
    text = message.get("text") or ""
    if len(text.encode()) > max_bytes:
        raise WireError(f"config message larger than {max_bytes} bytes",
                        close_code=CLOSE_TOO_BIG, code="too_big")
    return StreamStart.from_wire(text)


async def _read_audio(ws: WebSocket, session: AsrSession, pcm: PcmInput, idle_s: float,
                      max_bytes: int, writer: asyncio.Task[None]) -> None:
    while True:
        data, message = await audio_frame(ws, idle_s, lambda: session.pending_finals > 0,
                                          writer, max_bytes)  # owed finals: not idle
        if data is not None:
            await session.accept(pcm.convert(data))
            continue
        control = parse_client_text(message.get("text") or "")
        if control.type == "flush":
            await session.flush()
        else:
            await session.accept(pcm.flush())
            await session.finish()
            return


async def _write_events(ws: WebSocket, session: AsrSession) -> None:
    async for event in session.events():
        await ws.send_json(EventMessage(event).to_wire())


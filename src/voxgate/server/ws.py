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
import contextlib
import logging

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from ..errors import AudioError
from ..streaming import (
    AsrSession,
    PcmInput,
    StreamConfigError,
    StreamLimitError,
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
    error_message,
    receive_message,
    send_error,
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
    session: AsrSession | None = None
    writer: asyncio.Task[None] | None = None
    try:
        service = streaming_service(state)
        service.check_capacity()  # answer a full server before reading anything
        start = await _receive_config(ws, limits.idle_timeout_s, limits.max_frame_bytes)
        pcm = PcmInput(start.encoding, start.sample_rate, start.channels)
        config = service.config(**start.options)
        session = await service.open(config)
        await ws.send_json(Ready(session.id, pcm.sample_rate, pcm.encoding, pcm.channels,
                                 config.final_model, config.partial_model, config.language,
                                 config.interim_results, config.endpointing_ms).to_wire())
        writer = asyncio.create_task(_write_events(ws, session), name=f"ws-writer-{session.id}")
        await _read_audio(ws, session, pcm, limits.idle_timeout_s, limits.max_frame_bytes,
                          writer)
        await writer  # every final of the ended stream is sent
        await ws.send_json(Ended(session.position, session.utterances,
                                 session.dropped_partials).to_wire())
        await ws.close(CLOSE_NORMAL)
    except WebSocketDisconnect:
        logger.info("live ASR client went away%s", f" (stream {session.id})" if session else "")
    except Exception as exc:  # every failure becomes an error message + close code
        if not isinstance(exc, (WireError, StreamConfigError, StreamLimitError, AudioError)):
            logger.exception("live ASR stream failed")
        if session is not None and writer is not None and not writer.done() \
                and isinstance(exc, (WireError, AudioError)):
            await _finish_quietly(session, writer)  # deliver what was said before the bad frame
        await send_error(ws, error_message(exc))
    finally:
        if writer is not None and not writer.done():
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await writer
        if session is not None:
            await session.close()


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


async def _finish_quietly(session: AsrSession, writer: asyncio.Task[None]) -> None:
    """Finalise the open utterance and let the writer send it (bounded wait)."""
    with contextlib.suppress(Exception):
        await session.finish()
        await asyncio.wait_for(asyncio.shield(writer), 30.0)

"""What the live WebSocket doors (``/v1/asr``, ``/ws/translate``, ``/v1/agent``) do alike: map an
exception to the error message and close code the protocol promises, send it before closing,
read the next client message under the idle rule (silent for ``idle_s`` while owed no result),
and end a connection the same way on every path (:func:`live_door`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import WebSocket, WebSocketDisconnect
from starlette.websockets import WebSocketState

from ..config import Settings
from ..errors import AudioError, EngineError
from ..stream_config import StreamConfigError, StreamLimitError
from .deps import websocket_api_key_ok
from .wire import (
    CLOSE_INTERNAL,
    CLOSE_POLICY,
    CLOSE_TOO_BIG,
    CLOSE_TRY_AGAIN,
    CLOSE_UNSUPPORTED,
    ErrorMessage,
    WireError,
    config_error,
)

__all__ = ["DoorParts", "accept_authorized", "audio_frame", "error_message", "finish_quietly",
           "live_door", "receive_message", "send_error"]
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (WireError, StreamConfigError,
                                                    StreamLimitError, AudioError)


def error_message(exc: BaseException) -> ErrorMessage:
    """The error message (code, close code, field) a client gets for ``exc``."""
    if isinstance(exc, WireError):
        return ErrorMessage(str(exc), exc.close_code, exc.code, exc.field)
    if isinstance(exc, StreamConfigError):
        return error_message(config_error(exc))
    if isinstance(exc, StreamLimitError):
        return ErrorMessage(str(exc), CLOSE_TRY_AGAIN, "busy")
    if isinstance(exc, AudioError):
        return ErrorMessage(str(exc), CLOSE_UNSUPPORTED, "bad_audio")
    if isinstance(exc, EngineError):
        return ErrorMessage(str(exc), CLOSE_INTERNAL, "engine_error")
    return ErrorMessage("internal error", CLOSE_INTERNAL, "internal")


async def send_error(ws: WebSocket, err: ErrorMessage) -> None:
    """Send ``err`` and close with its code (nothing when the client is already gone)."""
    if ws.client_state != WebSocketState.CONNECTED:
        return
    with contextlib.suppress(Exception):  # the client may already be gone
        await ws.send_json(err.to_wire())
        await ws.close(err.close_code, err.message[:120])


async def receive_message(ws: WebSocket, idle_s: float,
                          owed: Callable[[], bool] | None = None) -> dict[str, Any]:
    """The next client message. Silence for ``idle_s`` is an ``idle_timeout`` WireError,
    unless ``owed()`` says the client is waiting for results (e.g. after a flush)."""
    while True:
        try:
            message = await asyncio.wait_for(ws.receive(), idle_s)
            break
        except TimeoutError:
            if owed is not None and owed():
                continue
            raise WireError(f"no message for {idle_s:g} s: idle stream closed",
                            code="idle_timeout") from None
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000))
    return message


async def accept_authorized(ws: WebSocket, settings: Settings) -> bool:
    """Accept the socket; False (after an ``unauthorized`` error and close 1008) when the
    client presented no valid API key."""
    await ws.accept()
    if websocket_api_key_ok(ws, settings):
        return True
    await send_error(ws, ErrorMessage("invalid or missing API key (X-API-Key, "
                                      "Authorization: Bearer, or ?api_key=)",
                                      CLOSE_POLICY, "unauthorized"))
    return False


async def audio_frame(ws: WebSocket, idle_s: float, owed: Callable[[], bool],
                      writer: asyncio.Task[None], max_bytes: int
                      ) -> tuple[bytes | None, dict[str, Any]]:
    """The next client message while ``writer`` sends results: (audio bytes or None, the
    message). A frame over ``max_bytes`` is a ``too_big`` WireError (1009); a writer that
    failed first (an engine error) stops the reading with its error."""
    receive = asyncio.ensure_future(receive_message(ws, idle_s, owed))
    done, _ = await asyncio.wait({receive, writer}, return_when=asyncio.FIRST_COMPLETED)
    if receive not in done:  # the writer failed (engine error): stop reading
        receive.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await receive
        writer.result()
        raise EngineError("stream ended unexpectedly")
    message = receive.result()
    data = message.get("bytes")
    if data is not None and len(data) > max_bytes:
        raise WireError(f"audio frame of {len(data)} bytes exceeds the {max_bytes}-byte limit; "
                        "send smaller frames (e.g. 100 ms)", close_code=CLOSE_TOO_BIG,
                        code="too_big")
    return data, message


@dataclass
class DoorParts:
    """What a connection has opened so far: the teardown ends exactly these."""

    session: Any = None  # the door's session (AsrSession, TranslateSession, AgentSession)
    writer: asyncio.Task[Any] | None = None


async def finish_quietly(session: Any, writer: asyncio.Task[Any], wait_s: float) -> None:
    """Finish the open utterance and let the writer send it (bounded wait): a client whose
    stream ends on a bad frame still gets what it said before it."""
    with contextlib.suppress(Exception):
        await session.finish()
        await asyncio.wait_for(asyncio.shield(writer), wait_s)


@contextlib.asynccontextmanager
async def live_door(ws: WebSocket, logger: logging.Logger, client: str, failure: str,
                    unit: str = "stream", *,
                    expected: tuple[type[BaseException], ...] = EXPECTED_ERRORS,
                    finish_on: tuple[type[BaseException], ...] = (),
                    finish_wait_s: float = 30.0,
                    to_error: Callable[[BaseException], ErrorMessage] = error_message,
                    send: Callable[[WebSocket, ErrorMessage], Awaitable[None]] = send_error,
                    ) -> AsyncIterator[DoorParts]:
    """The body of a live door, with the teardown every door shares.

    The body records what it opens in the yielded :class:`DoorParts`. A client that went away
    is logged at info (``"<client> client went away (<unit> <id>)"``); any other error becomes
    the error message and close code of ``to_error`` (sent with ``send``), logged with its
    traceback unless it is one of ``expected`` (bad input, a full server); on an error of
    ``finish_on`` the open utterance is first finished and delivered (``finish_quietly``).
    Whatever happened, the writer task is cancelled and the session closed (its slots freed).
    """
    parts = DoorParts()
    try:
        yield parts
    except WebSocketDisconnect:
        session = parts.session
        logger.info("%s client went away%s", client,
                    f" ({unit} {session.id})" if session is not None else "")
    except Exception as exc:  # every failure becomes an error message + close code
        if not isinstance(exc, expected):
            logger.exception("%s failed", failure)
        writer = parts.writer
        if finish_on and isinstance(exc, finish_on) and parts.session is not None \
                and writer is not None and not writer.done():
            await finish_quietly(parts.session, writer, finish_wait_s)
        await send(ws, to_error(exc))
    finally:
        writer = parts.writer
        if writer is not None and not writer.done():
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await writer
        if parts.session is not None:
            await parts.session.close()

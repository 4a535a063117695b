"""API keys on gRPC calls, shared by every gRPC servicer (Riva ASR, TTS, NMT, VoiceWorkflow).

Keys travel as metadata ``x-api-key: k`` or ``authorization: Bearer k`` (or a bare ``k``).
Over TLS the official Riva client sends its metadata twice (as call credentials and on the
call); the first key found is the one checked.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc

from ..config import Settings
from .deps import key_is_valid, presented_key

__all__ = ["api_key", "authorize", "authorize_stream"]

# how long a refused streaming call waits for the client's first message (see authorize_stream)
REFUSAL_READ_WAIT_S = 2.0


def api_key(context: grpc.aio.ServicerContext) -> str | None:
    """The API key a call presents in its metadata, if any (``deps.presented_key``'s rule)."""
    first: dict[str, str] = {}
    for key, value in context.invocation_metadata() or ():
        if key in ("x-api-key", "authorization") and value and key not in first:
            first[key] = str(value)
    return presented_key(first.get("x-api-key"), first.get("authorization"),
                         bare_authorization=True)


async def authorize(settings: Settings, context: grpc.aio.ServicerContext) -> None:
    """Abort the call with UNAUTHENTICATED unless it presents a valid key (auth off: no-op)."""
    if not key_is_valid(settings, api_key(context)):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                            "invalid or missing API key (metadata x-api-key or authorization)")


async def authorize_stream(settings: Settings, context: grpc.aio.ServicerContext,
                           requests: AsyncIterator[Any]) -> None:
    """:func:`authorize` for a call the client streams into, refusing only after its first
    message has arrived (or :data:`REFUSAL_READ_WAIT_S` passed).

    Why: grpcio's asyncio client replaces the server's status with ``INTERNAL: Internal error
    from Core`` when one of its writes fails because the server has already ended the call
    (grpc/grpc#36066). A client that writes its config message while the refusal is on the way
    (``voxgate talk`` on a busy machine) would be told INTERNAL instead of UNAUTHENTICATED.
    The message read here is discarded: the call is refused whatever it says."""
    if key_is_valid(settings, api_key(context)):
        return
    with contextlib.suppress(Exception):  # nothing the refused client sends matters
        await asyncio.wait_for(anext(requests, None), REFUSAL_READ_WAIT_S)
    await authorize(settings, context)

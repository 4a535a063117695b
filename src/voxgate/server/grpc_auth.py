"""API keys on gRPC calls, shared by every gRPC servicer (Riva ASR, TTS, NMT, VoiceWorkflow).

Keys travel as metadata ``x-api-key: k`` or ``authorization: Bearer k`` (or a bare ``k``).
Over TLS the official Riva client sends its metadata twice (as call credentials and on the
call); the first key found is the one checked.
"""

from __future__ import annotations

import grpc

from ..config import Settings
from .deps import key_is_valid, presented_key

__all__ = ["api_key", "authorize"]


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

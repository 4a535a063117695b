"""Errors -> gRPC status codes, one rule for every gRPC servicer (Riva ASR, TTS, NMT and
VoiceWorkflow), beside ``grpc_auth`` (UNAUTHENTICATED).

DESIGN's bad-input policy: a bad request is INVALID_ARGUMENT (the message names the field),
a full server RESOURCE_EXHAUSTED, a silent stream DEADLINE_EXCEEDED, an engine that is down
UNAVAILABLE when retrying may help (else INTERNAL); anything unexpected is logged with its
traceback and answered INTERNAL "internal error" (no internals leak to the client).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import grpc

from ..errors import AudioError, EngineError, ModelError, TextError, VoxgateError
from ..stream_config import StreamConfigError, StreamLimitError
from .limits import TranscriptionSlots

__all__ = ["MODEL_FIELD", "IdleStream", "abort_with_status", "grpc_status", "take_slot_or_abort"]

# the field a door names in front of an error's message, per error class (ModelError: which
# model the request chose; e.g. Riva TTS says ``voice_name``, Riva NMT names none)
MODEL_FIELD: Mapping[type[BaseException], str] = {ModelError: "model"}


class IdleStream(VoxgateError):
    """A streaming client sent nothing for the idle timeout while owed no result."""


def grpc_status(exc: BaseException, fields: Mapping[type[BaseException], str] = MODEL_FIELD
                ) -> tuple[grpc.StatusCode, str] | None:
    """The status code and message for ``exc``; None when it is no known error (a bug).

    ``fields`` puts a field name in front of the message of those error classes."""
    message = str(exc)
    for kind, field in fields.items():
        if isinstance(exc, kind):
            message = f"{field}: {exc}"
            break
    if isinstance(exc, IdleStream):
        return grpc.StatusCode.DEADLINE_EXCEEDED, message
    if isinstance(exc, StreamLimitError):  # AgentLimitError, TranslationLimitError too
        return grpc.StatusCode.RESOURCE_EXHAUSTED, message
    if isinstance(exc, (StreamConfigError, AudioError, TextError, ModelError)):
        return grpc.StatusCode.INVALID_ARGUMENT, message
    if isinstance(exc, EngineError):
        retry = exc.retryable
        return (grpc.StatusCode.UNAVAILABLE if retry else grpc.StatusCode.INTERNAL), message
    if isinstance(exc, VoxgateError):
        return grpc.StatusCode.INVALID_ARGUMENT, message
    return None


async def abort_with_status(context: grpc.aio.ServicerContext, exc: BaseException,
                            logger: logging.Logger, what: str,
                            fields: Mapping[type[BaseException], str] = MODEL_FIELD) -> None:
    """Abort the call with ``grpc_status(exc)``; an unknown error is logged (``what`` failed,
    on the door's own logger) and answered INTERNAL."""
    status = grpc_status(exc, fields)
    if status is None:
        logger.exception("%s failed", what, exc_info=exc)
        status = grpc.StatusCode.INTERNAL, "internal error"
    await context.abort(*status)  # raises: the call ends here


async def take_slot_or_abort(context: grpc.aio.ServicerContext, slots: TranscriptionSlots,
                             what: str, setting: str = "") -> None:
    """Take one of ``slots`` or end the call RESOURCE_EXHAUSTED "server busy" with a retry hint.

    One wording for every servicer, so a Riva client sees the same busy answer from ASR, TTS
    and NMT; ``what`` names the running work ("transcriptions"), ``setting`` the environment
    variable that raises the limit. The caller gives the slot back (``release`` or
    ``run_held``) once its work has really stopped."""
    if slots.try_acquire():
        return
    where = f" ({setting})" if setting else ""
    await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"server busy: {slots.limit} {what} running{where}; retry in "
                        f"{slots.retry_after()} s")  # raises: the call ends here

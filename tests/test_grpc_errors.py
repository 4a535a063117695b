"""grpc_errors.grpc_status: the one error -> status rule of every gRPC servicer."""

from __future__ import annotations

import grpc
import pytest

from voxgate.agent.service import AgentLimitError
from voxgate.errors import AudioError, ConfigError, EngineError, ModelError, TextError
from voxgate.server.grpc_errors import IdleStream, grpc_status, take_slot_or_abort
from voxgate.server.limits import TranscriptionSlots
from voxgate.stream_config import StreamConfigError, StreamLimitError

S = grpc.StatusCode


@pytest.mark.parametrize(("exc", "status"), [
    (IdleStream("no audio for 3 s"), (S.DEADLINE_EXCEEDED, "no audio for 3 s")),
    (StreamLimitError(2), S.RESOURCE_EXHAUSTED),
    (AgentLimitError(1), S.RESOURCE_EXHAUSTED),  # an EngineError, but the limit wins
    (StreamConfigError("language", "xx: unknown"), S.INVALID_ARGUMENT),
    (AudioError("odd-length PCM"), (S.INVALID_ARGUMENT, "odd-length PCM")),
    (TextError("empty text"), (S.INVALID_ARGUMENT, "empty text")),
    (ModelError("no such model"), (S.INVALID_ARGUMENT, "model: no such model")),
    (EngineError("LLM down", retryable=True), (S.UNAVAILABLE, "LLM down")),
    (EngineError("model crashed"), (S.INTERNAL, "model crashed")),
    (ConfigError("bad option"), (S.INVALID_ARGUMENT, "bad option")),
])
def test_each_error_gets_its_status(exc, status) -> None:
    got = grpc_status(exc)
    assert got is not None
    assert (got if isinstance(status, tuple) else got[0]) == status


def test_fields_name_the_request_field_and_unknown_errors_are_none() -> None:
    tts = {TextError: "text", ModelError: "voice_name"}
    assert grpc_status(TextError("empty"), tts) == (S.INVALID_ARGUMENT, "text: empty")
    assert grpc_status(ModelError("x"), tts) == (S.INVALID_ARGUMENT, "voice_name: x")
    assert grpc_status(ModelError("x"), {}) == (S.INVALID_ARGUMENT, "x")
    assert grpc_status(RuntimeError("a bug")) is None  # logged and INTERNAL by the caller


class _Aborted(Exception):
    """What grpc.aio's ``context.abort`` does: it raises, the call ends."""


class _Context:
    def __init__(self) -> None:
        self.status: tuple[grpc.StatusCode, str] | None = None

    async def abort(self, code: grpc.StatusCode, message: str) -> None:
        self.status = code, message
        raise _Aborted(message)


async def test_take_slot_or_abort_takes_a_free_slot_and_answers_busy_when_full() -> None:
    slots = TranscriptionSlots(1)
    context = _Context()
    await take_slot_or_abort(context, slots, "syntheses", "VOXGATE_TTS__MAX_CONCURRENT")
    assert slots.active == 1 and context.status is None
    with pytest.raises(_Aborted):
        await take_slot_or_abort(context, slots, "syntheses", "VOXGATE_TTS__MAX_CONCURRENT")
    assert context.status == (S.RESOURCE_EXHAUSTED, "server busy: 1 syntheses running "
                              "(VOXGATE_TTS__MAX_CONCURRENT); retry in 5 s")
    assert slots.active == 1  # the refused call took nothing
    slots.release()
    await take_slot_or_abort(_Context(), slots, "syntheses")
    assert slots.active == 1

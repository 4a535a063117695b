"""grpc_errors.grpc_status: the one error -> status rule of every gRPC servicer."""

from __future__ import annotations

import grpc
import pytest

from voxgate.agent.service import AgentLimitError
from voxgate.errors import AudioError, ConfigError, EngineError, ModelError, TextError
from voxgate.server.grpc_errors import IdleStream, grpc_status
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

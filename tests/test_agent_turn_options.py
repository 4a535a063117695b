"""``complete_wait_ms`` and ``pause_onset_ms`` per session, from every door, with the real
clients: ``websockets`` on ``/v1/agent``, the ``openai`` realtime client on ``/v1/realtime``
(``session.audio.input.turn_detection``), the generated gRPC stub on ``VoiceWorkflow``.

The server's agent runs the deterministic fake engines of ``test_agent`` (the test drives the
ASR events on the server's loop), so what is checked is the door's part: the option reaches
the session and changes when its turn ends; a bad value is the door's own clear error.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator

import grpc
import pytest
import websockets
from live_server import API_KEY, live_settings, serve_app
from test_realtime import RATE, _append_chunks, _client, _Events, _FakeAgent, _next, _until

from voxgate.config import AgentSettings
from voxgate.proto import voice_workflow_pb2 as pb
from voxgate.proto import voice_workflow_pb2_grpc as pb_grpc

HEADERS = {"X-API-Key": API_KEY}
TD = "session.audio.input.turn_detection"


@pytest.fixture(scope="module")
def server(manager, tmp_path_factory):
    """All three agent doors over one fake agent that allows one session at a time."""
    from voxgate.server.app import create_app, uvicorn_options
    from voxgate.server.grpc_riva import RivaGrpcServer
    from voxgate.server.live_streams import StreamingComponent

    settings = live_settings(tmp_path_factory.mktemp("turn-options"), max_streams=4,
                             agent=AgentSettings(max_sessions=1))
    fake = _FakeAgent()
    grpc_server = RivaGrpcServer(settings, port=0)
    app = create_app(settings, manager, components=[
        StreamingComponent(settings), fake.component(settings), grpc_server])
    with serve_app(app, ws_max_size=uvicorn_options(settings)["ws_max_size"]) as live:
        live.grpc_port = grpc_server.bound_port
        live.fake = fake
        yield live


@pytest.fixture(autouse=True)
def _slot_given_back(server):
    yield
    agent = server.state.components["agent"]
    assert server.wait_for(lambda: not agent.sessions), "a session was left open"


def _session(server):
    sessions = list(server.state.components["agent"].sessions.values())
    assert len(sessions) == 1
    return sessions[0]


def _on_server(server, action, *args) -> None:
    server.loop.call_soon_threadsafe(action, *args)


# ============================================================================ /v1/agent
async def _ws(server):
    return await websockets.connect(f"ws://127.0.0.1:{server.port}/v1/agent",
                                    additional_headers=HEADERS, open_timeout=10)


async def _json(ws) -> dict:
    while True:
        message = await asyncio.wait_for(ws.recv(), 30)
        if isinstance(message, str):
            return json.loads(message)


async def test_websocket_agent_takes_complete_wait_and_pause_onset(server):
    async with await _ws(server) as ws:
        await ws.send(json.dumps({"type": "config", "end_of_turn_ms": 1500,
                                  "complete_wait_ms": 250, "pause_onset_ms": 64}))
        ready = await _json(ws)
        assert ready["type"] == "ready", ready
        assert (ready["end_of_turn_ms"], ready["complete_wait_ms"], ready["pause_onset_ms"]) \
            == (1500, 250, 64)
        config = _session(server).config
        assert (config.complete_wait_ms, config.pause_onset_ms) == (250, 64)
        asr = server.fake.asrs[-1]
        _on_server(server, asr.start)
        await ws.send(b"\x00\x00" * 8000)  # 0.5 s of the user's audio (the fake ASR's clock)
        _on_server(server, asr.end)
        _on_server(server, asr.final, "What time is it?")
        await ws.send(b"\x00\x00" * 4800)  # 0.3 s of silence: > 250, far below 1500
        while (message := await _json(ws))["type"] != "turn" or message["role"] != "user" \
                or message["event"] != "ended":
            assert message["type"] != "error", message
        assert message["text"] == "What time is it?" and message["reason"] == "completed"


@pytest.mark.parametrize("field, value", [
    ("complete_wait_ms", 50), ("complete_wait_ms", "400"), ("pause_onset_ms", -1),
    ("pause_onset_ms", 6000), ("pause_onset_ms", 1.5)])
async def test_websocket_agent_refuses_bad_values_naming_the_field(server, field, value):
    async with await _ws(server) as ws:
        await ws.send(json.dumps({"type": "config", field: value}))
        error = await _json(ws)
        assert error["type"] == "error" and error["field"] == field, error
        assert error["close_code"] == 1008
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 10)
        assert closed.value.rcvd.code == 1008


# ========================================================================= /v1/realtime
async def test_realtime_turn_detection_takes_complete_wait_and_pause_onset(server):
    fake = server.fake
    async with _client(server).realtime.connect(model="any") as conn:
        events = _Events(conn)
        await events.until("session.created")
        await conn.session.update(session={"type": "realtime", "audio": {"input": {
            "turn_detection": {"type": "server_vad", "silence_duration_ms": 1500,
                               "complete_wait_ms": 250, "pause_onset_ms": 64}}}})
        vad = (await events.until("session.updated"))["session"]["audio"]["input"][
            "turn_detection"]
        assert (vad["silence_duration_ms"], vad["complete_wait_ms"], vad["pause_onset_ms"]) \
            == (1500, 250, 64)
        await events.silence(0.2)  # opens the session
        config = _session(server).config
        assert (config.end_of_turn_ms, config.complete_wait_ms, config.pause_onset_ms) == \
            (1500, 250, 64)
        asr = fake.asrs[-1]
        _on_server(server, asr.start)
        await events.until("input_audio_buffer.speech_started")
        await events.silence(0.5)
        _on_server(server, asr.end)
        _on_server(server, asr.final, "What time is it?")
        await events.until("input_audio_buffer.speech_stopped")
        await events.silence(0.3)  # > complete_wait_ms, far below silence_duration_ms
        await events.until("input_audio_buffer.committed")
        await events.until("response.done")
        # once the session's stream is open, the onset (a stream setting) is fixed; the wait
        # for a question may still change
        await conn.session.update(session={"type": "realtime", "audio": {"input": {
            "turn_detection": {"type": "server_vad", "complete_wait_ms": 600}}}})
        vad = (await events.until("session.updated"))["session"]["audio"]["input"][
            "turn_detection"]
        assert vad["complete_wait_ms"] == 600 and _session(server).config.complete_wait_ms == 600
        await conn.send({"type": "session.update", "session": {  # type: ignore[typeddict-item]
            "type": "realtime", "audio": {"input": {"turn_detection": {
                "type": "server_vad", "pause_onset_ms": 32}}}}})
        error = await _until(conn, "error")
        assert error["error"]["param"] == f"{TD}.pause_onset_ms", error


async def test_realtime_refuses_bad_values_naming_the_param(server):
    async with _client(server).realtime.connect(model="any") as conn:
        await _next(conn)
        for name, value in (("complete_wait_ms", 50), ("complete_wait_ms", "400"),
                            ("pause_onset_ms", 6000), ("pause_onset_ms", True)):
            await conn.send({"type": "session.update", "session": {  # type: ignore[typeddict-item]
                "type": "realtime", "audio": {"input": {"turn_detection": {
                    "type": "semantic_vad", name: value}}}}})
            error = await _until(conn, "error")
            assert error["error"]["param"] == f"{TD}.{name}", (name, value, error)
        # nothing was changed by the refused updates; a good one still works
        await conn.session.update(session={"type": "realtime", "audio": {"input": {
            "turn_detection": {"type": "semantic_vad", "complete_wait_ms": 300}}}})
        vad = (await _until(conn, "session.updated"))["session"]["audio"]["input"][
            "turn_detection"]
        assert vad["complete_wait_ms"] == 300 and "pause_onset_ms" not in vad
        await _append_chunks(conn, b"\x00\x00" * (RATE // 10))


# =========================================================================== gRPC door
def _converse(server, config: pb.SessionConfig, hold: threading.Event
              ) -> Iterator[pb.ServerMessage]:
    def requests() -> Iterator[pb.ClientMessage]:
        yield pb.ClientMessage(config=config)
        hold.wait(30)
        yield pb.ClientMessage(control=pb.Control(action=pb.Control.END))

    channel = grpc.insecure_channel(server.grpc_uri)
    stub = pb_grpc.VoiceWorkflowStub(channel)
    return stub.Converse(requests(), metadata=(("x-api-key", API_KEY),), timeout=60)


def test_voice_workflow_takes_complete_wait_and_pause_onset(server):
    hold = threading.Event()
    replies = _converse(server, pb.SessionConfig(complete_wait_ms=250, pause_onset_ms=0), hold)
    try:
        first = next(replies)
        assert first.WhichOneof("message") == "ready", first
        config = _session(server).config
        assert (config.complete_wait_ms, config.pause_onset_ms) == (250, 0)
    finally:
        hold.set()
        list(replies)


@pytest.mark.parametrize("config, field", [
    (pb.SessionConfig(complete_wait_ms=50), "complete_wait_ms"),
    (pb.SessionConfig(complete_wait_ms=20_000), "complete_wait_ms"),
    (pb.SessionConfig(pause_onset_ms=6000), "pause_onset_ms")])
def test_voice_workflow_refuses_bad_values_naming_the_field(server, config, field):
    hold = threading.Event()
    hold.set()
    with pytest.raises(grpc.RpcError) as info:
        list(_converse(server, config, hold))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith(field), info.value.details()

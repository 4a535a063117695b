"""A client vanishing mid-stream (issue 15 faults): the TCP connection drops without a goodbye
(no WebSocket close frame, no gRPC half-close, no Wyoming audio-stop) while the server is
answering; every slot the server counts (agent sessions, live streams, Wyoming connections) is
free again, and the server goes on serving.

Agent doors run the deterministic fake engines of test_realtime (a long reply that is still
being spoken when the client goes); this is about slots, not speech. The doors whose vanishing
client is tested elsewhere: /v1/asr (test_ws.py::test_vanished_client_frees_stream_and_models),
/ws/translate (test_ws_translate.py::test_client_gone_mid_utterance_frees_the_slot), Riva ASR
streams (test_grpc.py::test_resource_exhausted_when_streams_are_full_and_cancel_frees), Riva TTS
(test_riva_tts.py::test_busy_then_cancel_stops_synthesis_and_frees_the_slot), Riva NMT
(test_riva_nmt.py::test_a_client_gone_mid_translation_frees_its_slots), Wyoming TTS
(test_wyoming_tts.py::test_busy_when_slots_are_taken_and_a_vanished_client_stops_synthesis),
OpenAI speech streaming (test_openai_speech.py::
test_busy_server_answers_429_and_a_vanished_client_frees_its_slot).
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import struct

import grpc
import pytest
import websockets

from live_server import API_KEY, live_settings, serve_app
from test_realtime import _FakeAgent

HEADERS = {"X-API-Key": API_KEY}


@pytest.fixture(scope="module")
def server(manager, tmp_path_factory):
    """Streaming + a fake-engine agent + Riva/VoiceWorkflow gRPC + Wyoming, on loopback."""
    from voxgate.config import AgentSettings
    from voxgate.server.app import create_app
    from voxgate.server.grpc_riva import RivaGrpcServer
    from voxgate.server.live_streams import StreamingComponent
    from voxgate.server.wyoming import WyomingServer

    settings = live_settings(tmp_path_factory.mktemp("vanish"), max_streams=2,
                             agent=AgentSettings(max_sessions=1))
    fake = _FakeAgent()
    fake.reply = " ".join(["This is a long reply that keeps the voice busy for a while."] * 30)
    grpc_server = RivaGrpcServer(settings, port=0)
    wyoming = WyomingServer("tcp://127.0.0.1:0")
    app = create_app(settings, manager, components=[
        StreamingComponent(settings), fake.component(settings), grpc_server, wyoming])
    with serve_app(app, ws_max_size=settings.streaming.max_frame_bytes) as live:
        live.grpc_port = grpc_server.bound_port
        live.wyoming = wyoming
        yield live


def _all_free(live) -> bool:
    agent = live.state.components["agent"]
    streaming = live.state.components["streaming"]
    return agent.active == 0 and not agent.sessions and streaming.active == 0 \
        and not live.wyoming._connections


@pytest.fixture(autouse=True)
def _starts_and_ends_free(server):
    assert server.wait_for(lambda: _all_free(server), 30), "a slot was taken before the test"
    yield
    assert server.wait_for(lambda: _all_free(server), 30), _slots(server)


def _slots(live) -> dict[str, int]:
    agent = live.state.components["agent"]
    return {"agent": agent.active, "agent_sessions": len(agent.sessions),
            "streams": live.state.components["streaming"].active,
            "wyoming": len(live.wyoming._connections)}


def _vanish(ws) -> None:
    """Drop the TCP connection under a websockets client: no close frame, as a crashed
    browser or a pulled cable."""
    ws.transport.abort()


async def _recv(ws, timeout: float = 30):
    message = await asyncio.wait_for(ws.recv(), timeout)
    return message if isinstance(message, bytes) else json.loads(message)


async def test_agent_websocket_client_vanishing_mid_reply_frees_its_slots(server):
    url = f"ws://127.0.0.1:{server.port}/v1/agent"
    async with websockets.connect(url, additional_headers=HEADERS, max_size=None) as ws:
        await ws.send(json.dumps({"type": "config"}))
        assert (await _recv(ws))["type"] == "ready"
        await ws.send(json.dumps({"type": "text", "text": "Tell me a long story."}))
        while not isinstance(await _recv(ws), bytes):  # the reply is being spoken
            pass
        assert server.state.components["agent"].active == 1
        _vanish(ws)
    assert server.wait_for(lambda: _all_free(server), 30), _slots(server)
    # the server goes on: the freed slot serves the next client
    async with websockets.connect(url, additional_headers=HEADERS) as ws:
        await ws.send(json.dumps({"type": "config"}))
        assert (await _recv(ws))["type"] == "ready"


async def test_realtime_client_vanishing_mid_response_frees_its_slots(server):
    url = f"ws://127.0.0.1:{server.port}/v1/realtime?model=x"
    async with websockets.connect(url, additional_headers=HEADERS, max_size=None) as ws:
        assert (await _recv(ws))["type"] == "session.created"
        await ws.send(json.dumps({"type": "conversation.item.create", "item": {
            "type": "message", "role": "user",
            "content": [{"type": "input_text", "text": "Tell me a long story."}]}}))
        await ws.send(json.dumps({"type": "response.create"}))
        while (await _recv(ws))["type"] != "response.output_audio.delta":
            pass
        _vanish(ws)
    assert server.wait_for(lambda: _all_free(server), 30), _slots(server)


def test_voice_workflow_client_vanishing_mid_reply_frees_its_slots(server):
    from voxgate.proto import voice_workflow_pb2 as pb
    from voxgate.proto import voice_workflow_pb2_grpc as pb_grpc

    def messages():
        yield pb.ClientMessage(config=pb.SessionConfig())
        yield pb.ClientMessage(text=pb.UserText(text="Tell me a long story."))
        threading_event.wait(60)  # the client says no more and never half-closes

    import threading

    threading_event = threading.Event()
    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    call = pb_grpc.VoiceWorkflowStub(channel).Converse(messages(), metadata=[("x-api-key", API_KEY)],
                                                       timeout=120)
    try:
        for message in call:
            if message.WhichOneof("message") == "audio":  # the reply is being spoken
                break
        assert server.state.components["agent"].active == 1
        channel.close()  # the connection goes: the server sees the call cancelled
    finally:
        threading_event.set()
    assert server.wait_for(lambda: _all_free(server), 30), _slots(server)


def test_wyoming_client_vanishing_mid_audio_frees_its_slots(server):
    """The streaming speech-to-text variant holds a live-stream slot; the client sends some
    audio and its socket is reset (RST) without audio-stop."""

    def event(kind: str, data: dict, payload: bytes = b"") -> bytes:
        header = {"type": kind, "data": data}
        if payload:
            header["payload_length"] = len(payload)
        return json.dumps(header).encode() + b"\n" + payload

    address = server.wyoming.bound
    sock = socket.create_connection((address.host, address.port), timeout=30)
    fmt = {"rate": 16000, "width": 2, "channels": 1}
    sock.sendall(event("transcribe", {"language": "en"}) + event("audio-start", fmt))
    tone = bytes(3200) * 5  # 0.5 s of silence, in 0.1 s chunks
    for i in range(0, len(tone), 3200):
        sock.sendall(event("audio-chunk", fmt, tone[i:i + 3200]))
    assert server.wait_for(lambda: len(server.wyoming._connections) == 1, 10)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()  # RST: the connection is gone mid-audio
    assert server.wait_for(lambda: _all_free(server), 30), _slots(server)


def test_a_realtime_append_then_vanish_frees_the_stream_slot(server):
    """Audio appended (the live stream is open) and then the TCP connection drops."""

    async def go():
        url = f"ws://127.0.0.1:{server.port}/v1/realtime?model=x"
        async with websockets.connect(url, additional_headers=HEADERS) as ws:
            assert (await _recv(ws))["type"] == "session.created"
            pcm = base64.b64encode(bytes(4800)).decode()
            for _ in range(5):
                await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": pcm}))
            assert server.wait_for(lambda: server.state.components["agent"].active == 1, 10)
            _vanish(ws)

    asyncio.run(go())
    assert server.wait_for(lambda: _all_free(server), 30), _slots(server)

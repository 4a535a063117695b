"""/v1/realtime holds its agent slot (and live-stream slot) from the connection on.

Its agent session opens only with the first audio, item or response (a first
``session.update`` still sets the stream's language and VAD), but a client once accepted must
never be refused in the middle of its session: the (N+1)th connection is refused at once with
1013 ``session_limit``, before it sends anything, and every way a connection ends (the client
leaves, the idle limit) gives its slot back. Agent sessions run the deterministic fake engines
of test_realtime (this is about slots, not speech).
"""

from __future__ import annotations

import asyncio
import json

import pytest
import websockets
from live_server import API_KEY, live_settings, serve_app
from test_realtime import _FakeAgent
from websockets.exceptions import ConnectionClosed

SESSIONS = 2


@pytest.fixture(scope="module")
def slot_server(manager, tmp_path_factory):
    from voxgate.config import AgentSettings
    from voxgate.server.app import create_app
    from voxgate.server.live_streams import StreamingComponent

    settings = live_settings(tmp_path_factory.mktemp("realtime-slots"), max_streams=SESSIONS + 1,
                             agent=AgentSettings(max_sessions=SESSIONS))
    app = create_app(settings, manager, components=[StreamingComponent(settings),
                                                    _FakeAgent().component(settings)])
    with serve_app(app, ws_max_size=settings.streaming.max_frame_bytes) as live:
        yield live


def _connect(live):
    return websockets.connect(f"ws://127.0.0.1:{live.port}/v1/realtime?model=x",
                              additional_headers={"X-API-Key": API_KEY}, open_timeout=10)


async def _recv(ws, timeout: float = 10.0) -> dict:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def _refused_at_once(live) -> None:
    async with _connect(live) as ws:
        error = await _recv(ws, 5)
        assert error["type"] == "error" and error["error"]["code"] == "session_limit", error
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013


async def _text_item(ws, text: str) -> None:
    await ws.send(json.dumps({"type": "conversation.item.create", "item": {
        "type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}}))
    while (event := await _recv(ws))["type"] != "conversation.item.done":
        assert event["type"] != "error", event


async def test_the_extra_connection_is_refused_at_connect_and_slots_come_back(slot_server):
    agent = slot_server.state.components["agent"]
    streaming = slot_server.state.components["streaming"]
    async with _connect(slot_server) as first, _connect(slot_server) as second:
        for ws in (first, second):
            assert (await _recv(ws))["type"] == "session.created"
        # neither has sent audio or an item: both slots are held all the same
        assert agent.active == SESSIONS and streaming.active == SESSIONS
        await _refused_at_once(slot_server)
        # a held slot becomes the session's own at its first item, with the server full
        await _text_item(second, "Open my session.")
        assert agent.active == SESSIONS and any(s is not None for s in agent.sessions.values())
        await _refused_at_once(slot_server)
        await first.close()
        assert slot_server.wait_for(lambda: agent.active == SESSIONS - 1)
        async with _connect(slot_server) as third:  # the closed client's slot is free again
            assert (await _recv(third))["type"] == "session.created"
            await _text_item(third, "And mine.")
    assert slot_server.wait_for(lambda: agent.active == 0 and streaming.active == 0)


async def test_a_bad_key_holds_nothing_and_the_idle_limit_gives_the_slot_back(slot_server):
    agent = slot_server.state.components["agent"]
    url = f"ws://127.0.0.1:{slot_server.port}/v1/realtime?model=x&api_key=wrong"
    async with websockets.connect(url) as ws:
        assert (await _recv(ws))["error"]["code"] == "invalid_api_key"
        assert agent.active == 0
    async with _connect(slot_server) as ws:  # says nothing: closed after the idle limit
        assert (await _recv(ws))["type"] == "session.created"
        assert agent.active == 1
        idle = slot_server.settings.streaming.idle_timeout_s
        assert (await _recv(ws, idle + 10))["error"]["code"] == "idle_timeout"
    assert slot_server.wait_for(lambda: agent.active == 0 and
                                slot_server.state.components["streaming"].active == 0)

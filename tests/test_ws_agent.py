"""WebSocket /v1/agent against a live server on loopback, with the `websockets` client library.

Real engines (Whisper, Qwen GGUF, Piper): a spoken and a typed turn answered in speech; auth,
audio before config, bad options naming the field, the session limit (1013), interrupt.
"""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
import websockets
from conftest import require_pack, wer
from live_server import API_KEY, live_settings, serve_app

from voxgate.audio import float32_to_pcm16, pcm16_to_float32, resample

HEADERS = {"X-API-Key": API_KEY}
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def agent_server(manager, tmp_path_factory):
    for model_id in ("whisper-base", "whisper-tiny.en", "qwen2.5-coder-1.5b-instruct-q4km",
                     "en_US-joe-medium"):
        require_pack(model_id, manager.settings.cache_dir)
    from voxgate.config import AgentSettings
    from voxgate.server.agent_doors import AgentComponent
    from voxgate.server.app import create_app, uvicorn_options
    from voxgate.server.ws import StreamingComponent

    settings = live_settings(tmp_path_factory.mktemp("agent"), max_streams=4,
                             agent=AgentSettings(max_sessions=1, max_reply_tokens=40,
                                                 system_prompt="Answer in one short sentence."))
    app = create_app(settings, manager, components=[StreamingComponent(settings),
                                                    AgentComponent(settings)])
    with serve_app(app, ws_max_size=uvicorn_options(settings)["ws_max_size"]) as live:
        yield live


def _url(live) -> str:
    return f"ws://127.0.0.1:{live.port}/v1/agent"


async def _connect(live, headers=HEADERS):
    return await websockets.connect(_url(live), additional_headers=headers, max_size=None,
                                    open_timeout=10)


async def _recv(ws, timeout: float = 60.0):
    message = await asyncio.wait_for(ws.recv(), timeout)
    return message if isinstance(message, bytes) else json.loads(message)


async def _expect_error(ws, close_code: int, field: str | None = None) -> dict:
    while True:
        message = await _recv(ws)
        if isinstance(message, dict) and message["type"] == "error":
            break
    assert message["close_code"] == close_code, message
    if field is not None:
        assert message.get("field") == field, message
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await asyncio.wait_for(ws.recv(), 10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == close_code
    return message


async def _until_agent_turn_ends(ws) -> tuple[list[dict], bytes]:
    messages, audio = [], bytearray()
    while True:
        message = await _recv(ws, 120)
        if isinstance(message, bytes):
            audio.extend(message)
            continue
        messages.append(message)
        if message["type"] == "turn" and message["event"] == "ended" \
                and message["role"] == "agent":
            return messages, bytes(audio)
        assert message["type"] != "error" or not message.get("fatal"), message


async def test_spoken_turn_is_answered_in_speech(agent_server, manager):
    from voxgate.engines.base import AsrOptions
    from voxgate.speech import SpeechService

    speech = SpeechService(manager.settings, manager)
    question, rate = speech.synthesize("What is the capital city of France?")
    pcm = float32_to_pcm16(np.concatenate([resample(question, rate, 24_000),
                                           np.zeros(48_000, np.float32)]))
    async with await _connect(agent_server) as ws:
        await ws.send(json.dumps({"type": "config", "sample_rate": 24_000,
                                  "output_sample_rate": 16_000}))
        ready = await _recv(ws)
        assert ready["type"] == "ready" and ready["output"] == {"sample_rate": 16_000,
                                                                "encoding": "pcm16"}
        step = 4800  # 100 ms at 24 kHz, 2 bytes a sample
        for i in range(0, len(pcm), step * 2):
            await ws.send(pcm[i:i + step * 2])
            await asyncio.sleep(0.05)
        messages, audio = await _until_agent_turn_ends(ws)
        finals = [m for m in messages if m["type"] == "transcript" and m["final"]]
        assert "france" in finals[-1]["turn_text"].lower()
        end = messages[-1]
        assert end["reason"] == "completed" and "paris" in end["text"].lower()
        text = "".join(m["delta"] for m in messages if m["type"] == "agent_text")
        assert text.strip() == end["text"].strip()
        assert abs(len(audio) / 2 / 16_000 - end["audio_s"]) <= 0.15  # every frame arrived
        # as a listener hears it: after a moment of silence (Whisper clips an abrupt onset)
        pause = np.zeros(8000, np.float32)
        heard = manager.asr("whisper-base").transcribe(
            np.concatenate([pause, pcm16_to_float32(audio), pause]),
            AsrOptions(language="en")).text
        assert wer(end["text"], heard) <= 0.25, (end["text"], heard)
        latency = await _recv(ws)
        assert latency["type"] == "latency" and latency["voice_to_voice_s"] > 0
        import httpx

        metrics = httpx.get(f"{agent_server.url}/metrics", headers=HEADERS, timeout=10).text
        assert "voxgate_agent_voice_to_voice_seconds_count 1.0" in metrics
        assert "voxgate_agent_sessions_active 1.0" in metrics
        await ws.send(json.dumps({"type": "end"}))
        while (message := await _recv(ws)) and not (isinstance(message, dict)
                                                    and message["type"] == "end"):
            pass
        with pytest.raises(websockets.ConnectionClosedOK):
            await asyncio.wait_for(ws.recv(), 10)


async def test_typed_turn_interrupt_and_session_limit(agent_server):
    agent = agent_server.state.components["agent"]
    # the earlier test's session may still be closing on a busy machine (its slot held)
    assert agent_server.wait_for(lambda: agent.active == 0, timeout=60)
    async with await _connect(agent_server) as ws:
        await ws.send(json.dumps({"type": "config", "output_encoding": "f32"}))
        ready = await _recv(ws)
        # the one session slot is taken: a second client is told to come back later
        async with await _connect(agent_server) as second:
            await _expect_error(second, 1013)
        await ws.send(json.dumps({"type": "text", "text": "Count from one to twenty."}))
        audio = b""
        while len(audio) < ready["output"]["sample_rate"] * 4 // 5:  # 0.2 s of f32 audio
            message = await _recv(ws, 120)
            if isinstance(message, bytes):
                audio += message
        await ws.send(json.dumps({"type": "interrupt"}))
        while True:
            message = await _recv(ws, 60)
            if isinstance(message, dict) and message["type"] == "interruption":
                break
        assert message["reason"] == "cancelled" and message["played_s"] > 0
        assert len(audio) % 4 == 0 and np.abs(np.frombuffer(audio, "<f4")).max() <= 1.0


async def test_auth_order_and_bad_options_are_refused(agent_server):
    async with await _connect(agent_server, headers={}) as ws:
        await _expect_error(ws, 1008)
    async with await _connect(agent_server) as ws:
        await ws.send(b"\x00\x00" * 160)
        await _expect_error(ws, 1008, "type")
    async with await _connect(agent_server) as ws:
        await ws.send(json.dumps({"type": "config", "voice": "no-such-voice"}))
        error = await _expect_error(ws, 1008, "voice")
        assert "unknown voice" in error["message"]
    async with await _connect(agent_server) as ws:
        await ws.send(json.dumps({"type": "config", "models": {"llm": "/etc/passwd"}}))
        await _expect_error(ws, 1008, "models.llm")
    async with await _connect(agent_server) as ws:
        await ws.send(json.dumps({"type": "config", "max_turn_s": 5}))
        await _expect_error(ws, 1008, "max_turn_s")
    async with await _connect(agent_server) as ws:
        await ws.send(json.dumps({"type": "config"}))
        assert (await _recv(ws))["type"] == "ready"
        await ws.send(json.dumps({"type": "text", "text": "   "}))
        await _expect_error(ws, 1008, "text")
    async with await _connect(agent_server) as ws:
        await ws.send(json.dumps({"type": "config"}))
        assert (await _recv(ws))["type"] == "ready"
        await ws.send(b"\x00\x00\x00")  # odd-length PCM16
        await _expect_error(ws, 1003)


async def test_many_sessions_at_once_the_limit_answers_and_nothing_crashes(agent_server):
    async def one() -> str:
        async with await _connect(agent_server) as ws:
            await ws.send(json.dumps({"type": "config"}))
            first = await _recv(ws)
            if first["type"] == "ready":
                await ws.send(json.dumps({"type": "end"}))
                while (m := await _recv(ws)) and not (isinstance(m, dict) and m["type"] == "end"):
                    pass
            return first["type"] if first["type"] == "ready" else str(first["close_code"])

    results = await asyncio.gather(*(one() for _ in range(30)))
    assert results.count("ready") >= 1 and set(results) <= {"ready", "1013"}, results
    assert results.count("1013") >= 20
    agent = agent_server.state.components["agent"]
    assert agent_server.wait_for(lambda: agent.active == 0)
    async with await _connect(agent_server) as ws:  # the server still serves
        await ws.send(json.dumps({"type": "config"}))
        assert (await _recv(ws))["type"] == "ready"

"""WebSocket /ws/translate against a live server on loopback, with the `websockets` client.

The seed's contract: JSON control first, 48 kHz Int16 frames as a browser's AudioWorklet sends
them, ``__flush__``, then per utterance the JSON result followed by one WAV. Every bad input:
no key, audio before the control, invalid JSON, a bad mode, odd-length frames (dropped, the
stream goes on), an unknown text message, a full server, an idle client, a frame too big, a
client that vanishes mid-utterance.
"""

from __future__ import annotations

import asyncio
import io
import json
import wave

import pytest
import websockets
from conftest import require_pack
from live_server import API_KEY, live_settings, serve_app
from translation_support import browser_frames, english_speech, russian_speech, silence

from voxgate.config import TranslationSettings

HEADERS = {"X-API-Key": API_KEY}


@pytest.fixture(scope="module")
def server(manager, tmp_path_factory):
    from voxgate.server.app import create_app, uvicorn_options
    from voxgate.server.translation_state import TranslationComponent
    from voxgate.server.ws import StreamingComponent

    # a busy 2-core machine can take minutes per LLM call: no MT timeout in these tests
    settings = live_settings(tmp_path_factory.mktemp("wst"), translation=TranslationSettings(
        max_sessions=1, mt_timeout_s=600.0))
    require_pack(settings.llm.model, settings.cache_dir)
    app = create_app(settings, manager, components=[StreamingComponent(settings),
                                                    TranslationComponent(settings)])
    with serve_app(app, ws_max_size=uvicorn_options(settings)["ws_max_size"]) as live:
        yield live


def _url(server) -> str:
    return f"ws://127.0.0.1:{server.port}/ws/translate"


async def _connect(server, headers=HEADERS):
    return await websockets.connect(_url(server), additional_headers=headers, max_size=None,
                                    open_timeout=10)


async def _json(ws, timeout: float = 60.0) -> dict:
    message = await asyncio.wait_for(ws.recv(), timeout)
    assert isinstance(message, str), "expected a JSON message, got binary"
    return json.loads(message)


async def _closed_with(ws, code: int) -> None:
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await asyncio.wait_for(ws.recv(), 10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == code


async def _error_then_close(ws, close_code: int, code: str) -> dict:
    message = await _json(ws)
    while message["type"] != "error":
        message = await _json(ws)
    assert message["code"] == code and message["close_code"] == close_code, message
    await _closed_with(ws, close_code)
    return message


async def _result_and_wav(ws, timeout: float = 900.0) -> tuple[dict, bytes, list[dict]]:
    """Read until the utterance's result; the next message must be its WAV."""
    before: list[dict] = []
    while (message := await _json(ws, timeout))["type"] != "result":
        before.append(message)
    assert message["audio"] is True, message
    wav = await asyncio.wait_for(ws.recv(), 60)
    assert isinstance(wav, bytes)
    return message, wav, before


def test_russian_speech_from_a_browser_comes_back_in_english(server) -> None:
    async def scenario():
        async with await _connect(server) as ws:
            await ws.send(json.dumps({"src": "auto", "tgt": None, "mode": "ru->en",
                                      "sample_rate": 48000, "channels": 1,
                                      "client": "test"}))  # unknown fields are ignored
            ready = await _json(ws)
            assert ready["type"] == "ready" and ready["mode"] == "ru->en", ready
            for frame in browser_frames(russian_speech()) + browser_frames(silence(0.3)):
                await ws.send(frame)
            await ws.send("__flush__")
            result, wav, before = await _result_and_wav(ws)
            await ws.send(json.dumps({"type": "end"}))
            end = await _json(ws)
            await _closed_with(ws, 1000)
            return result, wav, before, end

    result, wav, before, end = asyncio.run(scenario())
    assert result["src"] == "ru" and result["tgt"] == "en"
    assert "погода" in result["transcript"]
    assert "weather" in result["text"].lower(), result
    assert "tts_failed" not in result and "error" not in result
    assert result["timestamps"] and result["timestamps"][0]["start"] >= 0
    assert any(m["type"] == "transcript" for m in before)
    # the seed's contract is the default: no streamed audio parts before the one WAV
    assert not [m for m in before if m["type"] == "audio"]
    with wave.open(io.BytesIO(wav)) as w:  # one PCM_16 WAV of the English speech
        assert w.getsampwidth() == 2 and w.getnchannels() == 1
        assert w.getnframes() / w.getframerate() > 1.0
    assert end == {"type": "end", "audio_seconds": end["audio_seconds"], "utterances": 1}


def test_stream_audio_sends_each_spoken_piece_as_its_own_wav(server) -> None:
    """Opt-in ``stream_audio``: a WAV per sentence or clause as soon as it is spoken (each
    after an ``audio`` header), then the result closes the utterance with no WAV after it."""
    async def scenario() -> tuple[dict, list[tuple[dict, bytes]], list[str]]:
        async with await _connect(server) as ws:
            await ws.send(json.dumps({"mode": "ru->en", "sample_rate": 48000,
                                      "stream_audio": True}))
            ready = await _json(ws)
            assert ready["type"] == "ready" and ready["stream_audio"] is True, ready
            for frame in browser_frames(russian_speech()) + browser_frames(silence(0.3)):
                await ws.send(frame)
            await ws.send("__flush__")
            parts: list[tuple[dict, bytes]] = []
            kinds: list[str] = []
            while (message := await _json(ws, 900))["type"] != "result":
                kinds.append(message["type"])
                if message["type"] == "audio":
                    wav = await asyncio.wait_for(ws.recv(), 60)
                    assert isinstance(wav, bytes), "an audio header is followed by its WAV"
                    parts.append((message, wav))
            await ws.send(json.dumps({"type": "end"}))
            assert (await _json(ws))["type"] == "end"  # no WAV after the result
            await _closed_with(ws, 1000)
            return message, parts, kinds

    result, parts, kinds = asyncio.run(scenario())
    assert result["audio"] is False and result["audio_parts"] == len(parts) >= 1, result
    assert "weather" in result["text"].lower() and "error" not in result
    assert kinds.index("transcript") < kinds.index("audio")
    assert [h["part"] for h, _ in parts] == list(range(len(parts)))
    assert " ".join(" ".join(h["text"] for h, _ in parts).split()) == result["text"]
    for header, wav in parts:
        assert header["utterance_id"] == result["utterance_id"]
        with wave.open(io.BytesIO(wav)) as w:
            assert w.getsampwidth() == 2 and w.getframerate() == header["sample_rate"]
            assert w.getnframes() > 0


def test_client_gone_mid_utterance_frees_the_slot(server) -> None:
    service = server.state.components["translation"]

    async def scenario() -> None:
        ws = await _connect(server)
        await ws.send(json.dumps({"mode": "en->ru", "sample_rate": 48000}))
        assert (await _json(ws))["type"] == "ready"
        for frame in browser_frames(english_speech()):
            await ws.send(frame)
        await ws.send(json.dumps({"type": "flush"}))
        while (await _json(ws, 120))["type"] != "transcript":
            pass  # the utterance is being translated now
        assert service.active == 1
        await ws.close()

    asyncio.run(scenario())
    assert server.wait_for(lambda: service.active == 0 and server.streaming.active == 0, 60)


@pytest.mark.parametrize("first, close_code, code", [
    (b"\x00\x00" * 480, 1008, "config_expected"),
    ("__flush__", 1008, "config_expected"),
    ("{mode: ru->en", 1003, "bad_json"),
    ('["ru->en"]', 1003, "bad_json"),
    ('{"mode": "fr->en"}', 1008, "bad_config"),
    ('{"src": "ru", "tgt": "ru"}', 1008, "bad_config"),
    ('{"mode": "ru->en", "sample_rate": 1000}', 1008, "bad_config"),
])
def test_bad_first_message_gets_a_clear_error(server, first, close_code, code) -> None:
    async def scenario() -> dict:
        async with await _connect(server) as ws:
            await ws.send(first)
            return await _error_then_close(ws, close_code, code)

    message = asyncio.run(scenario())
    assert message["message"]


def test_no_api_key_is_refused(server) -> None:
    async def scenario() -> None:
        async with await _connect(server, headers={}) as ws:
            await _error_then_close(ws, 1008, "unauthorized")

    asyncio.run(scenario())


def test_odd_frames_and_stray_text_are_reported_and_the_stream_goes_on(server) -> None:
    async def scenario() -> list[dict]:
        async with await _connect(server) as ws:
            await ws.send(json.dumps({"mode": "ru->en", "sample_rate": 48000, "channels": 2}))
            assert (await _json(ws))["type"] == "ready"
            await ws.send(b"\x00" * 1921)  # not a whole number of stereo Int16 samples
            odd = await _json(ws)
            await ws.send(b"\x00" * 3840)  # 20 ms of stereo silence: accepted
            await ws.send('{"type": "hello"}')
            stray = await _json(ws)
            await ws.send("__flush__")
            await ws.send(json.dumps({"type": "end"}))
            end = await _json(ws)
            await _closed_with(ws, 1000)
            return [odd, stray, end]

    odd, stray, end = asyncio.run(scenario())
    assert odd["type"] == "error" and odd["code"] == "bad_frame" and "dropped" in odd["message"]
    assert stray["type"] == "error" and stray["code"] == "bad_message"
    assert end["type"] == "end" and end["utterances"] == 0


def test_limits_busy_idle_and_frame_size(server) -> None:
    service = server.state.components["translation"]

    def free() -> bool:  # a closed client's slot is given back once its work has stopped
        return service.active == 0 and server.streaming.active == 0

    async def scenario() -> None:
        assert await asyncio.to_thread(server.wait_for, free, 60)
        async with await _connect(server) as holder:  # max_sessions=1: this one takes it
            await holder.send(json.dumps({"mode": "ru->en"}))
            assert (await _json(holder))["type"] == "ready"
            async with await _connect(server) as second:
                await _error_then_close(second, 1013, "busy")
            await holder.send(b"\x00" * (server.settings.streaming.max_frame_bytes + 2))
            await _closed_with(holder, 1009)  # never buffered: refused by the WebSocket layer
        assert await asyncio.to_thread(server.wait_for, free, 60)
        async with await _connect(server) as idle:
            await idle.send(json.dumps({"mode": "en->ru"}))
            assert (await _json(idle))["type"] == "ready"
            await _error_then_close(idle, 1008, "idle_timeout")  # 3 s in these tests

    asyncio.run(scenario())

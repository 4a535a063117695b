"""WebSocket /v1/asr against a live server on loopback, with the `websockets` client library.

Every limit and bad input of the protocol is exercised: auth, stream limit (1013), frame too big
(1009), idle timeout, config errors (1003/1008 naming the field), odd-length PCM16, audio before
config, JSON where audio was expected, a client vanishing mid-stream, 10x real time.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time

import numpy as np
import pytest
import websockets
from conftest import wer
from live_server import API_KEY

from voxgate.audio import float32_to_pcm16

HEADERS = {"X-API-Key": API_KEY}


async def _connect(live, *, headers=HEADERS, query: str = ""):
    return await websockets.connect(live.ws_url + query, additional_headers=headers,
                                    max_size=None, open_timeout=10)


async def _recv(ws, timeout: float = 60.0) -> dict:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def _expect_error(ws, close_code: int, field: str | None = None) -> dict:
    """Read until the error message; then the socket must close with ``close_code``."""
    messages = []
    while True:
        message = await _recv(ws)
        messages.append(message)
        if message["type"] == "error":
            break
    assert message["close_code"] == close_code, message
    if field is not None:
        assert message.get("field") == field, message
        assert field.split(".")[-1] in message["message"], message
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await asyncio.wait_for(ws.recv(), 10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == close_code
    message["_before"] = messages[:-1]
    return message


async def _send_audio(ws, audio: np.ndarray, speed: float, chunk_s: float = 0.1) -> None:
    step = int(16_000 * chunk_s)
    started = time.monotonic()
    for i in range(0, audio.size, step):
        await ws.send(float32_to_pcm16(audio[i:i + step]))
        if speed:
            delay = started + (i + step) / 16_000 / speed - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)


async def _collect(ws) -> list[dict]:
    out = []
    while True:
        message = await _recv(ws)
        out.append(message)
        if message["type"] in ("end", "error"):
            return out


async def test_stream_real_speech_partials_and_finals(live, librivox):
    clip = librivox[0]  # 7.1 s: enough speech for partials even on a busy machine
    audio = np.concatenate([clip.audio, np.zeros(16_000, np.float32)])
    async with await _connect(live) as ws:
        await ws.send(json.dumps({"type": "config", "sample_rate": 16000, "encoding": "pcm16",
                                  "language": "en", "interim_results": True,
                                  "endpointing_ms": 400, "word_timestamps": True}))
        ready = await _recv(ws)
        assert ready["type"] == "ready" and ready["models"]["final"] == "whisper-base"
        sender = asyncio.create_task(_send_audio(ws, audio, speed=2.0))
        await sender
        await ws.send(json.dumps({"type": "end"}))
        messages = await _collect(ws)
        with pytest.raises(websockets.ConnectionClosedOK):
            await ws.recv()
    kinds = [m["type"] for m in messages]
    assert kinds[0] == "start_of_speech" and kinds[-1] == "end"
    assert "partial" in kinds and kinds.index("end_of_speech") < kinds.index("final")
    final = next(m for m in messages if m["type"] == "final")
    assert wer(clip.text, final["text"]) < 0.2
    assert final["words"] and {"word", "start", "end", "confidence"} <= set(final["words"][0])
    assert 0 < final["confidence"] <= 1 and final["utterance_id"] == 0
    partial = next(m for m in messages if m["type"] == "partial")
    assert {"text", "stability", "lag", "start", "end"} <= set(partial)
    assert messages[-1]["utterances"] == 1 and messages[-1]["audio_seconds"] == pytest.approx(
        audio.size / 16_000, abs=0.01)


async def test_48k_float_stereo_with_flush(live, librivox):
    clip = librivox[4]
    from voxgate.audio import resample

    hi = resample(clip.audio, 16_000, 48_000)
    stereo = np.repeat(hi, 2).astype("<f4")
    async with await _connect(live, headers={}, query=f"?api_key={API_KEY}") as ws:
        await ws.send(json.dumps({"sample_rate": 48000, "encoding": "f32", "channels": 2,
                                  "interim_results": False}))
        assert (await _recv(ws))["type"] == "ready"
        step = 4800 * 2  # 100 ms of 48 kHz stereo
        for i in range(0, stereo.size, step):
            await ws.send(stereo[i:i + step].tobytes())
        await ws.send(json.dumps({"type": "flush"}))  # final now, without closing
        while (message := await _recv(ws))["type"] != "final":
            assert message["type"] in ("start_of_speech", "end_of_speech")
        assert wer(clip.text, message["text"]) < 0.2
        await ws.send(json.dumps({"type": "end"}))
        assert (await _collect(ws))[-1]["type"] == "end"


async def test_alaw_8k_telephony_audio(live, librivox):
    """G.711 A-law at 8 kHz (encoded by sox), one byte a sample, as a telephone bridge sends."""
    clip = librivox[1]
    alaw = subprocess.run(["sox", str(clip.path), "-r", "8000", "-e", "a-law", "-t", "raw", "-"],
                          capture_output=True, check=True).stdout
    async with await _connect(live) as ws:
        await ws.send(json.dumps({"sample_rate": 8000, "encoding": "alaw",
                                  "interim_results": False}))
        assert (await _recv(ws))["type"] == "ready"
        for i in range(0, len(alaw), 800):  # 100 ms frames
            await ws.send(alaw[i:i + 800])
        await ws.send(json.dumps({"type": "end"}))
        finals = [m["text"] for m in await _collect(ws) if m["type"] == "final"]
    assert wer(clip.text, " ".join(finals)) < 0.2


async def test_ten_times_real_time_keeps_every_final(live, librivox):
    audio = np.concatenate([librivox[1].audio, np.zeros(12_000, np.float32),
                            librivox[2].audio, np.zeros(12_000, np.float32)])
    reference = librivox[1].text + " " + librivox[2].text
    async with await _connect(live) as ws:
        await ws.send(json.dumps({"sample_rate": 16000}))
        assert (await _recv(ws))["type"] == "ready"
        await _send_audio(ws, audio, speed=10.0)
        await ws.send(json.dumps({"type": "end"}))
        messages = await _collect(ws)
    finals = [m for m in messages if m["type"] == "final"]
    assert [f["utterance_id"] for f in finals] == [0, 1]
    assert wer(reference, " ".join(f["text"] for f in finals)) < 0.2
    assert max(m.get("lag", 0) for m in messages) > 0.2  # the client sees the server's backlog


@pytest.mark.parametrize("headers,query", [({}, ""), ({"X-API-Key": "wrong"}, ""),
                                           ({}, "?api_key=nope")])
async def test_bad_or_missing_api_key_is_refused(live, headers, query):
    async with await _connect(live, headers=headers, query=query) as ws:
        error = await _expect_error(ws, 1008)
    assert error["code"] == "unauthorized"


async def test_bearer_token_is_accepted(live):
    async with await _connect(live, headers={"Authorization": f"Bearer {API_KEY}"}) as ws:
        await ws.send(json.dumps({}))
        assert (await _recv(ws))["type"] == "ready"


@pytest.mark.parametrize("message,code,field", [
    ("{not json", 1003, None),
    ("[1, 2]", 1003, None),
    ('{"sample_rate": 16000, "encoding": "opus"}', 1003, "encoding"),
    ('{"sample_rate": 100}', 1008, "sample_rate"),
    ('{"sample_rate": "16k"}', 1008, "sample_rate"),
    ('{"channels": 0}', 1008, "channels"),
    ('{"endpointing_ms": 1}', 1008, "endpointing_ms"),
    ('{"language": 5}', 1008, "language"),
    ('{"language": "de"}', 1008, "language"),  # tiny.en partials cannot do German
    ('{"models": {"final": "no-such-model"}}', 1008, "models.final"),
    ('{"models": {"fast": "x"}}', 1008, "models.fast"),
    ('{"beam_size": 20}', 1008, "beam_size"),  # above the server's VOXGATE_STREAMING__MAX_BEAM_SIZE
    ('{"colour": "blue"}', 1008, "colour"),
    ('{"type": "flush"}', 1008, "type"),
])
async def test_config_errors_name_the_field(live, message, code, field):
    async with await _connect(live) as ws:
        await ws.send(message)
        await _expect_error(ws, code, field)
    assert live.wait_for(lambda: live.streaming.active == 0)


async def test_clients_name_offered_models_only(live, tmp_path, manager):
    """A path (existing or not), a hub repo or a catalogue model that would need a download:
    one identical refusal naming what is offered, and nothing loaded or downloaded."""
    (tmp_path / "model.bin").write_bytes(b"x")
    answers = []
    for name in (str(tmp_path), "/nonexistent/model", "../../etc", "~",
                 "Systran/faster-whisper-large-v3", "whisper-large-v3"):
        async with await _connect(live) as ws:
            await ws.send(json.dumps({"models": {"final": name}}))
            error = await _expect_error(ws, 1008, "models.final")
        answers.append(error["message"].replace(repr(name), "<name>"))
    assert len(set(answers)) == 1, answers
    offered = answers[0].split("choose one of: ")[1].split(", ")
    assert "whisper-base" in offered and "whisper-tiny.en" in offered
    assert "whisper-large-v3" not in offered
    assert not any(str(tmp_path) in e["model"] or "large" in e["model"]
                   for e in manager.loaded())
    assert live.wait_for(lambda: live.streaming.active == 0)


async def test_audio_before_config(live):
    async with await _connect(live) as ws:
        await ws.send(b"\x00\x00" * 160)
        error = await _expect_error(ws, 1008)
    assert "before the config" in error["message"] and error["code"] == "config_expected"


async def test_json_where_audio_expected_and_odd_pcm_keep_what_was_said(live, librivox):
    clip = librivox[4]
    for bad, code, expected in [(json.dumps({"text": "hello"}), 1003, "audio_expected"),
                                (b"\x01\x02\x03", 1003, "bad_audio")]:
        async with await _connect(live) as ws:
            await ws.send(json.dumps({"interim_results": False}))
            assert (await _recv(ws))["type"] == "ready"
            await _send_audio(ws, clip.audio, speed=0)
            await ws.send(bad)
            error = await _expect_error(ws, code)
        assert error["code"] == expected
        finals = [m for m in error["_before"] if m["type"] == "final"]
        assert finals and wer(clip.text, finals[0]["text"]) < 0.2, "speech before the bad " \
                                                                    "frame was lost"


async def test_frame_too_big_is_1009(live):
    """uvicorn runs with ws_max_size = VOXGATE_STREAMING__MAX_FRAME_BYTES: a frame at the limit
    is audio, one byte pair more is refused by the protocol (1009) before it is buffered."""
    from voxgate.server import uvicorn_options

    limit = live.settings.streaming.max_frame_bytes
    assert uvicorn_options(live.settings)["ws_max_size"] == limit
    async with await _connect(live) as ws:
        await ws.send(json.dumps({}))
        assert (await _recv(ws))["type"] == "ready"
        await ws.send(b"\x00" * limit)  # exactly the limit: accepted
        await ws.send(b"\x00" * (limit + 2))
        with pytest.raises(websockets.ConnectionClosed) as closed:
            while True:
                await asyncio.wait_for(ws.recv(), 30)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    assert live.wait_for(lambda: live.streaming.active == 0)


async def test_idle_stream_is_closed(live):
    async with await _connect(live) as ws:
        await ws.send(json.dumps({}))
        assert (await _recv(ws))["type"] == "ready"
        started = time.monotonic()
        error = await _expect_error(ws, 1008)
    assert error["code"] == "idle_timeout"
    assert time.monotonic() - started >= live.settings.streaming.idle_timeout_s - 0.2
    assert live.wait_for(lambda: live.streaming.active == 0)


async def test_stream_limit_answers_1013_with_a_hint(live):
    limit = live.settings.max_streams
    open_sockets = []
    try:
        for _ in range(limit):
            ws = await _connect(live)
            await ws.send(json.dumps({}))
            assert (await _recv(ws))["type"] == "ready"
            open_sockets.append(ws)
        async with await _connect(live) as extra:
            error = await _expect_error(extra, 1013)
        assert "retry" in error["message"] and error["code"] == "busy"
    finally:
        for ws in open_sockets:
            await ws.close()
    assert live.wait_for(lambda: live.streaming.active == 0)


async def test_vanished_client_frees_stream_and_models(live, librivox, manager):
    ws = await _connect(live)
    await ws.send(json.dumps({}))
    assert (await _recv(ws))["type"] == "ready"
    assert live.streaming.active == 1
    await _send_audio(ws, librivox[0].audio[:3 * 16_000], speed=0)  # mid-utterance
    ws.transport.abort()  # no close frame: the client just vanishes
    assert live.wait_for(lambda: live.streaming.active == 0), "stream slot not freed"
    refs = {e["model"]: e["refs"] for e in manager.loaded()}
    assert refs.get("whisper-base") == 0 and refs.get("whisper-tiny.en") == 0 \
        and refs.get("silero-vad") == 0, refs
    assert live.wait_for(lambda: live.streaming.scheduler.queued_finals == 0)


def test_ready_and_metrics_report_streaming(live):
    import httpx

    base = f"http://127.0.0.1:{live.http_port}"
    ready = httpx.get(f"{base}/ready", headers=HEADERS, timeout=10).json()
    assert ready["checks"]["streaming"]["ok"] and ready["checks"]["grpc"]["ok"]
    metrics = httpx.get(f"{base}/metrics", headers=HEADERS, timeout=10).text
    for name in ("voxgate_streams_active", "voxgate_streams_opened_total",
                 "voxgate_stream_finals_total", "voxgate_stream_partials_dropped_total"):
        assert name in metrics, name


async def test_language_auto_detects_instead_of_assuming_english(live):
    """``"language": "auto"`` detects each utterance's language: Russian speech comes back as
    Russian text (an English-only default would have Whisper translate it into English)."""
    from translation_support import russian_speech

    audio = russian_speech()
    async with await _connect(live) as ws:
        await ws.send(json.dumps({"sample_rate": 16000, "encoding": "f32", "language": "auto",
                                  "interim_results": False}))
        ready = await _recv(ws)
        assert ready["type"] == "ready" and ready["language"] is None
        for i in range(0, audio.size, 1600):
            await ws.send(audio[i:i + 1600].astype("<f4").tobytes())
        await ws.send(json.dumps({"type": "end"}))
        finals = [m for m in await _collect(ws) if m["type"] == "final"]
    text = " ".join(m["text"] for m in finals)
    assert sum("а" <= ch.lower() <= "я" for ch in text) > len(text) // 2, text

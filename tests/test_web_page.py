"""The web page at ``/`` in a real headless Chromium (Debian ``chromium``), driven by Playwright
with the system browser (no browser download), with a fake microphone fed from a speech WAV.

- against the real ``/ws/translate`` door with the real models: the translated text appears in
  the log and its WAV is played (the page's ``voxgate:played`` event after the audio ``ended``);
- the page's side of the wire, against a recording door: config first, 48 kHz Int16 frames that
  carry the fake microphone's speech, ``__flush__`` on Stop, each returned WAV played in order;
- what a person sees when the real door refuses the key or is busy (every slot held), and when
  the microphone is denied.

One screenshot per browser test is written under the test's tmp dir (its path is printed).
"""

from __future__ import annotations

import json
import shutil
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import wer
from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from fastapi.staticfiles import StaticFiles
from live_server import API_KEY, live_settings, serve_app

from voxgate.audio import encode_wav, float32_to_pcm16, pcm16_to_float32, resample

CHROMIUM = Path("/usr/bin/chromium")
WEB_DIR = Path(__file__).resolve().parent.parent / "src" / "voxgate" / "web"
MIC_RATE = 48_000
TAIL_SILENCE_S = 2.0


def _playwright() -> Any:
    if not CHROMIUM.exists() or shutil.which("chromium") is None:
        pytest.skip("Debian chromium is not installed (scripts/test.sh installs it: "
                    "apt-get install chromium chromium-driver)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install -e '.[dev]')")
    return sync_playwright


def _write_mic_wav(path: Path, speech16k: np.ndarray) -> np.ndarray:
    """The fake microphone's file: the speech at 48 kHz mono, then silence (so the utterance
    ends by the server's endpointer); Chromium plays it once (``%noloop``)."""
    audio = np.concatenate([np.zeros(MIC_RATE // 2, np.float32), resample(speech16k, 16_000,
                                                                            MIC_RATE),
                            np.zeros(int(MIC_RATE * TAIL_SILENCE_S), np.float32)])
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(MIC_RATE)
        out.writeframes(float32_to_pcm16(audio))
    return audio


class Browser:
    """One Chromium whose microphone plays ``mic_wav``; pages open in fresh contexts."""

    def __init__(self, mic_wav: Path) -> None:
        self._pw = _playwright()().start()
        self._browser = self._pw.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--use-fake-device-for-media-stream",
                  f"--use-file-for-fake-audio-capture={mic_wav}%noloop",
                  "--autoplay-policy=no-user-gesture-required"])

    def page(self, url: str, *, microphone: bool = True, api_key: str | None = API_KEY) -> Any:
        context = self._browser.new_context(
            permissions=["microphone"] if microphone else [])
        page = context.new_page()
        page.on("console", lambda msg: print(f"[browser {msg.type}] {msg.text}"))
        page.on("pageerror", lambda exc: print(f"[browser error] {exc}"))
        page.goto(url)
        if api_key is not None:
            page.fill("#api-key", api_key)
        return page

    def close(self) -> None:
        self._browser.close()
        self._pw.stop()


@pytest.fixture(scope="module")
def mic_speech(librivox) -> np.ndarray:
    """'he was not an ill disposed young man' (3 s of LibriVox) at 16 kHz."""
    return next(c for c in librivox if c.path.stem.endswith("0880")).audio


@pytest.fixture(scope="module")
def browser(mic_speech, tmp_path_factory) -> Iterator[Browser]:
    path = tmp_path_factory.mktemp("mic") / "speech-48k.wav"
    _write_mic_wav(path, mic_speech)
    chromium = Browser(path)
    yield chromium
    chromium.close()


def _screenshot(page: Any, path: Path) -> None:
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")


def _stats(page: Any) -> dict[str, int]:
    return page.evaluate("() => ({...window.voxgate.translate.stats})")


# --- the real door, the real models -------------------------------------------------------


@pytest.fixture(scope="module")
def translate_server(manager, tmp_path_factory) -> Iterator[Any]:
    """voxgate's app with live ASR + translation (the session's models) on loopback."""
    from voxgate.config import StreamingSettings, TranslationSettings
    from voxgate.server.app import create_app, uvicorn_options
    from voxgate.server.translation_state import TranslationComponent
    from voxgate.server.ws import StreamingComponent

    # the page is under test, not the LLM's speed: a slow shared CPU must not time MT out
    # (and the streams the busy test holds open without audio stay open for a minute)
    settings = live_settings(tmp_path_factory.mktemp("translate"),
                             translation=TranslationSettings(mt_timeout_s=600),
                             streaming=StreamingSettings(idle_timeout_s=60.0,
                                                         max_frame_bytes=64 * 1024))
    app = create_app(settings, manager, components=[StreamingComponent(settings),
                                                     TranslationComponent(settings)])
    with serve_app(app, ws_max_size=uvicorn_options(settings)["ws_max_size"]) as live:
        yield live


def test_spoken_english_is_translated_and_played(browser, translate_server, librivox,
                                                 tmp_path) -> None:
    """Auto mode (the page's default): the fake microphone says 'he was not an ill disposed
    young man'; its transcript and a Russian translation appear, and the translated WAV plays."""
    reference = next(c for c in librivox if c.path.stem.endswith("0880")).text
    page = browser.page(translate_server.url + "/")
    assert page.input_value("#translate-mode") == "auto"
    page.click("#translate-start")
    page.wait_for_selector("#translate-log li[data-tgt]", timeout=600_000)  # the result
    entries = page.locator("#translate-log li")
    assert entries.count() == 1, page.inner_html("#translate-log")  # transcript + result: one
    entry = entries.first
    assert entry.locator(".note").count() == 0, entry.inner_text()  # no MT / TTS failure
    page.wait_for_selector("#translate-log li[data-audio=played]", timeout=120_000)
    transcript = entry.locator(".source .text").inner_text()
    translation = entry.locator(".translation .text").inner_text()
    print(f"heard {transcript!r} -> {translation!r}")
    _screenshot(page, tmp_path / "translated.png")
    page.click("#translate-stop")
    page.wait_for_function("document.getElementById('translate-status').textContent"
                           ".includes('every translation has arrived')", timeout=60_000)
    assert (entry.get_attribute("data-src"), entry.get_attribute("data-tgt")) == ("en", "ru")
    assert wer(reference, transcript) <= 0.4, transcript  # 'ill' is often heard as 'old'
    cyrillic = sum("\u0400" <= ch <= "\u04ff" for ch in translation)
    assert cyrillic >= 0.6 * sum(ch.isalpha() for ch in translation) > 0, translation
    stats = _stats(page)
    assert stats["audioPlayed"] >= 1 and stats["errors"] == 0, stats
    assert page.is_hidden("#translate-error")


# --- the page's side of the wire, against a door that records what it gets ----------------


class RecordingDoor:
    """A test-only ``/ws/translate`` that keeps what the page sends and answers each flush with
    a result and a WAV, as the contract says: it checks the page, not translation."""

    def __init__(self, api_key: str) -> None:
        self.api_key = api_key
        self.config: dict[str, Any] | None = None
        self.pcm = bytearray()
        self.frames = 0
        self.texts: list[str] = []
        self.answered = 0

    def app(self, busy: bool = False) -> FastAPI:
        app = FastAPI()

        @app.websocket("/ws/translate")
        async def door(ws: WebSocket) -> None:
            await ws.accept()
            if ws.query_params.get("api_key") != self.api_key:
                await ws.send_json({"type": "error", "code": "unauthorized",
                                    "message": "invalid or missing API key", "close_code": 1008})
                await ws.close(1008)
                return
            if busy:
                await ws.send_json({"type": "error", "code": "busy", "close_code": 1013,
                                    "message": "all 1 translation streams are in use."})
                await ws.close(1013)
                return
            self.config = json.loads(await ws.receive_text())
            try:
                while True:
                    message = await ws.receive()
                    if message["type"] == "websocket.disconnect":
                        return
                    if message.get("bytes") is not None:
                        self.pcm += message["bytes"]
                        self.frames += 1
                        continue
                    self.texts.append(message["text"])
                    if message["text"] == "__flush__":
                        await self._answer(ws)
                    elif json.loads(message["text"]) == {"type": "end"}:
                        await ws.send_json({"type": "end", "utterances": self.answered})
                        await ws.close(1000)
                        return
            except WebSocketDisconnect:
                return

        app.mount("/", StaticFiles(directory=WEB_DIR, html=True), name="web")
        return app

    async def _answer(self, ws: WebSocket) -> None:
        """The door's order: the source transcript, then the result, then its WAV."""
        n = self.answered  # utterance ids start at 0, as the real door's do
        self.answered += 1
        await ws.send_json({"type": "partial", "utterance_id": n, "text": "utter"})
        await ws.send_json({"type": "transcript", "utterance_id": n, "src": "en",
                            "text": f"utterance {n}"})
        await ws.send_json({"type": "result", "utterance_id": n, "src": "en", "tgt": "ru",
                            "transcript": f"utterance {n}", "text": f"высказывание {n}",
                            "audio": True})
        tone = 0.2 * np.sin(2 * np.pi * 440 * np.arange(8000) / 16_000).astype(np.float32)
        await ws.send_bytes(encode_wav(tone, 16_000))


def test_page_sends_48k_int16_frames_and_flush_and_plays_the_answer(browser, mic_speech,
                                                                     tmp_path) -> None:
    door = RecordingDoor(API_KEY)
    with serve_app(door.app()) as server:
        page = browser.page(server.url + "/")
        assert page.title() == "voxgate"
        assert page.get_attribute("#tab-translate", "aria-selected") == "true"
        page.select_option("#translate-mode", "en->ru")
        page.click("#translate-start")
        # the whole fake recording (speech + silence) reaches the door in real time
        seconds = 0.5 + mic_speech.size / 16_000 + TAIL_SILENCE_S
        sent = seconds * 0.9 * MIC_RATE * 2
        page.wait_for_function(f"window.voxgate.translate.stats.bytesSent >= {sent}",
                               timeout=(seconds + 10) * 1000)
        page.click("#translate-stop")
        page.wait_for_selector("#translate-log li[data-audio=played]", timeout=20_000)
        page.wait_for_function("document.getElementById('translate-status').textContent"
                               ".includes('every translation has arrived')", timeout=10_000)
        _screenshot(page, tmp_path / "recording-door.png")
        stats = _stats(page)
        entries = page.locator("#translate-log li")
        assert entries.count() == 1  # the transcript and its result share one entry
        assert entries.locator(".source .text").inner_text() == "utterance 0"
        assert entries.locator(".translation .text").inner_text() == "высказывание 0"
        assert entries.locator(".translation .text").get_attribute("lang") == "ru"
        assert page.is_enabled("#translate-start") and page.is_hidden("#translate-error")

    assert door.config == {"mode": "en->ru", "src": "en", "tgt": "ru", "sample_rate": MIC_RATE,
                           "channels": 1}
    assert door.texts == ["__flush__", '{"type":"end"}']
    assert door.frames == stats["framesSent"] and len(door.pcm) == stats["bytesSent"]
    assert len(door.pcm) % 2 == 0
    received = pcm16_to_float32(bytes(door.pcm))
    # the speech is in what was sent: loud where the file speaks, near silence in its tail
    speech_rms = float(np.sqrt(np.mean(resample(mic_speech, 16_000, MIC_RATE) ** 2)))
    window = MIC_RATE // 10
    rms = np.sqrt(np.mean(received[: received.size // window * window]
                          .reshape(-1, window) ** 2, axis=1))
    assert rms.max() > 0.5 * speech_rms, (rms.max(), speech_rms)
    assert rms[-5:].max() < 0.05 * speech_rms  # the tail silence, no noise added by the page
    assert stats["results"] == 1 and stats["audioReceived"] == 1 and stats["audioPlayed"] == 1


def test_refused_key_and_busy_server_are_shown(browser, translate_server, tmp_path) -> None:
    """The real door's refusals, in words: a wrong key, then every stream slot taken."""
    from websockets.sync.client import connect

    page = browser.page(translate_server.url + "/", api_key="wrong-key")
    page.click("#translate-start")
    error = page.wait_for_selector("#translate-error:not([hidden])", timeout=60_000)
    assert "refused the API key" in error.inner_text()
    assert page.is_enabled("#translate-start") and page.is_disabled("#translate-stop")
    _screenshot(page, tmp_path / "refused-key.png")

    url = f"ws://127.0.0.1:{translate_server.port}/ws/translate?api_key={API_KEY}"
    slots = translate_server.settings.max_streams  # each translation holds a live ASR stream
    holders = [connect(url, open_timeout=30) for _ in range(slots)]
    try:
        for ws in holders:
            ws.send(json.dumps({"mode": "en->ru"}))
            assert json.loads(ws.recv(timeout=120))["type"] == "ready"
        page = browser.page(translate_server.url + "/")
        page.click("#translate-start")
        error = page.wait_for_selector("#translate-error:not([hidden])", timeout=60_000)
        assert "busy" in error.inner_text(), error.inner_text()
        assert page.is_enabled("#translate-start")
    finally:
        for ws in holders:
            ws.close()


def test_denied_microphone_is_shown_and_nothing_connects(browser) -> None:
    door = RecordingDoor(API_KEY)
    with serve_app(door.app()) as server:
        page = browser.page(server.url + "/", microphone=False)
        page.click("#translate-start")
        error = page.wait_for_selector("#translate-error:not([hidden])", timeout=60_000)
        assert "Microphone access was denied" in error.inner_text()
        assert page.is_enabled("#translate-start")
    assert door.config is None

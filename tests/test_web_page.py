"""The web page at ``/`` in a real headless Chromium (Debian ``chromium``), driven by Playwright
with the system browser (no browser download), with a fake microphone fed from a speech WAV.

- against the real ``/ws/translate`` door with the real models: the translated text appears in
  the log and its WAV is played (the page's ``voxgate:played`` event after the audio ``ended``);
- the page's side of the wire, against a recording door: config first, 48 kHz Int16 frames that
  carry the fake microphone's speech, ``__flush__`` on Stop, each returned WAV played in order;
- what a person sees when the real door refuses the key or is busy (every slot held), and when
  the microphone is denied;
- the Talk tab against the real ``/v1/agent`` (Whisper, Qwen, Piper): a spoken question is
  transcribed, the reply text appears and its audio is played to the end; and against a
  scripted door: barge-in (``audio_paused`` silences playback at once, what is in flight is
  dropped, ``audio_resumed`` plays on), the Interrupt and Stop buttons, a busy server.

Start buttons are disabled in the HTML until their tool's module has attached its handlers;
Playwright's click waits for that (a click that came before the module ran used to do nothing:
the refused-key test then waited in vain for an error).

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
from live_server import API_KEY, live_settings, serve_app, start_agent_server

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


def _write_mic_wav(path: Path, speech16k: np.ndarray, tail_s: float = TAIL_SILENCE_S
                   ) -> np.ndarray:
    """The fake microphone's file: the speech at 48 kHz mono, then silence (so the utterance
    ends by the server's endpointer); Chromium plays it once (``%noloop``)."""
    audio = np.concatenate([np.zeros(MIC_RATE // 2, np.float32), resample(speech16k, 16_000,
                                                                            MIC_RATE),
                            np.zeros(int(MIC_RATE * tail_s), np.float32)])
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(MIC_RATE)
        out.writeframes(float32_to_pcm16(audio))
    return audio


class Browser:
    """One Chromium whose microphone plays ``mic_wav``; pages open in fresh contexts.
    ``playwright``: the module's one sync Playwright (a second one in this thread is refused)."""

    def __init__(self, playwright: Any, mic_wav: Path) -> None:
        self._browser = playwright.chromium.launch(
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


@pytest.fixture(scope="module")
def playwright() -> Iterator[Any]:
    pw = _playwright()().start()
    yield pw
    pw.stop()


@pytest.fixture(scope="module")
def mic_speech(librivox) -> np.ndarray:
    """'he was not an ill disposed young man' (3 s of LibriVox) at 16 kHz."""
    return next(c for c in librivox if c.path.stem.endswith("0880")).audio


@pytest.fixture(scope="module")
def browser(playwright, mic_speech, tmp_path_factory) -> Iterator[Browser]:
    path = tmp_path_factory.mktemp("mic") / "speech-48k.wav"
    _write_mic_wav(path, mic_speech)
    chromium = Browser(playwright, path)
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
    # 'ill' is often heard as 'old'; on a starved machine the page's capture drops frames
    # ('He was not an ill-disp p j n', WER 0.5); a wrong rate or format gives ~1.0
    assert wer(reference, transcript) <= 0.6, transcript
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
                           "channels": 1, "stream_audio": True}
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


# --- the Talk tab: the voice agent at /v1/agent ----------------------------------------------

QUESTION = "What is the capital of France?"


def _talk_stats(page: Any) -> dict[str, Any]:
    return page.evaluate("() => ({...window.voxgate.talk.stats, "
                         "player: {...window.voxgate.talk.player}})")


@pytest.fixture(scope="module")
def agent_server(manager, tmp_path_factory) -> Iterator[Any]:
    """voxgate's app with live ASR + the voice agent (the session's models) on loopback; short
    replies, so the test hears a whole one quickly."""
    from conftest import require_pack

    for model_id in ("whisper-base", "whisper-tiny.en", "qwen2.5-coder-1.5b-instruct-q4km",
                     "en_US-joe-medium"):
        require_pack(model_id, manager.settings.cache_dir)
    from voxgate.config import AgentSettings, StreamingSettings

    settings = live_settings(tmp_path_factory.mktemp("talk"), max_streams=2,
                             streaming=StreamingSettings(idle_timeout_s=60.0,
                                                         max_frame_bytes=64 * 1024),
                             agent=AgentSettings(max_sessions=1, max_reply_tokens=24,
                                                 system_prompt="Answer in one short sentence."))
    yield from start_agent_server(settings, manager)


@pytest.fixture(scope="module")
def talk_browser(playwright, manager, tmp_path_factory) -> Iterator[Browser]:
    """A Chromium whose microphone asks the question (Piper speech), then stays silent long
    enough for the agent's end of turn (the fake device sends nothing after the file)."""
    from voxgate.speech import SpeechService

    question, rate = SpeechService(manager.settings, manager).synthesize(QUESTION)
    path = tmp_path_factory.mktemp("mic") / "question-48k.wav"
    _write_mic_wav(path, resample(question, rate, 16_000), tail_s=4.0)
    chromium = Browser(playwright, path)
    yield chromium
    chromium.close()


def test_talk_spoken_question_is_answered_in_text_and_speech(talk_browser, agent_server,
                                                             tmp_path) -> None:
    """The Talk tab against the real /v1/agent (Whisper, Qwen, Piper): the spoken question
    appears as the user's turn, the agent's reply text appears, and its audio is played to
    the end (every second the server said it sent)."""
    page = talk_browser.page(agent_server.url + "/")
    page.click("#tab-talk")
    assert page.is_visible("#panel-talk") and page.is_hidden("#panel-translate")
    page.click("#talk-start")
    user = page.wait_for_selector("#talk-log li.user .text:not(:empty)", timeout=120_000)
    reply = page.wait_for_selector("#talk-log li.agent[data-ended]", timeout=120_000)
    page.wait_for_selector("#talk-log li.agent[data-audio=played]", timeout=60_000)
    heard, answer = user.inner_text(), reply.query_selector(".text").inner_text()
    print(f"heard {heard!r} -> agent {answer!r}")
    _screenshot(page, tmp_path / "talk.png")
    stats = _talk_stats(page)
    page.click("#talk-stop")
    page.wait_for_function("document.getElementById('talk-status').textContent === 'Stopped.'",
                           timeout=10_000)
    assert wer(QUESTION, heard) <= 0.4, heard  # 'France' is sometimes heard as 'friends'
    assert reply.get_attribute("data-reason") == "completed"
    assert len(answer.split()) >= 2, answer
    assert stats["errors"] == 0 and stats["replies"] == 1 and stats["audioDropped"] == 0, stats
    player = stats["player"]
    assert player["chunks"] == stats["audioChunks"] == player["chunksPlayed"] > 0, stats
    said = float(reply.get_attribute("data-audio-s"))
    assert abs(player["secondsPlayed"] - said) <= 0.2, (player, said)  # all of it was heard
    assert page.is_hidden("#talk-error") and page.is_enabled("#talk-start")


class ScriptedAgentDoor:
    """A test-only ``/v1/agent`` that plays one scripted barge-in: after the page's first
    audio it answers a turn with 3 s of agent audio (sent at once), says ``audio_paused`` after
    ``pause_after_s``, ``audio_resumed`` 1 s later with 0.5 s more audio, and ends the turn;
    then it records what the page sends (``interrupt``) and answers it. Checks the page, not
    the agent."""

    RATE = 16_000

    def __init__(self, api_key: str, pause_after_s: float = 1.0) -> None:
        self.api_key = api_key
        self.pause_after_s = pause_after_s
        self.config: dict[str, Any] | None = None
        self.controls: list[dict[str, Any]] = []
        self.frames = 0
        self.close_code: int | None = None

    def _tone(self, seconds: float) -> bytes:
        t = np.arange(int(self.RATE * seconds)) / self.RATE
        return float32_to_pcm16((0.2 * np.sin(2 * np.pi * 330 * t)).astype(np.float32))

    def app(self, busy: bool = False) -> FastAPI:
        import asyncio

        app = FastAPI()

        @app.websocket("/v1/agent")
        async def door(ws: WebSocket) -> None:
            await ws.accept()
            if busy:
                await ws.send_json({"type": "error", "code": "busy", "close_code": 1013,
                                    "message": "all 1 agent sessions are in use.",
                                    "fatal": True})
                await ws.close(1013)
                return
            self.config = json.loads(await ws.receive_text())
            await ws.send_json({"type": "ready", "session_id": "s1",
                                "output": {"sample_rate": self.RATE, "encoding": "pcm16"}})
            try:
                while (message := await ws.receive())["type"] != "websocket.disconnect":
                    if message.get("bytes") is not None:
                        self.frames += 1
                        if self.frames == 5:
                            await self._turn(ws, asyncio)
                        continue
                    control = json.loads(message["text"])
                    self.controls.append(control)
                    if control["type"] == "interrupt":
                        await ws.send_json({"type": "interruption", "turn_id": 2,
                                            "reason": "cancelled", "played_text": "Second",
                                            "played_s": 0.4})
                        await ws.send_json({"type": "turn", "event": "ended", "turn_id": 2,
                                            "role": "agent", "reason": "cancelled",
                                            "text": "Second", "audio_s": 0.4})
                self.close_code = message.get("code")
            except WebSocketDisconnect as gone:
                self.close_code = gone.code

        app.mount("/", StaticFiles(directory=WEB_DIR, html=True), name="web")
        return app

    async def _turn(self, ws: WebSocket, asyncio: Any) -> None:
        events = [{"type": "transcript", "turn_id": 1, "text": "hello", "final": False,
                   "turn_text": "hello"},
                  {"type": "transcript", "turn_id": 1, "text": "Hello there.", "final": True,
                   "turn_text": "Hello there."},
                  {"type": "turn", "event": "ended", "turn_id": 1, "role": "user",
                   "reason": "completed", "text": "Hello there."},
                  {"type": "turn", "event": "started", "turn_id": 1, "role": "agent"},
                  {"type": "agent_text", "turn_id": 1, "delta": "Hi, "},
                  {"type": "agent_text", "turn_id": 1, "delta": "how can I help?"}]
        for event in events:
            await ws.send_json(event)
        tone = self._tone(3.0)
        step = self.RATE // 10 * 2  # 100 ms chunks
        for i in range(0, len(tone), step):
            await ws.send_bytes(tone[i:i + step])
        await asyncio.sleep(self.pause_after_s)
        await ws.send_json({"type": "audio_paused", "turn_id": 1,
                            "played_s": self.pause_after_s})
        await ws.send_bytes(self._tone(0.3))  # in flight when paused: must not be played
        await asyncio.sleep(1.0)
        await ws.send_json({"type": "audio_resumed", "turn_id": 1,
                            "offset_s": self.pause_after_s})
        await ws.send_bytes(self._tone(0.5))
        await ws.send_json({"type": "turn", "event": "ended", "turn_id": 1, "role": "agent",
                            "reason": "completed", "text": "Hi, how can I help?",
                            "audio_s": 3.5})
        await asyncio.sleep(1.0)  # the first reply's last 0.5 s plays to its end
        # a second reply, for the Interrupt button
        await ws.send_json({"type": "turn", "event": "started", "turn_id": 2, "role": "agent"})
        await ws.send_json({"type": "agent_text", "turn_id": 2, "delta": "Second reply."})
        await ws.send_bytes(self._tone(6.0))


def test_talk_barge_in_stops_playback_at_once_and_resume_plays_on(browser, tmp_path) -> None:
    door = ScriptedAgentDoor(API_KEY)
    with serve_app(door.app()) as server:
        page = browser.page(server.url + "/")
        page.click("#tab-talk")
        page.click("#talk-start")
        page.wait_for_function("window.voxgate.talk.stats.pauses === 1", timeout=30_000)
        # right after audio_paused: nothing plays or waits to play; 3 s were queued, ~1 s heard
        paused = page.evaluate("() => ({playing: window.voxgate.talk.playing(),"
                               " stops: window.voxgate.talk.player.stops,"
                               " state: document.querySelector('#talk-log li.agent')"
                               ".dataset.state})")
        assert paused == {"playing": False, "stops": 1, "state": "paused"}, paused
        page.wait_for_selector("#talk-log li.agent[data-audio=played]", timeout=30_000)
        first = _talk_stats(page)
        # the second reply plays; Interrupt silences it and tells the server
        page.wait_for_function("window.voxgate.talk.stats.replies === 2 &&"
                               " window.voxgate.talk.playing()", timeout=10_000)
        page.click("#talk-interrupt")
        page.wait_for_selector("#talk-log li.agent[data-reason=cancelled]", timeout=10_000)
        _screenshot(page, tmp_path / "talk-barge-in.png")
        second = _talk_stats(page)
        page.click("#talk-stop")
        page.wait_for_function("document.getElementById('talk-status').textContent"
                               " === 'Stopped.'", timeout=10_000)
        texts = page.locator("#talk-log li .text").all_inner_texts()
        assert page.is_hidden("#talk-error") and page.is_enabled("#talk-start")
    assert door.config == {"type": "config", "sample_rate": MIC_RATE, "encoding": "pcm16",
                           "channels": 1}
    assert texts == ["Hello there.", "Hi, how can I help?", "Second reply."]
    # what was dropped at the pause (the 0.3 s in flight) was never played; the 0.5 s after
    # the resume was: about 1 s + 0.5 s heard of the 3.8 s sent
    assert first["audioDropped"] == 1 and first["resumes"] == 1, first
    assert 0.49 <= first["player"]["secondsPlayed"] <= 2.6, first
    assert door.controls == [{"type": "interrupt"}]
    assert second["player"]["stops"] == 2 and second["interruptions"] == 1, second
    assert second["player"]["secondsPlayed"] == first["player"]["secondsPlayed"]
    assert door.close_code == 1000  # Stop hangs up normally


def test_talk_busy_server_is_shown(browser) -> None:
    with serve_app(ScriptedAgentDoor(API_KEY).app(busy=True)) as server:
        page = browser.page(server.url + "/")
        page.click("#tab-talk")
        page.click("#talk-start")
        error = page.wait_for_selector("#talk-error:not([hidden])", timeout=30_000)
        assert "busy" in error.inner_text(), error.inner_text()
        assert page.is_enabled("#talk-start") and page.is_disabled("#talk-stop")


def test_start_buttons_wait_for_their_modules() -> None:
    """The cause of a flaky run, kept fixed: each tool is a module loaded by its own script tag
    (module scripts run before the load event Playwright's goto waits for; a dynamic import()
    did not: with translate.js served 1.5 s late, goto returned after 0.35 s with Start
    enabled and no handler yet), and its Start button stays disabled in the markup until the
    module has attached the click handler."""
    html = (WEB_DIR / "index.html").read_text()
    for tool in ("translate", "talk"):
        assert f'<script type="module" src="{tool}.js"></script>' in html
        start = next(line for line in html.splitlines() if f'id="{tool}-start"' in line)
        assert " disabled" in start, start
        assert (WEB_DIR / f"{tool}.js").read_text().rstrip().endswith(
            "ui.start.disabled = false;  // the handlers are in place: Start may be pressed")
    assert "import(" not in (WEB_DIR / "console.js").read_text()

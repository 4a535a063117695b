"""Live speech-to-speech translation latency: voxgate's ``/ws/translate`` vs the seed's design,
side by side in one run, on the same engines, over WebSocket, with real-time fed speech.

Input, per direction (explicit modes, so language detection is not part of the figure):

* set ``single`` (one sentence per utterance):
  * ``en->ru``: the 5 LibriVox clips of Debian ``pocketsphinx-testdata`` (real read speech);
  * ``ru->en``: 5 Russian sentences (written for this bench) spoken by Festival
    ``msu_ru_nsh_clunits`` through voxgate's own TTS (Whisper base hears them at ~0-10% WER;
    espeak-ng's Russian is misheard too often to be a fair input);
* set ``multi`` (2-3 sentences per utterance, where streamed MT and audio can speak the first
  sentence while the rest is translated):
  * ``en->ru``: two LibriVox clips that follow each other in the book's chapter, joined with
    a 0.3 s pause (real speech), and 3 short texts written for this bench spoken by Festival
    ``cmu_us_slt_arctic_hts`` (not the voice that speaks the translations);
  * ``ru->en``: 3 texts written for this bench, spoken by ``msu_ru_nsh_clunits``.
  Each input's longest pause inside the speech is recorded (``extra.max_pause_s``): all stay
  below both sides' endpoints (500 ms of VAD silence, 900 ms idle), so no side cuts them.

Each utterance is one fresh WebSocket stream, fed like the browser page feeds it: 48 kHz Int16
mono in 40 ms frames, wall-clock paced (real time), 0.3 s of silence, the speech, then silence
frames (a microphone never stops) until the answer's WAV has arrived (60 s at most).

Measured from the end of the spoken utterance (the wall-clock moment the frame holding the last
voiced sample was sent; voiced: 20 ms RMS above ``VOICED_RMS``), for the answer that covers
the end of the speech (its utterance ends within ``COVER_TOL_S`` of it, from the ``end`` each
answer carries: an earlier piece of an utterance the endpointer cut in two also arrives after
the speech ended, but it is not timed):

* ``first text``: the first translated words arrive (a streamed part's header, or the result);
* ``text``: the result JSON with the whole translated text arrives;
* ``audio``: the first byte of translated audio arrives (the first streamed part's WAV, or the
  utterance's one WAV on the seed's contract).

Sides (same server process, same ModelManager, so the same loaded models and MT engine):

* ``voxgate``: the real ``/ws/translate`` door with ``"stream_audio": true`` (TranslateSession:
  the live-ASR endpointer with its speculative finals, the MT streamed, each translated sentence
  or clause spoken and sent as its own WAV as soon as it is ready; settings from
  ``VOXGATE_TRANSLATION__*``);
* ``voxgate-contract``: the same door on the seed's contract (one WAV per utterance, after the
  whole translation is spoken), i.e. what an unchanged seed client gets;
* ``seed``: the seed's design (``../shared/seeds/002_*.txt``, ``handle_utterance``) as a
  bench-only door ``/bench/seed-translate`` on the same app: buffer the PCM; when no voiced audio
  has come for 900 ms (the seed's idle flush; measured on the audio so a microphone's silence
  frames count as idle), resample the whole buffer, ASR of the whole utterance (the same Whisper
  model and beam as voxgate's finals, plain 30 s window as faster-whisper does by default),
  then MT of the whole text (the same Mt engine), then TTS of the whole text (the same voice),
  then send the JSON and the WAV.

Reported per side and direction: p50/p95 of the latencies, and the seed/voxgate ratio of
p50 time to first translated audio (the issue's goal: >= 1.5) for both voxgate sides. One
warm-up utterance per door and direction loads the models first and is not counted.

    flock /tmp/voxgate-cpu.lock python bench/translation_latency.py   # ~13 min on 2 busy cores
    python bench/translation_latency.py --rounds 2 --directions en->ru

Writes ``bench/results/translation_latency.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Self

import numpy as np
from fastapi import WebSocket, WebSocketDisconnect  # module level: FastAPI reads the annotation

RESULTS = Path(__file__).resolve().parent / "results"
LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")
SR = 16_000
WIRE_RATE = 48_000
FRAME_S = 0.04  # the page's AudioWorklet frame
LEAD_S = 0.3
VOICED_RMS = 0.01  # -40 dBFS over 20 ms: speech (the inputs' pauses are digital silence)
SEED_IDLE_S = 0.9  # the seed's "idle ~900ms" flush
COVER_TOL_S = 0.5  # an answer whose utterance ends this close to the speech end covers it
SIDES = ("voxgate", "voxgate-contract", "seed")
ANSWER_TIMEOUT_S = 60.0
API_KEY = "bench-translation-key"
RU_SENTENCES = (  # plain everyday sentences written for this bench (no third-party text)
    "Сегодня утром я пошёл в магазин за хлебом.",
    "Поезд приходит в восемь часов вечера.",
    "Мой брат живёт в большом городе у реки.",
    "Пожалуйста, закройте окно, на улице холодно.",
    "Мы будем рады видеть вас на следующей неделе.",
)
RU_VOICE = "festival:msu_ru_nsh_clunits"
RU_MULTI = (  # 2-3 sentences per utterance, written for this bench
    "Завтра будет тёплый день. Мы поедем на дачу к бабушке.",
    "Я купил новую книгу. Она очень интересная, и я читаю её каждый вечер.",
    "Магазин закрыт в воскресенье. Приходите в понедельник утром. Мы будем ждать вас.",
)
EN_VOICE = "festival:cmu_us_slt_arctic_hts"  # Piper joe speaks the translations into English
EN_MULTI = (  # 2-3 sentences per utterance, written for this bench
    "I left my umbrella at home this morning. Now it is raining, and I am wet.",
    "The shop opens at nine. We can buy some bread and milk there.",
    "My sister lives in a small town. She works at the school. She likes her job.",
)
LIBRIVOX_PAIR = ("0880", "0930")  # consecutive sentences of the chapter, read by one reader
PAIR_GAP_S = 0.3
SETS = ("single", "multi")


# ---- input -----------------------------------------------------------------------------------
@dataclass
class Utterance:
    mode: str  # "en->ru" | "ru->en"
    name: str
    reference: str  # what is said
    audio: np.ndarray  # 16 kHz float32, speech only (the stream adds lead and silence)
    set: str = "single"  # "single": one sentence; "multi": 2-3 sentences

    @property
    def speech_end_s(self) -> float:
        """Stream seconds of the last voiced 20 ms window, counted from the stream's start."""
        win = SR // 50
        frames = self.audio[: self.audio.size // win * win].reshape(-1, win)
        voiced = np.flatnonzero(np.sqrt(np.mean(frames ** 2, axis=1)) > VOICED_RMS)
        last = (voiced[-1] + 1) * win if voiced.size else self.audio.size
        return LEAD_S + last / SR

    @property
    def max_pause_s(self) -> float:
        """The longest run of unvoiced 20 ms windows between the first and last voiced."""
        win = SR // 50
        frames = self.audio[: self.audio.size // win * win].reshape(-1, win)
        voiced = np.flatnonzero(np.sqrt(np.mean(frames ** 2, axis=1)) > VOICED_RMS)
        gaps = np.diff(voiced) - 1 if voiced.size > 1 else np.zeros(1)
        return round(float(gaps.max()) * win / SR, 2)


def english_clips() -> list[Utterance]:
    """The LibriVox clips with their transcripts (Debian pocketsphinx-testdata)."""
    import re

    from voxgate.audio import decode_audio

    listing = LIBRIVOX / "transcription"
    if not listing.is_file():
        sys.exit("needs Debian pocketsphinx-testdata (bash scripts/setup.sh installs it)")
    out = []
    for line in listing.read_text().splitlines():
        match = re.match(r"<s>\s*(.*?)\s*</s>\s*\((.+)\)", line.strip())
        if match:
            out.append(Utterance("en->ru", match.group(2)[-4:], match.group(1),
                                 decode_audio(LIBRIVOX / f"{match.group(2)}.wav")))
    return out


def russian_sentences(speech: Any) -> list[Utterance]:
    """RU_SENTENCES spoken by Festival's Russian voice, at 16 kHz."""
    return [_spoken(speech, "ru->en", f"ru{i + 1}", text, RU_VOICE, "single")
            for i, text in enumerate(RU_SENTENCES)]


def multi_sentence(speech: Any, mode: str) -> list[Utterance]:
    """Set ``multi`` of ``mode`` (see the module doc)."""
    if mode == "ru->en":
        return [_spoken(speech, mode, f"ru-m{i + 1}", text, RU_VOICE, "multi")
                for i, text in enumerate(RU_MULTI)]
    clips = {u.name: u for u in english_clips()}
    first, second = (clips[name] for name in LIBRIVOX_PAIR)
    pair = np.concatenate([_trimmed(first.audio), np.zeros(int(PAIR_GAP_S * SR), np.float32),
                           _trimmed(second.audio)])
    out = [Utterance(mode, "+".join(LIBRIVOX_PAIR), f"{first.reference}. {second.reference}.",
                     pair, "multi")]
    return out + [_spoken(speech, mode, f"en-m{i + 1}", text, EN_VOICE, "multi")
                  for i, text in enumerate(EN_MULTI)]


def _spoken(speech: Any, mode: str, name: str, text: str, voice: str, set_: str) -> Utterance:
    from voxgate.audio import resample

    audio, rate = speech.synthesize(text, voice)
    return Utterance(mode, name, text, resample(audio, rate, SR), set_)


def _trimmed(audio: np.ndarray) -> np.ndarray:
    """A clip without its leading and trailing quiet (20 ms windows under VOICED_RMS)."""
    win = SR // 50
    frames = audio[: audio.size // win * win].reshape(-1, win)
    voiced = np.flatnonzero(np.sqrt(np.mean(frames ** 2, axis=1)) > VOICED_RMS)
    if not voiced.size:
        return audio
    return audio[voiced[0] * win:(voiced[-1] + 1) * win]


# ---- the seed's design, as a bench-only door on the same app ----------------------------------
def add_seed_door(app: Any) -> None:
    """``/bench/seed-translate``: the seed's handle_utterance on voxgate's engines (see doc)."""
    from voxgate.audio import encode_wav, pcm16_to_float32, resample
    from voxgate.engines.base import AsrOptions
    from voxgate.errors import EngineError
    from voxgate.speech import SpeechService
    from voxgate.translation import open_mt

    state = app.state.voxgate
    settings = state.settings
    speech = SpeechService(settings, state.manager)
    voices = settings.translation.voices

    async def handle_utterance(ws: WebSocket, pcm: bytes, src: str, tgt: str, mt: Any,
                               end_s: float) -> None:
        audio = resample(pcm16_to_float32(pcm), WIRE_RATE, SR)
        options = AsrOptions(language=src, beam_size=settings.streaming.final_beam_size)
        asr = await asyncio.to_thread(state.manager.asr, settings.asr.model)
        transcript = (await asyncio.to_thread(asr.transcribe, audio, options)).text.strip()
        try:  # the same time limit as voxgate's sessions (VOXGATE_TRANSLATION__MT_TIMEOUT_S)
            async with asyncio.timeout(settings.translation.mt_timeout_s):
                text = await mt.translate(transcript, src, tgt)
        except (EngineError, TimeoutError) as exc:  # the seed: "return a clear error"
            await ws.send_json({"src": src, "tgt": tgt, "text": "", "transcript": transcript,
                                "error": str(exc) or "MT timed out", "end": end_s})
            return
        out, rate = await asyncio.to_thread(speech.synthesize, text, voices[tgt])
        # "end" (bench only): stream seconds where the flushed buffer ended, so the client
        # can tell which answer covers the end of its speech
        await ws.send_json({"src": src, "tgt": tgt, "text": text, "transcript": transcript,
                            "end": end_s})
        await ws.send_bytes(encode_wav(out, rate))

    async def in_order(before: asyncio.Task[None] | None, step: Any) -> None:
        if before is not None:
            await asyncio.gather(before, return_exceptions=True)
        await step

    @app.websocket("/bench/seed-translate")
    async def seed_translate(ws: WebSocket) -> None:
        await ws.accept()
        config = json.loads(await ws.receive_text())
        src, tgt = config["mode"].split("->")
        buffer = bytearray()
        received = 0  # bytes of the whole stream
        last_voiced: float | None = None
        # the MT engine TranslateSession uses (VOXGATE_TRANSLATION__MT), held for the stream
        held = open_mt(settings, state.manager)
        mt = await asyncio.to_thread(held.__enter__)
        work: asyncio.Task[None] | None = None
        try:
            while True:
                wait = None if last_voiced is None else \
                    max(0.0, SEED_IDLE_S - (time.monotonic() - last_voiced))
                try:
                    message = await asyncio.wait_for(ws.receive(), wait)
                except TimeoutError:
                    # processed beside the reading (in order, one at a time), so the socket
                    # keeps being read (pongs included) while the utterance is translated
                    work = asyncio.create_task(in_order(
                        work, handle_utterance(ws, bytes(buffer), src, tgt, mt,
                                               received / 2 / WIRE_RATE)))
                    buffer.clear()
                    last_voiced = None
                    continue
                if message["type"] == "websocket.disconnect":
                    return
                data = message.get("bytes")
                if data is None:
                    continue
                buffer += data
                received += len(data)
                samples = np.frombuffer(data, "<i2").astype(np.float32) / 32768.0
                if samples.size and float(np.sqrt(np.mean(samples ** 2))) > VOICED_RMS:
                    last_voiced = time.monotonic()
        except WebSocketDisconnect:
            return
        finally:
            if work is not None:
                work.cancel()
                await asyncio.gather(work, return_exceptions=True)
            await asyncio.to_thread(held.__exit__, None, None, None)

    # before the page's catch-all mount at "/", which would otherwise answer this path
    app.router.routes.insert(0, app.router.routes.pop())


# ---- the server ------------------------------------------------------------------------------
def bench_settings(data_dir: Path) -> Any:
    from voxgate.config import Settings

    return Settings(offline=True, data_dir=data_dir, api_keys=[API_KEY], grpc_port=0,
                    _env_file=None)


def serve(data_dir: Path) -> None:
    """The server process: voxgate's app with live ASR + translation (the jobs queue is not
    measured) and the seed door, on a free loopback port printed once startup is over."""
    import uvicorn

    from voxgate.server.app import create_app, uvicorn_options
    from voxgate.server.translation_state import TranslationComponent
    from voxgate.server.ws import StreamingComponent

    settings = bench_settings(data_dir)
    app = create_app(settings, components=[StreamingComponent(settings),
                                           TranslationComponent(settings)])
    add_seed_door(app)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]

    class Announcing(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            print(f"PORT {port}", flush=True)

    config = uvicorn.Config(app, log_level="warning",
                            ws_max_size=uvicorn_options(settings)["ws_max_size"])
    Announcing(config).run(sockets=[sock])


class Server:
    """``serve`` in a child process, so the client's timing never waits on the server's GIL
    (LLM, TTS and ASR threads); both doors share that process's ModelManager."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0

    def __enter__(self) -> Self:
        self.proc = subprocess.Popen([sys.executable, __file__, "--serve", str(self.data_dir)],
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        for line in self.proc.stdout:  # ends when the child exits
            if line.startswith("PORT "):
                self.port = int(line.split()[1])
                return self
        sys.exit("the server did not start (see its log above)")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(30)

    def url(self, side: str) -> str:
        path = "/bench/seed-translate" if side == "seed" else "/ws/translate"
        return f"ws://127.0.0.1:{self.port}{path}?api_key={API_KEY}"


# ---- the client ------------------------------------------------------------------------------
@dataclass
class Measure:
    side: str
    mode: str
    name: str
    text_s: float | None = None  # the whole translated text (the result JSON)
    audio_s: float | None = None  # the first byte of translated audio
    first_text_s: float | None = None  # the first translated words (a part's header or result)
    transcript: str = ""
    translation: str = ""
    results: int = 0  # result messages seen (an utterance cut in two gives 2)
    error: str = ""
    set: str = "single"  # the input set (see the module doc)
    extra: dict[str, Any] = field(default_factory=dict)


def covers_end(event: dict[str, Any], utt: Utterance) -> bool:
    """Whether an answer is the one for the end of the speech: its utterance reaches the last
    voiced frame (within ``COVER_TOL_S``: the VAD ends speech a little before the RMS does).
    An earlier piece of an utterance the endpointer cut in two arrives after the speech ended
    too, but it is not the answer to the end of the speech and is not timed."""
    end = event.get("end")
    return end is None or float(end) >= utt.speech_end_s - COVER_TOL_S


async def run_one(url: str, side: str, utt: Utterance,
                  timeout_s: float = ANSWER_TIMEOUT_S) -> Measure:
    """Stream one utterance in real time; time the answer to the end of speech."""
    import websockets

    from voxgate.audio import float32_to_pcm16, resample

    src, tgt = utt.mode.split("->")
    wire = resample(utt.audio, SR, WIRE_RATE)
    step = int(WIRE_RATE * FRAME_S)
    lead = np.zeros(int(LEAD_S * WIRE_RATE), np.float32)
    stream = np.concatenate([lead, wire])
    end_frame = int(utt.speech_end_s * WIRE_RATE) // step  # the frame holding the last voiced
    silence = float32_to_pcm16(np.zeros(step, np.float32))
    measure = Measure(side, utt.mode, utt.name, set=utt.set)
    speech_end: list[float] = []
    answered = asyncio.Event()
    control = {"mode": utt.mode, "src": src, "tgt": tgt, "sample_rate": WIRE_RATE,
               "channels": 1}
    if side == "voxgate":
        control["stream_audio"] = True  # voxgate's own mode; "voxgate-contract": the seed's

    async with websockets.connect(url, max_size=None, open_timeout=30,
                                  ping_interval=None) as ws:
        await ws.send(json.dumps(control))

        async def receive() -> None:
            wav_follows = False  # the next binary is the covering result's WAV (seed wire)
            part_covers = False  # the next binary is a streamed part of the covering answer
            async for message in ws:
                now = time.monotonic()
                since = now - speech_end[0] if speech_end else None
                if isinstance(message, bytes):
                    if (wav_follows or part_covers) and measure.audio_s is None:
                        measure.audio_s = since
                    if wav_follows:
                        answered.set()
                        return
                    part_covers = False
                    continue
                event = json.loads(message)
                kind = event.get("type")
                if kind == "error":
                    measure.error = f"{event.get('code')}: {event.get('message')}"
                    answered.set()
                    return
                if kind == "audio":  # a streamed part: header, then its WAV
                    part_covers = covers_end(event, utt)
                    if part_covers and measure.first_text_s is None:
                        measure.first_text_s = since
                    continue
                if kind not in (None, "result") or "tgt" not in event:
                    continue  # ready, partial, transcript
                measure.results += 1
                if not covers_end(event, utt):
                    continue
                measure.text_s = since
                if measure.first_text_s is None:
                    measure.first_text_s = since
                measure.transcript = event.get("transcript", "")
                measure.translation = event.get("text") or ""
                if event.get("error"):
                    measure.error = str(event["error"])
                elif event.get("tts_failed"):
                    measure.error = "tts_failed"
                if not measure.error and (kind is None or event.get("audio") is True):
                    wav_follows = True  # the seed's contract: one WAV after the JSON
                    continue
                answered.set()
                return

        reader = asyncio.create_task(receive())
        started = time.monotonic()
        frames = 0
        deadline = None
        while not answered.is_set() and not reader.done():
            start = frames * step
            chunk = stream[start:start + step]
            data = float32_to_pcm16(chunk) if chunk.size == step else silence
            due = started + frames * FRAME_S
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await ws.send(data)
            if frames == end_frame:
                speech_end.append(time.monotonic())
                deadline = speech_end[0] + timeout_s
            frames += 1
            if deadline is not None and time.monotonic() > deadline:
                measure.error = measure.error or "no answer within the timeout"
                break
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
    return measure


# ---- report ----------------------------------------------------------------------------------
def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return float(np.percentile(np.asarray(values), q))


def summarise(measures: list[Measure]) -> dict[str, Any]:
    """Per side, direction and input set (``single``, ``multi``, and ``all`` when a run has
    both): counts and percentiles; the seed/voxgate ratios likewise. Keys: "side mode set"."""
    out: dict[str, Any] = {}
    present = [s for s in SETS if any(m.set == s for m in measures)]
    groups = present + (["all"] if len(present) > 1 else [])
    for side, mode, set_ in ((a, b, c) for c in groups for b in ("en->ru", "ru->en")
                             for a in SIDES):
        rows = [m for m in measures if m.side == side and m.mode == mode
                and set_ in ("all", m.set)]
        if rows:
            # latencies of answered utterances only: a failed one (the guard refused the
            # translation twice) has no translated audio to time, or only a head of it
            ok = [m for m in rows if not m.error]
            text = [m.text_s for m in ok if m.text_s is not None]
            audio = [m.audio_s for m in ok if m.audio_s is not None]
            first = [m.first_text_s for m in ok if m.first_text_s is not None]
            out[f"{side} {mode} {set_}"] = {
                "n": len(rows), "errors": sum(bool(m.error) for m in rows),
                "first_text_p50_s": _pct(first, 50),
                "text_p50_s": _pct(text, 50), "text_p95_s": _pct(text, 95),
                "audio_p50_s": _pct(audio, 50), "audio_p95_s": _pct(audio, 95)}
    for side, mode, set_ in ((a, b, c) for c in groups for b in ("en->ru", "ru->en")
                             for a in SIDES[:2]):
        ours, seed = out.get(f"{side} {mode} {set_}"), out.get(f"seed {mode} {set_}")
        if ours and seed and ours["audio_p50_s"] and seed["audio_p50_s"]:
            out[f"ratio {side} {mode} {set_}"] = {
                "first_audio_p50": seed["audio_p50_s"] / ours["audio_p50_s"],
                "first_audio_p95": (seed["audio_p95_s"] / ours["audio_p95_s"]
                                    if ours["audio_p95_s"] else None),
                "text_p50": (seed["text_p50_s"] / ours["text_p50_s"]
                             if ours["text_p50_s"] else None)}
    return out


def table(summary: dict[str, Any]) -> str:
    def f(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    head = ("| side | direction | set | n | errors | first text p50 | whole text p50 | "
            "text p95 | first audio p50 | first audio p95 |")
    lines = [head, "|---|---|---|---|---|---|---|---|---|---|"]
    for key, row in summary.items():
        if key.startswith("ratio"):
            continue
        side, mode, set_ = (key.split(" ") + ["single"])[:3]  # older files: no set
        lines.append(f"| {side} | {mode} | {set_} | {row['n']} | {row['errors']} | "
                     f"{f(row['first_text_p50_s'])} s | "
                     f"{f(row['text_p50_s'])} s | {f(row['text_p95_s'])} s | "
                     f"{f(row['audio_p50_s'])} s | {f(row['audio_p95_s'])} s |")
    for key, row in summary.items():
        if key.startswith("ratio"):
            lines.append(f"\n{key}: seed/voxgate first audio p50 x{f(row['first_audio_p50'])}, "
                         f"p95 x{f(row['first_audio_p95'])}, whole text p50 "
                         f"x{f(row['text_p50'])}  (goal: first audio >= 1.5)")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=1, help="passes over the utterances")
    parser.add_argument("--directions", nargs="+", default=["en->ru", "ru->en"],
                        choices=["en->ru", "ru->en"])
    parser.add_argument("--sides", nargs="+", default=list(SIDES), choices=list(SIDES),
                        help="voxgate: /ws/translate with stream_audio (a WAV per spoken "
                             "piece); voxgate-contract: the same door on the seed's contract "
                             "(one WAV per utterance); seed: the seed's design")
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS),
                        help="single: one sentence per utterance; multi: 2-3 sentences")
    parser.add_argument("--limit", type=int, default=0,
                        help="only the first N utterances of each direction (quick checks)")
    parser.add_argument("--output", type=Path, default=RESULTS / "translation_latency.json")
    parser.add_argument("--serve", type=Path, metavar="DATA_DIR", help=argparse.SUPPRESS)
    parser.add_argument("--resummarise", type=Path, metavar="JSON",
                        help="recompute the summary and table of an earlier results file")
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return
    if args.resummarise:
        report = json.loads(args.resummarise.read_text())
        report["summary"] = summarise([Measure(**m) for m in report["measures"]])
        args.resummarise.write_text(json.dumps(report, indent=2, ensure_ascii=False))
        print(table(report["summary"]))
        return

    import logging
    import tempfile

    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="voxgate-bench-") as tmp, Server(Path(tmp)) as srv:
        from voxgate.engines.manager import ModelManager
        from voxgate.speech import SpeechService

        settings = bench_settings(Path(tmp))  # what the server process runs with
        speech = SpeechService(settings, ModelManager(settings))  # the RU input voice
        inputs: list[Utterance] = []
        for mode in args.directions:
            if "single" in args.sets:
                inputs += english_clips() if mode == "en->ru" else russian_sentences(speech)
            if "multi" in args.sets:
                inputs += multi_sentence(speech, mode)
        if args.limit:
            inputs = [u for mode in args.directions for set_ in args.sets
                      for u in [v for v in inputs if v.mode == mode and v.set == set_]
                      [:args.limit]]
        for utt in inputs:
            print(f"input {utt.mode} {utt.set} {utt.name}: {utt.audio.size / SR:.2f} s, "
                  f"longest pause {utt.max_pause_s:.2f} s", flush=True)
        measures: list[Measure] = []
        load0 = os.getloadavg()[0]
        began = time.monotonic()
        for mode in args.directions:  # warm-up: loads every model of the direction, not counted
            first = next(u for u in inputs if u.mode == mode)
            # one per door: voxgate's two sides share the door, its models and its caches
            doors = {("voxgate" if side.startswith("voxgate") else side): side
                     for side in args.sides}
            for side in doors.values():
                warm = asyncio.run(run_one(srv.url(side), side, first, timeout_s=300))
                print(f"warm-up {side} {mode}: {warm.error or 'ok'} "
                      f"({warm.transcript!r} -> {warm.translation!r})", flush=True)
        for round_ in range(args.rounds):
            for utt in inputs:
                # rotate which side goes first, so none always runs on a just-warmed cache
                turn = (round_ + inputs.index(utt)) % len(args.sides)
                sides = args.sides[turn:] + args.sides[:turn]
                for side in sides:
                    m = asyncio.run(run_one(srv.url(side), side, utt))
                    m.extra = {"round": round_, "speech_s": round(utt.audio.size / SR, 2),
                               "max_pause_s": utt.max_pause_s}
                    measures.append(m)
                    print(f"{side:16} {utt.mode} {utt.set} {utt.name}: text "
                          f"{m.text_s if m.text_s is None else round(m.text_s, 2)} s, audio "
                          f"{m.audio_s if m.audio_s is None else round(m.audio_s, 2)} s "
                          f"{m.error} | {m.transcript!r} -> {m.translation!r}", flush=True)
    summary = summarise(measures)
    report = {
        "bench": "translation_latency",
        "summary": summary,
        "measures": [asdict(m) for m in measures],
        "wall_s": round(time.monotonic() - began, 1),
        "loadavg_start": load0, "loadavg_end": os.getloadavg()[0],
        "settings": {"asr_model": settings.asr.model, "llm_model": settings.llm.model,
                     "translation": settings.translation.model_dump(),
                     "final_beam_size": settings.streaming.final_beam_size},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "processor": platform.processor() or platform.machine()},
        "versions": {p: _version(p) for p in ("voxgate", "faster-whisper", "xllamacpp",
                                               "onnxruntime")},
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2, ensure_ascii=False))
    stamped = args.output.with_name(f"{args.output.stem}-{time.strftime('%Y%m%dT%H%M%S')}.json")
    stamped.write_text(json.dumps(report, indent=2, ensure_ascii=False))
    print(table(summary))
    print(f"\nwrote {args.output}")


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


if __name__ == "__main__":
    main()

"""OpenAI Realtime door vs the in-process AgentSession: what the door adds to the reply latency.

One voxgate server (streaming + agent components, the offline engines: Whisper base/tiny.en,
Qwen2.5 1.5B on llama.cpp, Piper joe) runs in this process (uvicorn on loopback, its own event
loop thread). The same spoken questions (Festival's ``cmu_us_slt_arctic_hts``, not the agent's
voice) are asked, alternately, two ways, each in a fresh one-turn session fed in real time in
100 ms chunks with silence after the speech, as a microphone would:

* **door**: the official ``openai`` client's realtime connection to ``/v1/realtime``
  (base64 PCM16 24 kHz appends, server VAD); timed on the client;
* **in-process**: an :class:`~voxgate.agent.AgentSession` of the same server's AgentService,
  fed float32 16 kHz directly (no socket, no JSON, no base64, no resampling); timed on the
  server loop.

Measured per turn: ``speech_stopped -> first audio`` (``input_audio_buffer.speech_stopped``
resp. ``UserSpeechStopped`` received -> first ``response.output_audio.delta`` resp.
``AgentAudio``) and ``voice -> voice`` (the last speech chunk sent -> first reply audio);
p50/p95 per path and the door/in-process ratio of the p50s.

    python bench/realtime.py [--rounds 1]

Writes ``bench/results/realtime.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # live_server: the one way to serve the app
from agent import festival  # bench/agent.py: the user's voice

RESULTS = HERE / "results"
KEY = "bench-key"
CHUNK_S = 0.1
TAIL_S = 1.5  # silence streamed after the question (the end of the turn is measured on it)
QUESTIONS = ["What is the capital of France?", "How many days are there in a week?",
             "What color is the sky on a clear day?", "What is two plus two?"]


def pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 3) if values else None


async def door_turn(url: str, speech: np.ndarray) -> dict[str, float | None]:
    """One question through /v1/realtime with the openai client; client-side times."""
    from openai import AsyncOpenAI

    from voxgate.audio import float32_to_pcm16, resample

    pcm = float32_to_pcm16(np.concatenate([resample(speech, 16_000, 24_000),
                                           np.zeros(int(24_000 * TAIL_S), np.float32)]))
    speech_bytes = int(speech.size * 1.5) * 2
    step = int(24_000 * CHUNK_S) * 2
    client = AsyncOpenAI(api_key=KEY, base_url=f"{url}/v1", max_retries=0)
    marks: dict[str, float] = {}
    async with client.realtime.connect(model="voxgate") as conn:
        done = asyncio.Event()

        async def mouth() -> None:
            start, i = time.monotonic(), 0
            while not done.is_set():
                chunk = pcm[i * step:(i + 1) * step] or bytes(step)
                if (i + 1) * step >= speech_bytes and "speech_sent" not in marks:
                    marks["speech_sent"] = time.monotonic()
                await conn.input_audio_buffer.append(audio=base64.b64encode(chunk).decode())
                i += 1
                await asyncio.sleep(max(start + i * CHUNK_S - time.monotonic(), 0))

        sender = asyncio.create_task(mouth())
        try:
            async for event in conn:
                if event.type == "input_audio_buffer.speech_stopped":
                    marks.setdefault("stopped", time.monotonic())
                elif event.type == "response.output_audio.delta":
                    marks.setdefault("first_audio", time.monotonic())
                elif event.type == "response.done":
                    break
                elif event.type == "error":
                    raise RuntimeError(event.error.message)
        finally:
            done.set()
            await sender
    return _times(marks)


async def session_turn(service: Any, speech: np.ndarray) -> dict[str, float | None]:
    """The same question fed straight into an AgentSession (runs on the server's loop)."""
    from voxgate.agent import AgentAudio, TurnEnded, UserSpeechStopped

    session = await service.open(service.config(output_sample_rate=24_000))
    audio = np.concatenate([speech, np.zeros(int(16_000 * TAIL_S), np.float32)])
    step = int(16_000 * CHUNK_S)
    marks: dict[str, float] = {}
    done = asyncio.Event()

    async def mouth() -> None:
        start, i = time.monotonic(), 0
        while not done.is_set():
            chunk = audio[i * step:(i + 1) * step]
            if (i + 1) * step >= speech.size and "speech_sent" not in marks:
                marks["speech_sent"] = time.monotonic()
            await session.accept(chunk if chunk.size else np.zeros(step, np.float32))
            i += 1
            await asyncio.sleep(max(start + i * CHUNK_S - time.monotonic(), 0))

    sender = asyncio.create_task(mouth())
    try:
        async for event in session.events():
            if isinstance(event, UserSpeechStopped):
                marks.setdefault("stopped", time.monotonic())
            elif isinstance(event, AgentAudio):
                marks.setdefault("first_audio", time.monotonic())
            elif isinstance(event, TurnEnded) and event.role == "agent":
                break
    finally:
        done.set()
        await sender
        await session.close()
    return _times(marks)


def _times(marks: dict[str, float]) -> dict[str, float | None]:
    first = marks.get("first_audio")

    def since(name: str) -> float | None:
        return None if first is None or name not in marks else round(first - marks[name], 3)

    return {"stopped_to_audio_s": since("stopped"), "voice_to_voice_s": since("speech_sent")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1, help="times each question is asked")
    args = parser.parse_args()

    from live_server import serve_app

    from voxgate.config import AgentSettings, Settings
    from voxgate.engines.manager import ModelManager
    from voxgate.server.agent_doors import AgentComponent
    from voxgate.server.app import create_app, uvicorn_options
    from voxgate.server.live_streams import StreamingComponent

    tmp = Path(tempfile.mkdtemp(prefix="voxgate-bench-rt-"))
    settings = Settings(_env_file=None, data_dir=tmp, offline=True, api_keys=[KEY],
                        max_streams=4, agent=AgentSettings(max_sessions=2, max_reply_tokens=60))
    manager = ModelManager(settings)
    voices = {q: festival(q, tmp) for q in QUESTIONS}
    app = create_app(settings, manager, components=[StreamingComponent(settings),
                                                    AgentComponent(settings)])
    rows: dict[str, list[dict[str, Any]]] = {"door": [], "in_process": []}
    with serve_app(app, ws_max_size=uvicorn_options(settings)["ws_max_size"]) as live:
        service = live.state.components["agent"]
        live.call(session_turn(service, voices[QUESTIONS[0]]), timeout=300)  # warm-up: loads
        n = 0
        for _ in range(args.rounds):
            for question in QUESTIONS:
                order = ["door", "in_process"] if n % 2 == 0 else ["in_process", "door"]
                n += 1
                for path in order:
                    if path == "door":
                        result = asyncio.run(door_turn(live.url, voices[question]))
                    else:
                        result = live.call(session_turn(service, voices[question]), timeout=300)
                    rows[path].append({"question": question, **result})
                    print(f"{path:10s} {question:40s} {result}", flush=True)
    manager.close()
    summary: dict[str, Any] = {}
    for path, turns in rows.items():
        for measure in ("stopped_to_audio_s", "voice_to_voice_s"):
            values = [t[measure] for t in turns if t[measure] is not None]
            summary[f"{path}.{measure}"] = {"p50": pct(values, 50), "p95": pct(values, 95),
                                            "n": len(values)}
    ratios = {m: (round(summary[f"door.{m}"]["p50"] / summary[f"in_process.{m}"]["p50"], 3)
                  if summary[f"door.{m}"]["p50"] and summary[f"in_process.{m}"]["p50"]
                  else None) for m in ("stopped_to_audio_s", "voice_to_voice_s")}
    report = {"machine": {"cpu": platform.processor() or platform.machine(),
                          "python": platform.python_version()},
              "rounds": args.rounds, "turns": rows, "summary": summary,
              "door_over_in_process_p50": ratios}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "realtime.json").write_text(json.dumps(report, indent=2))
    print("\n| path | speech_stopped -> first audio p50 / p95 | voice -> voice p50 / p95 | n |")
    print("|---|---|---|---|")
    for path in rows:
        a, b = summary[f"{path}.stopped_to_audio_s"], summary[f"{path}.voice_to_voice_s"]
        print(f"| {path} | {a['p50']} / {a['p95']} s | {b['p50']} / {b['p95']} s | {a['n']} |")
    print(f"\ndoor / in-process (p50): {ratios}")


if __name__ == "__main__":
    main()

"""Voice agent: scripted spoken conversations over gRPC ``voxgate.v1.VoiceWorkflow``.

A voxgate server (streaming + agent + gRPC components, the offline engines: Whisper base/tiny.en,
Qwen2.5 1.5B on llama.cpp, Piper joe) runs in this process on its own event loop thread; the
clients are ``grpc.aio`` VoiceWorkflow stubs, as any user's client. The user's turns are
spoken by Festival's ``cmu_us_slt_arctic_hts`` (not the agent's voice) and fed in real time in
100 ms chunks, with silence streamed between turns as a microphone would. Some turns are
interrupted: once 1 s of the agent's reply has arrived, the user says something else over it.

Measured (client side, wall clock):

* voice-to-voice: the end of the user's speech (the send time of its last chunk, trailing
  silence trimmed) -> the first agent audio of the reply; p50/p95, and the server's breakdown
  (``Latency``: end of turn, ASR final, LLM first token, TTS first audio) for the same turns;
* barge-in stop: the start of the interrupting speech -> ``Interruption PAUSED`` (the server
  stops sending and tells the client to drop what it has not played); p50/p95;
* interruptions handled correctly: ``CONFIRMED`` (barge_in), the agent turn ends
  ``interrupted`` with its text equal to ``played_text`` (the history's text), a word prefix of
  what the LLM generated, and no audio of that reply after the pause;
* concurrency: the same conversations, ``--sessions`` at once, voice-to-voice p50 over the
  one-session p50 (goal: within 2x).

Baseline, side by side on the same engines and the same user audio: the sequential pipeline
(wait for the end of the turn, transcribe the whole question, wait for the LLM's full reply,
synthesize it whole, then send): its voice-to-voice is end-of-turn silence + ASR + LLM + TTS.
It runs after each one-session conversation on that conversation's questions, so both sides
see the same machine.

    python bench/agent.py                   # 1 session, then 2 at once, then the baseline
    python bench/agent.py --sessions 1 3 --conversations 2
    python bench/agent.py --set prefill=false --set complete_wait_ms=600   # A/B a setting

Writes ``bench/results/agent.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
SR = 16_000
CHUNK_S = 0.1
KEY = "bench-key"
INTERRUPT_AFTER_S = 1.0  # agent audio received before the user talks over it
INTERRUPTION = "Wait, stop, tell me something else instead."

# (question, interrupt it?) per turn; every conversation keeps its own history
CONVERSATIONS: list[list[tuple[str, bool]]] = [
    [("What is the capital of France?", False),
     ("Tell me about the history of Rome in a few sentences.", True),
     ("How many days are there in a week?", False)],
    [("What color is the sky on a clear day?", False),
     ("Explain how a bicycle works, step by step.", True),
     ("What is two plus two?", False)],
    [("Name a fruit that is yellow.", False),
     ("Describe a day at the beach in detail.", True),
     ("Which animal is known as the king of the jungle?", False)],
]


# ---- user speech ------------------------------------------------------------------------------
def festival(text: str, directory: Path) -> np.ndarray:
    """``text`` spoken by Festival's US voice, 16 kHz float32, silence trimmed at both ends."""
    from voxgate.audio import decode_audio

    path = directory / f"{abs(hash(text))}.wav"
    if not path.exists():
        subprocess.run(["text2wave", "-eval", "(voice_cmu_us_slt_arctic_hts)", "-o", str(path)],
                       input=text.encode(), check=True, capture_output=True)
    audio = decode_audio(path)
    loud = np.flatnonzero(np.abs(audio) > 0.02)
    return audio[loud[0]:loud[-1] + 1] if loud.size else audio


# ---- the server -------------------------------------------------------------------------------
class Server:
    """Streaming + agent + gRPC components on an event loop thread of their own."""

    def __init__(self, settings: Any, manager: Any) -> None:
        from voxgate.server.agent_doors import AgentComponent
        from voxgate.server.grpc_riva import RivaGrpcServer
        from voxgate.server.live_streams import StreamingComponent
        from voxgate.server.state import AppState

        self.state = AppState(settings, manager)
        self.grpc = RivaGrpcServer(settings, port=0)
        self.parts = [StreamingComponent(settings), AgentComponent(settings), self.grpc]
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(120)
        self.target = f"127.0.0.1:{self.grpc.bound_port}"

    async def _start(self) -> None:
        for part in self.parts:
            await part.start(self.state)
            self.state.components[part.name] = part

    async def _stop(self) -> None:
        for part in reversed(self.parts):
            await part.stop(self.state)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


# ---- one conversation -------------------------------------------------------------------------
@dataclass
class TurnResult:
    question: str
    voice_to_voice_s: float | None = None
    server: dict[str, float] = field(default_factory=dict)  # Latency breakdown
    reply: str = ""
    interrupted: bool = False
    turn_id: int = 0
    heard: str = ""  # the user's turn as the server transcribed it
    first_chunk: str = ""  # the text of the reply's first audio


@dataclass
class BargeIn:
    stop_s: float | None = None  # speech start -> PAUSED
    handled: bool = False
    reason: str = ""  # why not handled
    played_text: str = ""
    generated: str = ""


@dataclass
class ConversationResult:
    turns: list[TurnResult] = field(default_factory=list)
    barge_ins: list[BargeIn] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class Mouth:
    """Streams the user's audio in real time: speech when queued, silence otherwise. Records
    the wall time the first and last chunk of each utterance left."""

    def __init__(self) -> None:
        self.pending: deque[tuple[bytes, int, int]] = deque()  # (chunk, utterance, index)
        self.sent: dict[int, tuple[float, float]] = {}  # utterance -> (start, end) wall times
        self.over: dict[int, asyncio.Event] = {}  # set once the utterance's last chunk left
        self.done = asyncio.Event()
        self._count = 0

    def say(self, audio: np.ndarray) -> int:
        from voxgate.audio import float32_to_pcm16

        self._count += 1
        self.over[self._count] = asyncio.Event()
        step = int(CHUNK_S * SR)
        pieces = [audio[i:i + step] for i in range(0, audio.size, step)]
        for index, piece in enumerate(pieces):
            last = index == len(pieces) - 1
            self.pending.append((float32_to_pcm16(piece), self._count, -1 if last else index))
        return self._count

    async def spoken(self, utterance: int) -> None:
        await self.over[utterance].wait()

    async def chunks(self, pb: Any) -> Any:
        silence = bytes(int(CHUNK_S * SR) * 2)
        start = time.monotonic()
        tick = 0
        while not self.done.is_set():
            tick += 1
            delay = start + tick * CHUNK_S - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            data = silence
            if self.pending:
                data, utterance, index = self.pending.popleft()
                now = time.monotonic()
                began, _ = self.sent.get(utterance, (now - CHUNK_S, 0.0))
                self.sent[utterance] = (began, now if index == -1 else 0.0)
                if index == -1:
                    self.over[utterance].set()
            yield pb.ClientMessage(audio=pb.UserAudio(data=data))
        yield pb.ClientMessage(control=pb.Control(action=pb.Control.END))


async def converse(target: str, script: list[tuple[str, bool]],
                   audio_of: Callable[[str], np.ndarray]) -> ConversationResult:
    """One scripted conversation; returns what the client measured."""
    import grpc

    from voxgate.proto import voice_workflow_pb2 as pb
    from voxgate.proto import voice_workflow_pb2_grpc as pb_grpc

    result = ConversationResult()
    mouth = Mouth()
    agent_end: dict[int, asyncio.Future[Any]] = {}
    first_audio: dict[int, float] = {}
    audio_s: dict[int, float] = {}
    texts: dict[int, str] = {}
    heard: dict[int, str] = {}
    first_chunk: dict[int, str] = {}
    events: dict[str, list[Any]] = {"paused": [], "confirmed": [], "ends": [], "latency": []}
    audio_after_pause: set[int] = set()
    loop = asyncio.get_running_loop()
    waiting_audio: dict[int, asyncio.Future[None]] = {}

    def end_future(turn: int) -> asyncio.Future[Any]:
        return agent_end.setdefault(turn, loop.create_future())

    async def requests() -> Any:
        yield pb.ClientMessage(config=pb.SessionConfig(sample_rate_hz=SR, encoding=pb.PCM16,
                                                       interim_results=False))
        async for message in mouth.chunks(pb):
            yield message

    async with grpc.aio.insecure_channel(target) as channel:
        call = pb_grpc.VoiceWorkflowStub(channel).Converse(requests(),
                                                           metadata=(("x-api-key", KEY),))

        async def read() -> None:
            async for message in call:
                kind = message.WhichOneof("message")
                now = time.monotonic()
                if kind == "audio":
                    turn = message.audio.turn_id
                    first_audio.setdefault(turn, now)
                    first_chunk.setdefault(turn, message.audio.text)
                    if any(p.turn_id == turn for p, _ in events["paused"]):
                        audio_after_pause.add(turn)
                    audio_s[turn] = message.audio.playout_s + len(message.audio.data) / 2 \
                        / message.audio.sample_rate_hz
                    waiter = waiting_audio.get(turn)
                    if waiter is not None and not waiter.done() \
                            and audio_s[turn] >= INTERRUPT_AFTER_S:
                        waiter.set_result(None)
                elif kind == "transcript" and message.transcript.is_final:
                    heard[message.transcript.turn_id] = message.transcript.turn_text
                elif kind == "agent_text":
                    texts[message.agent_text.turn_id] = \
                        texts.get(message.agent_text.turn_id, "") + message.agent_text.delta
                elif kind == "interruption":
                    state = message.interruption.state
                    if state == pb.Interruption.PAUSED:
                        events["paused"].append((message.interruption, now))
                        audio_after_pause.discard(message.interruption.turn_id)
                    elif state == pb.Interruption.RESUMED:
                        events["paused"] = [(p, t) for p, t in events["paused"]
                                            if p.turn_id != message.interruption.turn_id]
                    elif state == pb.Interruption.CONFIRMED:
                        events["confirmed"].append(message.interruption)
                elif kind == "turn" and message.turn.speaker == pb.Turn.AGENT \
                        and message.turn.kind == pb.Turn.END:
                    events["ends"].append(message.turn)
                    future = end_future(message.turn.turn_id)
                    if not future.done():
                        future.set_result(message.turn)
                    waiter = waiting_audio.get(message.turn.turn_id)
                    if waiter is not None and not waiter.done():
                        waiter.set_result(None)
                elif kind == "latency":
                    events["latency"].append(message.latency)
                elif kind == "error":
                    result.errors.append(f"{message.error.code}: {message.error.message}")

        reader = asyncio.create_task(read())
        turn_id = 0
        try:
            for question, interrupt in script:
                turn_id += 1
                utterance = mouth.say(audio_of(question))
                await mouth.spoken(utterance)
                if not interrupt:
                    end = await asyncio.wait_for(end_future(turn_id), 120)
                    result.turns.append(_turn(question, turn_id, mouth.sent[utterance][1],
                                              first_audio, end, events, texts))
                    await asyncio.sleep(0.5)
                    continue
                waiting_audio[turn_id] = loop.create_future()
                await asyncio.wait_for(waiting_audio[turn_id], 120)
                cut = turn_id
                result.turns.append(_turn(question, cut, mouth.sent[utterance][1],
                                          first_audio, None, events, texts))
                if end_future(cut).done():  # the reply was over before the user spoke
                    result.barge_ins.append(BargeIn(reason="reply ended before the interruption"))
                    continue
                turn_id += 1
                over = mouth.say(audio_of(INTERRUPTION))
                await mouth.spoken(over)
                cut_end = await asyncio.wait_for(end_future(cut), 60)
                end = await asyncio.wait_for(end_future(turn_id), 120)
                result.turns.append(_turn(INTERRUPTION, turn_id, mouth.sent[over][1],
                                          first_audio, end, events, texts))
                result.barge_ins.append(_barge_in(cut, mouth.sent[over][0], cut_end, events,
                                                  texts, audio_after_pause))
                await asyncio.sleep(0.5)
        finally:
            mouth.done.set()
            await asyncio.wait_for(reader, 120)
    for turn in result.turns:  # the server's breakdown comes after the turn's end: join now
        turn.heard = heard.get(turn.turn_id, "")
        turn.first_chunk = first_chunk.get(turn.turn_id, "")
        for latency in events["latency"]:
            if latency.turn_id == turn.turn_id:
                turn.server = {name: round(getattr(latency, name), 4) for name in (
                    "end_of_turn_s", "asr_final_s", "llm_first_token_s", "tts_first_audio_s",
                    "voice_to_voice_s") if latency.HasField(name)}
    return result


def _turn(question: str, turn_id: int, speech_end: float, first_audio: dict[int, float],
          end: Any, events: dict[str, list[Any]], texts: dict[int, str]) -> TurnResult:
    result = TurnResult(question, reply=texts.get(turn_id, ""))
    if turn_id in first_audio:
        result.voice_to_voice_s = round(first_audio[turn_id] - speech_end, 4)
    result.turn_id = turn_id
    result.interrupted = bool(end is not None and end.interrupted)
    return result


def _barge_in(turn_id: int, speech_start: float, end: Any, events: dict[str, list[Any]],
              texts: dict[int, str], audio_after_pause: set[int]) -> BargeIn:
    result = BargeIn(generated=texts.get(turn_id, ""))
    paused = [t for p, t in events["paused"] if p.turn_id == turn_id]
    if paused:
        result.stop_s = round(paused[0] - speech_start, 4)
    confirmed = [c for c in events["confirmed"] if c.turn_id == turn_id]
    result.played_text = confirmed[0].played_text if confirmed else ""
    checks = {
        "paused": bool(paused),
        "confirmed as barge_in": bool(confirmed) and confirmed[0].reason == "barge_in",
        "turn ended interrupted": end.reason == "interrupted" and end.interrupted,
        "history = played text": bool(confirmed) and end.text == result.played_text,
        "played text is a prefix of the reply": result.generated.split()[
            :len(result.played_text.split())] == result.played_text.split(),
        "no audio after the pause": turn_id not in audio_after_pause,
    }
    failed = [name for name, ok in checks.items() if not ok]
    result.handled = not failed
    result.reason = ", ".join(failed)
    return result


# ---- the sequential baseline ------------------------------------------------------------------
def baseline(settings: Any, manager: Any, questions: list[str],
             audio_of: Callable[[str], np.ndarray]) -> list[dict[str, float]]:
    """Wait for the turn's end, transcribe it whole, wait for the whole reply, synthesize it
    whole, send: the same engines, the same user audio, the agent's end-of-turn silence (with
    its text rule: a question ends the turn after ``complete_wait_ms``, as for the agent)."""
    from voxgate.agent.turns import looks_complete
    from voxgate.engines.base import AsrOptions, ChatMessage
    from voxgate.speech import SpeechService, join_chunks

    asr = manager.get("asr", settings.asr.model)
    llm = manager.get("llm", settings.llm.model)
    speech = SpeechService(settings, manager)
    rows = []
    for question in questions:
        audio = np.concatenate([audio_of(question), np.zeros(int(0.3 * SR), np.float32)])
        t0 = time.monotonic()
        text = asr.transcribe(audio, AsrOptions(language="en", beam_size=1)).text
        t1 = time.monotonic()
        end_of_turn = (min(settings.agent.complete_wait_ms, settings.agent.end_of_turn_ms)
                       if looks_complete(text) else settings.agent.end_of_turn_ms) / 1000
        reply = llm.complete_sync([ChatMessage("system", settings.agent.system_prompt),
                                   ChatMessage("user", text)],
                                  max_tokens=settings.agent.max_reply_tokens)
        t2 = time.monotonic()
        samples, rate = join_chunks(speech.iter_chunks(speech.prepare(reply)))
        t3 = time.monotonic()
        rows.append({"end_of_turn_s": end_of_turn, "asr_s": round(t1 - t0, 4),
                     "llm_full_s": round(t2 - t1, 4), "tts_whole_s": round(t3 - t2, 4),
                     "voice_to_voice_s": round(end_of_turn + t3 - t0, 4),
                     "reply_audio_s": round(samples.size / rate, 3)})
    return rows


# ---- report -----------------------------------------------------------------------------------
def pct(values: list[float], q: float) -> float | None:
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    return round(float(np.percentile(values, q)), 3)


def summarise(results: list[ConversationResult]) -> dict[str, Any]:
    turns = [t for r in results for t in r.turns if not t.interrupted]
    v2v = [t.voice_to_voice_s for t in turns if t.voice_to_voice_s is not None]
    barges = [b for r in results for b in r.barge_ins]
    attempted = [b for b in barges if b.reason != "reply ended before the interruption"]
    breakdown = {}
    for name in ("end_of_turn_s", "asr_final_s", "llm_first_token_s", "tts_first_audio_s",
                 "voice_to_voice_s"):
        values = [t.server[name] for t in turns if name in t.server]
        breakdown[name] = {"p50": pct(values, 50), "p95": pct(values, 95)}
    return {
        "turns": len(turns), "voice_to_voice_p50_s": pct(v2v, 50),
        "voice_to_voice_p95_s": pct(v2v, 95), "server_breakdown": breakdown,
        "barge_in_stop_p50_s": pct([b.stop_s for b in attempted], 50),
        "barge_in_stop_p95_s": pct([b.stop_s for b in attempted], 95),
        "interruptions": len(attempted),
        "interruptions_handled": sum(b.handled for b in attempted),
        "interruption_failures": [b.reason for b in attempted if not b.handled],
        "errors": [e for r in results for e in r.errors],
    }


async def run_sessions(target: str, n: int, conversations: int,
                       audio_of: Callable[[str], np.ndarray], first: int = 0,
                       ) -> list[ConversationResult]:
    """``conversations`` scripted conversations (from script ``first`` on), ``n`` at a time."""
    total = -(-conversations // n) * n  # whole batches: every batch runs n at once
    scripts = [CONVERSATIONS[i % len(CONVERSATIONS)] for i in range(first, first + total)]
    results: list[ConversationResult] = []
    for start in range(0, len(scripts), n):
        batch = scripts[start:start + n]
        results += await asyncio.gather(*(converse(target, s, audio_of) for s in batch))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--conversations", type=int, default=3,
                        help="scripted conversations per session count (3 turns each)")
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="an agent setting (VOXGATE_AGENT__NAME) for this run, e.g. "
                             "prefill=false")
    args = parser.parse_args()
    overrides = dict(item.split("=", 1) for item in args.set)
    if shutil.which("text2wave") is None:
        sys.exit("Festival (text2wave) is needed for the user's voice (scripts/setup.sh)")

    from voxgate.config import AgentSettings, Settings
    from voxgate.engines.manager import ModelManager

    workdir = Path(tempfile.mkdtemp(prefix="voxgate-bench-agent-"))
    settings = Settings(_env_file=None, data_dir=workdir, offline=True, api_keys=[KEY],
                        grpc_port=0, max_streams=16,
                        agent=AgentSettings(**{"max_sessions": max(args.sessions),
                                               **overrides}))
    manager = ModelManager(settings)
    cache: dict[str, np.ndarray] = {}

    def audio_of(text: str) -> np.ndarray:
        if text not in cache:
            cache[text] = festival(text, workdir)
        return cache[text]

    for script in CONVERSATIONS:
        for question, _ in script:
            audio_of(question)
    audio_of(INTERRUPTION)
    server = Server(settings, manager)
    report: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                          "load_before": os.getloadavg()},
                              "settings": {"end_of_turn_ms": settings.agent.end_of_turn_ms,
                                           "asr_endpointing_ms": settings.agent.asr_endpointing_ms,
                                           "barge_in_min_ms": settings.agent.barge_in_min_ms,
                                           "playout_lead_ms": settings.agent.playout_lead_ms,
                                           "complete_wait_ms": settings.agent.complete_wait_ms,
                                           "prefill": settings.agent.prefill,
                                           "overrides": overrides},
                              "sessions": {}}
    rows: list[dict[str, float]] = []
    loads: list[float] = []
    try:
        # warm-up: every model loaded and the LLM's first call paid before measuring
        asyncio.run(converse(server.target, [("What is two plus two?", False)], audio_of))
        for n in args.sessions:
            load = os.getloadavg()[0]
            if n == 1 and not args.no_baseline:
                # side by side: each conversation, then the baseline on its questions, so
                # both see the same machine (others' load changes by the minute)
                results = []
                for i in range(args.conversations):
                    results += asyncio.run(run_sessions(server.target, 1, 1, audio_of, first=i))
                    loads.append(os.getloadavg()[0])
                    script = CONVERSATIONS[i % len(CONVERSATIONS)]
                    rows += baseline(settings, manager, [q for q, cut in script if not cut],
                                     audio_of)
            else:
                results = asyncio.run(run_sessions(server.target, n, args.conversations,
                                                   audio_of))
            report["sessions"][str(n)] = {"summary": summarise(results), "load_1min": load,
                                          "conversations": [asdict(r) for r in results]}
            print(f"{n} session(s): {json.dumps(report['sessions'][str(n)]['summary'])}",
                  flush=True)
        if not args.no_baseline and not rows:
            loads.append(os.getloadavg()[0])
            rows = baseline(settings, manager,
                            [q for script in CONVERSATIONS for q, cut in script if not cut],
                            audio_of)
    finally:
        server.close()
    if rows:
        report["baseline"] = {"rows": rows, "load_1min": loads,
                              "voice_to_voice_p50_s": pct([r["voice_to_voice_s"] for r in rows],
                                                          50),
                              "voice_to_voice_p95_s": pct([r["voice_to_voice_s"] for r in rows],
                                                          95)}
    report["machine"]["load_after"] = os.getloadavg()
    manager.close()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "agent.json").write_text(json.dumps(report, indent=2))
    print_table(report)


def print_table(report: dict[str, Any]) -> None:
    rows = [("", "v2v p50", "v2v p95", "barge-in stop p50", "p95", "interruptions ok")]
    one = None
    for n, entry in report["sessions"].items():
        s = entry["summary"]
        one = one or s["voice_to_voice_p50_s"]
        rows.append((f"voxgate agent, {n} session(s)", s["voice_to_voice_p50_s"],
                     s["voice_to_voice_p95_s"], s["barge_in_stop_p50_s"], s["barge_in_stop_p95_s"],
                     f"{s['interruptions_handled']}/{s['interruptions']}"))
    if "baseline" in report:
        b = report["baseline"]
        rows.append(("sequential baseline", b["voice_to_voice_p50_s"], b["voice_to_voice_p95_s"],
                     "-", "-", "-"))
        if one:
            print(f"baseline / agent voice-to-voice p50: {b['voice_to_voice_p50_s'] / one:.2f}x")
    for row in rows:
        print(" | ".join(str(c) for c in row))
    for n, entry in report["sessions"].items():
        s = entry["summary"]
        if one and s["voice_to_voice_p50_s"]:
            print(f"{n} sessions / 1 session voice-to-voice p50: "
                  f"{s['voice_to_voice_p50_s'] / one:.2f}x")
        print(f"server breakdown ({n}): {json.dumps(s['server_breakdown'])}")


if __name__ == "__main__":
    main()

"""Load: mixed traffic against one real ``voxgate serve`` process on loopback for a fixed time.

The server is the CLI's own ``voxgate serve`` (a child process: HTTP + WebSocket + Riva gRPC,
the embedded Redis and in-process job worker, the offline models), so its memory is measured
alone, apart from the load generator. Closed-loop clients, each with the client library its
users use, send real LibriVox speech (Debian ``pocketsphinx-testdata``) for ``--duration`` s:

* ``jobs``: ``POST /v1/process`` (raw transcript), then the job's server-sent events until its
  final document (latency: upload to result), with ``httpx``;
* ``openai``: ``/v1/audio/transcriptions`` with the official ``openai`` client;
* ``ws``: live ``/v1/asr`` streams with ``websockets``, PCM16 paced in real time, each clip
  followed by a 0.6 s pause (latency: from the last audio frame to the stream's last final;
  0 when endpointing gave the final already during the pause);
* ``grpc``: Riva ``StreamingRecognize`` with ``nvidia-riva-client``, paced the same way;
* ``tts``: ``/v1/audio/speech`` (WAV) with the ``openai`` client (latency: to the last byte).

Every transcript is scored (WER against the clip's reference) so a fast wrong answer does not
pass as throughput. Reported per door: requests, ok, errors by kind, throughput, p50/p95/p99
latency, WER; the server's RSS (and its children's: Redis) sampled every ``--sample-s`` s, with
the trend over the run after warm-up (least-squares slope, first vs last fifth).

    python bench/load.py                       # 120 s, clients jobs=1 openai=1 ws=2 grpc=1 tts=1
    python bench/load.py --duration 600        # the 10-minute soak
    python bench/load.py --clients ws=4,grpc=2 # only these doors, this many clients each

Writes ``bench/results/load.json`` (plus a timestamped copy) and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from jobs_support import free_port  # the tests' helper, as bench/jobs.py uses them

RESULTS = ROOT / "bench" / "results"
GROWTH_FLOOR_MB = 5.0  # RSS growth below this over the soak is not called growth
LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")
KEY = "load-bench-key"
SR = 16_000
CHUNK_S = 0.1
DOORS = ("jobs", "openai", "ws", "grpc", "tts")
DEFAULT_CLIENTS = "jobs=1,openai=1,ws=2,grpc=1,tts=1"
TTS_TEXTS = ("The birch canoe slid on the smooth planks.",
             "Glue the sheet to the dark blue background.",
             "It is easy to tell the depth of a well.",
             "These days a chicken leg is a rare dish.")


# ---- input ----------------------------------------------------------------------------------
@dataclass
class Clip:
    name: str
    text: str  # reference transcript
    wav: bytes  # the file as it is on disk (uploads)
    pcm16: bytes  # 16 kHz mono PCM16 (live streams)


def load_clips() -> list[Clip]:
    """The five LibriVox clips with their reference lines."""
    from voxgate.audio import decode_audio, float32_to_pcm16

    clips = []
    for line in (LIBRIVOX / "transcription").read_text().splitlines():
        match = re.match(r"<s>\s*(.*?)\s*</s>\s*\((.+)\)", line.strip())
        if match:
            path = LIBRIVOX / f"{match.group(2)}.wav"
            pcm = float32_to_pcm16(decode_audio(path))
            # 0.6 s of silence after the speech: a live stream ends the way a speaker pauses
            clips.append(Clip(match.group(2), match.group(1), path.read_bytes(),
                              pcm + bytes(int(0.6 * SR) * 2)))
    if not clips:
        raise SystemExit(f"no clips in {LIBRIVOX} (apt-get install pocketsphinx-testdata)")
    return clips


def wer(reference: str, hypothesis: str) -> float:
    import jiwer
    from whisper_normalizer.english import EnglishTextNormalizer

    norm = EnglishTextNormalizer()
    return float(jiwer.wer(norm(reference), norm(hypothesis) or "<empty>"))


# ---- recording ------------------------------------------------------------------------------
@dataclass
class Sample:
    door: str
    at: float  # seconds since the timed window opened
    latency_s: float
    error: str | None = None  # the error's kind; None: ok
    wer: float | None = None


@dataclass
class Run:
    deadline: float
    t0: float
    samples: list[Sample] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, sample: Sample) -> None:
        with self.lock:  # gRPC clients record from their threads
            self.samples.append(sample)

    def open(self) -> bool:
        return time.monotonic() < self.deadline


def _error_kind(exc: BaseException) -> str:
    status = getattr(exc, "status_code", None) or getattr(getattr(exc, "response", None),
                                                          "status_code", None)
    code = getattr(exc, "code", None)
    if callable(code):  # grpc.RpcError
        return f"grpc {code().name}"
    return f"http {status}" if status else type(exc).__name__


# ---- the server -----------------------------------------------------------------------------
def start_server(workdir: Path, port: int, grpc_port: int) -> subprocess.Popen[bytes]:
    """``voxgate serve`` as users run it, on loopback, one API key, data in ``workdir``."""
    env = {**os.environ, "VOXGATE_API_KEYS": KEY, "VOXGATE_DATA_DIR": str(workdir / "data"),
           "VOXGATE_OFFLINE": "true"}
    log = (workdir / "server.log").open("wb")
    return subprocess.Popen(
        [sys.executable, "-m", "voxgate.cli", "serve", "--host", "127.0.0.1", "--port",
         str(port), "--grpc-port", str(grpc_port)], env=env, stdout=log, stderr=subprocess.STDOUT)


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout_s: float) -> float:
    """Seconds until ``/ready`` answers 200 (bounded; fails if the server exits)."""
    import httpx

    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if proc.poll() is not None:
            raise SystemExit(f"voxgate serve exited with {proc.returncode} (see server.log)")
        try:
            if httpx.get(f"{url}/ready", headers={"X-API-Key": KEY}, timeout=5).status_code == 200:
                return time.monotonic() - started
        except httpx.TransportError:
            pass  # not listening yet
        time.sleep(0.5)
    raise SystemExit(f"voxgate serve not ready after {timeout_s:.0f} s")


# ---- the doors ------------------------------------------------------------------------------
async def job_once(http: Any, url: str, clip: Clip) -> tuple[float, float]:
    """Upload, follow the job's events to its final document; (latency, WER)."""
    started = time.monotonic()
    reply = await http.post(f"{url}/v1/process", files={"file": (f"{clip.name}.wav", clip.wav,
                                                                 "audio/wav")})
    reply.raise_for_status()
    task_id = reply.json()["task_id"]
    final: dict[str, Any] | None = None
    async with http.stream("GET", f"{url}/v1/status/{task_id}/events") as events:
        events.raise_for_status()
        name = "message"
        async for line in events.aiter_lines():
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:") and name == "result":
                final = json.loads(line[5:])
                break
    if final is None or final.get("status") != "COMPLETE":
        raise RuntimeError(f"job {task_id} ended {None if final is None else final.get('status')}")
    return time.monotonic() - started, wer(clip.text, final["results"]["raw_transcript"])


async def openai_once(client: Any, clip: Clip) -> tuple[float, float]:
    started = time.monotonic()
    result = await client.audio.transcriptions.create(
        model="whisper-1", file=(f"{clip.name}.wav", clip.wav), language="en")
    return time.monotonic() - started, wer(clip.text, result.text)


async def ws_once(url: str, clip: Clip) -> tuple[float, float]:
    """One live stream; latency from the last audio frame to the last final."""
    import websockets

    finals: list[str] = []
    async with websockets.connect(url, additional_headers={"X-API-Key": KEY},
                                  max_size=None) as ws:
        await ws.send(json.dumps({"type": "config", "sample_rate": SR, "encoding": "pcm16",
                                  "language": "en"}))
        ready = json.loads(await ws.recv())
        if ready.get("type") != "ready":
            raise RuntimeError(f"stream refused: {ready}")
        last_final = time.monotonic()

        async def read() -> None:
            nonlocal last_final
            async for raw in ws:
                message = json.loads(raw)
                if message.get("type") == "final":
                    finals.append(message["text"])
                    last_final = time.monotonic()
                elif message.get("type") == "error":
                    raise RuntimeError(f"stream error: {message.get('code')}")
                elif message.get("type") == "end":
                    return

        reader = asyncio.create_task(read())
        started, step = time.monotonic(), int(CHUNK_S * SR) * 2
        for i in range(0, len(clip.pcm16), step):
            await ws.send(clip.pcm16[i:i + step])
            delay = started + (i + step) / 2 / SR - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        audio_end = time.monotonic()
        await ws.send(json.dumps({"type": "end"}))
        await asyncio.wait_for(reader, 60)
    if not finals:
        raise RuntimeError("the stream ended without a final")
    return max(last_final - audio_end, 0.0), wer(clip.text, " ".join(finals))


def grpc_once(uri: str, clip: Clip) -> tuple[float, float]:
    """One Riva StreamingRecognize call with NVIDIA's client; latency as for ``ws``."""
    import riva.client

    config = riva.client.StreamingRecognitionConfig(
        config=riva.client.RecognitionConfig(
            encoding=riva.client.AudioEncoding.LINEAR_PCM, sample_rate_hertz=SR,
            language_code="en-US", max_alternatives=1, enable_automatic_punctuation=True),
        interim_results=True)
    service = riva.client.ASRService(riva.client.Auth(uri=uri,
                                                      metadata_args=[["x-api-key", KEY]]))
    clock: dict[str, float] = {}

    def chunks():
        started, step = time.monotonic(), int(CHUNK_S * SR) * 2
        for i in range(0, len(clip.pcm16), step):
            yield clip.pcm16[i:i + step]
            delay = started + (i + step) / 2 / SR - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        clock["audio_end"] = time.monotonic()

    finals, last_final = [], 0.0
    for response in service.streaming_response_generator(chunks(), config):
        for result in response.results:
            if result.is_final and result.alternatives:
                finals.append(result.alternatives[0].transcript)
                last_final = time.monotonic()
    if not finals:
        raise RuntimeError("the stream ended without a final")
    return max(last_final - clock["audio_end"], 0.0), wer(clip.text, " ".join(finals))


async def tts_once(client: Any, text: str) -> tuple[float, None]:
    started = time.monotonic()
    audio = await client.audio.speech.create(model="tts-1", voice="alloy", input=text,
                                             response_format="wav")
    if len(audio.content) < 44 + SR // 2:  # a header and less than ~0.25 s of sound
        raise RuntimeError(f"{len(audio.content)} bytes of speech for {text!r}")
    return time.monotonic() - started, None


async def one_request(door: str, turn: int, ctx: dict[str, Any],
                      clips: list[Clip]) -> tuple[float, float | None]:
    """The ``turn``-th request on ``door``: (latency, WER or None)."""
    clip = clips[turn % len(clips)]
    if door == "jobs":
        return await job_once(ctx["http"], ctx["url"], clip)
    if door == "openai":
        return await openai_once(ctx["openai"], clip)
    if door == "ws":
        return await ws_once(ctx["ws_url"], clip)
    if door == "grpc":
        return await asyncio.to_thread(grpc_once, ctx["grpc_uri"], clip)
    return await tts_once(ctx["openai"], TTS_TEXTS[turn % len(TTS_TEXTS)])


async def client_loop(door: str, index: int, run: Run, ctx: dict[str, Any],
                      clips: list[Clip]) -> None:
    """Requests on ``door`` one after another until the window closes (the last one finishes)."""
    turn = index
    while run.open():
        began = time.monotonic()
        try:
            latency, score = await one_request(door, turn, ctx, clips)
            run.add(Sample(door, began - run.t0, latency, wer=score))
        except Exception as exc:  # noqa: BLE001 - every failure (openai, grpc, httpx, websockets errors) is recorded by kind: it is what this benchmark counts
            run.add(Sample(door, began - run.t0, time.monotonic() - began, _error_kind(exc)))
        turn += 1


# ---- memory ---------------------------------------------------------------------------------
def sample_memory(pid: int, stop: threading.Event, every_s: float, t0: float,
                  out: list[dict[str, float]]) -> None:
    import psutil

    proc = psutil.Process(pid)
    while True:
        try:
            children = proc.children(recursive=True)
            rss = proc.memory_info().rss
            child_rss = sum(c.memory_info().rss for c in children if c.is_running())
            cpu = proc.cpu_times()
        except psutil.Error:
            return
        out.append({"t": time.monotonic() - t0, "rss_mb": rss / 2**20,
                    "children_rss_mb": child_rss / 2**20, "cpu_s": cpu.user + cpu.system})
        if stop.wait(every_s):
            return


def memory_trend(points: list[dict[str, float]], warmup_s: float, key: str) -> dict[str, Any]:
    """Least-squares slope of ``key`` (MB) after warm-up, and first vs last fifth of it."""
    steady = [p for p in points if p["t"] >= warmup_s]
    if len(steady) < 5:
        return {"samples": len(steady), "verdict": "too few samples"}
    t = np.array([p["t"] for p in steady])
    rss = np.array([p[key] for p in steady])
    slope = float(np.polyfit(t, rss, 1)[0]) * 60.0
    fifth = max(len(steady) // 5, 1)
    first, last = float(rss[:fifth].mean()), float(rss[-fifth:].mean())
    # growth: both the slope over the window and the last fifth over the first exceed 2 % and
    # 5 MB (a 12 MB Redis holding the run's job results grows by a fraction of a MB: no leak)
    window_min = (t[-1] - t[0]) / 60.0
    floor = max(0.02 * first, GROWTH_FLOOR_MB)
    grows = slope * window_min > floor and last - first > floor
    return {"samples": len(steady), "from_s": float(t[0]), "to_s": float(t[-1]),
            "first_fifth_mb": first, "last_fifth_mb": last, "min_mb": float(rss.min()),
            "max_mb": float(rss.max()), "slope_mb_per_min": slope,
            "verdict": "grows" if grows else "flat"}


# ---- report ---------------------------------------------------------------------------------
def summarise(samples: list[Sample], elapsed: float) -> dict[str, Any]:
    """Per door; throughput over ``elapsed`` (the window plus the last requests' tail)."""
    doors: dict[str, Any] = {}
    for door in DOORS:
        mine = [s for s in samples if s.door == door]
        if not mine:
            continue
        ok = [s for s in mine if s.error is None]
        lat = np.array([s.latency_s for s in ok]) if ok else np.array([np.nan])
        scores = [s.wer for s in ok if s.wer is not None]
        doors[door] = {
            "requests": len(mine), "ok": len(ok), "errors": dict(Counter(
                s.error for s in mine if s.error)),
            "error_rate": 1 - len(ok) / len(mine), "per_min": 60 * len(ok) / elapsed,
            "p50_s": float(np.percentile(lat, 50)), "p95_s": float(np.percentile(lat, 95)),
            "p99_s": float(np.percentile(lat, 99)), "max_s": float(lat.max()),
            "mean_wer": statistics.fmean(scores) if scores else None}
    return doors


def print_table(result: dict[str, Any]) -> None:
    print(f"\n{result['duration_s']:.0f} s, clients {result['clients']}, load avg "
          f"{result['loadavg_start'][0]:.2f} -> {result['loadavg_end'][0]:.2f}")
    print(f"{'door':8} {'req':>5} {'ok':>5} {'err%':>6} {'/min':>7} {'p50 s':>7} {'p95 s':>7} "
          f"{'p99 s':>7} {'WER':>6}  errors")
    for door, d in result["doors"].items():
        wer_text = f"{d['mean_wer']:.3f}" if d["mean_wer"] is not None else "-"
        print(f"{door:8} {d['requests']:5d} {d['ok']:5d} {100 * d['error_rate']:6.1f} "
              f"{d['per_min']:7.1f} {d['p50_s']:7.2f} {d['p95_s']:7.2f} {d['p99_s']:7.2f} "
              f"{wer_text:>6}  {d['errors'] or ''}")
    for label, mem in (("server", result["memory"]), ("children (Redis)",
                                                         result["children_memory"])):
        print(f"{label} RSS after warm-up: {mem.get('first_fifth_mb', 0):.0f} MB (first fifth) "
              f"-> {mem.get('last_fifth_mb', 0):.0f} MB (last fifth), slope "
              f"{mem.get('slope_mb_per_min', 0):+.1f} MB/min, max {mem.get('max_mb', 0):.0f} MB: "
              f"{mem['verdict']}")
    print(f"server CPU {result['server_cpu_s']:.0f} s in {result['elapsed_s']:.0f} s; ready after "
          f"{result['ready_s']:.1f} s")


def parse_clients(text: str) -> dict[str, int]:
    clients: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        door, _, count = part.partition("=")
        if door not in DOORS or not count.isdigit():
            raise argparse.ArgumentTypeError(
                f"--clients: '{part}' is not DOOR=N with DOOR one of {', '.join(DOORS)}")
        clients[door] = int(count)
    return clients


async def drive(args: argparse.Namespace, clips: list[Clip], ports: tuple[int, int],
                server_pid: int) -> dict[str, Any]:
    import httpx
    from openai import AsyncOpenAI

    url = f"http://127.0.0.1:{ports[0]}"
    ctx: dict[str, Any] = {
        "url": url, "ws_url": f"ws://127.0.0.1:{ports[0]}/v1/asr",
        "grpc_uri": f"127.0.0.1:{ports[1]}",
        "http": httpx.AsyncClient(headers={"X-API-Key": KEY}, timeout=httpx.Timeout(300, connect=10)),
        "openai": AsyncOpenAI(api_key=KEY, base_url=f"{url}/v1", timeout=300, max_retries=0)}
    # warm-up, outside the window: every door once, so first-use model loads are not counted
    for door in args.clients:
        latency, _ = await one_request(door, 0, ctx, clips)
        print(f"warm-up {door}: {latency:.2f} s", file=sys.stderr)

    memory: list[dict[str, float]] = []
    stop = threading.Event()
    loadavg_start = os.getloadavg()
    t0 = time.monotonic()
    run = Run(deadline=t0 + args.duration, t0=t0)
    sampler = threading.Thread(target=sample_memory, daemon=True,
                               args=(server_pid, stop, args.sample_s, t0, memory))
    sampler.start()
    await asyncio.gather(*(client_loop(door, i, run, ctx, clips)
                           for door, n in args.clients.items() for i in range(n)))
    elapsed = time.monotonic() - t0
    stop.set()
    sampler.join()
    await ctx["http"].aclose()
    await ctx["openai"].close()
    return {
        "duration_s": args.duration, "elapsed_s": elapsed, "clients": args.clients,
        "loadavg_start": loadavg_start, "loadavg_end": os.getloadavg(),
        "doors": summarise(run.samples, elapsed),
        "memory": memory_trend(memory, args.warmup_s, "rss_mb"),
        "children_memory": memory_trend(memory, args.warmup_s, "children_rss_mb"),
        "memory_samples": memory,
        "server_cpu_s": memory[-1]["cpu_s"] - memory[0]["cpu_s"] if memory else 0.0,
        "samples": [asdict(s) for s in run.samples]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=120.0, help="timed window, s")
    parser.add_argument("--clients", type=parse_clients, default=parse_clients(DEFAULT_CLIENTS),
                        help=f"DOOR=N,... (default {DEFAULT_CLIENTS})")
    parser.add_argument("--sample-s", type=float, default=5.0, help="RSS sampling period, s")
    parser.add_argument("--warmup-s", type=float, default=30.0,
                        help="RSS samples before this are left out of the trend")
    parser.add_argument("--ready-timeout", type=float, default=300.0)
    args = parser.parse_args()
    if args.duration <= 0 or not args.clients:
        parser.error("--duration must be > 0 and --clients must name a door")

    clips = load_clips()
    with tempfile.TemporaryDirectory(prefix="voxgate-load-") as tmp:
        workdir = Path(tmp)
        ports = (free_port(), free_port())
        proc = start_server(workdir, *ports)
        try:
            ready_s = wait_ready(f"http://127.0.0.1:{ports[0]}", proc, args.ready_timeout)
            result = asyncio.run(drive(args, clips, ports, proc.pid))
        finally:
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
            if proc.returncode not in (0, -15, None):
                print((workdir / "server.log").read_text()[-3000:], file=sys.stderr)
    result.update({"ready_s": ready_s, "server_exit": proc.returncode,
                   "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                               "python": platform.python_version()}})
    RESULTS.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result, indent=1)
    (RESULTS / "load.json").write_text(text)
    (RESULTS / f"load-{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(text)
    print_table(result)


if __name__ == "__main__":
    main()

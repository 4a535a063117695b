"""Speech out through the OpenAI door vs in-process, side by side in one run.

N concurrent clients (threads) each synthesize the same English paragraph ``--rounds`` times:

- ``http``: ``voxgate serve`` in its own process, the official ``openai`` client calling
  ``audio.speech.create`` (WAV) — what a user of the OpenAI door gets;
- ``inprocess``: the same ``SpeechService`` called directly (synthesize + WAV encode) in this
  process with the same number of threads.

Reported per side: requests, wall time, audio seconds per wall second (RTFx), CPU seconds per
request (client + server), mean / p95 latency; then the HTTP/in-process throughput ratio.
Also the time to first byte of a streamed ``pcm`` response for the same paragraph (p50/p90 of
``--ttfb-repeat`` runs, one client at a time) beside the whole-body time.

    python bench/speech_api.py                  # 8 clients x 3 rounds, ~2 min on 2 cores
    python bench/speech_api.py --clients 4 --rounds 5

Results go to ``bench/results/speech_api.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

from openai_api import _free_port, _load  # the same load generator as the ASR door's bench

RESULTS = Path(__file__).resolve().parent / "results"
PARAGRAPH = ("The birch canoe slid on the smooth planks. Glue the sheet to the dark blue "
             "background. It is easy to tell the depth of a well. These days a chicken leg is a "
             "rare dish. Rice is often served in round bowls. The juice of lemons makes fine "
             "punch.")

_SERVER = """
import sys, uvicorn
from voxgate.config import Settings
from voxgate.server.app import create_app
settings = Settings(offline=True, data_dir=sys.argv[3], _env_file=None)
settings.tts.max_concurrent = int(sys.argv[2])
uvicorn.run(create_app(settings, components=[]), host="127.0.0.1", port=int(sys.argv[1]),
            log_level="warning")
"""


def _audio_seconds(wav: bytes) -> float:
    from voxgate.audio import SAMPLE_RATE, decode_audio

    return decode_audio(wav).size / SAMPLE_RATE


def _start_server(args: argparse.Namespace, tmp: str) -> tuple[subprocess.Popen, int]:
    import httpx

    port = _free_port()
    server = subprocess.Popen([sys.executable, "-c", _SERVER, str(port), str(args.clients), tmp],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while True:
        try:
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).raise_for_status()
            return server, port
        except httpx.HTTPError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                sys.exit("voxgate server did not start:\n"
                         + server.stderr.read().decode(errors="replace")[-3000:])
            time.sleep(0.2)


def run_http(args: argparse.Namespace, tmp: str) -> tuple[dict, dict]:
    import openai

    server, port = _start_server(args, tmp)
    try:
        client = openai.OpenAI(api_key="unused", base_url=f"http://127.0.0.1:{port}/v1",
                               max_retries=0, timeout=600)
        sizes: list[float] = []

        def call() -> str:
            wav = client.audio.speech.create(model="tts-1", voice="alloy", input=PARAGRAPH,
                                             response_format="wav").content
            sizes.append(_audio_seconds(wav))
            return ""

        call()  # loads the voice in the server
        sizes.clear()
        run = _load(args.clients, args.rounds, call, server_pid=server.pid)
        run["audio_s"] = sum(sizes)
        ttfb = _time_to_first_byte(client, args.ttfb_repeat)
        return run, ttfb
    finally:
        server.terminate()
        server.wait(30)


def _time_to_first_byte(client, repeat: int) -> dict:
    firsts, wholes = [], []
    for _ in range(repeat):
        started = time.perf_counter()
        first = None
        with client.audio.speech.with_streaming_response.create(
                model="tts-1", voice="alloy", input=PARAGRAPH, response_format="pcm") as response:
            for part in response.iter_bytes():
                if first is None and part:
                    first = time.perf_counter() - started
        firsts.append(first)
        wholes.append(time.perf_counter() - started)
    return {"runs": repeat, "first_byte_p50_s": round(statistics.median(firsts), 3),
            "first_byte_p90_s": round(sorted(firsts)[int(0.9 * (repeat - 1))], 3),
            "whole_body_p50_s": round(statistics.median(wholes), 3)}


def run_inprocess(args: argparse.Namespace, tmp: str) -> dict:
    from voxgate.config import Settings
    from voxgate.speech import SpeechService, encode_chunks

    settings = Settings(offline=True, data_dir=tmp, _env_file=None)
    service = SpeechService(settings)
    sizes: list[float] = []

    def call() -> str:
        request = service.prepare(PARAGRAPH)  # the default voice, as "alloy" maps to
        wav = encode_chunks(service.iter_chunks(request), "wav")
        sizes.append(_audio_seconds(wav))
        return ""

    call()
    sizes.clear()
    try:
        run = _load(args.clients, args.rounds, call)
    finally:
        service.manager.close()
    run["audio_s"] = sum(sizes)
    return run


def _row(name: str, run: dict) -> dict:
    done = len(run["latencies"])
    lat = sorted(run["latencies"]) or [float("nan")]
    row = {"requests": done, "errors": run["errors"], "wall_s": round(run["wall_s"], 2),
           "audio_s": round(run["audio_s"], 1),
           "rtfx": round(run["audio_s"] / run["wall_s"], 2),
           "cpu_s_per_request": round(run["cpu_s"] / max(done, 1), 3),
           "latency_mean_s": round(statistics.fmean(lat), 3),
           "latency_p95_s": round(lat[min(len(lat) - 1, int(0.95 * len(lat)))], 3)}
    print(f"{name:10} {done:3d} req in {row['wall_s']:6.1f} s  RTFx {row['rtfx']:6.1f}  "
          f"CPU {row['cpu_s_per_request']:6.3f} s/req  mean {row['latency_mean_s']:6.2f} s  "
          f"p95 {row['latency_p95_s']:6.2f} s  errors {run['errors']}", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3, help="requests per client")
    parser.add_argument("--ttfb-repeat", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        inprocess = _row("inprocess", run_inprocess(args, tmp))
        http_run, ttfb = run_http(args, tmp)
        http = _row("http", http_run)
    ratio = round(http["rtfx"] / inprocess["rtfx"], 3)
    cpu_ratio = round(http["cpu_s_per_request"] / inprocess["cpu_s_per_request"], 3)
    print(f"HTTP / in-process throughput {ratio:.3f}, CPU per request {cpu_ratio:.3f}")
    print(f"streamed pcm: first byte p50 {ttfb['first_byte_p50_s']} s, "
          f"p90 {ttfb['first_byte_p90_s']} s; whole body p50 {ttfb['whole_body_p50_s']} s")
    report = {"clients": args.clients, "rounds": args.rounds, "paragraph_chars": len(PARAGRAPH),
              "inprocess": inprocess, "http": http, "http_over_inprocess": ratio,
              "cpu_http_over_inprocess": cpu_ratio, "streamed_pcm": ttfb,
              "versions": {p: metadata.version(p) for p in ("voxgate", "onnxruntime", "openai",
                                                            "uvicorn", "fastapi")},
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version()}}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "speech_api.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

"""voxgate's batched long-form path vs plain faster-whisper, side by side in one run.

Both sides use the same Whisper model files (the offline ``whisper-base`` pack), int8 on CPU,
the same beam size, language auto-detection and the same number of CPU threads, on the same
~10 minutes of real speech (the LibriVox clips of Debian ``pocketsphinx-testdata``, joined with
short pauses and repeated, so the reference text is known). Plain faster-whisper runs the way
a user would run it: ``WhisperModel.transcribe(path, beam_size=..., vad_filter=True)``.

Each side runs in its own subprocess so its peak RSS is its own. Timed: file path in -> full
transcript out (decode + VAD + ASR), after loading the model and one short warm-up call.

    python bench/asr_batch.py                      # ~10 min of audio, prints a table
    python bench/asr_batch.py --minutes 2 --beam-size 1
    python bench/asr_batch.py --repeat 3           # alternate the sides, keep each one's best

Results go to ``bench/results/asr_batch.json`` (and a timestamped copy).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")
RESULTS = Path(__file__).resolve().parent / "results"
SAMPLE_RATE = 16_000


def load_clips() -> list[tuple[Path, str]]:
    listing = LIBRIVOX / "transcription"
    if not listing.is_file():
        sys.exit("needs Debian's pocketsphinx-testdata (bash scripts/setup.sh installs it)")
    clips = []
    for line in listing.read_text().splitlines():
        match = re.match(r"<s>\s*(.*?)\s*</s>\s*\((.+)\)", line.strip())
        if match:
            clips.append((LIBRIVOX / f"{match.group(2)}.wav", match.group(1)))
    return clips


def build_input(minutes: float, path: Path, seed: int = 0) -> str:
    """Join the clips with 0.3-1.5 s pauses (low noise, not digital silence) until ``minutes``.

    Returns the reference transcript of the whole file.
    """
    from voxgate.audio import decode_audio, encode_wav

    rng = np.random.default_rng(seed)
    clips = [(decode_audio(p), text) for p, text in load_clips()]
    pieces: list[np.ndarray] = []
    words: list[str] = []
    total = 0
    target = int(minutes * 60 * SAMPLE_RATE)
    while total < target:
        for audio, text in clips:
            gap = (rng.standard_normal(int(rng.uniform(0.3, 1.5) * SAMPLE_RATE)) * 3e-4)
            pieces += [gap.astype(np.float32), audio]
            words.append(text)
            total += gap.size + audio.size
            if total >= target:
                break
    path.write_bytes(encode_wav(np.concatenate(pieces)))
    return " ".join(words)


def _wer(reference: str, hypothesis: str) -> float:
    import jiwer
    from whisper_normalizer.english import EnglishTextNormalizer

    norm = EnglishTextNormalizer()
    return float(jiwer.wer(norm(reference), norm(hypothesis)))


def _cpu_seconds() -> float:
    """CPU time of this process (all threads): less sensitive than wall time to other load."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run_voxgate(audio_path: str, warmup_path: str, args: argparse.Namespace) -> dict:
    from voxgate.config import Settings
    from voxgate.transcriber import FileTranscriber, TranscribeRequest

    settings = Settings(offline=True, _env_file=None)
    settings.asr.cpu_threads = args.threads
    request = TranscribeRequest(model=args.model, language=None, beam_size=args.beam_size,
                                batch_size=args.batch_size)
    started = time.perf_counter()
    runner = FileTranscriber(settings, request)
    load_s = time.perf_counter() - started
    runner.run(warmup_path)
    started, cpu = time.perf_counter(), _cpu_seconds()
    transcript = runner.run(audio_path)
    seconds, cpu = time.perf_counter() - started, _cpu_seconds() - cpu
    return {"text": transcript.text, "seconds": seconds, "cpu_s": cpu, "load_s": load_s,
            "language": transcript.language, "segments": len(transcript.segments)}


def run_faster_whisper(audio_path: str, warmup_path: str, args: argparse.Namespace) -> dict:
    from faster_whisper import WhisperModel

    from voxgate.config import Settings
    from voxgate.models import resolve

    settings = Settings(offline=True, _env_file=None)
    model_dir = resolve(args.model, settings.cache_dir, offline=True).path
    started = time.perf_counter()
    model = WhisperModel(str(model_dir), device="cpu", compute_type="int8",
                         cpu_threads=args.threads)
    load_s = time.perf_counter() - started

    def transcribe(path: str) -> tuple[str, str, int]:
        segments, info = model.transcribe(path, beam_size=args.beam_size, vad_filter=True)
        segments = list(segments)
        return " ".join(s.text.strip() for s in segments), info.language, len(segments)

    transcribe(warmup_path)
    started, cpu = time.perf_counter(), _cpu_seconds()
    text, language, count = transcribe(audio_path)
    seconds, cpu = time.perf_counter() - started, _cpu_seconds() - cpu
    return {"text": text, "seconds": seconds, "cpu_s": cpu, "load_s": load_s,
            "language": language,
            "segments": count}


RUNNERS = {"voxgate": run_voxgate, "faster-whisper": run_faster_whisper}


def _run_child(name: str, audio_path: Path, warmup_path: str, args: argparse.Namespace) -> dict:
    """One side in a fresh interpreter, so its peak RSS and warm caches are its own."""
    command = [sys.executable, __file__, "--child", name, "--audio", str(audio_path),
               "--warmup", warmup_path, "--model", args.model,
               "--beam-size", str(args.beam_size), "--batch-size", str(args.batch_size),
               "--threads", str(args.threads)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
    if done.returncode or line is None:
        sys.exit(f"{name} failed:\n{done.stderr[-3000:]}")
    return json.loads(line[len("RESULT "):])


def child(args: argparse.Namespace) -> None:
    result = RUNNERS[args.child](args.audio, args.warmup, args)
    result["peak_rss_mb"] = _peak_rss_mb()
    print("RESULT " + json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--model", default="whisper-base")
    parser.add_argument("--beam-size", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=8, help="voxgate chunks per call")
    parser.add_argument("--threads", type=int, default=0, help="CTranslate2 CPU threads (0: auto)")
    parser.add_argument("--only", choices=sorted(RUNNERS), action="append")
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs per side, alternating; the fastest run of each is reported")
    parser.add_argument("--child", choices=sorted(RUNNERS), help=argparse.SUPPRESS)
    parser.add_argument("--audio", help=argparse.SUPPRESS)
    parser.add_argument("--warmup", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        audio_path = Path(tmp) / "librivox_long.wav"
        reference = build_input(args.minutes, audio_path)
        warmup_path = str(load_clips()[0][0])
        duration = (audio_path.stat().st_size - 44) / 2 / SAMPLE_RATE
        rows: dict[str, dict] = {}
        names = args.only or ["faster-whisper", "voxgate"]
        for attempt in range(args.repeat):  # alternate the sides: load spikes hit both
            for name in names:
                row = _run_child(name, audio_path, warmup_path, args)
                row["wer"] = _wer(reference, row.pop("text"))
                row["rtfx"] = duration / row["seconds"]
                print(f"{name:15} run {attempt + 1}: {row['seconds']:7.1f} s  "
                      f"(CPU {row['cpu_s']:6.1f} s)  "
                      f"RTFx {row['rtfx']:6.1f}  WER {row['wer'] * 100:5.2f}%  "
                      f"peak RSS {row['peak_rss_mb']:6.0f} MB", flush=True)
                best = rows.get(name)
                runs = (best or {}).get("all_seconds", []) + [round(row["seconds"], 2)]
                if best is None or row["seconds"] < best["seconds"]:
                    best = row
                best["all_seconds"] = runs
                rows[name] = best

    report = {
        "benchmark": "asr_batch",
        "audio_seconds": round(duration, 1),
        "model": args.model,
        "beam_size": args.beam_size,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "repeat": args.repeat,
        "compute_type": "int8",
        "machine": {"cpus": _cpus(), "cpu": platform.processor() or platform.machine(),
                    "python": platform.python_version(),
                    # other work on the machine skews both sides; the ratio is the robust figure
                    "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)]},
        "results": rows,
    }
    if "voxgate" in rows and "faster-whisper" in rows:
        report["speedup"] = rows["voxgate"]["rtfx"] / rows["faster-whisper"]["rtfx"]
        report["cpu_time_ratio"] = rows["faster-whisper"]["cpu_s"] / rows["voxgate"]["cpu_s"]
        print(f"voxgate / faster-whisper speed-up: {report['speedup']:.2f}x wall, "
              f"{report['cpu_time_ratio']:.2f}x less CPU time")
    RESULTS.mkdir(exist_ok=True)
    text = json.dumps(report, indent=2)
    (RESULTS / "asr_batch.json").write_text(text)
    (RESULTS / f"asr_batch-{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(text)
    print(table(report))


def _cpus() -> int:
    return len(os.sched_getaffinity(0))


def table(report: dict) -> str:
    """The Markdown table bench/README.md shows."""
    lines = ["| runtime | wall s | RTFx | CPU s | WER | peak RSS MB |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, row in report["results"].items():
        lines.append(f"| {name} | {row['seconds']:.1f} | {row['rtfx']:.1f} | {row['cpu_s']:.1f} | "
                     f"{row['wer'] * 100:.2f}% | {row['peak_rss_mb']:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

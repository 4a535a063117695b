"""Jobs benchmark: end-to-end RTF on ~10 min of real speech, with the per-stage breakdown, and
jobs per minute on short recordings, through the real REST API, Redis and worker.

Side by side on the same audio: plain faster-whisper (BatchedInferencePipeline, same model
files) for the ASR stage, so the queue + pipeline overhead shows as a ratio. With ``--summary``
the long job also runs cleanup + summary, and an LLM probe runs the same two stages on the
first ``--probe-words`` words of its transcript through the in-process llama.cpp engine to read
llama.cpp's own timings: prompt-eval and generation tok/s per stage, the cost of the JSON-schema
grammar (same summary unconstrained); a repeat of the summary shows the timing spread.

    python bench/jobs.py [--minutes 10] [--jobs 10] [--summary meeting_notes_v1] [--before-after]

``--before-after`` runs the long job first with the cleanup as it was before issue 14 (whole text
rewritten, no skip), then with the defaults, on the same file (issue 14's side by side).

Writes bench/results/jobs.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from jobs_support import KEY, serve_app, submit, wait_final

from voxgate.audio import decode_audio, encode_wav
from voxgate.config import Settings

LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")


def recording(seconds: float, path: Path) -> float:
    clips = [decode_audio(p) for p in sorted(LIBRIVOX.glob("*.wav"))]
    one = np.concatenate(clips)
    audio = np.concatenate([one] * max(1, int(np.ceil(seconds * 16000 / one.size))))
    audio = audio[: int(seconds * 16000)]
    path.write_bytes(encode_wav(audio))
    return audio.size / 16000


def plain_faster_whisper(path: Path, settings: Settings) -> float:
    from faster_whisper import BatchedInferencePipeline, WhisperModel

    from voxgate.models import resolve

    model_dir = resolve(settings.asr.model, settings.cache_dir, offline=True).path
    model = WhisperModel(str(model_dir), device="cpu", compute_type="int8")
    pipe = BatchedInferencePipeline(model)
    started = time.perf_counter()
    segments, _ = pipe.transcribe(str(path), batch_size=settings.asr.batch_size,
                                  beam_size=settings.asr.beam_size, language="en")
    list(segments)
    return time.perf_counter() - started


class _TimedLlm:
    """Wraps the llama.cpp engine for the probe: same answers, llama.cpp's timings summed."""

    def __init__(self, llm: object, json_schema: bool = True) -> None:
        from dataclasses import replace

        self.llm = llm
        self.capabilities = replace(llm.capabilities, json_schema=json_schema)
        self.totals = {"calls": 0, "prompt_n": 0, "prompt_ms": 0.0, "predicted_n": 0,
                       "predicted_ms": 0.0}

    def complete_sync(self, messages, **options) -> str:
        from voxgate.engines.llm_openai import content_of

        response = self.llm.complete_raw(messages, **options)
        timings = response.get("timings") or {}
        self.totals["calls"] += 1
        for key in ("prompt_n", "prompt_ms", "predicted_n", "predicted_ms"):
            self.totals[key] += timings.get(key) or 0
        return content_of(response)

    def report(self) -> dict[str, float]:
        t = self.totals
        return {**{k: round(v, 1) for k, v in t.items()},
                "prompt_tok_s": round(t["prompt_n"] / max(t["prompt_ms"], 1e-9) * 1000, 1),
                "gen_tok_s": round(t["predicted_n"] / max(t["predicted_ms"], 1e-9) * 1000, 1)}


def llm_probe(settings: Settings, text: str, template_id: str) -> dict[str, dict[str, float]]:
    """Cleanup and summary (constrained, repeated, unconstrained) on ``text``: tok/s per stage."""
    from voxgate.engines.manager import ModelManager
    from voxgate.postprocess import PostProcessor, llm_model_id, load_template

    template = load_template(settings, template_id)
    out: dict[str, dict[str, float]] = {}
    manager = ModelManager(settings)
    try:
        llm = manager.get("llm", llm_model_id(settings))
        for name, constrained, run in (
                ("cleanup", True, lambda post: post.clean(text)),
                ("summary", True, lambda post: post.summarize(text, template)),
                ("summary_repeat", True, lambda post: post.summarize(text, template)),
                ("summary_unconstrained", False, lambda post: post.summarize(text, template))):
            timed = _TimedLlm(llm, json_schema=constrained)
            started = time.perf_counter()
            try:
                run(PostProcessor(timed, settings))
                ok = True
            except Exception:  # noqa: BLE001 - an unconstrained small model may fail the schema
                ok = False
            out[name] = {**timed.report(), "wall_s": round(time.perf_counter() - started, 2),
                         "ok": ok}
    finally:
        manager.close()
    return out


# Cleanup as it was before issue 14: the whole text rewritten by the LLM, words free to change.
BEFORE_CLEANUP = {"cleanup_method": "rewrite", "cleanup_keep_words": False,
                  "cleanup_skip_punctuated": False}


def long_job(base: str, path: Path, duration: float, features: list[str],
             template_id: str) -> dict[str, object]:
    """One long job: wall and process CPU seconds (all threads: ASR, llama.cpp), load average."""
    import os
    import resource

    def cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    load, started, cpu_started = os.getloadavg()[0], time.perf_counter(), cpu()
    task = submit(base, path, features=features, language="en",
                  template_id=template_id or None).json()["task_id"]
    final = wait_final(base, task, timeout=7200)
    wall = time.perf_counter() - started
    return {"status": final["status"], "wall_s": round(wall, 2),
            "rtf_end_to_end": round(wall / duration, 4),
            "cpu_s": round(cpu() - cpu_started, 2),
            "rtf_cpu_per_core": round((cpu() - cpu_started) / (os.cpu_count() or 1) / duration, 4),
            "load_avg_start": round(load, 2), "load_avg_end": round(os.getloadavg()[0], 2),
            "metrics": final["metrics"],
            "enhancement_metrics": final["results"].get("enhancement_metrics"), "final": final}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--summary", default="meeting_notes_v1", help="'' to skip the LLM")
    parser.add_argument("--before-after", action="store_true",
                        help="also run the long job with the cleanup as before issue 14")
    parser.add_argument("--probe-words", type=int, default=300,
                        help="words of the transcript the LLM probe uses (0: no probe)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="voxgate-bench-"))
    long_path = work / "long.wav"
    duration = recording(args.minutes * 60, long_path)
    short_path = work / "short.wav"
    recording(25.0, short_path)
    settings = Settings(data_dir=work / "data", offline=True, api_keys=[KEY], grpc_port=0,
                        redis_url="", _env_file=None)
    out: dict[str, object] = {"audio_s": duration}
    features = ["raw_transcript"] + (["clean_transcript", "enhancement_metrics", "summary"]
                                     if args.summary else [])
    if args.before_after and args.summary:  # issue 14: the cleanup before it, same audio
        with serve_app(settings.model_copy(update={"llm": settings.llm.model_copy(
                update=BEFORE_CLEANUP)}, deep=True)) as base:
            out["long_before"] = long_job(base, long_path, duration, features, args.summary)
            out["long_before"].pop("final")
    with serve_app(settings) as base:
        out["long"] = final_run = long_job(base, long_path, duration, features, args.summary)
        final = final_run.pop("final")
        started = time.perf_counter()
        ids = [submit(base, short_path, language="en").json()["task_id"] for _ in range(args.jobs)]
        finals = [wait_final(base, i, timeout=3600) for i in ids]
        elapsed = time.perf_counter() - started
        out["short"] = {"jobs": args.jobs, "audio_s_each": 25.0,
                        "complete": sum(f["status"] == "COMPLETE" for f in finals),
                        "jobs_per_minute": round(args.jobs / elapsed * 60, 2)}
    plain = plain_faster_whisper(long_path, settings)
    asr = out["long"]["metrics"]["stage_times_s"]["asr"]
    out["peer_faster_whisper_asr_s"] = round(plain, 2)
    out["asr_ratio_voxgate_vs_faster_whisper"] = round(asr / plain, 3)
    if args.summary and args.probe_words and final["status"] == "COMPLETE":
        words = final["results"]["raw_transcript"].split()[: args.probe_words]
        out["llm_probe"] = {"words": len(words),
                            **llm_probe(settings, " ".join(words), args.summary)}
    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / "jobs.json").write_text(json.dumps(out, indent=2))
    if "long_before" in out:
        for name in ("long_before", "long"):
            row = out[name]
            print(f"| {name} | {row['wall_s']} s | RTF {row['rtf_end_to_end']} | CPU {row['cpu_s']} s"
                  f" | load {row['load_avg_start']}->{row['load_avg_end']} | "
                  f"{row['metrics']['stage_times_s']} |")
    stages = out["long"]["metrics"]["stage_times_s"]
    print(f"| audio | end-to-end | RTF | {' | '.join(stages)} | faster-whisper ASR | ratio |"
          " jobs/min (25 s) |")
    print("|" + "---|" * (6 + len(stages)))
    print(f"| {duration:.0f} s | {out['long']['wall_s']} s | {out['long']['rtf_end_to_end']} | "
          + " | ".join(f"{v} s" for v in stages.values())
          + f" | {plain:.1f} s | {out['asr_ratio_voxgate_vs_faster_whisper']} | "
          f"{out['short']['jobs_per_minute']} |")
    if "llm_probe" in out:
        print(f"\nLLM probe on {out['llm_probe']['words']} words "
              "| calls | prompt tok | prompt tok/s | gen tok | gen tok/s | wall |")
        print("|---|---|---|---|---|---|---|")
        for name, row in out["llm_probe"].items():
            if isinstance(row, dict):
                print(f"| {name} | {row['calls']} | {row['prompt_n']:.0f} | {row['prompt_tok_s']} | "
                      f"{row['predicted_n']:.0f} | {row['gen_tok_s']} | {row['wall_s']} s |")


if __name__ == "__main__":
    main()

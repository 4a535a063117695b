"""Parakeet runtime: voxgate's decoding loop vs onnx-asr's on the same model, and encoder scaling.

No Parakeet weights are reachable here, so both sides run the same *random-weight* models with
the exact NeMo export signature (built by ``tests/parakeet_fixtures.py``: tiny, and a mid-size
~25M-parameter one with ``--mid``) on the same real speech (25 inputs cut from the LibriVox clips
of Debian ``pocketsphinx-testdata``, ~86 s). Token ids are checked equal before anything is timed.

Measured, each the median of ``--repeat`` runs after a warm-up:

1. decoding loop only (same encoder outputs in, tokens out; the decoder-joint ONNX calls
   included): voxgate one utterance at a time, voxgate batched (8, and all 25), onnx-asr's
   ``_decoding`` (its loop is per utterance by design). Reported as ms per audio second and the
   ratio onnx-asr / voxgate (goal: >= 1.5x).
2. end to end (features + encoder + decoding): ``ParakeetAsr.recognize`` vs
   ``onnx_asr.load_model(...).recognize`` on the same list of inputs, as RTFx.
3. encoder batch scaling: encoder ms per audio second for batch 1..16 of 5 s inputs.
4. the loop's own Python/numpy overhead per step, with a zero-cost numpy joint.
5. with ``--long``: peak memory and time of one long input on the mid-size model, each in a
   fresh process: encoded whole (1, 3 and 5 minutes; full attention grows with the square of
   the length) and in windows (5 minutes with a 60 s whole-input limit, 10 s context).

    python bench/parakeet.py                 # tiny models, ~1 min on 2 cores
    python bench/parakeet.py --mid           # also the mid-size model (encoder scaling)
    python bench/parakeet.py --long          # only the long-input memory figures (mid model)
    python bench/parakeet.py --providers CUDAExecutionProvider   # on a GPU machine

Needs torch (to build the models; ``pip install torch==2.13.0``), onnx and onnx-asr (dev extra).
Results go to ``bench/results/parakeet.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT / "tests"))

from parakeet_fixtures import MID, TINY, build, load_speech_inputs  # noqa: E402

from voxgate.config import OnnxSettings  # noqa: E402
from voxgate.engines.asr_parakeet import ParakeetAsr  # noqa: E402
from voxgate.engines.decoding import GreedyTransducer, TransducerConfig  # noqa: E402

SAMPLE_RATE = 16_000


def timed(fn: Callable[[], Any], repeat: int) -> float:
    """Median wall time of ``fn`` over ``repeat`` runs, after one warm-up run."""
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def pad(encoded: list[np.ndarray]) -> np.ndarray:
    out = np.zeros((len(encoded), max(e.shape[0] for e in encoded), encoded[0].shape[1]),
                   np.float32)
    for row, e in zip(out, encoded, strict=True):
        row[: e.shape[0]] = e
    return out


def decoding_loop(kind: str, directory: Path, inputs: list[np.ndarray], audio_s: float,
                  repeat: int, providers: list[str]) -> dict[str, Any]:
    import onnx_asr

    asr = ParakeetAsr(directory, onnx=OnnxSettings(providers=providers))
    reference = onnx_asr.load_model(f"nemo-conformer-{kind}", directory, providers=providers)
    encoded, lengths = [], []
    for audio in inputs:  # one at a time: no padding in the encoder outputs
        out, length = asr.encode([audio])
        encoded.append(out[0, : int(length[0])])
        lengths.append(int(length[0]))
    order = np.argsort(lengths)

    def ours_one(lookahead: int) -> Callable[[], list[list[int]]]:
        def run() -> list[list[int]]:
            decoder = asr.decoder(1)
            decoder.lookahead = min(lookahead, decoder.lookahead)
            return [decoder.decode(e[None], np.array([len(e)]))[0].hypothesis.tokens
                    for e in encoded]
        return run

    def ours_batched(size: int) -> Callable[[], list[list[int]]]:
        def run() -> list[list[int]]:
            tokens: dict[int, list[int]] = {}
            for first in range(0, len(order), size):
                group = order[first:first + size]
                states = asr.decoder(len(group)).decode(
                    pad([encoded[i] for i in group]), np.array([lengths[i] for i in group]))
                tokens.update({int(i): s.hypothesis.tokens for i, s in zip(group, states,
                                                                           strict=True)})
            return [tokens[i] for i in range(len(encoded))]
        return run

    all_encoded, all_lengths = pad(encoded), np.array(lengths)

    def theirs() -> list[list[int]]:
        return [list(map(int, tokens)) for tokens, _, _ in
                reference.asr._decoding(all_encoded, all_lengths)]

    expected = theirs()
    steps = sum(len(t) for t in expected)
    runs = {"voxgate_batch1_frame_by_frame": ours_one(1),
            f"voxgate_batch1_window{asr.lookahead}": ours_one(asr.lookahead),
            "voxgate_batch8": ours_batched(8),
            f"voxgate_batch{len(inputs)}": ours_batched(len(inputs)), "onnx_asr": theirs}
    calls = _count_calls(asr._sessions["decoder_joint"], "run_with_iobinding",
                         reference.asr._decoder_joint, "run")
    joint_calls = {}
    for name, fn in runs.items():
        calls[0] = 0
        if fn() != expected:
            raise SystemExit(f"{kind}: {name} tokens differ from onnx-asr's; not timing")
        joint_calls[name] = calls[0]
    seconds = {name: timed(fn, repeat) for name, fn in runs.items()}
    result: dict[str, Any] = {
        "tokens": steps,
        "tokens_per_frame": round(steps / sum(lengths), 3),
        "joint_calls": joint_calls,
        "ms_per_audio_s": {k: 1000 * v / audio_s for k, v in seconds.items()},
        "speedup_vs_onnx_asr": {k: seconds["onnx_asr"] / v for k, v in seconds.items()
                                if k != "onnx_asr"},
    }
    return result


def _count_calls(*targets: Any) -> list[int]:
    """Count calls of ``(object, method name)`` pairs (instance attributes, this run only)."""
    counter = [0]
    for owner, name in zip(targets[::2], targets[1::2], strict=True):
        method = getattr(owner, name)

        def counted(*args: Any, _method: Any = method, **kwargs: Any) -> Any:
            counter[0] += 1
            return _method(*args, **kwargs)

        setattr(owner, name, counted)
    return counter


def end_to_end(kind: str, directory: Path, inputs: list[np.ndarray], audio_s: float,
               repeat: int, providers: list[str]) -> dict[str, float]:
    import onnx_asr

    asr = ParakeetAsr(directory, onnx=OnnxSettings(providers=providers), batch_size=8)
    reference = onnx_asr.load_model(f"nemo-conformer-{kind}", directory,
                                    providers=providers).with_timestamps()
    ids = {piece.replace("\u2581", " "): i for i, piece in enumerate(asr.pieces)}
    ours_tokens = [h.tokens for h in asr.recognize(inputs)]
    their_tokens = [[ids[t] for t in r.tokens] for r in reference.recognize(inputs)]
    equal = sum(a == b for a, b in zip(ours_tokens, their_tokens, strict=True))
    ours = timed(lambda: asr.recognize(inputs), repeat)
    theirs = timed(lambda: reference.recognize(inputs), repeat)
    return {"voxgate_rtfx": audio_s / ours, "onnx_asr_rtfx": audio_s / theirs,
            "speedup": theirs / ours, "inputs_with_equal_tokens": f"{equal}/{len(inputs)}"}


def encoder_scaling(directory: Path, inputs: list[np.ndarray], sizes: list[int], repeat: int,
                    providers: list[str]) -> dict[str, float]:
    asr = ParakeetAsr(directory, onnx=OnnxSettings(providers=providers), batch_size=max(sizes))
    clips = [np.resize(a, 5 * SAMPLE_RATE) for a in inputs]  # 5 s each, real speech
    per_audio_s = {}
    for size in sizes:
        batch = clips[:size]
        features, lengths = asr.frontend.from_chunks(batch)
        session = asr._sessions["encoder"]
        seconds = timed(lambda f=features, n=lengths, s=session: s.run(
            None, {"audio_signal": f, "length": n}), repeat)
        per_audio_s[str(size)] = 1000 * seconds / (5.0 * size)
    return per_audio_s


def loop_overhead(repeat: int) -> dict[str, float]:
    """µs per step of the loop itself, the joint replaced by a numpy table lookup."""
    rng = np.random.default_rng(0)
    vocab, frames, dim = 1024, 400, 16
    table = rng.normal(size=(dim, vocab + 1 + 5)).astype(np.float32)
    table[:, vocab] += 2.5  # mostly blank, as real models are

    def joint(f: np.ndarray, t: np.ndarray, s1: np.ndarray, s2: np.ndarray):
        return f @ table, s1, s2

    out = {}
    for batch in (1, 8):
        decoder = GreedyTransducer(joint, TransducerConfig(vocab), (2, 8))
        enc = rng.normal(size=(batch, frames, dim)).astype(np.float32)
        lengths = np.full(batch, frames)
        calls = []

        def counting(f, t, s1, s2, calls=calls):
            calls.append(1)
            return joint(f, t, s1, s2)

        GreedyTransducer(counting, TransducerConfig(vocab), (2, 8)).decode(enc, lengths)
        seconds = timed(lambda d=decoder, e=enc, n=lengths: d.decode(e, n), repeat)
        out[f"batch{batch}_us_per_step"] = 1e6 * seconds / len(calls)
    return out


def long_input_child(directory: Path, seconds: float, max_whole_s: float,
                     providers: list[str]) -> dict[str, Any]:
    """Run in a fresh process: peak RSS above the loaded, warmed-up model while one
    ``seconds``-long input (the LibriVox clips tiled) is recognised."""
    import resource

    from parakeet_fixtures import long_speech

    speech = long_speech()
    audio = np.tile(speech, int(np.ceil(seconds * SAMPLE_RATE / speech.size)))
    audio = audio[:int(seconds * SAMPLE_RATE)]
    asr = ParakeetAsr(directory, onnx=OnnxSettings(providers=providers),
                      max_whole_s=max_whole_s, window_context_s=min(10.0, max_whole_s / 3))
    asr.recognize([speech[:5 * SAMPLE_RATE]])  # warm-up: sessions' first-run allocations

    def rss_kb() -> int:
        status = Path("/proc/self/status").read_text()
        return int(next(line.split()[1] for line in status.splitlines()
                        if line.startswith("VmRSS:")))

    before = rss_kb()
    start = time.perf_counter()
    (hyp,) = asr.recognize([audio])
    elapsed = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"audio_s": seconds, "max_whole_s": max_whole_s, "windows": len(asr.plan(audio)),
            "rss_loaded_mb": round(before / 1024, 1),
            "peak_above_loaded_mb": round(max(peak - before, 0) / 1024, 1),
            "input_mb": round(audio.nbytes / 2**20, 1), "seconds": round(elapsed, 2),
            "rtfx": round(seconds / elapsed, 1), "tokens": len(hyp.tokens)}


def long_inputs(directory: Path, providers: list[str]) -> list[dict[str, Any]]:
    """:func:`long_input_child` for each case, each in its own process (clean peak RSS)."""
    import subprocess

    rows = []
    for seconds, max_whole_s in ((10, 300), (30, 300), (60, 300), (180, 300), (300, 300),
                                 (300, 60)):
        done = subprocess.run(
            [sys.executable, __file__, "--long-child", str(directory), str(seconds),
             str(max_whole_s), "--providers", ",".join(providers)],
            check=True, capture_output=True, text=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    if len(sys.argv) > 4 and sys.argv[1] == "--long-child":
        providers = sys.argv[sys.argv.index("--providers") + 1].split(",")
        print(json.dumps(long_input_child(Path(sys.argv[2]), float(sys.argv[3]),
                                          float(sys.argv[4]), providers)))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--mid", action="store_true", help="also build/run the mid-size model")
    parser.add_argument("--batch-sizes", default="1,2,4,8,16")
    parser.add_argument("--providers", default="CPUExecutionProvider")
    parser.add_argument("--models", type=Path, default=Path.home() / ".cache" / "voxgate"
                        / "bench-parakeet")
    parser.add_argument("--out", type=Path, default=RESULTS / "parakeet.json")
    parser.add_argument("--long", action="store_true",
                        help="only the long-input memory figures (mid model), to "
                             "bench/results/parakeet_long.json")
    args = parser.parse_args()
    providers = args.providers.split(",")
    if args.long:
        rows = long_inputs(build(MID, args.models / "mid"), providers)
        out = args.out.with_name("parakeet_long.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"machine": {"platform": platform.platform(),
                                               "providers": providers}, "rows": rows},
                                  indent=2))
        print("\n| input | whole-input limit | windows | peak above loaded model | "
              "input itself | time | RTFx |\n|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['audio_s']:.0f} s | {r['max_whole_s']:.0f} s | {r['windows']} | "
                  f"{r['peak_above_loaded_mb']:.0f} MB | {r['input_mb']:.0f} MB | "
                  f"{r['seconds']:.1f} s | {r['rtfx']:.0f} |")
        print(f"\nwrote {out}")
        return
    sizes = [int(s) for s in args.batch_sizes.split(",")]

    inputs = load_speech_inputs()
    if not inputs:
        sys.exit("needs Debian's pocketsphinx-testdata (the LibriVox clips)")
    audio_s = sum(a.size for a in inputs) / SAMPLE_RATE
    dirs = {kind: build(spec, args.models / kind) for kind, spec in TINY.items()}
    # The test models emit a token on most steps; real Parakeet on read speech emits about
    # 0.3 tokens per 80 ms frame, which this blank-biased variant reproduces.
    dirs["tdt_sparse"] = build(replace(TINY["tdt"], blank_bias=0.5), args.models / "tdt_sparse")
    kinds = {"tdt": "tdt", "tdt_sparse": "tdt", "rnnt": "rnnt", "ctc": "ctc"}
    report: dict[str, Any] = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "python": platform.python_version(), "providers": providers},
        "inputs": {"count": len(inputs), "audio_s": round(audio_s, 2)},
        "decoding_loop": {}, "end_to_end": {}, "encoder_ms_per_audio_s": {},
    }
    for name in ("tdt", "tdt_sparse", "rnnt"):
        report["decoding_loop"][name] = decoding_loop(kinds[name], dirs[name], inputs, audio_s,
                                                      args.repeat, providers)
    for name in ("tdt", "tdt_sparse", "rnnt", "ctc"):
        report["end_to_end"][name] = end_to_end(kinds[name], dirs[name], inputs, audio_s,
                                                args.repeat, providers)
    report["encoder_ms_per_audio_s"]["tiny"] = encoder_scaling(dirs["tdt"], inputs, sizes,
                                                               args.repeat, providers)
    if args.mid:
        mid = build(MID, args.models / "mid")
        report["encoder_ms_per_audio_s"]["mid"] = encoder_scaling(mid, inputs, sizes,
                                                                  max(args.repeat // 2, 1),
                                                                  providers)
        report["end_to_end"]["mid_tdt"] = end_to_end("tdt", mid, inputs, audio_s,
                                                     max(args.repeat // 2, 1), providers)
    report["loop_overhead"] = loop_overhead(args.repeat)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print_tables(report)
    print(f"\nwrote {args.out}")


def print_tables(report: dict[str, Any]) -> None:
    print(f"{report['inputs']['count']} inputs, {report['inputs']['audio_s']} s of speech, "
          f"providers {report['machine']['providers']}\n")
    print("| decoding loop | " + " | ".join(report["decoding_loop"]["tdt"]["ms_per_audio_s"])
          + " |")
    print("|---" * (1 + len(report["decoding_loop"]["tdt"]["ms_per_audio_s"])) + "|")
    for kind, row in report["decoding_loop"].items():
        cells = [f"{v:.2f} ms/s" + (f" ({row['speedup_vs_onnx_asr'][k]:.2f}x)"
                                    if k in row["speedup_vs_onnx_asr"] else "")
                 for k, v in row["ms_per_audio_s"].items()]
        print(f"| {kind} ({row['tokens']} tokens) | " + " | ".join(cells) + " |")
        print(f"| {kind} decoder-joint calls | " + " | ".join(
            str(row["joint_calls"][k]) for k in row["ms_per_audio_s"]) + " |")
    print("\n| end to end | voxgate RTFx | onnx-asr RTFx | speed-up | same tokens |\n"
          "|---|---|---|---|---|")
    for kind, row in report["end_to_end"].items():
        print(f"| {kind} | {row['voxgate_rtfx']:.0f} | {row['onnx_asr_rtfx']:.0f} | "
              f"{row['speedup']:.2f}x | {row['inputs_with_equal_tokens']} |")
    sizes = next(iter(report["encoder_ms_per_audio_s"].values()))
    print("\n| encoder ms per audio s | " + " | ".join(f"batch {s}" for s in sizes) + " |")
    print("|---" * (1 + len(sizes)) + "|")
    for name, row in report["encoder_ms_per_audio_s"].items():
        print(f"| {name} | " + " | ".join(f"{v:.2f}" for v in row.values()) + " |")
    print("\nloop overhead (numpy joint): " + ", ".join(
        f"{k} {v:.1f}" for k, v in report["loop_overhead"].items()))


if __name__ == "__main__":
    main()

"""How long are the pauses inside one spoken sentence, as the agent's VAD sees them?

The agent's end-of-turn silence (``VOXGATE_AGENT__END_OF_TURN_MS``) must be longer than the
pauses a speaker makes inside a turn, or the agent answers half a sentence; the ASR's endpoint
(``__ASR_ENDPOINTING_MS``, where the speculative reply starts) should be too, or the reply is
started and dropped for nothing. This runs Silero VAD (the live streams' model, threshold 0.5,
silence below 0.35, 32 ms frames) over every real recording of Debian's pocketsphinx-testdata
(5 LibriVox sentences, 5 "cards" utterances, 3 short commands), each one user turn, and reports
the longest pause between its first and last speech frame, and the share of turns a given
silence limit would cut early.

    python bench/agent_pauses.py      # writes bench/results/agent_pauses.json
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from voxgate.audio import SAMPLE_RATE, decode_audio, pcm16_to_float32
from voxgate.config import Settings
from voxgate.engines.manager import ModelManager

DATA = Path("/usr/share/pocketsphinx/test/data")
RESULTS = Path(__file__).resolve().parent / "results"
THRESHOLD, SILENCE = 0.5, 0.35  # the Endpointer's hysteresis
LIMITS_S = (0.25, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0)


def recordings() -> list[tuple[str, np.ndarray]]:
    out = [(p.name, decode_audio(p)) for p in sorted((DATA / "librivox").glob("*.wav"))]
    out += [(p.name, decode_audio(p)) for p in sorted((DATA / "cards").glob("*.wav"))]
    out += [(p.name, pcm16_to_float32(p.read_bytes())) for p in sorted(DATA.glob("*.raw"))]
    return out


def longest_pause(probs: np.ndarray, frame: int) -> float:
    speech = np.flatnonzero(probs >= THRESHOLD)
    longest = run = 0
    for p in probs[speech[0]:speech[-1] + 1] if speech.size else ():
        if p < SILENCE:
            run += 1
            longest = max(longest, run)
        elif p >= THRESHOLD:
            run = 0
    return longest * frame / SAMPLE_RATE


def main() -> None:
    vad = ModelManager(Settings(_env_file=None, offline=True)).vad()
    pauses = {}
    for name, audio in recordings():
        stream = vad.stream()
        pauses[name] = round(longest_pause(stream.accept(audio), stream.frame_samples), 3)
    values = list(pauses.values())
    cut = {f"{limit:g}": round(sum(v >= limit for v in values) / len(values), 3)
           for limit in LIMITS_S}
    result = {"turns": len(values), "longest_pause_s": pauses,
              "max_s": max(values), "cut_early_share": cut}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "agent_pauses.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"{len(values)} turns; longest pause inside a turn: {max(values):.3f} s")
    print("| silence limit (s) | " + " | ".join(cut) + " |")
    print("|---|" + "---|" * len(cut))
    print("| turns cut early | " + " | ".join(f"{v:.0%}" for v in cut.values()) + " |")


if __name__ == "__main__":
    main()

"""Peak memory of decoding a 3-hour 48 kHz stereo AAC: voxgate vs faster-whisper's decoder.

The file is made cheaply: 10 s of real speech (LibriVox clips) encoded once as 48 kHz stereo
AAC in an ADTS stream (no global header), then its frames repeated up to ``--hours``. Each decoder runs in
its own subprocess and reports its peak RSS and wall time:

- ``voxgate-blocks``: ``iter_audio_blocks`` consumed block by block (what streaming users do);
- ``voxgate``: ``decode_audio`` to one 16 kHz float32 array (what the batch path does);
- ``faster-whisper``: ``faster_whisper.decode_audio`` (PyAV too, collects then concatenates).

For scale: 3 h at the original rate (48 kHz x 2 channels, float32) is 4.1 GB; the 16 kHz mono
float32 result is 0.69 GB.

    python bench/decode_memory.py               # 3 hours
    python bench/decode_memory.py --hours 0.5
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")


def make_aac(path: Path, hours: float) -> float:
    import numpy as np

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from media import encode

    from voxgate.audio import decode_audio

    speech = np.concatenate([decode_audio(p) for p in sorted(LIBRIVOX.glob("*.wav"))])[:160_000]
    piece = encode(speech, 16_000, path.with_suffix(".piece.aac"), "adts", "aac",
                   "fltp", out_rate=48_000, channels=2).read_bytes()
    copies = int(hours * 3600 / 10)
    with path.open("wb") as out:
        for _ in range(copies):
            out.write(piece)
    return copies * 10.0


def child(kind: str, path: str) -> None:
    started = time.perf_counter()
    samples = 0
    if kind == "voxgate-blocks":
        from voxgate.audio import iter_audio_blocks

        for block in iter_audio_blocks(path):
            samples += block.size
    elif kind == "voxgate":
        from voxgate.audio import decode_audio

        samples = decode_audio(path).size
    else:
        from faster_whisper import decode_audio as fw_decode

        samples = fw_decode(path, sampling_rate=16_000).size
    print("RESULT " + json.dumps({
        "seconds": time.perf_counter() - started,
        "decoded_s": samples / 16_000,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, default=3.0)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.path)
        return
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "long.aac"
        seconds = make_aac(path, args.hours)
        for kind in ("voxgate-blocks", "voxgate", "faster-whisper"):
            done = subprocess.run([sys.executable, __file__, "--child", kind, "--path", str(path)],
                                  capture_output=True, text=True, check=False)
            line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                rows[kind] = {"error": done.stderr.strip().splitlines()[-1:]}
                print(f"{kind:15} failed: {rows[kind]['error']}", flush=True)
                continue
            rows[kind] = json.loads(line[len("RESULT "):])
            print(f"{kind:15} {rows[kind]['seconds']:7.1f} s  peak RSS "
                  f"{rows[kind]['peak_rss_mb']:7.0f} MB  decoded {rows[kind]['decoded_s']:.0f} s",
                  flush=True)
    report = {"benchmark": "decode_memory", "audio_seconds": seconds,
              "original_rate_pcm_mb": seconds * 48_000 * 2 * 4 / 2**20,
              "result_pcm_mb": seconds * 16_000 * 4 / 2**20, "results": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "decode_memory.json").write_text(json.dumps(report, indent=2))
    print(f"original-rate PCM would be {report['original_rate_pcm_mb']:.0f} MB; "
          f"16 kHz result {report['result_pcm_mb']:.0f} MB")


if __name__ == "__main__":
    main()

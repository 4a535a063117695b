"""Build real media files for tests with PyAV (FFmpeg encoders), from real speech.

Kept apart from ``conftest`` so test modules import only what they use:
``from media import encode, FORMATS``.
"""

from __future__ import annotations

import io
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

# name -> (file suffix, container format, audio codec, sample format, rate used, video?)
FORMATS: dict[str, tuple[str, str, str, str, int, bool]] = {
    "wav": (".wav", "wav", "pcm_s16le", "s16", 44_100, False),
    "flac": (".flac", "flac", "flac", "s16", 48_000, False),
    "mp3": (".mp3", "mp3", "libmp3lame", "fltp", 44_100, False),
    "m4a": (".m4a", "ipod", "aac", "fltp", 44_100, False),
    "aac": (".aac", "adts", "aac", "fltp", 22_050, False),
    "ogg-opus": (".opus", "ogg", "libopus", "flt", 48_000, False),
    "webm": (".webm", "webm", "libopus", "flt", 48_000, False),
    "mp4-video": (".mp4", "mp4", "aac", "fltp", 48_000, True),
    "mkv-video": (".mkv", "matroska", "libopus", "flt", 48_000, True),
}


def _planar(fmt: str) -> bool:
    return fmt.endswith("p")


def encode(audio: np.ndarray, rate: int, path: Path, container_format: str, codec: str,
           sample_format: str = "fltp", out_rate: int | None = None, channels: int = 1,
           video: bool = False) -> Path:
    """Encode float32 mono ``audio`` at ``rate`` into ``path`` (optionally with a video track).

    ``channels`` > 1 writes the same signal into every channel, scaled per channel so a
    downmix that drops channels would be audible in the result.
    """
    out_rate = out_rate or rate
    if out_rate != rate:
        import soxr

        audio = soxr.resample(audio, rate, out_rate).astype(np.float32)
    layout = {1: "mono", 2: "stereo", 6: "5.1"}[channels]
    with av.open(str(path), "w", format=container_format) as out:
        stream = out.add_stream(codec, rate=out_rate, layout=layout)
        vstream = None
        if video:
            vstream = out.add_stream("mpeg4", rate=5)
            vstream.width, vstream.height, vstream.pix_fmt = 64, 48, "yuv420p"
        frame_size = stream.codec_context.frame_size or 1024
        data = np.clip(audio, -1, 1)
        if sample_format.startswith("s16"):
            data = (data * 32767).astype(np.int16)
        else:
            data = data.astype(np.float32)
        multi = np.stack([data] * channels)  # (channels, n)
        pts = 0
        for start in range(0, multi.shape[1], frame_size):
            block = multi[:, start:start + frame_size]
            arr = block if _planar(sample_format) else block.T.reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(arr), format=sample_format,
                                               layout=layout)
            frame.sample_rate = out_rate
            frame.pts = pts
            frame.time_base = Fraction(1, out_rate)
            pts += block.shape[1]
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
        if vstream is not None:
            seconds = multi.shape[1] / out_rate
            for i in range(max(int(seconds * 5), 1)):
                image = np.full((48, 64, 3), (i * 7) % 255, np.uint8)
                vframe = av.VideoFrame.from_ndarray(image, format="rgb24")
                vframe.pts = i
                for packet in vstream.encode(vframe):
                    out.mux(packet)
            for packet in vstream.encode(None):
                out.mux(packet)
    return path


def encode_as(audio: np.ndarray, rate: int, directory: Path, name: str, kind: str) -> Path:
    """Encode into one of :data:`FORMATS` under ``directory``."""
    suffix, container_format, codec, sample_format, out_rate, video = FORMATS[kind]
    return encode(audio, rate, directory / f"{name}{suffix}", container_format, codec,
                  sample_format, out_rate=out_rate, video=video)


def sparse_silent_wav(path: Path, seconds: float, rate: int = 16_000) -> Path:
    """A WAV of digital silence created instantly: header + a sparse (zero-filled) data area."""
    import struct

    size = int(seconds * rate) * 2
    header = (b"RIFF" + struct.pack("<I", 36 + size) + b"WAVE" + b"fmt "
              + struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
              + b"data" + struct.pack("<I", size))
    with path.open("wb") as handle:
        handle.write(header)
        handle.truncate(len(header) + size)
    return path


def silence_flac(seconds: float, rate: int = 8000, declare_duration: bool = True) -> bytes:
    """A tiny FLAC of ``seconds`` of digital silence (6 h at 8 kHz is ~55 kB).

    FLAC blocks of 65535 samples of silence cost a few bytes each, so hours fit in a small
    upload: the shape of a decompression bomb. ``declare_duration=False`` zeroes the total
    sample count in STREAMINFO, so a decoder learns the length only by decoding.
    """
    buf = io.BytesIO()
    chunk = np.zeros((1, rate * 10), np.int16)
    with av.open(buf, "w", format="flac") as out:
        stream = out.add_stream("flac", rate=rate, layout="mono")
        stream.codec_context.format = "s16"
        stream.options = {"frame_size": "65535"}
        pts = 0
        for _ in range(int(seconds // 10)):
            frame = av.AudioFrame.from_ndarray(chunk, format="s16", layout="mono")
            frame.sample_rate, frame.pts = rate, pts
            pts += chunk.shape[1]
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    data = bytearray(buf.getvalue())
    if not declare_duration:  # STREAMINFO starts at byte 8; total samples: 36 bits from byte 21
        data[8 + 13] &= 0xF0
        data[8 + 14:8 + 18] = bytes(4)
    return bytes(data)


# Six Spanish sentences (~25 s through espeak-ng): enough speech that no single word decides a
# detection / translation test. The LibriVox clips are English, so a real synthesiser reads it.
SPANISH = ("Buenos días. Hoy hace muy buen tiempo y vamos a caminar por el parque con mis amigos. "
           "Después vamos a comer en un restaurante cerca del río. "
           "Mi hermana trabaja en un hospital grande en el centro de la ciudad. "
           "Los niños juegan en el jardín con su perro. "
           "Mañana por la mañana tengo que ir a la escuela en autobús. "
           "Me gusta leer libros y escuchar música por la noche.")
# One English word for a concept of each sentence: a translation must carry most of them.
SPANISH_CONCEPTS = ("morning", "park", "friends", "restaurant", "river", "hospital", "children",
                    "dog", "music", "night")
_SPANISH_FUNCTION_WORDS = frozenset("el la los las de del que con por en un una y mi su muy "
                                    "es vamos hoy".split())


def spanish_speech(path: Path) -> Path:
    """:data:`SPANISH` read by espeak-ng into ``path`` (WAV); skips the test without it."""
    import shutil
    import subprocess

    import pytest

    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (scripts/setup.sh installs it)")
    subprocess.run(["espeak-ng", "-v", "es", "-w", str(path), SPANISH], check=True)
    return path


def words_of(text: str) -> list[str]:
    """Lower-cased words (letters only), for word-level checks in any language."""
    import re

    return re.findall(r"[^\W\d_]+", text.lower())


def check_english_translation_of_spanish(text: str) -> None:
    """What a translation of :data:`SPANISH` guarantees: English words (not the Spanish
    transcript) that carry at least 7 of its 10 concepts."""
    words = words_of(text)
    assert len(words) >= 30, text
    spanish_share = sum(w in _SPANISH_FUNCTION_WORDS for w in words) / len(words)
    assert spanish_share <= 0.05, text
    carried = [c for c in SPANISH_CONCEPTS if any(w.startswith(c) for w in words)]
    assert len(carried) >= 7, (carried, text)


def festival_speech(text: str, path: Path) -> np.ndarray:
    """``text`` read by Festival's US English voice cmu_us_slt_arctic_hts into ``path`` (WAV);
    returns it as 16 kHz float32. A user voice that is not the agent's (Piper joe). Skips the
    test when Festival or the voice is not installed."""
    import shutil
    import subprocess

    import pytest

    from voxgate.audio import decode_audio

    if shutil.which("text2wave") is None:
        pytest.skip("Festival (text2wave) is not installed (scripts/setup.sh installs it)")
    if not Path("/usr/share/festival/voices/us/cmu_us_slt_arctic_hts").is_dir():
        pytest.skip("Festival voice cmu_us_slt_arctic_hts is not installed")
    subprocess.run(["text2wave", "-eval", "(voice_cmu_us_slt_arctic_hts)", "-o", str(path)],
                   input=text.encode(), check=True, capture_output=True)
    return decode_audio(path)

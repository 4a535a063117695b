"""audio.py: decoding real speech from every common container, conversion, resampling, memory."""

from __future__ import annotations

import io
import subprocess
import tracemalloc
import wave
from pathlib import Path

import numpy as np
import pytest
import soxr
from media import FORMATS, encode, encode_as, silence_flac

from voxgate.audio import (
    StreamResampler,
    decode_audio,
    encode_wav,
    f32le_to_float32,
    float32_to_pcm16,
    g711_to_float32,
    iter_audio_blocks,
    looks_like_audio_file,
    pcm16_to_float32,
    probe_duration,
    resample,
)
from voxgate.errors import AudioError, AudioTooLongError


@pytest.fixture(scope="module")
def speech(librivox) -> np.ndarray:
    """3 s of real speech (LibriVox), float32 16 kHz."""
    return librivox[1].audio


def _aligned_similarity(reference: np.ndarray, decoded: np.ndarray, max_lag: int = 4000) -> float:
    """Correlation after finding the codec delay (encoders add priming samples)."""
    n = reference.size
    best = -1.0
    spectrum = np.fft.rfft(decoded[: n + max_lag], 2 * (n + max_lag))
    xcorr = np.fft.irfft(spectrum * np.conj(np.fft.rfft(reference, 2 * (n + max_lag))))
    lag = int(np.argmax(xcorr[: max_lag + 1]))
    seg = decoded[lag: lag + n]
    m = min(seg.size, n)
    best = float(np.corrcoef(reference[:m], seg[:m])[0, 1])
    return best


@pytest.mark.parametrize("kind", sorted(FORMATS))
def test_decodes_every_common_container(kind: str, speech: np.ndarray, tmp_path: Path) -> None:
    path = encode_as(speech, 16_000, tmp_path, "clip", kind)
    audio = decode_audio(path)
    assert audio.dtype == np.float32 and audio.ndim == 1
    # same length up to codec padding, same waveform up to lossy coding
    assert abs(audio.size - speech.size) < 0.1 * 16_000, (audio.size, speech.size)
    assert _aligned_similarity(speech, audio) > 0.95
    assert probe_duration(path) == pytest.approx(speech.size / 16_000, abs=0.15)


def test_decoded_containers_transcribe_the_same(speech, librivox, manager, tmp_path) -> None:
    """Real ASR on the lossy formats and the video containers gives the clip's text."""
    from conftest import wer

    from voxgate.engines.base import AsrOptions

    asr = manager.asr("whisper-base")
    kinds = ["mp3", "m4a", "ogg-opus", "webm", "mp4-video", "mkv-video"]
    chunks = [decode_audio(encode_as(speech, 16_000, tmp_path, k, k)) for k in kinds]
    results = asr.transcribe_batch(chunks, AsrOptions(language="en", beam_size=1))
    for kind, result in zip(kinds, results):
        assert wer(librivox[1].text, result.text) <= 0.35, (kind, result.text)


def test_six_channels_downmix(speech: np.ndarray, tmp_path: Path) -> None:
    path = encode(speech, 16_000, tmp_path / "surround.flac", "flac", "flac", "s16",
                  out_rate=48_000, channels=6)
    with __import__("av").open(str(path)) as container:
        assert container.streams.audio[0].codec_context.channels == 6
    audio = decode_audio(path)
    assert abs(audio.size - speech.size) <= 2
    assert _aligned_similarity(speech, audio) > 0.99


@pytest.mark.parametrize("rate", [8_000, 22_050, 44_100, 48_000])
def test_any_rate_becomes_16k(rate: int, speech: np.ndarray, tmp_path: Path) -> None:
    path = encode(speech, 16_000, tmp_path / f"r{rate}.wav", "wav", "pcm_s16le", "s16",
                  out_rate=rate)
    audio = decode_audio(path)
    assert abs(audio.size - speech.size) <= 2
    # 8 kHz loses everything above 4 kHz; the rest of the waveform must survive
    assert _aligned_similarity(speech, audio) > (0.9 if rate == 8_000 else 0.99)


def test_stdin_bytes_and_file_objects(speech: np.ndarray, tmp_path: Path) -> None:
    data = encode_as(speech, 16_000, tmp_path, "clip", "mp3").read_bytes()
    from_bytes = decode_audio(data)
    from_stream = decode_audio(io.BytesIO(data))
    np.testing.assert_array_equal(from_bytes, from_stream)
    assert abs(from_bytes.size - speech.size) < 1600


def test_pcm16_round_trip_is_exact() -> None:
    pcm = np.arange(-32768, 32768, 7, dtype="<i2").tobytes()
    audio = pcm16_to_float32(pcm)
    assert audio.dtype == np.float32 and audio.min() >= -1.0 and audio.max() < 1.0
    assert float32_to_pcm16(audio) == pcm


def test_float32_to_pcm16_clips_and_rounds() -> None:
    pcm = np.frombuffer(float32_to_pcm16(np.array([2.0, -2.0, 0.5, 1e-5], np.float32)), "<i2")
    assert pcm.tolist() == [32767, -32768, 16384, 0]


@pytest.mark.parametrize("law, sox_encoding", [("mulaw", "u-law"), ("alaw", "a-law")])
def test_g711_decodes_exactly_as_sox(law: str, sox_encoding: str, librivox, tmp_path) -> None:
    """Every one of the 256 codes, and real speech sox encoded at 8 kHz, decode to the same
    16-bit values sox itself decodes them to (G.711 is a fixed table: exact, not close)."""
    codes = bytes(range(256))
    speech = subprocess.run(["sox", str(librivox[1].path), "-r", "8000", "-e", sox_encoding,
                             "-t", "raw", "-"], capture_output=True, check=True).stdout
    for data in (codes, speech):
        (tmp_path / "in.raw").write_bytes(data)
        by_sox = subprocess.run(["sox", "-t", "raw", "-r", "8000", "-e", sox_encoding, "-b", "8",
                                 "-c", "1", str(tmp_path / "in.raw"), "-t", "raw", "-e", "signed",
                                 "-b", "16", "-"], capture_output=True, check=True).stdout
        ours = np.round(g711_to_float32(data, law) * 32768).astype("<i2")
        assert np.array_equal(ours, np.frombuffer(by_sox, "<i2"))
    with pytest.raises(AudioError, match="G.711"):
        g711_to_float32(codes, "ulaw")


@pytest.mark.parametrize("kind", sorted(FORMATS))
def test_audio_files_are_told_from_raw_samples(kind: str, speech, tmp_path: Path) -> None:
    path = encode_as(speech, 16_000, tmp_path, "clip", kind)
    assert looks_like_audio_file(path.read_bytes())
    pcm = float32_to_pcm16(speech)
    assert not looks_like_audio_file(pcm)
    # raw samples that happen to start with 0xFFFF (-1, -1): not an MP3 frame
    assert not looks_like_audio_file(b"\xff\xff\xff\xff" + pcm)


def test_odd_length_pcm_is_an_error() -> None:
    with pytest.raises(AudioError, match="even number of bytes"):
        pcm16_to_float32(b"\x00\x01\x02")
    with pytest.raises(AudioError, match="multiple of 4"):
        f32le_to_float32(b"\x00" * 6)


def test_wav_encode_is_a_valid_wav(speech: np.ndarray, tmp_path: Path) -> None:
    data = encode_wav(speech)
    with wave.open(io.BytesIO(data)) as reader:
        assert (reader.getnchannels(), reader.getsampwidth(), reader.getframerate()) == (1, 2, 16000)
        assert reader.getnframes() == speech.size
        frames = reader.readframes(reader.getnframes())
    np.testing.assert_allclose(pcm16_to_float32(frames), speech, atol=1 / 32768)
    path = tmp_path / "x.wav"
    path.write_bytes(encode_wav(speech, 22_050))
    info = subprocess.run(["soxi", "-r", str(path)], capture_output=True, text=True, check=False)
    if info.returncode == 0:  # sox reads it too (sox is in scripts/setup.sh)
        assert info.stdout.strip() == "22050"
    np.testing.assert_allclose(decode_audio(data), np.clip(speech, -1, 32767 / 32768),
                               atol=1 / 32768)


@pytest.mark.parametrize("in_rate,chunk", [(48_000, 960), (44_100, 4410), (8_000, 333)])
def test_stream_resampler_matches_one_shot(in_rate: int, chunk: int, speech) -> None:
    """Chunk-by-chunk output equals resampling the whole signal: no clicks, no drift."""
    signal = resample(speech, 16_000, in_rate)
    whole = soxr.resample(signal, in_rate, 16_000, quality="HQ")
    stream = StreamResampler(in_rate)
    pieces = [stream.process(signal[i:i + chunk]) for i in range(0, signal.size, chunk)]
    pieces.append(stream.flush())
    streamed = np.concatenate(pieces)
    assert streamed.size == whole.size  # no drift in length
    np.testing.assert_allclose(streamed, whole, atol=1e-4)
    # the naive way (each chunk on its own) really differs at the borders: the test can fail
    naive = np.concatenate([soxr.resample(signal[i:i + chunk], in_rate, 16_000)
                            for i in range(0, signal.size, chunk)])
    m = min(naive.size, whole.size)
    assert np.abs(naive[:m] - whole[:m]).max() > 1e-3


def test_stream_resampler_downmixes_interleaved_stereo(speech) -> None:
    stereo = np.stack([speech, speech * 0.5], axis=1).reshape(-1)
    stream = StreamResampler(16_000, 16_000, channels=2)
    out = np.concatenate([stream.process(stereo[i:i + 1000]) for i in range(0, stereo.size, 1000)]
                         + [stream.flush()])
    np.testing.assert_allclose(out, speech * 0.75, atol=1e-6)
    with pytest.raises(AudioError):
        StreamResampler(0)


def test_blocks_are_bounded_and_cover_the_file(speech, tmp_path) -> None:
    long = np.tile(speech, 25)  # 75 s
    path = encode(long, 16_000, tmp_path / "long.flac", "flac", "flac", "s16", out_rate=48_000)
    blocks = list(iter_audio_blocks(path, block_seconds=10))
    assert len(blocks) >= 7
    assert max(b.size for b in blocks) < 11 * 16_000
    total = np.concatenate(blocks)
    assert abs(total.size - long.size) <= 2
    np.testing.assert_allclose(total, decode_audio(path), atol=1e-6)


def test_long_file_decodes_in_bounded_memory(tmp_path: Path) -> None:
    """10 min of 48 kHz stereo FLAC: decoding never holds the PCM at the original rate.

    The whole file at 48 kHz stereo float32 is 230 MB; the 16 kHz mono result is 38 MB. Peak
    traced allocations must stay near one copy of the result (decode_audio) and near one block
    when the caller consumes blocks (iter_audio_blocks), independent of the file's length.
    """
    seconds = 600
    path = tmp_path / "long.flac"
    t = np.arange(48_000 * 10) / 48_000  # 10 s tone+noise pattern, encoded 60 times
    rng = np.random.default_rng(0)
    pattern = (0.1 * np.sin(2 * np.pi * 440 * t) + 0.01 * rng.standard_normal(t.size))
    pattern = (pattern * 32767).astype(np.int16)
    import av

    with av.open(str(path), "w", format="flac") as out:
        stream = out.add_stream("flac", rate=48_000, layout="stereo")
        frame = av.AudioFrame.from_ndarray(np.repeat(pattern, 2).reshape(1, -1), format="s16",
                                           layout="stereo")
        frame.sample_rate = 48_000
        for i in range(seconds // 10):
            frame.pts = i * pattern.size
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)

    original_rate_bytes = seconds * 48_000 * 2 * 4
    result_bytes = seconds * 16_000 * 4

    tracemalloc.start()
    try:
        count = 0
        for block in iter_audio_blocks(path):
            count += block.size
        _, streaming_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        audio = decode_audio(path)
        _, whole_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == audio.size and abs(audio.size - seconds * 16_000) <= 2
    assert streaming_peak < 16 * 2**20, streaming_peak  # a few 30 s blocks at most
    assert whole_peak < 1.2 * result_bytes + 16 * 2**20, whole_peak
    assert whole_peak < original_rate_bytes / 4


@pytest.mark.parametrize("declared", [True, False], ids=["declared", "undeclared"])
def test_max_seconds_stops_decoding_at_the_limit(declared):
    # 6 hours of silence in ~55 kB: decoded whole it would be 1.4 GB of float32.
    bomb = silence_flac(6 * 3600, declare_duration=declared)
    assert len(bomb) < 200_000
    tracemalloc.start()
    try:
        with pytest.raises(AudioTooLongError, match="60 s") as caught:
            decode_audio(bomb, max_seconds=60)
        with pytest.raises(AudioTooLongError):
            for _ in iter_audio_blocks(bomb, max_seconds=60):
                pass
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert caught.value.limit_s == 60 and isinstance(caught.value, AudioError)
    assert peak < 32 * 2**20, peak  # the limit's worth of samples and a block, not hours
    # audio within the limit decodes whole, to the sample
    short = decode_audio(silence_flac(60, declare_duration=declared), max_seconds=60)
    assert short.size == 60 * 16_000


@pytest.mark.parametrize("make,message", [
    (lambda p: p.write_bytes(b""), "empty file"),
    (lambda p: p.write_text("hello, this is not audio\n"), "not a readable audio file"),
    (lambda p: p.write_bytes(encode_wav(np.zeros(0, np.float32))), "zero-length audio"),
    (lambda p: p.mkdir(), "is a directory"),
    (lambda p: None, "no such file"),
])
def test_bad_files_raise_audio_error(make, message: str, tmp_path: Path) -> None:
    path = tmp_path / "input.wav"
    make(path)
    with pytest.raises(AudioError, match=message):
        decode_audio(path)


def test_empty_bytes_and_garbage_bytes() -> None:
    with pytest.raises(AudioError, match="0 bytes"):
        decode_audio(b"")
    with pytest.raises(AudioError):
        decode_audio(np.random.default_rng(1).bytes(4096))


def test_truncated_mp3_yields_the_decodable_part(speech, tmp_path: Path) -> None:
    whole = encode_as(speech, 16_000, tmp_path, "whole", "mp3")
    data = whole.read_bytes()
    cut = tmp_path / "cut.mp3"
    cut.write_bytes(data[: len(data) // 2 + 7])  # mid-frame
    audio = decode_audio(cut)
    assert 0.3 * speech.size < audio.size < 0.8 * speech.size


# -- encoders (speech out) -------------------------------------------------------------------

_LOSSLESS = {"wav", "flac", "pcm"}


def _decode_any(data: bytes, fmt: str, rate: int) -> np.ndarray:
    from voxgate.audio import decode_audio as decode

    return pcm16_to_float32(data) if fmt == "pcm" else decode(data, sample_rate=rate)


@pytest.mark.parametrize("fmt", ["wav", "pcm", "flac", "mp3", "opus", "aac"])
def test_encode_whole_and_streamed_real_speech(fmt: str, speech: np.ndarray) -> None:
    from voxgate.audio import AudioEncoder, encode_audio, output_rate

    whole = encode_audio(speech, 16_000, fmt)
    encoder = AudioEncoder(fmt, 16_000)
    pieces = [encoder.encode(block) for block in np.array_split(speech, 17)] + [encoder.finish()]
    streamed = b"".join(pieces)
    rate = output_rate(fmt, 16_000)
    assert rate == encoder.sample_rate == 16_000
    assert sum(1 for p in pieces if p) > 3  # bytes come out while the stream goes on
    for data in (whole, streamed):
        audio = _decode_any(data, fmt, 16_000)
        # lossy streams carry codec priming/padding (no seekable header to trim it): < 0.15 s
        padding = 0 if fmt in _LOSSLESS else 0.15 * 16_000
        assert abs(audio.size - speech.size) <= padding, (fmt, audio.size, speech.size)
        assert _aligned_similarity(speech, audio) > (0.999 if fmt in _LOSSLESS else 0.9)
    if fmt == "wav":  # whole: exact sizes; streamed: sizes unknown, as OpenAI streams WAV
        assert whole[4:8] == (len(whole) - 8).to_bytes(4, "little")
        assert streamed[4:8] == b"\xff\xff\xff\xff" and streamed[40:44] == b"\xff\xff\xff\xff"
    if fmt == "pcm":
        assert whole == streamed == float32_to_pcm16(speech)


@pytest.mark.parametrize(("fmt", "rate", "expected"), [
    ("opus", 22_050, 24_000), ("opus", 44_100, 48_000), ("mp3", 22_050, 22_050),
    ("aac", 32_000, 32_000), ("flac", 22_050, 22_050), ("pcm", 22_050, 22_050)])
def test_output_rate_is_the_voices_where_the_codec_allows(fmt, rate, expected) -> None:
    from voxgate.audio import output_rate

    assert output_rate(fmt, rate) == expected


def test_requested_rate_is_resampled_and_bad_requests_are_errors(speech: np.ndarray) -> None:
    from voxgate.audio import AudioEncoder, check_format, encode_audio

    data = encode_audio(speech, 16_000, "pcm", out_rate=24_000)
    assert len(data) // 2 == pytest.approx(speech.size * 1.5, abs=2)
    audio = decode_audio(encode_audio(speech, 16_000, "mp3", out_rate=24_000), sample_rate=16_000)
    assert _aligned_similarity(speech, audio) > 0.9
    with pytest.raises(AudioError, match="mp3 cannot be encoded at 12345 Hz"):
        encode_audio(speech, 16_000, "mp3", out_rate=12_345)
    with pytest.raises(AudioError, match="out of range"):
        AudioEncoder("wav", 16_000, 100)
    with pytest.raises(AudioError, match="unknown audio format 'ogg'; choose one of wav"):
        check_format("ogg")
    encoder = AudioEncoder("flac", 16_000)
    encoder.encode(speech[:1600])
    encoder.finish()
    assert encoder.finish() == b""
    with pytest.raises(AudioError, match="already finished"):
        encoder.encode(speech[:1600])


@pytest.mark.parametrize("factor", [0.25, 0.5, 1.5, 2.0, 4.0])
def test_change_tempo_keeps_pitch(factor: float) -> None:
    from voxgate.audio import change_tempo

    rate = 22_050
    tone = (0.5 * np.sin(2 * np.pi * 440 * np.arange(2 * rate) / rate)).astype(np.float32)
    out = change_tempo(tone, rate, factor)
    assert out.size / tone.size == pytest.approx(1 / factor, rel=0.05)
    middle = out[out.size // 4: 3 * out.size // 4]
    peak_hz = np.argmax(np.abs(np.fft.rfft(middle))) * rate / middle.size
    assert peak_hz == pytest.approx(440, abs=5)
    with pytest.raises(AudioError, match="out of range"):
        change_tempo(tone, rate, 5.0)

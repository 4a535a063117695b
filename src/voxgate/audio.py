"""The only place audio is converted.

Inside voxgate audio is a 1-D float32 numpy array, mono, 16 kHz. Files are decoded with PyAV
(any container/codec FFmpeg knows), downmixed by libswresample at the source rate and resampled
to 16 kHz with soxr *in blocks*, so a 3-hour file never holds 3 hours of PCM at the original rate.
"""

from __future__ import annotations

import io
import logging
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np
import soxr

from .errors import AudioError, AudioTooLongError

__all__ = [
    "SAMPLE_RATE",
    "AudioSource",
    "decode_audio",
    "iter_audio_blocks",
    "probe_duration",
    "pcm16_to_float32",
    "float32_to_pcm16",
    "f32le_to_float32",
    "g711_to_float32",
    "looks_like_audio_file",
    "resample",
    "encode_wav",
    "StreamResampler",
    "AUDIO_FORMATS",
    "MEDIA_TYPES",
    "AudioEncoder",
    "change_tempo",
    "check_format",
    "decode_audio_native",
    "encode_audio",
    "iter_encoded",
    "output_rate",
]

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
AudioSource = Union[str, os.PathLike, bytes, BinaryIO]
_BLOCK_SECONDS = 30.0


def _open_container(source: AudioSource):  # -> av.container.InputContainer
    import av

    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise AudioError("empty input: 0 bytes of audio")
        handle: object = io.BytesIO(bytes(source))
        name = "<bytes>"
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        name = str(path)
        if not path.exists():
            raise AudioError(f"{name}: no such file")
        if path.is_dir():
            raise AudioError(f"{name}: is a directory, not an audio file")
        if path.stat().st_size == 0:
            raise AudioError(f"{name}: empty file (0 bytes)")
        handle = str(path)
    else:
        handle = source
        name = getattr(source, "name", "<stream>")
    try:
        container = av.open(handle, mode="r", metadata_errors="ignore")
    except av.error.FFmpegError as exc:
        raise AudioError(f"{name}: not a readable audio file ({_ffmpeg_reason(exc)})") from exc
    if not container.streams.audio:
        container.close()
        raise AudioError(f"{name}: contains no audio stream")
    if container.streams.audio[0].codec_context is None:  # e.g. a WAV header naming no codec
        container.close()
        raise AudioError(f"{name}: its audio stream has no decoder (unknown or corrupt codec "
                         "header)")
    return container, name


def _ffmpeg_reason(exc: Exception) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def iter_audio_blocks(
    source: AudioSource, sample_rate: int = SAMPLE_RATE, block_seconds: float = _BLOCK_SECONDS,
    max_seconds: float | None = None,
) -> Iterator[np.ndarray]:
    """Yield float32 mono blocks of about ``block_seconds`` at ``sample_rate``.

    Memory stays bounded by one block at the source rate, whatever the file's length. A file
    truncated mid-stream yields what was decodable and logs a warning rather than failing.
    ``max_seconds``: :class:`AudioTooLongError` as soon as the decoded audio passes it (or at
    once when the container declares a longer duration).
    """
    container, name = _open_container(source)
    try:
        yield from _decode_blocks(container, name, sample_rate, block_seconds, max_seconds)
    finally:
        container.close()


def _too_long(name: str, max_seconds: float) -> AudioTooLongError:
    return AudioTooLongError(f"{name}: longer than the {max_seconds:g} s of audio allowed",
                             max_seconds)


def _decode_blocks(container, name: str, sample_rate: int,  # av container
                   block_seconds: float, max_seconds: float | None = None,
                   ) -> Iterator[np.ndarray]:
    import av

    limit = None
    if max_seconds is not None:
        declared = _declared_seconds(container)
        if declared is not None and declared > max_seconds + 1.0:  # + codec padding
            raise _too_long(name, max_seconds)
        limit = int(max_seconds * sample_rate)
    produced = 0

    stream = container.streams.audio[0]
    stream.thread_type = "AUTO"
    # libswresample downmixes (any layout -> mono) at the source rate, in frames of ~0.5 s so
    # the per-frame Python and soxr overhead stays small (codec frames are ~20 ms); soxr then
    # changes the rate.
    source_rate = stream.codec_context.sample_rate or 0
    to_mono = av.AudioResampler(format="flt", layout="mono",
                                frame_size=source_rate // 2 if source_rate else None)
    converter: _RateConverter | None = None
    decoded_any = False
    pending: list[np.ndarray] = []
    pending_len = 0
    block_len = max(int(block_seconds * sample_rate), 1)

    def take(frames: list) -> Iterator[np.ndarray]:  # av frames
        nonlocal converter, pending, pending_len, produced
        for mono in frames:
            if converter is None:
                converter = _RateConverter(mono.sample_rate, sample_rate)
            out = converter.process(mono.to_ndarray().reshape(-1))
            produced += out.size
            if limit is not None and produced > limit:  # stop decoding: never hold the rest
                raise _too_long(name, max_seconds)
            if out.size:
                pending.append(out)
                pending_len += out.size
            if pending_len >= block_len:
                yield np.concatenate(pending)
                pending, pending_len = [], 0

    try:
        for frame in container.decode(stream):
            decoded_any = True
            yield from take(to_mono.resample(frame))
    except av.error.FFmpegError as exc:
        if not decoded_any:
            raise AudioError(f"{name}: cannot decode audio ({_ffmpeg_reason(exc)})") from exc
        logger.warning("%s: decoding stopped early (%s); using the audio before it",
                       name, _ffmpeg_reason(exc))
    yield from take(to_mono.resample(None))  # what the downmixer still holds
    if converter is not None:
        pending.append(converter.flush())
    tail = np.concatenate(pending) if pending else np.zeros(0, np.float32)
    if tail.size:
        yield tail.astype(np.float32, copy=False)


class _RateConverter:
    """soxr stream when the rates differ, a plain copy when they match."""

    def __init__(self, in_rate: int, out_rate: int) -> None:
        self._stream = None if in_rate == out_rate else _make_stream(in_rate, out_rate)

    def process(self, samples: np.ndarray) -> np.ndarray:
        samples = samples.astype(np.float32, copy=False)
        if self._stream is None:
            return samples.copy()  # the frame's buffer is reused by the decoder
        return self._stream.resample_chunk(samples)

    def flush(self) -> np.ndarray:
        if self._stream is None:
            return np.zeros(0, np.float32)
        return self._stream.resample_chunk(np.zeros(0, np.float32), last=True)


def _make_stream(in_rate: int, out_rate: int) -> soxr.ResampleStream:
    return soxr.ResampleStream(in_rate, out_rate, 1, dtype="float32", quality="HQ")


def decode_audio(source: AudioSource, sample_rate: int = SAMPLE_RATE,
                 max_seconds: float | None = None) -> np.ndarray:
    """Decode a whole file/bytes/stream to float32 mono at ``sample_rate``.

    Raises :class:`AudioError` with a one-line reason for missing, empty, non-audio or
    undecodable input; zero decoded samples is also an error. The output buffer is sized from
    the container's declared duration, so peak memory is about one copy of the 16 kHz result
    plus one block, not the whole file at its original rate (nor two copies of the result).
    ``max_seconds``: :class:`AudioTooLongError` once the decoded audio passes it; decoding
    stops there, so a tiny file of days of silence never costs more than the limit.
    """
    container, name = _open_container(source)
    try:
        expected = _expected_samples(container, sample_rate)
        if max_seconds is not None:
            expected = min(expected, int(max_seconds * sample_rate) + sample_rate)
        out = _Accumulator(expected)
        for block in _decode_blocks(container, name, sample_rate, _BLOCK_SECONDS, max_seconds):
            out.add(block)
    finally:
        container.close()
    audio = out.result()
    if audio.size == 0:
        raise AudioError(f"{name}: contains no audio samples (zero-length audio)")
    return np.clip(audio, -1.0, 1.0, out=audio)


def _declared_seconds(container) -> float | None:  # av container
    """The duration the container declares (None when it declares none)."""
    stream = container.streams.audio[0]
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000
    return None


def _expected_samples(container, sample_rate: int) -> int:  # av container
    seconds = _declared_seconds(container)
    if not seconds or seconds < 0 or seconds > 48 * 3600:  # unknown or implausible: grow
        return 0
    return int(seconds * sample_rate) + sample_rate  # + 1 s for codec padding


class _Accumulator:
    """A growable float32 buffer: preallocated from an estimate, grown by 1.5x if it was low."""

    def __init__(self, capacity: int) -> None:
        self._data = np.empty(max(capacity, 0), np.float32)
        self._size = 0

    def add(self, block: np.ndarray) -> None:
        end = self._size + block.size
        if end > self._data.size:
            grown = np.empty(max(end, int(self._data.size * 1.5)), np.float32)
            grown[: self._size] = self._data[: self._size]
            self._data = grown
        self._data[self._size:end] = block
        self._size = end

    def result(self) -> np.ndarray:
        if self._size == self._data.size:
            return self._data
        if self._size < self._data.size // 2:  # estimate far too high: don't keep the slack
            return self._data[: self._size].copy()
        return self._data[: self._size]


def probe_duration(source: str | os.PathLike) -> float | None:
    """Container-declared duration in seconds without decoding (None when unknown)."""
    container, _ = _open_container(source)
    try:
        return _declared_seconds(container)
    finally:
        container.close()


def pcm16_to_float32(data: bytes | bytearray | memoryview) -> np.ndarray:
    """Little-endian signed 16-bit PCM bytes -> float32 in [-1, 1)."""
    if len(data) % 2:
        raise AudioError(f"PCM16 audio must have an even number of bytes, got {len(data)}")
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0


def f32le_to_float32(data: bytes | bytearray | memoryview) -> np.ndarray:
    """Little-endian float32 bytes -> float32 array (copy)."""
    if len(data) % 4:
        raise AudioError(f"float32 audio must be a multiple of 4 bytes, got {len(data)}")
    return np.frombuffer(data, dtype="<f4").astype(np.float32)


def _g711_tables() -> dict[str, np.ndarray]:
    """The 256 linear values of each G.711 law (ITU-T G.711, the tables sox and SpanDSP use)."""
    codes = np.arange(256, dtype=np.int32)
    u = ~codes & 0xFF
    exponent, mantissa = (u >> 4) & 7, u & 0x0F
    mu = (((mantissa << 3) + 0x84) << exponent) - 0x84
    mu = np.where(u & 0x80, -mu, mu)
    a = codes ^ 0x55
    exponent, mantissa = (a >> 4) & 7, a & 0x0F
    linear = np.where(exponent == 0, (mantissa << 4) + 8,
                      ((mantissa << 4) + 0x108) << np.maximum(exponent - 1, 0))
    alaw = np.where(a & 0x80, linear, -linear)
    return {"mulaw": (mu / 32768.0).astype(np.float32),
            "alaw": (alaw / 32768.0).astype(np.float32)}


_G711 = _g711_tables()


def g711_to_float32(data: bytes | bytearray | memoryview, law: str) -> np.ndarray:
    """G.711 bytes (``mulaw`` or ``alaw``, one byte a sample: telephony audio) -> float32."""
    table = _G711.get(law)
    if table is None:
        raise AudioError(f"unknown G.711 law {law!r}; use mulaw or alaw")
    return table[np.frombuffer(data, dtype=np.uint8)]


def looks_like_audio_file(data: bytes | bytearray | memoryview) -> bool:
    """Whether ``data`` starts like an audio file (its container says rate and channels), not
    like raw samples: WAV, FLAC, Ogg, MP3, AIFF, MP4/M4A, WebM/Matroska, AAC (ADTS), CAF.

    Raw PCM could begin with these bytes only by accident; callers that are told the encoding
    (a config field) should trust it instead of guessing.
    """
    head = bytes(data[:12])
    if head[:4] in (b"RIFF", b"fLaC", b"OggS", b"FORM", b"caff", b"\x1aE\xdf\xa3"):
        return True
    if head[:3] == b"ID3" or head[4:8] == b"ftyp":
        return True
    # an MP3 (MPEG layer III) or ADTS AAC frame header: sync bits, then a bitrate and sample
    # rate index that are not the reserved values (raw samples rarely pass all three checks)
    if len(head) < 3 or head[0] != 0xFF:
        return False
    if head[1] in (0xFB, 0xFA, 0xF3, 0xF2, 0xE3, 0xE2):
        return head[2] >> 4 not in (0x0, 0xF) and (head[2] >> 2) & 3 != 3
    if head[1] in (0xF1, 0xF9):
        return (head[2] >> 2) & 0xF < 13
    return False


def float32_to_pcm16(audio: np.ndarray) -> bytes:
    """float32 [-1, 1] -> little-endian PCM16 bytes (clipped, rounded)."""
    clipped = np.clip(np.asarray(audio, dtype=np.float32), -1.0, 32767 / 32768)
    return np.round(clipped * 32768.0).astype("<i2").tobytes()


def downmix(interleaved: np.ndarray, channels: int) -> np.ndarray:
    """Interleaved multi-channel samples -> mono by averaging the channels."""
    if channels <= 1:
        return np.asarray(interleaved, dtype=np.float32)
    usable = (interleaved.size // channels) * channels
    return interleaved[:usable].reshape(-1, channels).mean(axis=1).astype(np.float32)


def resample(audio: np.ndarray, from_rate: int, to_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Resample a whole array with soxr (HQ). Identity when the rates match."""
    if from_rate <= 0 or to_rate <= 0:
        raise AudioError(f"invalid sample rate {from_rate} -> {to_rate}")
    audio = np.asarray(audio, dtype=np.float32)
    if from_rate == to_rate or audio.size == 0:
        return audio
    return soxr.resample(audio, from_rate, to_rate, quality="HQ").astype(np.float32, copy=False)


def encode_wav(audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> bytes:
    """float32 mono -> a complete 16-bit PCM WAV file in memory."""
    pcm = float32_to_pcm16(audio)
    header = b"RIFF" + struct.pack("<I", 36 + len(pcm)) + b"WAVE"
    fmt = b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, sample_rate * 2, 2, 16)
    return header + fmt + b"data" + struct.pack("<I", len(pcm)) + pcm


class StreamResampler:
    """Resample a live stream chunk by chunk, keeping filter state across chunk borders.

    Resampling each chunk on its own restarts the filter and clicks at every border and
    drifts in length; this keeps one soxr stream per audio stream instead.
    """

    def __init__(self, in_rate: int, out_rate: int = SAMPLE_RATE, channels: int = 1) -> None:
        if in_rate <= 0 or out_rate <= 0:
            raise AudioError(f"invalid sample rate {in_rate} -> {out_rate}")
        if channels < 1:
            raise AudioError(f"invalid channel count {channels}")
        self.in_rate = in_rate
        self.out_rate = out_rate
        self.channels = channels
        self._stream = None if in_rate == out_rate else _make_stream(in_rate, out_rate)

    def process(self, chunk: np.ndarray) -> np.ndarray:
        """Feed interleaved float32 samples; get mono float32 at ``out_rate`` (may be empty)."""
        mono = downmix(np.asarray(chunk, dtype=np.float32).reshape(-1), self.channels)
        if self._stream is None:
            return mono
        return self._stream.resample_chunk(mono)

    def flush(self) -> np.ndarray:
        """End of stream: return the samples still held in the filter."""
        if self._stream is None:
            return np.zeros(0, np.float32)
        return self._stream.resample_chunk(np.zeros(0, np.float32), last=True)


# --- encoding (speech out) -------------------------------------------------------------------

AUDIO_FORMATS = ("wav", "pcm", "flac", "mp3", "opus", "aac")
MEDIA_TYPES = {"wav": "audio/wav", "pcm": "audio/pcm", "flac": "audio/flac",
               "mp3": "audio/mpeg", "opus": "audio/ogg", "aac": "audio/aac"}
# format -> (container, codec, sample format, samples per frame or 0 for the codec's own)
_CODECS = {
    "flac": ("flac", "flac", "s16", 4096),
    "mp3": ("mp3", "libmp3lame", "s16p", 1152),
    "opus": ("ogg", "libopus", "flt", 0),  # 20 ms at the stream's rate
    "aac": ("adts", "aac", "fltp", 1024),
}
_CODEC_RATES = {
    "mp3": (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000),
    "opus": (8000, 12000, 16000, 24000, 48000),
    "aac": (7350, 8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 64000, 88200,
            96000),
}
_UNKNOWN_SIZE = 0xFFFFFFFF


def check_format(fmt: str) -> str:
    """``fmt`` lower-cased when it is one of :data:`AUDIO_FORMATS`, else :class:`AudioError`."""
    name = str(fmt).lower()
    if name not in AUDIO_FORMATS:
        raise AudioError(f"unknown audio format {fmt!r}; choose one of {', '.join(AUDIO_FORMATS)}")
    return name


def output_rate(fmt: str, in_rate: int, requested: int | None = None) -> int:
    """The sample rate a ``fmt`` stream will have: ``requested`` when the codec supports it
    (else :class:`AudioError`), otherwise ``in_rate`` or the nearest higher rate the codec has."""
    fmt = check_format(fmt)
    rates = _CODEC_RATES.get(fmt)
    if requested is not None:
        if requested < 8000 or requested > 192_000:
            raise AudioError(f"sample rate {requested} Hz out of range (8000-192000)")
        if rates and requested not in rates:
            raise AudioError(f"{fmt} cannot be encoded at {requested} Hz; supported: "
                             f"{', '.join(map(str, rates))}")
        return requested
    if not rates or in_rate in rates:
        return in_rate
    return next((r for r in rates if r >= in_rate), rates[-1])


def _wav_header(sample_rate: int, data_bytes: int) -> bytes:
    riff = _UNKNOWN_SIZE if data_bytes == _UNKNOWN_SIZE else 36 + data_bytes
    return (b"RIFF" + struct.pack("<I", riff) + b"WAVE" + b"fmt "
            + struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, sample_rate * 2, 2, 16)
            + b"data" + struct.pack("<I", data_bytes))


class _Sink:
    """A write-only, non-seekable byte sink: PyAV muxes into it as for a pipe."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        data = b"".join(self._parts)
        self._parts.clear()
        return data


class AudioEncoder:
    """Encode a float32 mono stream chunk by chunk (for chunked HTTP bodies, gRPC, sockets).

    ``encode`` returns the bytes ready so far (possibly empty: codecs work in frames) and
    ``finish`` the rest; the concatenation is one valid file/stream of ``fmt``. ``in_rate`` is
    the audio's rate, ``out_rate`` the rate wanted (resampled with state across chunks; None:
    ``in_rate`` or the nearest rate the codec supports). ``wav`` streams carry a header with
    unknown sizes (as OpenAI streams WAV); ``pcm`` is raw little-endian 16-bit mono.
    """

    def __init__(self, fmt: str, in_rate: int, out_rate: int | None = None) -> None:
        self.format = check_format(fmt)
        self.in_rate = in_rate
        self.sample_rate = output_rate(self.format, in_rate, out_rate)
        self._resampler = StreamResampler(in_rate, self.sample_rate)
        self._started = False
        self._finished = False
        self._container = None
        self._stream = None
        self._framer = None
        self._pts = 0
        self._sink = _Sink()

    @property
    def media_type(self) -> str:
        return MEDIA_TYPES[self.format]

    def _open(self) -> None:
        import av

        container_format, codec, sample_format, frame_size = _CODECS[self.format]
        # a small I/O buffer: bytes reach the sink (a chunked body) soon after each chunk
        # (and Ogg pages of 100 ms instead of 1 s)
        options = {"page_duration": "100000"} if container_format == "ogg" else {}
        self._container = av.open(self._sink, mode="w", format=container_format,
                                  buffer_size=2048, options=options)
        stream = self._container.add_stream(codec, rate=self.sample_rate)
        stream.layout = "mono"
        stream.format = sample_format
        if self.format == "opus":
            frame_size = self.sample_rate // 50
        self._stream = stream
        self._framer = av.AudioResampler(format=sample_format, layout="mono",
                                         rate=self.sample_rate, frame_size=frame_size)

    def _mux(self, samples: np.ndarray | None) -> None:
        import av

        if samples is None:
            frames = self._framer.resample(None)
        else:
            frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="flt",
                                               layout="mono")
            frame.sample_rate = self.sample_rate
            frame.pts = self._pts
            self._pts += samples.size
            frames = self._framer.resample(frame)
        for out in frames:
            for packet in self._stream.encode(out):
                self._container.mux(packet)

    def encode(self, audio: np.ndarray) -> bytes:
        """Feed float32 mono samples at ``in_rate``; returns the bytes ready so far."""
        if self._finished:
            raise AudioError("encoder already finished")
        samples = np.clip(self._resampler.process(audio), -1.0, 32767 / 32768)
        return self._encode_resampled(samples.astype(np.float32, copy=False))

    def _encode_resampled(self, samples: np.ndarray) -> bytes:
        head = b""
        if not self._started:
            self._started = True
            if self.format == "wav":
                head = _wav_header(self.sample_rate, _UNKNOWN_SIZE)
            elif self.format != "pcm":
                self._open()
        if self.format in ("wav", "pcm"):
            return head + float32_to_pcm16(samples)
        if samples.size:
            self._mux(samples)
        return head + self._sink.take()

    def finish(self) -> bytes:
        """Flush resampler and codec; returns the last bytes (the trailer where a format has one)."""
        if self._finished:
            return b""
        tail = self._encode_resampled(self._resampler.flush())
        self._finished = True
        if self._container is not None:
            self._mux(None)
            for packet in self._stream.encode(None):
                self._container.mux(packet)
            self._container.close()
            tail += self._sink.take()
        return tail


def encode_audio(audio: np.ndarray, sample_rate: int, fmt: str = "wav",
                 out_rate: int | None = None) -> bytes:
    """A whole float32 mono buffer -> one complete file of ``fmt`` (``wav`` with exact sizes).

    ``out_rate``: resample to this rate first (None: keep ``sample_rate`` where the codec can).
    """
    fmt = check_format(fmt)
    if fmt == "wav":
        rate = output_rate(fmt, sample_rate, out_rate)
        return encode_wav(resample(audio, sample_rate, rate), rate)
    encoder = AudioEncoder(fmt, sample_rate, out_rate)
    return encoder.encode(np.asarray(audio, dtype=np.float32)) + encoder.finish()


def iter_encoded(chunks: Iterator[np.ndarray], sample_rate: int, fmt: str,
                 out_rate: int | None = None) -> Iterator[bytes]:
    """Encode a stream of float32 mono chunks at ``sample_rate``; yields non-empty byte chunks."""
    encoder = AudioEncoder(fmt, sample_rate, out_rate)
    for chunk in chunks:
        if data := encoder.encode(chunk):
            yield data
    if data := encoder.finish():
        yield data


def change_tempo(audio: np.ndarray, sample_rate: int, factor: float) -> np.ndarray:
    """Speed speech up (``factor`` > 1) or slow it down keeping its pitch (FFmpeg ``atempo``).

    ``factor`` 0.25-4; the result is about ``len(audio) / factor`` samples long.
    """
    if not 0.25 <= factor <= 4.0:
        raise AudioError(f"tempo factor {factor} out of range 0.25-4")
    audio = np.asarray(audio, dtype=np.float32)
    if abs(factor - 1.0) < 1e-3 or audio.size == 0:
        return audio
    import av

    graph = av.filter.Graph()
    source = graph.add_abuffer(format="flt", sample_rate=sample_rate, layout="mono",
                               time_base=f"1/{sample_rate}")
    # one atempo stage covers 0.5-2; chain two for the outer ranges
    stages = [factor] if 0.5 <= factor <= 2.0 else [factor ** 0.5, factor ** 0.5]
    nodes = [source] + [graph.add("atempo", f"{stage:.6f}") for stage in stages]
    nodes.append(graph.add("abuffersink"))
    graph.link_nodes(*nodes).configure()
    frame = av.AudioFrame.from_ndarray(audio.reshape(1, -1), format="flt", layout="mono")
    frame.sample_rate = sample_rate
    frame.pts = 0
    graph.push(frame)
    graph.push(None)
    out: list[np.ndarray] = []
    while True:
        try:
            result = graph.pull()
        except (av.error.BlockingIOError, av.error.EOFError):
            break
        out.append(result.to_ndarray().reshape(-1).astype(np.float32))
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def decode_audio_native(source: AudioSource) -> tuple[np.ndarray, int]:
    """Decode to float32 mono at the source's own sample rate; returns (audio, rate)."""
    container, _ = _open_container(source)
    try:
        rate = container.streams.audio[0].codec_context.sample_rate or SAMPLE_RATE
    finally:
        container.close()
    return decode_audio(source, sample_rate=rate), rate

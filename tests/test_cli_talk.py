"""``voxgate talk --input FILE --output FILE`` end to end: the real command line, in its own
process, against a live voxgate (gRPC VoiceWorkflow) with real Whisper, Qwen and Piper.

The user's question is spoken by Festival and fed in real time; the command prints what the
user said and the agent's reply on stdout, a latency line per turn on stderr, and writes the
agent's audio, which Whisper transcribes back to the printed reply. Bad input: a missing file,
a wrong key, a server that is not there, no microphone.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import re
import socket
import subprocess
import sys

import numpy as np
import pytest
from conftest import normalise, require_pack
from live_server import API_KEY, live_settings, start_agent_server
from media import festival_speech

from voxgate.audio import SAMPLE_RATE, decode_audio, encode_audio
from voxgate.config import AgentSettings
from voxgate.engines.base import AsrOptions

pytestmark = pytest.mark.slow

AGENT_MODELS = ("whisper-base", "whisper-tiny.en", "qwen2.5-coder-1.5b-instruct-q4km",
                "en_US-joe-medium")


@pytest.fixture(scope="module")
def server(manager, tmp_path_factory):
    for model_id in AGENT_MODELS:
        require_pack(model_id, manager.settings.cache_dir)
    settings = live_settings(tmp_path_factory.mktemp("talk"),
                             agent=AgentSettings(max_reply_tokens=40))
    yield from start_agent_server(settings, manager)


def _talk(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOXGATE_")}
    env["VOXGATE_OFFLINE"] = "true"
    return subprocess.run([sys.executable, "-m", "voxgate.cli", "talk", *args],
                          check=False, capture_output=True, text=True, timeout=timeout,
                          env=env)


def test_talk_a_file_conversation_prints_and_writes_the_reply(server, manager, tmp_path):
    question = tmp_path / "question.wav"
    festival_speech("What is the capital of France?", question)
    out = tmp_path / "agent.wav"
    done = _talk("--input", str(question), "--output", str(out), "--server", server.grpc_uri,
                 "--api-key", API_KEY, "--system", "Answer in one short sentence.")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    you = [line for line in lines if line.startswith("you: ")]
    agent = [line for line in lines if line.startswith("agent: ")]
    assert len(you) == 1 and "capital of france" in normalise(you[0]), done.stdout
    assert len(agent) == 1 and "paris" in agent[0].lower(), done.stdout
    latency = re.search(r"turn 1: voice-to-voice (\d+\.\d+) s \(.*LLM first token", done.stderr)
    assert latency and float(latency.group(1)) > 0, done.stderr
    audio = decode_audio(out)
    assert audio.size > 0.5 * SAMPLE_RATE
    heard = manager.get("asr", "whisper-base").transcribe(
        audio, AsrOptions(language="en", beam_size=5)).text
    assert "paris" in normalise(heard), heard


def test_talk_a_missing_file_is_one_error_line(server, tmp_path):
    done = _talk("--input", str(tmp_path / "nope.wav"), "--server", server.grpc_uri,
                 "--api-key", API_KEY, timeout=60)
    assert done.returncode == 1
    assert "nope.wav" in done.stderr and "Traceback" not in done.stderr


def test_talk_with_a_wrong_key_is_refused(server, tmp_path):
    question = tmp_path / "q.wav"
    festival_speech("Hello there.", question)
    done = _talk("--input", str(question), "--fast", "--server", server.grpc_uri,
                 "--api-key", "wrong", timeout=60)
    assert done.returncode == 1
    assert "UNAUTHENTICATED" in done.stderr and "Traceback" not in done.stderr


def test_talk_to_no_server_is_unavailable(tmp_path):
    question = tmp_path / "q.wav"
    festival_speech("Hello there.", question)
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    done = _talk("--input", str(question), "--fast", "--server", f"127.0.0.1:{port}",
                 timeout=60)
    assert done.returncode == 1
    assert "UNAVAILABLE" in done.stderr and "Traceback" not in done.stderr


def test_talk_without_input_or_microphone_says_how_to_fix_it():
    if importlib.util.find_spec("sounddevice") is not None:
        pytest.skip("sounddevice is installed: without --input the command would record")
    done = _talk("--server", "127.0.0.1:1", timeout=60)
    assert done.returncode == 2
    assert "sounddevice" in done.stderr and "--input" in done.stderr


def test_talk_help_names_the_options():
    done = _talk("--help", timeout=60)
    assert done.returncode == 0
    for option in ("--input", "--output", "--fast", "--server", "--api-key",
                   "--complete-wait-ms", "--pause-onset-ms"):
        assert option in done.stdout
    words = " ".join(re.sub(r"[│─╭╮╰╯]", " ", done.stdout).split())  # rich's frame wraps
    assert "echo cancellation" in words  # when to raise the onset


def _silence_wav(path):
    path.write_bytes(encode_audio(np.zeros(SAMPLE_RATE // 2, np.float32), SAMPLE_RATE, "wav"))
    return path


@pytest.mark.parametrize(("flag", "value", "field"), [
    ("--complete-wait-ms", "50", "complete_wait_ms"),
    ("--pause-onset-ms", "6000", "pause_onset_ms")])
def test_talk_turn_option_out_of_the_servers_range_is_refused(server, tmp_path, flag, value,
                                                                field):
    """The flag reaches the server's SessionConfig (only the server refuses it): its
    INVALID_ARGUMENT, naming the field, is the command's one error line, exit 1."""
    done = _talk("--input", str(_silence_wav(tmp_path / "s.wav")), "--fast", "--server",
                 server.grpc_uri, "--api-key", API_KEY, flag, value, timeout=60)
    assert done.returncode == 1, done.stderr
    assert "INVALID_ARGUMENT" in done.stderr and field in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_talk_turn_options_in_range_are_accepted(server, tmp_path):
    done = _talk("--input", str(_silence_wav(tmp_path / "s.wav")), "--fast", "--server",
                 server.grpc_uri, "--api-key", API_KEY, "--complete-wait-ms", "500",
                 "--pause-onset-ms", "300", timeout=60)
    assert done.returncode == 0, done.stderr
    assert "you: " not in done.stdout  # silence: no turn


def test_talk_negative_turn_option_is_a_usage_error():
    """A SessionConfig field cannot hold a negative number: the command line refuses it."""
    done = _talk("--pause-onset-ms", "-1", "--server", "127.0.0.1:1", timeout=60)
    assert done.returncode == 2
    assert "--pause-onset-ms" in done.stderr and "Traceback" not in done.stderr


def test_talk_options_reach_the_session_config_only_when_given():
    """Unset flags leave the fields absent (the server's defaults apply)."""
    from voxgate.talk import TalkOptions, session_config

    unset = session_config(TalkOptions())
    assert not unset.HasField("complete_wait_ms") and not unset.HasField("pause_onset_ms")
    given = session_config(TalkOptions(complete_wait_ms=500, pause_onset_ms=0))
    assert given.complete_wait_ms == 500
    assert given.HasField("pause_onset_ms") and given.pause_onset_ms == 0


def test_an_audio_source_error_is_reported_as_itself(server):
    """A microphone that fails mid-conversation is that error, not gRPC's CANCELLED."""
    from voxgate.errors import AudioError
    from voxgate.talk import TalkOptions, talk

    async def failing_microphone():
        yield bytes(3200)
        raise AudioError("microphone vanished")

    with pytest.raises(AudioError, match="microphone vanished"):
        asyncio.run(talk(TalkOptions(target=server.grpc_uri, api_key=API_KEY),
                         failing_microphone()))

"""Fuzzing every parser that reads client bytes (issue 15), with hypothesis.

Property, per parser: whatever the bytes, the answer is a result or the documented refusal
(``AudioError`` -> 415, ``WireError``/``ProtocolError`` -> error message + close code,
``RealtimeError`` -> an ``error`` event, an HTTP 4xx with a JSON detail, a gRPC status other than
UNKNOWN/INTERNAL); never another exception, a 500, a close code 1011 or a hung call.

In the suite the profile ``ci`` runs few, derandomized examples (deterministic, the file runs in
about a minute); ``VOXGATE_FUZZ_PROFILE=bench`` (``bench/fuzz.py``) runs many more and writes,
per parser, inputs tried and the slowest input's time to ``VOXGATE_FUZZ_STATS``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis", reason="hypothesis (dev extra) is not installed")
from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

settings.register_profile("ci", max_examples=25, derandomize=True, deadline=None,
                          database=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow,
                                                 HealthCheck.function_scoped_fixture])
settings.register_profile("bench", max_examples=int(os.environ.get("VOXGATE_FUZZ_EXAMPLES", 400)),
                          deadline=None, database=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow,
                                                 HealthCheck.function_scoped_fixture])
PROFILE = os.environ.get("VOXGATE_FUZZ_PROFILE", "ci")
settings.load_profile(PROFILE)
# the end-to-end doors cost a network round trip (and sometimes a model call) per input
E2E = settings(max_examples=12 if PROFILE == "ci" else max(40, settings.default.max_examples // 4))

# ------------------------------------------------------------------------------ statistics
STATS: dict[str, dict[str, Any]] = {}


@contextmanager
def tried(parser: str, example: Any) -> Iterator[None]:
    """Count one input of ``parser`` and remember the slowest (bench/fuzz.py reports them)."""
    started = time.perf_counter()
    entry = STATS.setdefault(parser, {"inputs": 0, "crashes": 0, "slowest_s": 0.0,
                                      "slowest_input": "", "crash_input": ""})
    try:
        yield
    except BaseException:
        entry["crashes"] += 1  # an input (or hypothesis's replay of it) the parser failed on
        entry["crash_input"] = repr(example)[:300]
        raise
    finally:
        took = time.perf_counter() - started
        entry["inputs"] += 1
        if took > entry["slowest_s"]:
            entry["slowest_s"], entry["slowest_input"] = took, repr(example)[:160]


@pytest.fixture(scope="module", autouse=True)
def _write_stats() -> Iterator[None]:
    yield
    target = os.environ.get("VOXGATE_FUZZ_STATS")
    if target:
        previous = json.loads(Path(target).read_text()) if Path(target).is_file() else {}
        Path(target).write_text(json.dumps({**previous, **STATS}, indent=1))


# ------------------------------------------------------------------------------ strategies
JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**40, 2**40)
                    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=12)
WEIRD_NUMBERS = st.sampled_from([0, -1, 1, 7, 8000, 16000, 48000, 2**31, 10**12, -10**9, 1.5,
                                 float("nan"), float("inf"), True, "16000", None, [], {}])


def config_like(keys: list[str], extra: dict[str, Any] | None = None) -> st.SearchStrategy:
    """JSON objects whose keys are mostly the parser's own, with values of any type (and
    numbers at the edges), so inputs reach past the 'unknown field' check."""
    value = JSON | WEIRD_NUMBERS | st.sampled_from(["", "auto", "en", "ru", "pcm16", "f32",
                                                     "mulaw", "flac", "x" * 300])
    fixed = st.fixed_dictionaries({}, optional={k: value for k in keys})
    return st.builds(lambda d, e: {**d, **e}, fixed, st.fixed_dictionaries(extra or {}))


def as_text(strategy: st.SearchStrategy) -> st.SearchStrategy:
    """The JSON text of ``strategy``'s values, sometimes cut short or replaced by noise."""
    encoded = strategy.map(lambda v: json.dumps(v, allow_nan=True))
    return encoded | encoded.flatmap(lambda t: st.integers(0, len(t)).map(lambda n: t[:n])) \
        | st.text(max_size=80)


# ------------------------------------------------------------------------------ audio headers
def _sample_files() -> dict[str, bytes]:
    from voxgate.audio import encode_audio, encode_wav

    tone = (0.3 * np.sin(np.arange(8000) * 2 * np.pi * 440 / 16000)).astype(np.float32)
    files = {"wav": encode_wav(tone)}
    for fmt, ext in (("mp3", "mp3"), ("flac", "flac"), ("opus", "ogg")):
        files[ext] = encode_audio(tone, 16000, fmt)
    return files


SAMPLES = _sample_files()


@st.composite
def corrupt_audio(draw: st.DrawFn) -> tuple[str, bytes]:
    """A real WAV/MP3/FLAC/Ogg file, truncated, with bytes flipped, or with random bytes
    spliced into its header."""
    kind = draw(st.sampled_from(sorted(SAMPLES)))
    data = bytearray(SAMPLES[kind])
    how = draw(st.sampled_from(["truncate", "flip", "splice", "header-only"]))
    if how == "truncate":
        data = data[:draw(st.integers(0, len(data)))]
    elif how == "flip":
        for _ in range(draw(st.integers(1, 16))):
            pos = draw(st.integers(0, min(len(data) - 1, 256)))
            data[pos] = draw(st.integers(0, 255))
    elif how == "splice":
        pos = draw(st.integers(0, min(len(data), 64)))
        data[pos:pos] = draw(st.binary(min_size=1, max_size=64))
    else:
        data = data[:draw(st.integers(4, 64))] + draw(st.binary(max_size=64))
    return kind, bytes(data)


def _wav_with_format_tag(tag: int) -> tuple[str, bytes]:
    data = bytearray(SAMPLES["wav"])
    data[20:22] = tag.to_bytes(2, "little")  # the fmt chunk's codec id
    return "wav", bytes(data)


@given(corrupt_audio())
@example(_wav_with_format_tag(0x1234))  # found by bench/fuzz.py: AttributeError, now AudioError
@example(_wav_with_format_tag(0))
def test_audio_decode_refuses_corrupt_files_cleanly(sample: tuple[str, bytes]) -> None:
    from voxgate.audio import decode_audio
    from voxgate.errors import AudioError

    with tried("audio decode (WAV/MP3/FLAC/Ogg headers)", sample[0]):
        try:
            audio = decode_audio(sample[1], max_seconds=60)
        except AudioError:
            return
        assert audio.dtype == np.float32 and audio.ndim == 1 and np.isfinite(audio).all()


# ------------------------------------------------------------------------------ WebSocket configs
ASR_KEYS = ["type", "sample_rate", "encoding", "channels", "language", "interim_results",
            "endpointing_ms", "models", "word_timestamps", "partial_interval_ms",
            "min_speech_ms", "speech_pad_ms", "vad_threshold", "max_utterance_s", "beam_size"]


@given(as_text(config_like(ASR_KEYS, {"type": st.just("config")})))
def test_asr_config_message_is_parsed_or_refused(text: str) -> None:
    from voxgate.errors import ProtocolError
    from voxgate.server.wire import StreamStart, parse_client_text
    from voxgate.streaming import StreamConfig, StreamConfigError

    with tried("/v1/asr config + control JSON", text):
        try:
            start = StreamStart.from_wire(text)
            StreamConfig.from_settings(_SETTINGS, **{k: v for k, v in start.options.items()
                                                     if v is not None})
        except (ProtocolError, StreamConfigError):
            pass
        try:
            parse_client_text(text)
        except ProtocolError:
            pass


AGENT_KEYS = ["type", "sample_rate", "encoding", "channels", "output_encoding", "models",
              "system_prompt", "language", "voice", "speed", "turn_detection", "auto_respond",
              "barge_in", "end_of_turn_ms", "max_reply_tokens", "temperature",
              "output_sample_rate", "vad_threshold"]


@given(as_text(config_like(AGENT_KEYS, {"type": st.just("config")})))
def test_agent_config_message_is_parsed_or_refused(text: str) -> None:
    from voxgate.errors import ProtocolError
    from voxgate.server.ws_agent import AgentStart

    with tried("/v1/agent config JSON", text):
        try:
            AgentStart.from_wire(text)
        except ProtocolError:
            pass


TRANSLATE_KEYS = ["mode", "src", "tgt", "partials", "glossary", "dnt", "sample_rate",
                  "channels", "stream_audio"]


@given(as_text(config_like(TRANSLATE_KEYS)))
def test_translate_control_message_is_parsed_or_refused(text: str) -> None:
    from voxgate.errors import ProtocolError
    from voxgate.server.ws_translate import WsControl, _control_kind

    with tried("/ws/translate control JSON", text):
        try:
            WsControl.from_wire(text)
        except ProtocolError:
            pass
        assert _control_kind(text) in ("", "flush", "end")


SESSION_KEYS = ["type", "model", "instructions", "audio", "output_modalities",
                "max_output_tokens", "tools", "tool_choice", "truncation", "include"]
AUDIO = st.fixed_dictionaries({}, optional={
    "input": st.fixed_dictionaries({}, optional={
        "format": JSON | st.fixed_dictionaries({"type": st.sampled_from(
            ["audio/pcm", "audio/pcmu", "audio/pcma", "x"]), "rate": WEIRD_NUMBERS}),
        "turn_detection": st.none() | config_like(
            ["type", "create_response", "interrupt_response", "eagerness", "threshold",
             "silence_duration_ms", "prefix_padding_ms", "idle_timeout_ms"]),
        "transcription": JSON, "noise_reduction": JSON}),
    "output": st.fixed_dictionaries({}, optional={"voice": JSON, "speed": WEIRD_NUMBERS,
                                                  "format": JSON})})


@given(config_like(SESSION_KEYS, {"audio": AUDIO}) | JSON, JSON)
@example({"output_modalities": 0}, None)  # found by bench/fuzz.py: TypeError, now an error event
def test_realtime_session_update_and_items_are_applied_or_refused(session: Any,
                                                                  item: Any) -> None:
    from voxgate.server.realtime_events import RealtimeError, RealtimeOptions, parse_item

    with tried("/v1/realtime session.update + item", session):
        options = RealtimeOptions()
        try:
            options.update(session)
        except RealtimeError as exc:
            assert exc.args and str(exc)
        try:
            parse_item(item)
        except RealtimeError:
            pass


# ------------------------------------------------------------------------------ Wyoming
HEADER = st.fixed_dictionaries({"type": st.sampled_from(
    ["audio-start", "audio-chunk", "audio-stop", "transcribe", "describe", "synthesize", "x"])
    | JSON}, optional={"data": JSON, "data_length": WEIRD_NUMBERS | st.integers(0, 64),
                       "payload_length": WEIRD_NUMBERS | st.integers(0, 64), "version": JSON})


@st.composite
def wyoming_bytes(draw: st.DrawFn) -> bytes:
    header = draw(HEADER)
    line = json.dumps(header, allow_nan=True).encode()
    tail = draw(st.binary(max_size=96))
    return draw(st.sampled_from([line + b"\n" + tail, line[:draw(st.integers(0, len(line)))],
                                 draw(st.binary(max_size=200)), line + b"\n"]))


@given(wyoming_bytes())
@example(b'{"type": "audio-start", "payload_length": Infinity}\n')  # found by bench/fuzz.py:
@example(b'{"type": "audio-start", "data_length": Infinity}\n')  # OverflowError, now refused
def test_wyoming_event_reader_reads_or_refuses(data: bytes) -> None:
    from voxgate.errors import ProtocolError
    from voxgate.server.wyoming import _read_event

    async def read_all() -> None:
        reader = asyncio.StreamReader(limit=64 * 1024)
        reader.feed_data(data)
        reader.feed_eof()
        for _ in range(8):
            try:
                event = await _read_event(reader)
            except ProtocolError:
                return
            except asyncio.IncompleteReadError:
                return  # the connection ended mid-event: the door treats it as a hang-up
            if event is None:
                return

    with tried("Wyoming events", data):
        asyncio.run(asyncio.wait_for(read_all(), 10))


# ------------------------------------------------------------------------------ settings
from voxgate.config import Settings  # noqa: E402

_SETTINGS = Settings(offline=True, _env_file=None)


# ------------------------------------------------------------------------------ end to end
# Through the real doors of a server on loopback, with the clients users use: the door's glue
# (config -> session -> slots) gets the same hostile input as the parsers above.
WS_CLOSE_CODES = {1000, 1003, 1007, 1008, 1009, 1013}  # never 1011 (an internal error)


def _frame() -> st.SearchStrategy:
    return (st.binary(max_size=700) | st.text(max_size=60)
            | as_text(config_like(["type"], {"type": st.sampled_from(["flush", "end", "x"])})))


@E2E
@given(as_text(config_like(ASR_KEYS, {"type": st.just("config")})), st.lists(_frame(), max_size=3))
def test_asr_websocket_answers_any_config_and_frames(live, caplog, text: str,
                                                    frames: list[Any]) -> None:
    """A refusal is an error message and a close code; a client still sending after the
    server closed may see the TCP reset instead (1006): then the server must have logged no
    error (an internal failure is logged by the door as it closes with 1011)."""
    import logging

    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    from live_server import API_KEY

    caplog.set_level(logging.WARNING, logger="voxgate")
    logged = len(caplog.records)
    with tried("/v1/asr WebSocket (end to end)", (text, frames)):
        with connect(live.ws_url, additional_headers={"X-API-Key": API_KEY},
                     open_timeout=30, close_timeout=10) as ws:
            try:
                ws.send(text)
                for frame in frames:
                    ws.send(frame)
                ws.send(json.dumps({"type": "end"}))
                while True:
                    ws.recv(timeout=60)
            except ConnectionClosed as closed:
                code = closed.rcvd.code if closed.rcvd else 1006
                errors = [r.getMessage() for r in caplog.records[logged:]
                          if r.levelno >= logging.ERROR and r.name.startswith("voxgate")]
                assert code in WS_CLOSE_CODES or (code == 1006 and not errors), \
                    (code, closed.rcvd and closed.rcvd.reason, errors)
        assert live.wait_for(lambda: live.streaming.active == 0, 30), "a stream slot stayed taken"


FIELD_VALUE = st.text(max_size=40) | st.sampled_from(
    ["raw_transcript", "summary", "clean_transcript", "meeting_notes_v1", "auto", "en", "../x",
     "whisper-1", "whisper-base", "json", "verbose_json", "srt", "text", "0", "-1", "1e9", "nan",
     "word", "segment", "http://127.0.0.1:1/x"])
FORM_FIELDS = ["features", "template_id", "language", "model", "webhook_url", "prompt",
               "response_format", "temperature", "timestamp_granularities[]", "stream", "x"]


@st.composite
def multipart_upload(draw: st.DrawFn) -> dict[str, Any]:
    fields = draw(st.dictionaries(st.sampled_from(FORM_FIELDS), FIELD_VALUE, max_size=5))
    if draw(st.booleans()):
        content = draw(corrupt_audio())[1]
    else:
        content = draw(st.binary(max_size=300))
    name = draw(st.sampled_from(["a.wav", "a.mp3", "a.flac", "a.ogg", "a", ".wav", "a.exe",
                                 "../../a.wav", "a.wav\x00.exe"]) | st.text(max_size=20))
    mime = draw(st.sampled_from(["audio/wav", "application/octet-stream", "text/plain", "",
                                 "audio/x;;", "video/mp4"]))
    file_field = draw(st.sampled_from(["file", "file", "File", "audio"]))
    return {"data": fields, "files": {file_field: (name, content, mime)}}


@pytest.fixture(scope="module")
def http_server(manager, tmp_path_factory):
    """A real server (jobs on an embedded Redis, no worker: accepted jobs just wait; the
    OpenAI door on the session's models)."""
    from jobs_support import KEY, serve_app

    settings = Settings(data_dir=tmp_path_factory.mktemp("fuzz-http"), offline=True,
                        api_keys=[KEY], grpc_port=0, inprocess_worker="off",
                        max_queue_depth=10_000, _env_file=None)
    with serve_app(settings, manager) as base:
        yield base, settings


def _check_http(response: Any, allowed: set[int]) -> None:
    assert response.status_code in allowed, (response.status_code, response.text[:300])
    if response.status_code >= 400:
        body = response.json()
        assert body.get("detail") or body.get("error", {}).get("message"), body


@E2E
@given(multipart_upload())
def test_process_form_answers_any_upload(http_server, upload: dict[str, Any]) -> None:
    import httpx

    from jobs_support import AUTH

    base, _ = http_server
    with tried("/v1/process multipart form (end to end)", upload):
        response = httpx.post(f"{base}/v1/process", headers=AUTH, timeout=60, **upload)
        _check_http(response, {202, 400, 413, 415, 422, 429})


@E2E
@given(multipart_upload())
def test_transcription_form_answers_any_upload(http_server, upload: dict[str, Any]) -> None:
    import httpx

    from jobs_support import KEY

    base, _ = http_server
    with tried("/v1/audio/transcriptions multipart form (end to end)", upload):
        response = httpx.post(f"{base}/v1/audio/transcriptions", timeout=120,
                              headers={"Authorization": f"Bearer {KEY}"}, **upload)
        _check_http(response, {200, 400, 404, 413, 415, 422, 429})


@E2E
@given(st.binary(max_size=400), st.sampled_from(["multipart/form-data; boundary=x",
                                                  "multipart/form-data", "multipart/form-data; "
                                                  "boundary=", "application/json"]))
def test_raw_bodies_get_a_clear_4xx(http_server, body: bytes, content_type: str) -> None:
    import httpx

    from jobs_support import KEY

    base, _ = http_server
    with tried("raw multipart bodies (end to end)", body):
        for path in ("/v1/process", "/v1/audio/transcriptions"):
            response = httpx.post(f"{base}{path}", content=body, timeout=60, headers={
                "Content-Type": content_type, "X-API-Key": KEY, "Authorization": f"Bearer {KEY}"})
            _check_http(response, {400, 415, 422})


GRPC_OK_CODES = {"OK", "INVALID_ARGUMENT", "RESOURCE_EXHAUSTED", "NOT_FOUND", "OUT_OF_RANGE",
                 "FAILED_PRECONDITION", "UNIMPLEMENTED"}


@E2E
@given(st.fixed_dictionaries({}, optional={
    "encoding": st.integers(-3, 40), "sample_rate_hertz": st.integers(-10, 10**7)
    | st.sampled_from([8000, 16000, 44100]), "language_code": st.text(max_size=12)
    | st.sampled_from(["en-US", "ru-RU", "multi", "auto"]), "max_alternatives": st.integers(-5, 50),
    "audio_channel_count": st.integers(-2, 64), "enable_word_time_offsets": st.booleans(),
    "enable_automatic_punctuation": st.booleans(), "model": st.text(max_size=20),
    "custom_configuration": st.dictionaries(st.text(max_size=10), st.text(max_size=10),
                                            max_size=3)}),
    corrupt_audio().map(lambda s: s[1]) | st.binary(max_size=2000))
def test_riva_recognize_answers_any_config(live, fields: dict[str, Any], audio: bytes) -> None:
    from riva.client.proto import riva_asr_pb2 as asr
    from riva.client.proto import riva_asr_pb2_grpc as asr_grpc

    def call(channel: Any, metadata: Any) -> None:
        stub = asr_grpc.RivaSpeechRecognitionStub(channel)
        request = asr.RecognizeRequest(config=asr.RecognitionConfig(**fields), audio=audio)
        stub.Recognize(request, timeout=120, metadata=metadata)

    _grpc_call(live, "Riva gRPC RecognitionConfig (end to end)", fields, call)


def _grpc_call(live, parser: str, example: Any, call: Any) -> None:
    """Run one unary call against ``live``'s gRPC port; OK or a documented status, with details."""
    import grpc

    from live_server import API_KEY

    with tried(parser, example):
        with grpc.insecure_channel(live.grpc_uri) as channel:
            try:
                call(channel, [("x-api-key", API_KEY)])
                code = "OK"
            except grpc.RpcError as exc:
                code = exc.code().name
                assert exc.details(), code
        assert code in GRPC_OK_CODES, (code, example)


@E2E
@given(st.fixed_dictionaries({}, optional={
    "text": st.text(max_size=40) | st.sampled_from(["Hello.", "", " ", "<speak>x</speak>"]),
    "language_code": st.text(max_size=8) | st.sampled_from(["en-US", "ru-RU", "xx"]),
    "encoding": st.integers(-3, 40), "sample_rate_hz": st.integers(-10, 10**7)
    | st.sampled_from([0, 8000, 22050, 48000]), "voice_name": st.text(max_size=20)
    | st.sampled_from(["", "en_US-joe-medium", "../x"]),
    "custom_dictionary": st.text(max_size=30), "enable_word_time_offsets": st.booleans(),
    "custom_configuration": st.dictionaries(st.text(max_size=8), st.text(max_size=8),
                                            max_size=2)}))
@example({"text": "\u00b9", "language_code": "ru-RU"})  # found by bench/fuzz.py: INTERNAL
def test_riva_synthesize_answers_any_request(live, fields: dict[str, Any]) -> None:
    from riva.client.proto import riva_tts_pb2 as tts
    from riva.client.proto import riva_tts_pb2_grpc as tts_grpc

    def call(channel: Any, metadata: Any) -> None:
        stub = tts_grpc.RivaSpeechSynthesisStub(channel)
        stub.Synthesize(tts.SynthesizeSpeechRequest(**fields), timeout=120, metadata=metadata)

    _grpc_call(live, "Riva gRPC SynthesizeSpeechRequest (end to end)", fields, call)


# languages that never form a pair the server translates: the request parsing and validation
# are fuzzed, not the LLM (tests/test_riva_nmt.py covers real translations)
NOT_A_PAIR = st.text(max_size=8).filter(lambda t: t.lower()[:2] not in ("en", "ru")) \
    | st.sampled_from(["", "xx", "en-US\x00", "auto"])


@E2E
@given(st.fixed_dictionaries({}, optional={
    "texts": st.lists(st.text(max_size=30), max_size=4), "model": st.text(max_size=20),
    "source_language": NOT_A_PAIR, "target_language": NOT_A_PAIR,
    "dnt_phrases": st.lists(st.text(max_size=10), max_size=3),
    "max_len_variation": st.text(max_size=6)}))
def test_riva_translate_answers_any_request(live, fields: dict[str, Any]) -> None:
    from riva.client.proto import riva_nmt_pb2 as nmt
    from riva.client.proto import riva_nmt_pb2_grpc as nmt_grpc

    def call(channel: Any, metadata: Any) -> None:
        stub = nmt_grpc.RivaTranslationStub(channel)
        stub.TranslateText(nmt.TranslateTextRequest(**fields), timeout=120, metadata=metadata)

    _grpc_call(live, "Riva gRPC TranslateTextRequest (end to end)", fields, call)


# ---- the agent doors and Wyoming, end to end (agent sessions on test_realtime's fake engines)
@pytest.fixture(scope="module")
def agent_live(manager, tmp_path_factory):
    from live_server import live_settings, serve_app
    from test_realtime import _FakeAgent
    from voxgate.config import AgentSettings
    from voxgate.server.app import create_app
    from voxgate.server.live_streams import StreamingComponent
    from voxgate.server.wyoming import WyomingServer

    settings = live_settings(tmp_path_factory.mktemp("fuzz-agent"), max_streams=4,
                             agent=AgentSettings(max_sessions=2))
    wyoming = WyomingServer("tcp://127.0.0.1:0")
    app = create_app(settings, manager, components=[
        StreamingComponent(settings), _FakeAgent().component(settings), wyoming])
    with serve_app(app, ws_max_size=settings.streaming.max_frame_bytes) as live:
        live.wyoming = wyoming
        yield live


def _agent_doors_free(live) -> bool:
    agent = live.state.components["agent"]
    return agent.active == 0 and not agent.sessions \
        and live.state.components["streaming"].active == 0 and not live.wyoming._connections


def _ws_session(live, caplog, path: str, messages: list[Any]) -> None:
    """Send ``messages``, then read until the server closes (or goes quiet for 1 s and the
    client closes): the close code is a documented one, the server logged no error, and every
    slot is free afterwards."""
    import logging

    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    from live_server import API_KEY

    caplog.set_level(logging.WARNING, logger="voxgate")
    logged = len(caplog.records)
    code = 1000
    with connect(f"ws://127.0.0.1:{live.port}{path}", additional_headers={"X-API-Key": API_KEY},
                 open_timeout=30, close_timeout=10, max_size=None) as ws:
        try:
            for message in messages:
                ws.send(message)
            while True:
                ws.recv(timeout=1)
        except TimeoutError:
            pass  # the server waits for more: the client leaves
        except ConnectionClosed as closed:
            code = closed.rcvd.code if closed.rcvd else 1006
    errors = [r.getMessage() for r in caplog.records[logged:]
              if r.levelno >= logging.ERROR and r.name.startswith("voxgate")]
    assert not errors and (code in WS_CLOSE_CODES or code == 1006), (code, errors)
    assert live.wait_for(lambda: _agent_doors_free(live), 30), "a slot stayed taken"


REALTIME_TYPES = ["session.update", "input_audio_buffer.append", "input_audio_buffer.commit",
                  "input_audio_buffer.clear", "conversation.item.create",
                  "conversation.item.delete", "conversation.item.truncate",
                  "conversation.item.retrieve", "response.create", "response.cancel", "x"]
REALTIME_EVENT = st.builds(
    lambda kind, fields: {**fields, "type": kind}, st.sampled_from(REALTIME_TYPES),
    config_like(["event_id", "session", "audio", "item", "item_id", "content_index",
                 "audio_end_ms", "previous_item_id", "response"],
                {}).map(lambda d: {**d, **({"audio": base64.b64encode(b"\0\1" * 80).decode()}
                                           if "audio" in d and not isinstance(d["audio"], str)
                                           else {})}))


@E2E
@given(st.lists(as_text(REALTIME_EVENT) | st.binary(max_size=64), min_size=1, max_size=5))
def test_realtime_events_are_answered_or_refused(agent_live, caplog, events: list[Any]) -> None:
    with tried("/v1/realtime events (end to end)", events):
        _ws_session(agent_live, caplog, "/v1/realtime?model=x", events)


@E2E
@given(as_text(config_like(AGENT_KEYS, {"type": st.just("config")})), st.lists(
    _frame() | as_text(config_like(["type", "text"], {"type": st.sampled_from(
        ["text", "interrupt", "end", "played", "x"])})), max_size=3))
def test_agent_websocket_answers_any_config_and_frames(agent_live, caplog, text: str,
                                                       frames: list[Any]) -> None:
    with tried("/v1/agent WebSocket (end to end)", (text, frames)):
        _ws_session(agent_live, caplog, "/v1/agent", [text, *frames])


@E2E
@given(st.lists(wyoming_bytes(), min_size=1, max_size=3))
def test_wyoming_server_answers_any_bytes(agent_live, caplog, chunks: list[bytes]) -> None:
    """Random events over a real connection: the server answers (error events included) or
    hangs up; it logs no error and keeps no connection."""
    import logging
    import socket

    caplog.set_level(logging.WARNING, logger="voxgate")
    logged = len(caplog.records)
    address = agent_live.wyoming.bound
    with tried("Wyoming server (end to end)", chunks):
        with socket.create_connection((address.host, address.port), timeout=10) as sock:
            try:
                for chunk in chunks:
                    sock.sendall(chunk)
                sock.shutdown(socket.SHUT_WR)  # the client is done; the server ends too
                while sock.recv(65536):
                    pass
            except OSError:  # reset, broken pipe, not connected, timeout
                pass  # refused and hung up on while the client still wrote
        errors = [r.getMessage() for r in caplog.records[logged:]
                  if r.levelno >= logging.ERROR and r.name.startswith("voxgate")]
        assert not errors, errors
        assert agent_live.wait_for(lambda: not agent_live.wyoming._connections, 30)

"""The ``voxgate`` command line: one entry point for every front door.

Errors a user can cause print one line (``voxgate: error: ...``) and exit non-zero; ``--debug``
shows the traceback instead. Models load once per process, however many files are given.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

from .config import Settings, load_settings
from .errors import ConfigError, VoxgateError

__all__ = ["app", "main"]

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="voxgate: self-hosted speech AI server and toolkit.")
models_app = typer.Typer(no_args_is_help=True, help="List, download and verify models.")
app.add_typer(models_app, name="models")
err = Console(stderr=True)
logger = logging.getLogger(__name__)


class OutputFormat(str, Enum):
    text = "text"
    json = "json"
    srt = "srt"
    vtt = "vtt"
    tsv = "tsv"


class AudioFormat(str, Enum):
    wav = "wav"
    mp3 = "mp3"
    flac = "flac"
    opus = "opus"
    aac = "aac"
    pcm = "pcm"


class Task(str, Enum):
    transcribe = "transcribe"
    translate = "translate"


def _fail(message: str) -> None:
    err.print(f"[red]voxgate: error:[/red] {message}", highlight=False, soft_wrap=True)


@contextmanager
def _command_errors(debug: bool, output: object, config_exit: int | None = None
                    ) -> Iterator[None]:
    """A command's expected errors as one line and an exit status: any voxgate error 1 (its
    traceback with ``--debug``), bad configuration ``config_exit`` when given, an output file
    that cannot be written 1 (named)."""
    try:
        yield
    except VoxgateError as exc:
        if config_exit is not None and isinstance(exc, ConfigError):
            _fail(str(exc))
            raise typer.Exit(config_exit) from None
        if debug:
            raise
        _fail(str(exc))
        raise typer.Exit(1) from None
    except OSError as exc:
        _fail(f"{output}: {exc.strerror or exc}")
        raise typer.Exit(1) from None


@app.callback()
def _valid_settings() -> None:
    # Runs before every command: a bad VOXGATE_* value (environment or .env) is one error line
    # naming the variable, not a traceback from wherever the command first reads settings.
    try:
        load_settings()
    except ConfigError as exc:
        _fail(str(exc))
        raise typer.Exit(2) from None


def _label(name: str) -> str:
    return "<stdin>" if name == "-" else name


def _file_error(name: str, exc: Exception) -> str:
    """One line naming the input once: '<file>: <reason>'."""
    message = str(exc).removeprefix("<bytes>: ")
    label = _label(name)
    return message if message.startswith(label) else f"{label}: {message}"


def _setup_logging(debug: bool, voxgate_level: str | None = None) -> None:
    """Handlers once per command (log_setup.py): VOXGATE_LOG__FORMAT, VOXGATE_LOG__LEVEL."""
    from .log_setup import setup_logging

    setup_logging(load_settings(), debug=debug, voxgate_level=voxgate_level)


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
                    TimeRemainingColumn(), console=err, transient=True,
                    disable=not err.is_terminal)  # no bar (nor stray blank line) in logs/pipes


@app.command()
def transcribe(
    files: Annotated[list[str], typer.Argument(help="Audio/video files; '-' reads stdin.")],
    model: Annotated[Optional[str], typer.Option(help="Catalogue id or local model dir.")] = None,
    language: Annotated[str, typer.Option(help="Language code, or 'auto' to detect.")] = "auto",
    task: Annotated[Task, typer.Option(help="transcribe, or translate to English.")] = Task.transcribe,
    fmt: Annotated[OutputFormat, typer.Option("--format", "-f")] = OutputFormat.text,
    word_timestamps: Annotated[bool, typer.Option("--word-timestamps")] = False,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write one file per input here.")] = None,
    beam_size: Annotated[Optional[int], typer.Option(min=1, max=20)] = None,
    batch_size: Annotated[Optional[int], typer.Option(min=1, max=64)] = None,
    no_vad: Annotated[bool, typer.Option("--no-vad", help="Decode each input whole, as one utterance.")] = False,
    summary: Annotated[Optional[str], typer.Option(
        "--summary", help="Also summarise each file with this template (e.g. meeting_notes_v1), "
                          "in-process with the LLM, as a job would.")] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks and debug logs.")] = False,
) -> None:
    """Transcribe recordings to text, JSON, SRT, VTT or TSV (stdout unless --output)."""
    _setup_logging(debug)
    from .transcriber import FileTranscriber, TranscribeRequest

    settings = Settings()
    request = TranscribeRequest(
        model=model or settings.asr.model,
        language=None if language in ("auto", "") else language,
        task=task.value,
        # Subtitles and JSON need Whisper's timestamp pass for sentence-sized segments (as the
        # OpenAI-compatible API does); plain text does not pay for it.
        word_timestamps=word_timestamps or fmt is not OutputFormat.text,
        beam_size=beam_size or settings.asr.beam_size,
        batch_size=batch_size or settings.asr.batch_size,
        use_vad=not no_vad,
    )
    if output is not None:
        if output.exists() and not output.is_dir():
            _fail(f"--output {output}: exists and is not a directory")
            raise typer.Exit(2)
        output.mkdir(parents=True, exist_ok=True)
    failures = 0
    try:
        if summary:
            from .postprocess import load_template

            load_template(settings, summary)  # unknown template: fail before any work
        runner = FileTranscriber(settings, request)
    except VoxgateError as exc:
        if debug:
            raise
        _fail(str(exc))
        raise typer.Exit(1) from None
    from .formats import EXTENSIONS, render

    with _progress() as progress:
        for name in files:
            bar = progress.add_task(Path(name).name if name != "-" else "<stdin>", total=1.0)
            try:
                source: object = sys.stdin.buffer.read() if name == "-" else name
                result = runner.run(source, lambda done, total: progress.update(
                    bar, completed=done, total=max(total, 1e-9)))
            except VoxgateError as exc:
                failures += 1
                if debug:
                    logger.exception("failed: %s", name)
                progress.stop_task(bar)
                _fail(_file_error(name, exc))
                continue
            except Exception as exc:  # a bug or a backend failure: still one line per file
                failures += 1
                if debug:
                    raise
                _fail(f"{_label(name)}: unexpected {type(exc).__name__}: {exc} "
                      "(--debug shows details)")
                continue
            finally:
                progress.remove_task(bar)
            text = render(result, fmt.value)
            if summary:
                text = _with_summary(text, fmt, _summarise(settings, runner, result, summary, name))
            if output is None:
                sys.stdout.write(text)
                sys.stdout.flush()
            else:
                stem = "stdin" if name == "-" else Path(name).stem
                (output / f"{stem}.{EXTENSIONS[fmt.value]}").write_text(text, encoding="utf-8")
    if failures:
        raise typer.Exit(1)


def _summarise(settings: Settings, runner: object, result: object, template_id: str,
               name: str) -> dict[str, object] | None:
    """The job pipeline's summary stage, in-process; errors become one line, not a crash."""
    from .pipeline import summarize_text

    with _progress() as progress:
        progress.add_task(f"summary of {_label(name)} ({template_id})", total=None)
        try:
            return summarize_text(settings, runner.manager, result.text, template_id)
        except VoxgateError as exc:
            _fail(f"{_label(name)}: summary failed: {exc}")
            return {"error": str(exc)}


def _with_summary(text: str, fmt: OutputFormat, summary: dict[str, object] | None) -> str:
    import json

    if fmt is OutputFormat.json:
        document = json.loads(text)
        document["summary"] = summary
        return json.dumps(document, ensure_ascii=False, indent=2) + "\n"
    block = json.dumps(summary, ensure_ascii=False, indent=2)
    return f"{text.rstrip()}\n\nSummary:\n{block}\n"


@app.command()
def say(
    text: Annotated[str, typer.Argument(help="Text to speak; '-' reads it from stdin.")],
    output: Annotated[str, typer.Option("--output", "-o",
                                        help="Audio file to write; '-' writes to stdout.")],
    voice: Annotated[Optional[str], typer.Option(
        help="Voice id (default VOXGATE_TTS__VOICE); see `voxgate models list`.")] = None,
    fmt: Annotated[Optional[AudioFormat], typer.Option(
        "--format", "-f", help="Audio format (default: from the file name, else wav); pcm is "
                               "raw 16-bit little-endian mono.")] = None,
    speed: Annotated[float, typer.Option(help="0.25-4; 1 is the voice's own pace.")] = 1.0,
    rate: Annotated[Optional[int], typer.Option(
        help="Sample rate in Hz (default: the voice's own, where the format allows).")] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks and debug logs.")] = False,
) -> None:
    """Speak text into an audio file (or stdout, sentence by sentence as it is synthesized)."""
    _setup_logging(debug)
    from .audio import AUDIO_FORMATS, AudioEncoder
    from .speech import SpeechService, encode_chunks

    settings = Settings()
    if fmt is None:
        suffix = Path(output).suffix.lower().lstrip(".")
        chosen = {"ogg": "opus", "m4a": "aac", "raw": "pcm"}.get(suffix, suffix)
        chosen = chosen if chosen in AUDIO_FORMATS else "wav"
    else:
        chosen = fmt.value
    with _command_errors(debug, output):
        source = sys.stdin.read() if text == "-" else text
        service = SpeechService(settings)
        request = service.prepare(source, voice, speed)
        chunks = service.iter_chunks(request)
        if output == "-":  # stream: each sentence's audio goes out as soon as it exists
            out = sys.stdout.buffer
            encoder: AudioEncoder | None = None
            for chunk in chunks:
                encoder = encoder or AudioEncoder(chosen, chunk.sample_rate, rate)
                out.write(encoder.encode(chunk.audio))
                out.flush()
            if encoder is not None:
                out.write(encoder.finish())
                out.flush()
        else:
            data = encode_chunks(chunks, chosen, rate)
            Path(output).write_bytes(data)


_UINT32_MAX = 2**32 - 1  # what a SessionConfig field holds; the server checks the real range


@app.command()
def talk(
    input_file: Annotated[Optional[Path], typer.Option(
        "--input", "-i", help="The user's side of the conversation as an audio file (any "
                              "format), fed in real time; default: the microphone "
                              "(needs the sounddevice package).")] = None,
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", help="Write the agent's audio here (wav, flac, mp3, opus...); "
                               "default with the microphone: play it.")] = None,
    server: Annotated[Optional[str], typer.Option(
        help="gRPC address of a running `voxgate serve` (default 127.0.0.1:VOXGATE_GRPC_PORT).")
    ] = None,
    api_key: Annotated[Optional[str], typer.Option(
        "--api-key", help="API key (default: the first of VOXGATE_API_KEYS).")] = None,
    tls: Annotated[bool, typer.Option("--tls", help="Connect over TLS.")] = False,
    fast: Annotated[bool, typer.Option(
        "--fast", help="Send --input as fast as the server takes it, not in real time.")] = False,
    voice: Annotated[str, typer.Option(help="The agent's voice id (default: the server's).")] = "",
    language: Annotated[str, typer.Option(help="Conversation language, e.g. en.")] = "",
    system: Annotated[str, typer.Option(help="System prompt (default: the server's).")] = "",
    asr: Annotated[str, typer.Option(help="ASR model id (default: the server's).")] = "",
    llm: Annotated[str, typer.Option(help="LLM model id (default: the server's).")] = "",
    complete_wait_ms: Annotated[Optional[int], typer.Option(
        "--complete-wait-ms", min=0, max=_UINT32_MAX,
        help="Silence (ms) that ends a turn whose text is a complete question (server range "
             "100-10000; default: the server's).")] = None,
    pause_onset_ms: Annotated[Optional[int], typer.Option(
        "--pause-onset-ms", min=0, max=_UINT32_MAX,
        help="Speech (ms) over the agent that pauses its reply (server range 0-5000; default: "
             "the server's). Raise it (e.g. 300) with a real microphone and speakers without "
             "echo cancellation, so the agent's own voice does not pause it.")] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks and debug logs.")] = False,
) -> None:
    """Talk to the voice agent of a running server (gRPC voxgate.v1.VoiceWorkflow).

    Prints what you said and the agent's replies on stdout, a latency line per turn on stderr.
    """
    _setup_logging(debug)
    from .talk import TalkOptions, TalkPrinter, run_talk

    settings = Settings()
    options = TalkOptions(
        target=server or f"127.0.0.1:{settings.grpc_port}",
        api_key=api_key or (settings.api_keys[0] if settings.api_keys else None), tls=tls,
        voice=voice, language=language, system_prompt=system, asr_model=asr, llm_model=llm,
        complete_wait_ms=complete_wait_ms, pause_onset_ms=pause_onset_ms)
    with _command_errors(debug, output, config_exit=2):
        run_talk(options, input_file, output, realtime=not fast, printer=TalkPrinter())


@app.command()
def worker(
    burst: Annotated[bool, typer.Option(help="Exit when the queue is empty.")] = False,
    name: Annotated[Optional[str], typer.Option(help="Worker name (default: random).")] = None,
    preload_llm: Annotated[bool, typer.Option("--preload-llm", help="Load the LLM at start.")] = False,
    debug: bool = False,
) -> None:
    """Process queued jobs (scale-out): models load once, jobs run in this process."""
    _setup_logging(debug, "INFO")
    from .jobs import ensure_queue_available, redis_url_for
    from .tracing import configure_tracing, shutdown_tracing
    from .worker import run_worker

    settings = Settings()
    configure_tracing(settings)  # OpenTelemetry when VOXGATE_TRACING__ENABLED
    try:
        ensure_queue_available()
        run_worker(settings, redis_url_for(settings), burst=burst, name=name,
                   preload_llm=preload_llm)
    except VoxgateError as exc:
        _fail(str(exc))
        raise typer.Exit(1) from None
    finally:
        shutdown_tracing()  # the last job's spans are sent before the process ends


@models_app.command("list")
def models_list() -> None:
    """Show the catalogue: id, kind, engine, licence and whether an offline pack is installed."""
    from .models import installed_packs, list_specs

    specs = list_specs()
    installed = installed_packs(specs)
    for spec in specs:
        where = "offline" if installed[spec.id] else "hub"
        typer.echo(f"{spec.id:28} {spec.kind:4} {spec.engine:9} {where:8} {spec.license:12} "
                   f"{spec.description}")
    from .speech import SpeechService

    voices = SpeechService(Settings()).voices()
    typer.echo(f"# TTS voices available offline ({len(voices)}; `voxgate say --voice ID`):")
    for info in voices:
        typer.echo(f"{info.id:34} {info.language:10} {info.sample_rate:>6} Hz  {info.engine:9} "
                   f"{info.name}")


@models_app.command("pull")
def models_pull(model_id: str, debug: bool = False) -> None:
    """Make a model available locally (join an offline pack, or download from the hub)."""
    _setup_logging(debug)
    from .models import resolve

    settings = Settings()
    with _progress() as progress:
        bar = progress.add_task(f"pull {model_id}", total=None)
        try:
            resolved = resolve(model_id, settings.cache_dir, offline=settings.offline,
                               progress=lambda d, t: progress.update(bar, completed=d, total=t))
        except VoxgateError as exc:
            _fail(str(exc))
            raise typer.Exit(1) from None
    typer.echo(f"{resolved.spec.id}: {resolved.path} ({resolved.source})")


@models_app.command("verify")
def models_verify(model_ids: Annotated[Optional[list[str]], typer.Argument()] = None) -> None:
    """Re-hash pinned models (all installed offline packs when no id is given)."""
    from .models import installed_packs, list_specs, verify

    settings = Settings()
    ids = model_ids or [i for i, ok in installed_packs(list_specs()).items() if ok]
    bad = 0
    with _progress() as progress:
        for model_id in ids:
            bar = progress.add_task(f"verify {model_id}", total=None)
            try:
                digest = verify(model_id, settings.cache_dir,
                                progress=lambda d, t: progress.update(bar, completed=d, total=t))
                typer.echo(f"ok   {model_id} sha256={digest}")
            except VoxgateError as exc:
                bad += 1
                _fail(str(exc))
    if bad:
        raise typer.Exit(1)


@app.command()
def serve(
    host: Annotated[Optional[str], typer.Option(help="Bind address (default 127.0.0.1).")] = None,
    port: Annotated[Optional[int], typer.Option(help="HTTP + WebSocket port.")] = None,
    grpc_port: Annotated[Optional[int], typer.Option("--grpc-port", help="gRPC port (0: off).")] = None,
    wyoming: Annotated[Optional[str], typer.Option(help="Wyoming URI, e.g. tcp://127.0.0.1:10300.")] = None,
    debug: bool = False,
) -> None:
    """Run the server: HTTP, WebSocket, gRPC (and Wyoming) in one process."""
    _setup_logging(debug, "INFO")
    import uvicorn

    from .server import create_app, uvicorn_options

    overrides = {k: v for k, v in {"host": host, "port": port, "grpc_port": grpc_port,
                                   "wyoming_uri": wyoming}.items() if v is not None}
    settings = Settings(**overrides)
    try:
        application = create_app(settings)
    except VoxgateError as exc:
        _fail(str(exc))
        raise typer.Exit(1) from None
    # log_config=None: uvicorn's own lines (access log included) go through our handler, in
    # our format, with the request id of each request
    uvicorn.run(application, **uvicorn_options(settings), log_level="debug" if debug else "info",
                log_config=None)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()

